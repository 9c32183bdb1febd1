"""Arithmetic on replicated shares: products (elementwise, matmul, conv2d) and exact-range truncation.

Every bilinear product uses the same local step (CryptGPU / ABY3):
    z_i = x_i * y_i + x_i * y_{i-1} + x_{i-1} * y_i = x_i * (y_i + y_{i-1}) + x_{i-1} * y_i,
an additive 3-out-of-3 sharing of x * y, which `reshare` (ring products) or `truncate_additive` (fixed-point products)
turns back into replicated shares after re-randomising it with a fresh zero-sharing.

Overflow guard: every fixed-point product's output (mul, square, matmul, conv2d with fixed=True, mul_public_real,
matmul_public) is handed to guard.watch when party.guard is on (free; checked in batches by guard.check, see
protocols/guard.py).
"""
from __future__ import annotations

import math

import torch

from .. import gemm, ring
from . import conv_live, guard
from .sharing import Additive, Shares, reshare, zero_share

OFFSET_BITS = 62  # truncation is exact for |x| < 2^62 (signed ring value)


# ---------------------------------------------------------------------------------------------------------------------
# Truncation

def truncate_additive(z: torch.Tensor, d: int, *, party, opener: int = 0,
                      replicate: bool = True) -> Shares | Additive:
    """Replicated shares of floor(z / 2^d) + e, e in {0, 1}, from additive shares z_i of a signed z, |z| < 2^62.

    No large errors: the result is correct for every |z| < 2^62 (not only with high probability), unlike ABY3's
    Pi_trunc1 used by CryptGPU. Method: the msb-corrected masked opening of Dalskov-Escudero-Keller (PETS 2020,
    "TruncPr" with a mask whose top bit is known), with the mask held by the pair a = o+1, b = o-1 and opened to o.
    Roles: o = `opener`.
      1. r <- PRG_{a,b}; a sends z_a, b sends z_b + r to o. o learns c = z + 2^62 + r: uniform, r is unknown to o.
      2. o: m = msb(c), c' = (c mod 2^63) >> d. u <- PRG_{o,a}; o sends v = m - u to b.
         With beta = msb(r), r' = (r mod 2^63) >> d, K = 2^(63-d):
            z >> d  ~  c' - r' + K * (m xor beta) - 2^(62-d),   m xor beta = beta + (1 - 2 beta)(u + v)
         additive shares: y_o = c' - 2^(62-d);  y_a = K beta - r' + K(1-2beta) u;  y_b = K(1-2beta) v.
      3. reshare(y).
    Cost: 3 rounds; 2 ring elements (16 bytes) per element sent by each party. replicate=False: the additive shares y
    of step 3 before their resharing (2 rounds, 8 bytes per element each; reshare or open them later).
    Error: result - z/2^d in (-1, 1] ulp... precisely floor(z/2^d) or floor(z/2^d) + 1.
    Ref: Dalskov, Escudero, Keller, "Secure Evaluation of Quantized Neural Networks", PETS 2020, Sec. 3.3.
    Why 3 rounds: the carry fix needs m (known to o after round 1) times beta (known to a and b); with the mask held
    by a pair and no preprocessing, an output that is replicated after round 2 needs a 3-party OT towards both a and
    b (64 bytes per element in all, against 48 here). One round online needs r, msb(r) and r >> d shared by nobody
    in particular, i.e. a binary preprocessing circuit costing far more than the 48 bytes it saves. Instead, power-
    of-two scales are deferred into the next product's truncation (tensor/shared.py PendingBits), so an average
    pool costs no truncation at all.
    """
    rank, a, b = party.rank, (opener + 1) % 3, (opener - 1) % 3
    shape, dev = z.shape, z.device
    K = 1 << (63 - d)
    with party.label("truncate"):
        z = z + zero_share(shape, party=party)
        comm = party.comm
        if rank == opener:
            u = party.prg_next.ring(shape, dev)
            got = comm.round({}, {a: (shape, ring.DTYPE), b: (shape, ring.DTYPE)})
            c = z + got[a].to(dev) + got[b].to(dev) + (1 << OFFSET_BITS)
            m = ring.msb(c)
            comm.round({b: m - u})
            y = ring.rshift_logical(ring.low_bits(c, 63), d) - (1 << (OFFSET_BITS - d))
        else:
            r = party.prg_next.ring(shape, dev) if rank == a else party.prg_prev.ring(shape, dev)
            beta = ring.msb(r)
            sign = 1 - 2 * beta
            comm.round({opener: z if rank == a else z + r})
            if rank == a:
                u = party.prg_prev.ring(shape, dev)
                comm.round()
                y = K * beta - ring.rshift_logical(ring.low_bits(r, 63), d) + K * sign * u
            else:
                v = comm.round({}, {opener: (shape, ring.DTYPE)})[opener].to(dev)
                y = K * sign * v
        return reshare(y, party=party) if replicate else Additive(y)


