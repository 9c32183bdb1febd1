"""Fixed-point encoding of real numbers into Z_2^64.

A real x is stored as round(x * 2^f) in two's complement. The default f = 20 (CryptGPU's choice) gives a resolution of
2^-20 ~ 9.5e-7, fine enough for SGD updates (lr * grad) that 16 bits would flush to zero, while a product before
truncation (2f = 40 fractional bits) still has 2^22 ~ 4.2e6 of headroom below the truncation protocol's bound |x| < 2^62.

Range: an encoded value must satisfy |x| < 2^(62 - 2f) so that the product of two such values stays inside the range
where truncation and sign extraction are exact; `encode` refuses anything with |x| >= 2^(62 - f) (no room at all) and
`MAX_ABS` documents the comfortable input range |x| < 2^(62 - 2f)  (= 4,194,304 for f = 20).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import ring

DEFAULT_FRAC_BITS = 20


class FixedPointRangeError(ValueError):
    """A value is NaN, infinite, or too large for the fixed-point ring."""


class FixedPointOverflowError(FixedPointRangeError):
    """A fixed-point product left the range where truncation is exact (found by the run-time overflow guard,
    protocols/guard.py). Raised on all three parties together; the message names the op or layer, the observed scale
    and the supported one."""


@dataclass(frozen=True)
class FixedPoint:
    frac_bits: int = DEFAULT_FRAC_BITS

    def __post_init__(self):
        if not 0 <= self.frac_bits <= 30:
            raise ValueError(f"frac_bits must be in [0, 30], got {self.frac_bits}")

    @property
    def scale(self) -> int:
        return 1 << self.frac_bits

    @property
    def max_abs(self) -> float:
        """Largest |x| whose product with another in-range value stays exact: 2^(62 - 2f)."""
        return float(2 ** (62 - 2 * self.frac_bits))

    @property
    def hard_limit(self) -> float:
        """|x| at or above this cannot be encoded at all: 2^(62 - f)."""
        return float(2 ** (62 - self.frac_bits))

    def encode(self, x, what: str = "input", limit: float | None = None) -> torch.Tensor:
        """Float tensor (or number) -> int64 ring elements. Raises FixedPointRangeError on NaN/inf/out of range.

        `limit`: the largest |x| accepted (exclusive); default `hard_limit` (2^(62-f), the encoding's own range). Data
        inputs are shared with limit = `max_abs` (2^(62-2f)), the range a first layer's product can take."""
        x = torch.as_tensor(x)
        if x.dtype == ring.DTYPE:
            raise TypeError(f"{what} is already int64; encode takes real numbers (float tensors)")
        if x.is_complex():
            raise TypeError(f"{what}: complex tensors are not supported")
        if x.dtype == torch.bool or not x.is_floating_point():
            x = x.to(torch.float64)
        xd = x.detach().to(torch.float64)
        if xd.numel():
            if not torch.isfinite(xd).all():
                bad = int((~torch.isfinite(xd)).sum())
                raise FixedPointRangeError(f"{what} has {bad} NaN/inf value(s); MPC needs finite inputs")
            m = float(xd.abs().max())
            if limit is not None and limit < self.hard_limit and m >= limit:
                raise FixedPointRangeError(
                    f"{what} has max |x| = {m:.4g}, outside the range |x| < {limit:.4g} (= 2^{math.log2(limit):g}) "
                    f"that fixed point with frac_bits={self.frac_bits} supports for data (a first layer's product "
                    f"must stay below 2^62 before truncation); normalise the data (e.g. to [-1, 1], or zero mean "
                    f"and unit variance) or use fewer frac_bits")
            if m >= self.hard_limit:
                raise FixedPointRangeError(
                    f"{what} has |x| = {m:.4g}, outside the fixed-point range |x| < {self.hard_limit:.4g} "
                    f"(frac_bits={self.frac_bits}); scale the data or use fewer fractional bits")
        return torch.round(xd * self.scale).to(ring.DTYPE)

    def decode(self, x: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        ring.check_ring(x, "decode input")
        return (x.to(torch.float64) / self.scale).to(dtype)
