"""INSECURE fast generator for benchmarks only: torch's Mersenne Twister, seeded from the agreed AES keys.

It is not a cryptographic PRG: its output can be predicted from a few hundred draws, which breaks the privacy of every
share and mask it produces. It exists to measure how much of a run's time the AES streams take. Select it only with
`Party.connect(..., insecure_fast_prg=True)`; the party then carries `insecure_prg=True` in its description.
"""
from __future__ import annotations

import torch

from . import ring


class InsecureTorchPRG:
    def __init__(self, key: bytes):
        self._gen = torch.Generator()  # insecure by design, see module docstring
        self._gen.manual_seed(int.from_bytes(key[:8], "little") & ((1 << 63) - 1))  # insecure

    def random_bytes(self, n: int) -> bytearray:
        return bytearray(torch.randint(0, 256, (n,), dtype=torch.uint8, generator=self._gen).numpy().tobytes())

    def ring(self, shape, device=None) -> torch.Tensor:
        t = torch.randint(-(2 ** 63), 2 ** 63 - 1, tuple(shape), dtype=ring.DTYPE, generator=self._gen)
        return t.to(device) if device is not None else t

    def bits(self, shape, device=None) -> torch.Tensor:
        return self.ring(shape, device) & 1