def truncate(x: Shares, d: int | None = None, *, party) -> Shares:
    """Fixed-point rescale of replicated shares: x / 2^d (d defaults to frac_bits). Cost: see truncate_additive."""
    return truncate_additive(x.cur, party.encoding.frac_bits if d is None else d, party=party)


# ---------------------------------------------------------------------------------------------------------------------
# Products

def product_additive(x: Shares, y: Shares, op=torch.mul) -> torch.Tensor:
    """Local additive (3-out-of-3) shares of op(x, y) for a bilinear op: op(x_i, y_i + y_{i-1}) + op(x_{i-1}, y_i),
    or op(x_i + x_{i-1}, y_i) + op(x_i, y_{i-1}) when x is the smaller operand (the sum of shares is then taken over
    fewer elements: a batch-1 input rather than a 400k-element weight). The choice depends on shapes only, so all
    three parties make the same one. Cost: 0 (local); reshare or truncate_additive makes them replicated again."""
    if y.cur.numel() <= x.cur.numel():
        return op(x.cur, y.cur + y.prev) + op(x.prev, y.cur)
    return op(x.cur + x.prev, y.cur) + op(x.cur, y.prev)


def square_additive(x: Shares) -> torch.Tensor:
    """Local additive shares of x^2: x_i^2 + 2 x_i x_{i-1}. Cost: 0 (local)."""
    return x.cur * (x.cur + 2 * x.prev)


def _finish(z: torch.Tensor, fixed: bool, label: str, *, party, extra_bits: int = 0,
            replicate: bool = True) -> Shares | Additive:
    """Replicated shares of the product z (additive): truncated by f + extra_bits when fixed, else reshared.
    extra_bits: fractional bits the operands carry beyond f (deferred scales, e.g. an average pool's 1/4).
    replicate=False (fixed only): the truncated product's additive shares, before their resharing."""
    with party.label(label):
        y = truncate_additive(z, party.encoding.frac_bits + extra_bits, party=party, replicate=replicate) if fixed \
            else reshare(z, party=party)
    if fixed:
        _watch_product(y, label, party=party, extra_bits=extra_bits)
    return y


def _watch_product(y: Shares | Additive, op: str, *, party, extra_bits: int = 0) -> None:
    """Overflow guard (protocols/guard.py): sample a fixed-point product's output for |y| < 2^(62-2f-extra-1).
    Cost: 0 (a no-op when party.guard is None)."""
    if party.guard is not None:
        guard.watch(y, guard.product_limit(party, extra_bits), guard.describe(op, party), party=party)


def mul(x: Shares, y: Shares, *, party, fixed: bool = True) -> Shares:
    """Elementwise x * y with broadcasting. fixed=True rescales the fixed-point product.

    Cost: fixed: 3 rounds, 2 ring elements per output element per party (truncate_additive).
          ring (fixed=False): 1 round, 1 element per output element per party.
    """
    return _finish(product_additive(x, y, torch.mul), fixed, "mul", party=party)


def square(x: Shares, *, party, fixed: bool = True) -> Shares:
    """x^2: z_i = x_i^2 + 2 x_i x_{i-1}. Cost: as mul."""
    return _finish(square_additive(x), fixed, "square", party=party)


