"""Wide-range normalisation by bit decomposition: 1/sqrt(x) for x anywhere in the positive fixed-point range.

approx.py locates x among public thresholds with one comparison per threshold: cheap for a few octaves, but an
optimizer's second moments span ~60 octaves (2^-36 .. 2^26), and 60 comparisons per element would cost ~1.9 KB.
Here the exponent of x comes from its bits instead, at about a sixth of that:

  1. a2b: XOR shares of the 64-bit word X = x 2^F (convert.a2b, 7 rounds).
  2. Prefix OR towards bit 0, y = X | X>>1 | X>>2 | ... | X>>32: 6 AND rounds on the 62 live bits.
  3. h = y ^ (y >> 1) is one-hot at e = floor(log2 X) (local).
  4. With k = floor(e / 2), the 5 bits of j = 30 - k are parities of h under public masks: local on XOR shares.
  5. b2a of those 5 bits (1 round). T = 2^j = prod_b (1 + j_b (2^(2^b) - 1)) and P = T^2 = 2^(60 - 2k) are two
     product trees on integers (3 rounds of ring products, no truncation, both trees in the same rounds).
  6. m = X P 2^-(60 - M) = X / 4^k in [1, 4), at scale 2^M: one truncation (X P < 2^62 for every X < 2^62).
  7. m^(-1/2) by a degree-8 Chebyshev interpolant in u = m - 5/2 (approx._poly, 3 truncations; relative error
     2.6e-5 on [1, 4]).
  8. 1/sqrt(x) = 2^(F/2) (4^k m)^(-1/2) = 2^(F/2 - 30) T m^(-1/2): one product and truncation.

Nothing is opened; the parties learn nothing about e. Ref: the bit-decomposition normalisation of secure fixed-point
division/sqrt (Catrina and Saxena, FC 2010; Aly and Smart, ACNS 2019), here with a one-hot exponent from a prefix OR.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from .. import ring
from . import binary as B
from .approx import _Item, _add_const, _layer, _poly
from .arithmetic import mul, product_additive, truncate_additive
from .convert import a2b, b2a
from .sharing import Shares, add_public

LIVE = B.mask_range(0, 62)        # X < 2^62: bits 62 and 63 are zero
J_BITS = 5                        # j = 30 - floor(e / 2) in [0, 30]
M_SCALE = 30                      # scale of the mantissa m in [1, 4)
Y_SCALE = 30                      # scale of m^(-1/2) in (1/2, 1]
RSQRT_REL_ERROR = 5e-5            # measured 4.8e-5: the degree-8 fit on [1, 4] (2.6e-5) plus truncations


def _j_masks() -> list[int]:
    """Mask b: the bit positions i of h (e = i) where bit b of j = 30 - floor(i / 2) is set."""
    return [sum(1 << i for i in range(62) if ((30 - i // 2) >> b) & 1) for b in range(J_BITS)]


_MASKS = [B.as_i64(m) for m in _j_masks()]


def _parity(w: torch.Tensor) -> torch.Tensor:
    """Parity of the bits of each non-negative int64 word, at bit 0 (local: parity is linear over XOR)."""
    for s in (32, 16, 8, 4, 2, 1):
        w = w ^ (w >> s)
    return w & 1


def _prefix_or(x: B.BinShares, *, party) -> B.BinShares:
    """y_i = OR_{j >= i} x_j on the 62 live bits: 6 rounds of one AND each (a | b = a ^ b ^ (a & b))."""
    y = B.and_public(x, LIVE)
    for s in (1, 2, 4, 8, 16, 32):
        z = B.rshift(y, s)
        y = B.xor(B.xor(y, z), B.and_(y, z, party=party, live=LIVE))
    return y


def exponent_powers(x: Shares, *, party) -> tuple[Shares, Shares]:
    """(T, P) = (2^(30 - k), 2^(60 - 2k)) as ring integers, k = floor(floor(log2 X) / 2), for 1 <= X < 2^62.

    Cost: a2b (7 rounds) + 6 AND rounds (62 live bits: 7.75 bytes per element each) + b2a of 5 bits (1 round)
    + 3 rounds of ring products (4, 2, 2 products per element: 64 bytes). 17 rounds; about 87 + 46.5 + 53 + 64 =
    250 bytes per element per party (a2b and b2a balanced over the three parties).
    """
    with party.label("exponent"):
        bits = a2b(x, party=party)
        y = _prefix_or(bits, party=party)
        h = B.xor(y, B.rshift(y, 1))
        jb = B.BinShares(*(torch.stack([_parity(t & m) for m in _MASKS], dim=-1) for t in h))
        j = b2a(jb.map(lambda t: t.reshape(-1)), party=party).map(lambda t: t.view(*x.shape, J_BITS))
        dev = x.cur.device
        t_minus = torch.tensor([(1 << (1 << b)) - 1 for b in range(J_BITS)], dtype=ring.DTYPE, device=dev)
        p_minus = torch.tensor([(1 << (2 << b)) - 1 for b in range(J_BITS)], dtype=ring.DTYPE, device=dev)
        one = torch.ones((), dtype=ring.DTYPE, device=dev)
        # factors 1 + j_b (2^(2^b) - 1) for T and 1 + j_b (4^(2^b) - 1) for P, stacked as (2, ..., 5)
        fac = Shares(torch.stack([j.cur * t_minus, j.cur * p_minus]), torch.stack([j.prev * t_minus, j.prev * p_minus]))
        fac = add_public(fac, one, party=party)
        f = [fac.map(lambda t, b=b: t[..., b]) for b in range(J_BITS)]
        ab = mul(Shares(torch.stack([f[0].cur, f[2].cur]), torch.stack([f[0].prev, f[2].prev])),
                 Shares(torch.stack([f[1].cur, f[3].cur]), torch.stack([f[1].prev, f[3].prev])),
                 party=party, fixed=False)
        abcd = mul(ab.map(lambda t: t[0]), ab.map(lambda t: t[1]), party=party, fixed=False)
        tp = mul(abcd, f[4], party=party, fixed=False)
        return tp.map(lambda t: t[0]), tp.map(lambda t: t[1])


@lru_cache(maxsize=None)
def _rsqrt_coeffs() -> tuple:
    """Monomial coefficients in u = m - 5/2 (|u| <= 3/2) of the degree-8 Chebyshev interpolant of m^(-1/2)."""
    k = torch.arange(9, dtype=torch.float64)
    nodes = torch.cos((2 * k + 1) * math.pi / 18)          # in [-1, 1]; u = 1.5 t
    vander = nodes.unsqueeze(1) ** k.unsqueeze(0)
    c = torch.linalg.solve(vander, (2.5 + 1.5 * nodes) ** -0.5)
    return tuple(float(c[i]) / 1.5 ** i for i in range(9))


def rsqrt_wide(x: Shares, x_scale: int, out_scale: int, *, party) -> Shares:
    """1/sqrt(x) for x = X / 2^x_scale with X in [1, 2^62) (every positive value of the ring's exact range).

    x_scale must be even. The result is at scale 2^out_scale with out_scale <= 59 - x_scale/2 (its value is at most
    2^(x_scale/2)).
    Error: relative <= 5e-5 (the mantissa polynomial: 2.6e-5; measured 4.8e-5 over 2^-36..2^26), plus 1 ulp at
    out_scale.
    Cost: exponent_powers (17 rounds, ~250 bytes) + 5 layers (m; the polynomial's 3; the final product): 32 rounds,
    about 250 + 5 x 16 = 330 bytes per element per party. Nothing opened.
    """
    if x_scale % 2:
        raise ValueError(f"rsqrt_wide: x_scale must be even, got {x_scale}")
    shift = Y_SCALE + 30 - x_scale // 2 - out_scale
    if shift < 1:
        raise ValueError(f"rsqrt_wide: out_scale {out_scale} too large for x_scale {x_scale}")
    with party.label("rsqrt_wide"):
        t, p = exponent_powers(x, party=party)
        m = truncate_additive(product_additive(x, p), 60 - M_SCALE, party=party)  # X P = m 2^60 < 2^62
        u = _add_const(m, -2.5, M_SCALE, party=party)
        y = _poly(u, M_SCALE, 1.5, _rsqrt_coeffs(), party=party, out_scale=Y_SCALE, out_range=(0.5, 1.0),
                  abs_bits=26)
        (r,) = _layer([_Item(product_additive(t, y), out_scale + shift, out_scale, 2.0 ** (x_scale // 2))],
                      party=party)
        return r
