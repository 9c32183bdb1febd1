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

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import ring

KEY_BYTES = 16  # AES-128


class PRG(Protocol):
    def random_bytes(self, n: int) -> memoryview: ...

    def ring(self, shape, device=None) -> torch.Tensor: ...


class AesCtrPRG:
    """AES-128 in counter mode over a zero plaintext: a cryptographic stream of bytes (OpenSSL via `cryptography`).

    Draws take the next bytes of the one keystream, in order, whatever their sizes. Draws of up to BUFFER / 4 bytes
    are served from a block of BUFFER keystream bytes generated ahead (the per-call cost of a cipher update
    dominates small draws); larger draws are encrypted straight into their own array. Either way the bytes a
    caller gets are exactly the stream's next bytes, so both members of a pair stay in step.
    """

    BUFFER = 1 << 16

    def __init__(self, key: bytes, nonce: bytes = bytes(16)):
        if len(key) != KEY_BYTES:
            raise ValueError(f"AES-128 key must be {KEY_BYTES} bytes, got {len(key)}")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
        self.bytes_drawn = 0
        self._zeros = memoryview(bytes(0))
        self._buf = _with_slack(0)  # keystream generated ahead, not yet drawn: _buf[_pos:]
        self._pos = 0

    def _keystream_into(self, out: np.ndarray) -> None:
        """Encrypt zeros into the uint8 array `out`, whose memory must have 16 bytes more (one block of slack)."""
        n = out.size
        if len(self._zeros) < n:
            self._zeros = memoryview(bytes(max(n, self.BUFFER)))
        self._enc.update_into(self._zeros[:n], _slack_view(out))

    def _take(self, n: int) -> np.ndarray:
        """The next n keystream bytes as a fresh uint8 array."""
        rem = self._buf.size - self._pos
        if n <= rem:
            out = self._buf[self._pos:self._pos + n].copy()
            self._pos += n
        elif n <= self.BUFFER // 4:
            head = self._buf[self._pos:]
            self._buf = _with_slack(self.BUFFER)
            self._keystream_into(self._buf)
            out = np.concatenate([head, self._buf[:n - rem]])
            self._pos = n - rem
        else:
            out = _with_slack(n)
            out[:rem] = self._buf[self._pos:]
            self._keystream_into(out[rem:])
            self._buf, self._pos = _with_slack(0), 0
        self.bytes_drawn += n
        return out

    def random_bytes(self, n: int) -> memoryview:
        return memoryview(self._take(n))

    def ring(self, shape, device=None) -> torch.Tensor:
        """Uniform elements of Z_2^64 (all 2^64 values equally likely)."""
        shape = torch.Size(shape)
        n = shape.numel()
        if n == 0:
            return torch.zeros(shape, dtype=ring.DTYPE, device=device)
        t = torch.from_numpy(self._take(8 * n).view(np.int64)).view(shape)
        return t.to(device) if device is not None else t

    def bits(self, shape, device=None) -> torch.Tensor:
        """Uniform 0/1 values as int64."""
        return self.ring(shape, device) & 1


def _with_slack(n: int) -> np.ndarray:
    """A uint8 array of n elements with 16 more bytes of memory behind it (update_into asks for a block of slack)."""
    return np.empty(n + 16, dtype=np.uint8)[:n]


def _slack_view(a: np.ndarray) -> memoryview:
    """Writable bytes from a's first byte to the end of the memory it was cut from (a's bytes plus the slack)."""
    base = a.base if a.base is not None else a
    start = a.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return memoryview(base)[start:]


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