def matmul(x: Shares, y: Shares, *, party, fixed: bool = True, force_limbs: bool = False,
           extra_bits: int = 0, replicate: bool = True) -> Shares | Additive:
    """x @ y with torch.matmul semantics (batched, broadcast). Two local int64 matmuls per party.
    extra_bits: fractional bits of x and y beyond f together (truncated with the product's f: no extra cost).
    replicate=False (fixed): additive shares of the truncated product (see truncate_additive).

    Cost: as mul, per element of the (m x n) output: fixed: 3 rounds, 2 m n ring elements per party; replicate=False:
    2 rounds, m n elements per party.
    """
    return _finish(product_additive(x, y, lambda a, b: gemm.matmul(a, b, force_limbs)), fixed, "matmul", party=party,
                   extra_bits=extra_bits, replicate=replicate)


def conv2d(x: Shares, w: Shares, stride=1, padding=0, dilation=1, groups: int = 1, *, party,
           fixed: bool = True, force_limbs: bool = False, extra_bits: int = 0) -> Shares:
    """F.conv2d(x, w) on shares (bias: add it after, it is linear). Padding may be an int, (ph, pw), (left, right,
    top, bottom) as in F.pad (negative crops), 'same' or 'valid'. The local products skip what padding makes zero
    (conv_live; same result as gemm.conv2d). extra_bits: as matmul.

    Cost: as mul, per output element: fixed: 3 rounds, 2 ring elements per output element per party.
    """
    def op(a, b):
        return conv_live.conv2d(a, b, stride, padding, dilation, groups, force_limbs)
    return _finish(product_additive(x, w, op), fixed, "conv2d", party=party, extra_bits=extra_bits)


def mul_public_real(x: Shares, c, *, party, extra_bits: int = 0) -> Shares:
    """x * c for a public real c (number or float tensor, broadcast), with extra precision for small |c|.
    extra_bits: fractional bits of x beyond f (a deferred scale), truncated with the product's (no extra cost;
    the range shrinks by 2^extra_bits).

    c is encoded with f + e fractional bits, e = floor(-log2 max|c|) when max|c| < 1 (capped at 62 - 2f), the local
    product x_i * c is truncated once by f + e bits: for c = 1/n or a learning rate the encoding error of c is
    2^-(f+e+1) (relative <= 2^-(f+1)) instead of 2^-(f+1) absolute (1/1152 in plain fixed point would be 2e-4 off).
    Range: unchanged, |x| < 2^(62 - 2f) (since |c| < 2^-e, |x c| 2^(2f+e) < 2^62).
    Cost: 3 rounds, 16 bytes per element per party (one truncate_additive). Error: <= 1 ulp + |x| 2^-(f+e+1).
    """
    f = party.encoding.frac_bits
    c = torch.as_tensor(c, dtype=torch.float64).to(party.device)
    cm = float(c.abs().max()) if c.numel() else 0.0
    e = 0 if cm >= 1.0 or cm == 0.0 else min(int(math.floor(-math.log2(cm))), 62 - 2 * f)
    ce = torch.round(c * 2.0 ** (f + e)).to(torch.int64)
    with party.label("mul_public"):
        y = truncate_additive(x.cur * ce, f + e + extra_bits, party=party)
    _watch_product(y, "mul_public", party=party, extra_bits=e + extra_bits)
    return y


def matmul_public(x: Shares, c: torch.Tensor, *, party, left: bool = False, fixed: bool = True) -> Shares:
    """x @ c (or c @ x with left=True) for a public fixed-point ring tensor c. Cost: as mul_public_real per output."""
    op = (lambda s: gemm.matmul(c, s)) if left else (lambda s: gemm.matmul(s, c))
    if not fixed:
        return x.map(op)
    with party.label("matmul_public"):
        y = truncate_additive(op(x.cur), party.encoding.frac_bits, party=party)
    _watch_product(y, "matmul_public", party=party)
    return y
