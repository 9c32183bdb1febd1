"""Correlated randomness: AES-128-CTR streams and pairwise key agreement.

Every party P_i holds three streams keyed by key agreement (`agree_keys`):
  next   shared with P_{i+1}      prev   shared with P_{i-1}
  common shared by all three (public randomness, e.g. dropout masks)
plus `own`, keyed from os.urandom, for randomness only P_i may know. The two members of a pair draw the same amounts in
the same order, so their streams stay in step without messages.

The PRG interface is `random_bytes(n)` and `ring(shape)`; anything with those two methods (a GPU AES kernel, or the
explicitly insecure generator in `insecure_prg.py` for benchmarks) can replace `AesCtrPRG`.
"""
from __future__ import annotations

import os
from typing import Protocol

import torch
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import ring

KEY_BYTES = 16  # AES-128
_ZEROS = bytes(0)  # the all-zero plaintext, grown on demand and never written: CTR encrypts it into the keystream


def _zeros(n: int) -> memoryview:
    global _ZEROS
    if len(_ZEROS) < n:
        _ZEROS = bytes(max(n, 2 * len(_ZEROS)))
    return memoryview(_ZEROS)[:n]


class PRG(Protocol):
    def random_bytes(self, n: int) -> memoryview: ...

    def ring(self, shape, device=None) -> torch.Tensor: ...


class AesCtrPRG:
    """AES-128 in counter mode over a zero plaintext: a cryptographic stream of bytes (OpenSSL via `cryptography`)."""

    def __init__(self, key: bytes, nonce: bytes = bytes(16)):
        if len(key) != KEY_BYTES:
            raise ValueError(f"AES-128 key must be {KEY_BYTES} bytes, got {len(key)}")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
        self.bytes_drawn = 0

    def random_bytes(self, n: int) -> memoryview:
        # uninitialised output (every byte is written) and a shared zero plaintext: one pass over memory, not three
        out = torch.empty(n + 15, dtype=torch.uint8).numpy()  # update_into asks for one block of slack
        self._enc.update_into(_zeros(n), out)
        self.bytes_drawn += n
        return memoryview(out)[:n]

    def ring(self, shape, device=None) -> torch.Tensor:
        """Uniform elements of Z_2^64 (all 2^64 values equally likely)."""
        shape = torch.Size(shape)
        n = shape.numel()
        if n == 0:
            return torch.zeros(shape, dtype=ring.DTYPE, device=device)
        t = torch.frombuffer(self.random_bytes(8 * n), dtype=ring.DTYPE).view(shape)
        return t.to(device) if device is not None else t

    def bits(self, shape, device=None) -> torch.Tensor:
        """Uniform 0/1 values as int64."""
        return self.ring(shape, device) & 1


def own_prg() -> AesCtrPRG:
    """A stream only this process knows."""
    return AesCtrPRG(os.urandom(KEY_BYTES))


def derive_key(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


class KeyAgreement:
    """X25519 key pair of one party; `shared_key(peer_public, info)` is the HKDF'd AES key for that pair."""

    def __init__(self):
        self._sk = X25519PrivateKey.generate()

    def public_bytes(self) -> bytes:
        return self._sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def shared_key(self, peer_public: bytes, info: bytes) -> bytes:
        secret = self._sk.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public)))
        return derive_key(secret, info)


def pair_info(a: int, b: int, session: bytes = b"") -> bytes:
    lo, hi = sorted((a, b))
    return b"secure_lightning/prg/pair/%d-%d/" % (lo, hi) + session
