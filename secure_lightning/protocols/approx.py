"""Fixed-point approximations on replicated shares: exp, reciprocal, div, rsqrt, sqrt, log, sigmoid, tanh, softmax,
log_softmax. Fixed point in (scale 2^f, f = party.encoding.frac_bits), fixed point out. Nothing is opened:
party.audit stays empty (comparisons are compare.ltz / compare.relu / compare.max, which open nothing either).

How the round count is kept low
-------------------------------
* Layers. Apart from comparisons, the only communication is `arithmetic.truncate_additive` (3 rounds, 16 bytes per
  element per party). A *layer* below is ONE such call on everything computable at that depth: independent products
  are flattened into one tensor, and a sum of products (the top terms of a polynomial, the public coefficients
  multiplying them) is truncated once, because the additive shares of a product x*y are local
  (x_i (y_i + y_{i-1}) + x_{i-1} y_i). A public factor therefore never costs a truncation of its own: it multiplies the
  ring product as an integer before the layer's truncation. Cost of a layer: 3 rounds, 16 bytes per element it
  outputs, per party.
* Scales. Every intermediate keeps its own fixed-point scale 2^S, chosen from a public bound on its value so that
  every truncated value stays below 2^62 (truncate_additive's exact range) while carrying as many fractional bits as
  fit; a layer realigns the scales of its items by public powers of two. Scale plans depend only on public
  parameters (shapes, documented ranges, iteration counts), never on data.
* Interval bits. reciprocal/div/log/rsqrt/sqrt locate x in a public grid of intervals (octaves, or half octaves)
  with ONE batched compare.ltz on [x - tau_i for all thresholds tau_i] (8 rounds however many thresholds). Any
  piecewise-constant function of the interval (an initial guess w_i, 2^-J, J ln 2, 2^(-J/2)) is then a linear
  combination of those bits with public integer weights: local.
* Polynomials of degree <= 8 take 3 layers: u^2; (u^3, u^4); then sum_k c_k u^k, the terms u^5..u^8 being
  products u^a u^b formed inside the last layer's truncation (coefficients folded in as integers), the value
  centred on the midpoint of its known range so that the sum carries as many fractional bits as possible.

Ranges: each function documents the input range its error bound holds on. The defaults cover the whole fixed-point
range in which values can still be multiplied, |x| <= 2^(62-2f) (value_top; f = 20: 4.19e6): exp clamps its input
below (the clamped value is the correctly rounded result) and above (e^x not representable), reciprocal/div take
divisors in [max(2^-f, 2^-(62-2f)), 2^(62-2f)], log/rsqrt/sqrt inputs in [2^-f, 2^(62-2f)]; softmax, log_softmax,
sigmoid and tanh clamp their exp argument, so they are valid for every input |x| < 2^(62-f)/2. An input whose result
is not representable (exp above exp_top(f), a zero divisor, log of x <= 0, ...) cannot raise at once (that would
need an opening): it is handed to the overflow guard (guard.watch: free; with party.guard enabled a public-random
sample is checked in a later batched comparison and every party raises FixedPointOverflowError naming the function).
Internal callers that know a narrower range pass it (cheaper: fewer thresholds) and skip the clamp.
Error bounds below are for f = 20 (ulp = 2^-20 = 9.5e-7) unless stated for other f, measured against float64 torch
on the encoded inputs and asserted in tests/test_approx.py and tests/test_approx_range.py (f = 16, 20, 24); each is
about one ulp of final truncation plus the approximation error.

Cost notation: ltz(m) / relu(m) / max(...) are the costs of those compare.py protocols on m elements (8 rounds,
counted so below; 9 once m reaches convert.RELAY_FROM = 2048, e.g. ltz(41 n) from n = 50 on, when their inject is
relayed; their bytes differ per party, see compare.py); "a layer of m" = 3 rounds and 16 m bytes per party.
n = numel(x).
Ref: Goldschmidt division (Markstein/IEEE 754 literature); CrypTen/CryptGPU approximations (exp by repeated
squaring, reciprocal by Newton, log by Householder) are the baseline these replace with fewer rounds.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple, Sequence

import torch

from .. import ring
from . import compare, guard
from .arithmetic import mul, product_additive, square_additive, truncate_additive
from .local import mul_int
from .sharing import Shares, add_public, public_shares

_MARGIN = 1.0625    # headroom factor on every public bound (rounding noise, slack)
MAX_SCALE = 30      # cap on intermediate scales of values of size ~1 (their squares must stay below 2^62)
# sigmoid / tanh evaluate exp on [-16, 0] (|x| clamped at 16 changes the result by <= e^-16 = 1.1e-7): 3 squarings,
# N = 8, valid on [-2N, 0]. softmax / log_softmax clamp x - max at -32 instead, because every clamped element adds
# e^-32 = 1.3e-14 to the sum (e^-16 per element would add up to 1e-5 over 100 classes): 4 squarings, N = 16.
LOGISTIC_CLAMP, LOGISTIC_SQUARINGS = 16.0, 3
SOFTMAX_CLAMP, SOFTMAX_SQUARINGS = 32.0, 4
_EXP_SENS_BOUND = 1.0    # |t| weighting exp's power scales: beyond |t| = 1, p^(N-1) <= e^-(N-1) damps any error
_EXP_EXTRA_BITS = 1      # p(t) carries f + squarings + 1 fractional bits of accuracy (N = 2^squarings amplifies)
_EXP_MAX_BITS = 21       # ... f capped at 21 there: more would leave the coefficients of t^5..t^8 (products of two
                         # powers at ~31 bits each inside a 62-bit truncation) with no bits at all (f = 24, x > 0)


# ---------------------------------------------------------------------------------------------------------------------
# Scales, layers and public constants

def _max_scale(bound: float) -> int:
    """Largest S with bound * 2^S (times a safety margin) below 2^62, truncate_additive's exact range."""
    return math.floor(62 - math.log2(bound * _MARGIN))


def _int(value: float, scale: int, what: str = "constant") -> int:
    """round(value * 2^scale) as a Python int (a ring constant); refuses anything that does not fit 62 bits."""
    if scale < 0:
        raise ValueError(f"internal scale plan: negative scale {scale} for {what}")
    v = round(value * 2.0 ** scale)
    if abs(v) >= 1 << 62:
        raise ValueError(f"internal scale plan: {what} = {value} at scale 2^{scale} does not fit the ring")
    return v


def _ring(v: int, *, party) -> torch.Tensor:
    return torch.tensor(v, dtype=ring.DTYPE, device=party.device)


def _additive_const(v: int, *, party) -> torch.Tensor:
    """A public ring constant as additive shares (held by P0), to add to a layer's additive sum."""
    return public_shares(_ring(v, party=party), party=party).cur


class _Item(NamedTuple):
    z: torch.Tensor   # additive shares of a value held at scale 2^scale
    scale: int        # its current scale
    out: int          # the scale wanted after the layer
    bound: float      # public bound on |value|


def _layer(items: Sequence[_Item], *, party) -> list[Shares]:
    """ONE truncation (3 rounds, 16 bytes per element per party) for all items: each item comes back as replicated
    shares at its own `out` scale. The layer truncates by d = max(scale - out); an item needing less is first multiplied
    by the public 2^(out + d - scale). Raises if a public bound does not fit (a scale-plan error, never data)."""
    d = max(it.scale - it.out for it in items)
    if d < 1:
        raise ValueError(f"internal scale plan: a layer must truncate at least one bit (d = {d})")
    flat = []
    for it in items:
        if it.out + d > _max_scale(it.bound):
            raise ValueError(f"internal scale plan: value bound {it.bound:.4g} at scale 2^{it.out + d} exceeds the "
                             f"truncation range 2^62 (check the documented parameters)")
        shift = it.out + d - it.scale
        z = it.z if shift == 0 else it.z * (1 << shift)
        flat.append(z.reshape(-1))
    y = truncate_additive(torch.cat(flat), d, party=party)
    outs, k = [], 0
    for it in items:
        n = it.z.numel()
        outs.append(y.map(lambda t, k=k, n=n, s=it.z.shape: t[k:k + n].reshape(s)))
        k += n
    return outs


def _add_const(x: Shares, value: float, scale: int, *, party) -> Shares:
    return add_public(x, _ring(_int(value, scale), party=party), party=party)


def _watch(make_y, limit: float, what: str, *, party, scale_bits: int | None = None) -> None:
    """Domain check for the overflow guard: guard.watch(make_y(), ...) with |y| < limit exactly on the domain, `what`
    prefixed with the running layer (guard.describe). Nothing at all (not even make_y) when the guard is off."""
    if getattr(party, "guard", None) is None:
        return
    guard.watch(make_y(), limit, guard.describe(what, party), party=party, scale_bits=scale_bits)


# ---------------------------------------------------------------------------------------------------------------------
# Polynomials of degree <= 8 in ceil(log2 degree) layers

@lru_cache(maxsize=None)
def _chebyshev_monomial(name: str, degree: int) -> tuple:
    """Monomial coefficients (in u, |u| <= 1) of the Chebyshev interpolant of `name`(u) at degree+1 Chebyshev nodes."""
    fn = {
        "log": lambda u: torch.log(1.5 + 0.5 * u),            # log m, m = (u + 3) / 2 in [1, 2]
        "rsqrt": lambda u: (1.5 + 0.5 * u) ** -0.5,
        "sqrt": lambda u: (1.5 + 0.5 * u) ** 0.5,
        "recip1p": lambda u: 1.0 / (1.5 + 0.5 * u),           # 1 / (1 + z), z = (u + 1) / 2 in [0, 1]
    }[name]
    k = torch.arange(degree + 1, dtype=torch.float64)
    nodes = torch.cos((2 * k + 1) * math.pi / (2 * degree + 2))
    vander = nodes.unsqueeze(1) ** k.unsqueeze(0)
    return tuple(torch.linalg.solve(vander, fn(nodes)).tolist())


def _poly(u: Shares, u_scale: int, u_bound: float, coeffs: Sequence[float], *, party, out_scale: int,
          out_range: tuple, abs_bits: int, sens_bound: float | None = None) -> Shares:
    """sum_k coeffs[k] u^k (degree D <= 8) at scale out_scale, in 1 (D <= 2), 2 (D <= 4) or 3 (D <= 8) layers.

    Powers u^2 (layer 1), u^3 and u^4 (layer 2, one truncation) are replicated (L = 1, 2 or 4 is the highest);
    the last layer truncates once
        z = (c_0 - mid) + sum_{k <= L} c_k u^k + sum_a u^a * G_a,   G_a = sum_b c_{a+b} u^b
    where each top term c_k u^k (k > L) is one product u^a u^b (a + b = k, a, b <= L, the pair with the fewest
    fractional bits) grouped by a; all terms are integers at the common scale Dt, the largest that the half width
    of `out_range` allows (the midpoint `mid` is added back after the truncation, for free). Power scales are chosen
    so that their truncation errors, weighted by the coefficients they meet (|u| <= sens_bound), stay below
    2^-abs_bits. u_bound (|u| <= u_bound) sizes the intermediate products.
    Cost: one layer of numel(u) per layer (16 bytes, 3 rounds each).
    """
    c = [float(v) for v in coeffs]
    D = len(c) - 1
    if not 1 <= D <= 8:
        raise ValueError("polynomial degree must be 1..8")
    low = 1 if D <= 2 else (2 if D <= 4 else 4)
    B = [u_bound ** k for k in range(9)]
    S = [(u_bound if sens_bound is None else sens_bound) ** k for k in range(9)]
    gmax = sum(abs(c[k]) * S[k - low] for k in range(low + 1, D + 1))
    tiny = 2.0 ** -40

    def need(sens):
        return max(4, abs_bits + 1 + math.ceil(math.log2(max(sens, tiny))))

    with party.label("poly"):
        powers = {1: (u, u_scale)}
        if low >= 2:
            if low == 4:
                s3 = abs(c[3]) + (abs(c[7]) * S[4] if D >= 7 else 0.0) + (abs(c[5]) * S[2] if D >= 5 else 0.0)
                s4 = abs(c[4]) + gmax
                s2 = abs(c[2]) + (abs(c[6]) * S[4] if D >= 6 else 0.0) + s3 * S[1] + s4 * 2 * S[2]
                f2 = min(need(s2), _max_scale(B[4]) // 2, _max_scale(B[3]) - u_scale, 2 * u_scale - 1)
            else:
                f2 = min(need(abs(c[2]) + gmax), 2 * u_scale - 1)
            (u2,) = _layer([_Item(square_additive(u), 2 * u_scale, f2, B[2])], party=party)
            powers[2] = (u2, f2)
            if low == 4:
                f3, f4 = need(s3), need(s4)
                u3, u4 = _layer([_Item(product_additive(u, u2), u_scale + f2, f3, B[3]),
                                 _Item(square_additive(u2), 2 * f2, f4, B[4])], party=party)
                powers[3], powers[4] = (u3, f3), (u4, f4)
        lo, hi = out_range
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        dt = _max_scale(half)
        groups: dict = {}
        for k in range(low + 1, D + 1):
            a, b = min(((a, k - a) for a in range(k - low, low + 1) if a >= k - a),
                       key=lambda ab: powers[ab[0]][1] + powers[ab[1]][1])
            (pa, fa), (pb, fb) = powers[a], powers[b]
            term = mul_int(pb, _int(c[k], dt - fa - fb, f"coefficient c{k}"))
            groups[a] = term if a not in groups else groups[a] + term
        z = _additive_const(_int(c[0] - mid, dt, "coefficient c0"), party=party)
        for a, g in groups.items():
            z = z + product_additive(powers[a][0], g)
        for k in range(1, low + 1):
            pk, fk = powers[k]
            z = z + pk.cur * _int(c[k], dt - fk, f"coefficient c{k}")
        (out,) = _layer([_Item(z, dt, out_scale, half)], party=party)
        return _add_const(out, mid, out_scale, party=party)


# ---------------------------------------------------------------------------------------------------------------------
# Interval bits (one batched comparison) and piecewise-constant functions of them

class _Intervals(NamedTuple):
    """x located in the public intervals [tau_i, tau_{i+1}) (i = 0..M-1; interval 0 extends below tau_1 and the last
    above tau_{M-1}). lt[i-1] = [x < tau_i]; for signed grids neg[i-1] = [x < -tau_i] and sign = [x < 0], and the
    interval is that of |x|. Bits are arithmetic shares of ring integers 0/1."""
    lt: Shares | None      # (M-1, *shape), None when M == 1
    neg: Shares | None
    sign: Shares | None


def _stack_shifted(x: Shares, consts: Sequence[int], *, party) -> Shares:
    """Shares of [x + consts[r] for each r], stacked along a new leading dimension. Cost: 0."""
    c = torch.tensor(list(consts), dtype=ring.DTYPE, device=party.device).view(-1, *([1] * x.cur.dim()))
    stacked = Shares(x.cur.unsqueeze(0).expand(len(consts), *x.shape),
                     x.prev.unsqueeze(0).expand(len(consts), *x.shape))
    return add_public(stacked, c, party=party)


def _intervals(x: Shares, x_scale: int, thresholds: Sequence[float], signed: bool, *, party) -> _Intervals:
    """Locate x (or |x| if signed) in the grid: ONE compare.ltz on (M-1) [+ M] stacked elements per element.
    Cost: ltz((M - 1) n) (positive) or ltz((2M - 1) n) (signed); nothing when M == 1 and not signed."""
    enc = [_int(t, x_scale, "threshold") for t in thresholds]
    if any(e == 0 for e in enc):
        raise ValueError(f"threshold below the fixed-point resolution 2^-{x_scale}")
    consts = [-e for e in enc] + ([e for e in enc] + [0] if signed else [])
    if not consts:
        return _Intervals(None, None, None)
    bits = compare.ltz(_stack_shifted(x, consts, party=party), party=party)
    k = len(enc)
    lt = bits.map(lambda t: t[:k]) if k else None
    neg = bits.map(lambda t: t[k:2 * k]) if signed and k else None
    sign = bits.map(lambda t: t[-1]) if signed else None
    return _Intervals(lt, neg, sign)


def _weighted(bits: Shares, weights: Sequence[int], *, party) -> Shares:
    """sum_r weights[r] bits[r] (public integer weights). Cost: 0."""
    w = torch.tensor(list(weights), dtype=ring.DTYPE, device=party.device).view(-1, *([1] * (bits.cur.dim() - 1)))
    return Shares((bits.cur * w).sum(0), (bits.prev * w).sum(0))


def _piecewise(iv: _Intervals, values: Sequence[float], scale: int, shape, *, party, odd: bool = False) -> Shares:
    """Shares of round(values[i] * 2^scale) for x in interval i (odd=True: sign(x) * values[i of |x|]). Local.

    With k_i = v_i - v_{i-1} (integers, so the telescoping sum is exact): v_J = v_0 + sum_i [x >= tau_i] k_i
    = (v_0 + sum k_i) - sum_i lt_i k_i; odd: (1 - 2 sign) v_0 + sum_i ([x >= tau_i] - [x < -tau_i]) k_i.
    """
    v = [_int(t, scale, "piecewise value") for t in values]
    k = [v[i] - v[i - 1] for i in range(1, len(v))]
    zero = Shares(torch.zeros(shape, dtype=ring.DTYPE, device=party.device),
                  torch.zeros(shape, dtype=ring.DTYPE, device=party.device))
    if not odd:
        acc = zero if iv.lt is None else -_weighted(iv.lt, k, party=party)
        return add_public(acc, _ring(v[0] + sum(k), party=party), party=party)
    acc = mul_int(iv.sign, -2 * v[0])
    const = v[0]
    if iv.lt is not None:
        acc = acc - _weighted(iv.lt, k, party=party) - _weighted(iv.neg, k, party=party)
        const += sum(k)
    return add_public(acc, _ring(const, party=party), party=party)


def _octaves(lo: float, hi: float, what: str) -> tuple[int, int]:
    a, b = math.log2(lo), math.log2(hi)
    if not (a == int(a) and b == int(b) and b > a):
        raise ValueError(f"{what}: lo and hi must be powers of two with lo < hi, got lo={lo}, hi={hi}")
    return int(a), int(b)


# ---------------------------------------------------------------------------------------------------------------------
# exp

def exp_top(f: int) -> float:
    """The largest x whose e^x is representable: e^x < 2^(62-2f) / 1.0625^2 (a value that can still be multiplied
    by a value of size ~1 without leaving truncation's exact range 2^62, with the scale plans' headroom; it also
    leaves exp's last squaring f fractional bits), rounded down to 3 decimals. f = 20: 15.127 (e^x < 3.71e6);
    f = 16: 20.673; f = 24: 9.582."""
    return math.floor(((62 - 2 * f) * math.log(2) - 2 * math.log(_MARGIN)) * 1000) / 1000


def _exp(x: Shares, x_scale: int, squarings: int, upper: float, out_scale: int, *, party) -> Shares:
    n = squarings
    N = 1 << n
    if not 1 <= n <= 9:
        raise ValueError(f"exp: squarings must be in 1..9, got {n}")
    top = exp_top(x_scale)
    if upper > top:
        raise ValueError(f"exp: upper={upper} > {top}: e^upper must stay below 2^(62-2f) = 2^{62 - 2 * x_scale}")
    if upper > N:
        raise ValueError(f"exp: upper={upper} needs more squarings than {n} (upper <= 2^squarings)")
    t_bound = max(2.0, upper / N)
    t_scale = x_scale + n               # t = x / N is x's ring value read at scale 2^(x_scale + n)
    if 2 * t_scale > _max_scale(t_bound ** 2):
        raise ValueError(f"exp: squarings={n} too large for frac_bits={x_scale} (t^2 would not fit the ring)")
    p_bound = math.exp(max(upper, 0.0) / N) * (1 + 2.0 ** -10)
    bounds = [p_bound ** (1 << k) for k in range(n + 1)]             # y_k = p^(2^k)
    scales = [min(MAX_SCALE, _max_scale(bounds[k + 1]) // 2) for k in range(n)] + [out_scale]
    taylor = [1.0 / math.factorial(k) for k in range(9)]
    y = _poly(x, t_scale, t_bound, taylor, party=party, out_scale=scales[0],
              out_range=(0.125, p_bound), abs_bits=min(x_scale, _EXP_MAX_BITS) + n + _EXP_EXTRA_BITS,
              sens_bound=_EXP_SENS_BOUND)
    for k in range(n):
        with party.label("square"):
            (y,) = _layer([_Item(square_additive(y), 2 * scales[k], scales[k + 1], bounds[k + 1])], party=party)
    return y


def _clamp_exp_input(x: Shares, low: float, upper: float, *, party) -> Shares:
    """min(max(x, low), upper) with ONE compare.relu on [x - low, x - upper] (2n values; exact for every
    |x| < 2^(62-f)); watches relu(x - upper) == 0 (x above upper: e^x not representable)."""
    f = party.encoding.frac_bits
    lo_i, up_i = _int(low, f, "exp clamp"), _int(upper, f, "exp clamp")
    r, _ = compare.relu(_stack_shifted(x, [-lo_i, -up_i], party=party), party=party)
    above = r.map(lambda t: t[1])
    _watch(lambda: above, 2.0 ** -f, f"exp: input above {upper} (e^x not representable)", party=party)
    return add_public(r.map(lambda t: t[0]) - above, _ring(lo_i, party=party), party=party)


def exp(x: Shares, *, party, squarings: int = 5, upper: float | None = None, clamp: bool = True) -> Shares:
    """e^x = p(x / N)^N, N = 2^squarings, p = degree-8 Taylor polynomial of e^t, then `squarings` squarings.

    Method: (clamp=True) x is first clamped to [-2N, upper] with one compare.relu on 2n values (max(x, -2N) =
    -2N + relu(x + 2N), min(., upper) = . - relu(x - upper)): below -2N the clamped result e^-2N (+- the error
    bound) is the correctly rounded e^x to within that bound (e^-64 = 1.6e-28); above `upper` e^x is not
    representable, and relu(x - upper) is handed to the overflow guard (guard.watch: with party.guard enabled a
    sample is checked and every party raises FixedPointOverflowError); without the guard such elements saturate
    at e^upper instead of wrapping. Then t = x / N is free (x's ring value read at scale 2^(f + n)); p(t) =
    sum_{k<=8} t^k / k! in 3 layers (t^2; t^3, t^4; the sum with t^5..t^8 formed inside the last truncation); then
    n squarings, each one layer, kept at up to 30 fractional bits while the bound e^(upper 2^k / N) allows, the last
    one truncating to 2^f. (CrypTen/CryptGPU: (1 + x/2^9)^(2^9), 9 squarings, relative error ~ x^2/1024.)
    Taylor polynomials of even degree are positive and p(t) is in [e^-2, 1] on [-2, 0], so p^N decays towards 0 for
    x down to -2N; further down p grows again: clamp=False requires x in [-2N, upper] (the caller's guarantee;
    softmax, sigmoid and the cross-entropy backward clamp their own inputs).
    Range: clamp=True: every x with |x| < 2^(62-f) - 2N (e^-2N must be below half an ulp: squarings >= 3 at f <= 20,
    >= 4 at f = 24, else ValueError); correct for x <= upper, checked above. upper defaults to exp_top(f) =
    (62 - 2f) ln 2 - 2 ln 1.0625 rounded down to 3 decimals (f = 20: 15.127, e^upper = 3.71e6 < 2^22; f = 16: 20.673;
    f = 24: 9.582), capped at N; upper <= exp_top(f). clamp=False: x in [-2N, upper] (upper default as above).
    Error (f = 20, squarings = 5, default upper 15.127): |err| <= 3e-6 for x <= 0 (all x <= 0 with clamp=True: the
    last squaring keeps 20 fractional bits so that e^15.127 fits; with upper <= 12: 22 bits, 2e-6); |err| <= 2e-6 +
    1.5e-5 e^x for x in (0, 12] and 2e-6 + 3e-5 e^x for x in (12, upper] (the coefficients of t^5..t^8 carry few
    bits, which matters only for x > 0; the last squarings keep fewer fractional bits near the top).
    Other f: |err| <= 4 ulp for x <= 0 (ulp = 2^-f; the squarings keep at most 30 bits), + 3e-5 e^x for x > 0
    (f = 16; f = 24: 5e-5, t being read at 29 bits leaves its coefficients fewer). With upper=0 and squarings=3
    (sigmoid, tanh: range [-16, 0]) or 4 (softmax: range [-32, 0]): |err| <= 2e-6.
    Cost: clamp=True: relu(2n) + (3 + squarings) layers: 8 + 3 (3 + squarings) rounds, 16 (4 + squarings) bytes
    per element per party plus relu(2n) bytes (defaults: 32 rounds, 144 bytes + relu(2n) ~ 104 = ~248 bytes;
    before the clamp: 24 rounds, 144 bytes, valid on [-64, 12] only). clamp=False: 3 (3 + squarings) rounds and
    16 (4 + squarings) bytes, no comparison (squarings=3: 18 rounds, 112 bytes). Nothing opened.
    """
    f = party.encoding.frac_bits
    N = 1 << squarings
    if upper is None:
        upper = min(float(N), exp_top(f))
    with party.label("exp"):
        if clamp:
            if upper > exp_top(f) or upper > N or not 1 <= squarings <= 9:
                return _exp(x, f, squarings, upper, f, party=party)     # raises the parameter error
            if 2 * N < (f + 1) * math.log(2):
                raise ValueError(f"exp: clamp=True needs e^-2N below half an ulp: squarings={squarings} is too few "
                                 f"for frac_bits={f}")
            x = _clamp_exp_input(x, -2.0 * N, upper, party=party)
        return _exp(x, f, squarings, upper, f, party=party)


# ---------------------------------------------------------------------------------------------------------------------
# Goldschmidt division: reciprocal, div (and softmax's normalisation)

def _chain_scales(qmax: float, e_max: float, f: int, what: str) -> tuple[float, int, int]:
    """(q_bound, es, qs): the scales of Goldschmidt's error chain e (|e| <= e_max) and quotient chain q (|q| <= qmax),
    sharing the ring between q (1 + e) products; refuses a bound that leaves q fewer than f + 1 fractional bits."""
    q_bound = qmax * (1 + e_max)
    budget = _max_scale(q_bound * (1 + e_max))
    es = min(MAX_SCALE, (budget + 1) // 2)
    qs = min(40, budget - es)
    if qs < f + 1:
        raise ValueError(f"{what}: the quotient bound {qmax:.4g} leaves too few fractional bits; lower it")
    return q_bound, es, qs


def _goldschmidt(num: Shares | None, num_scale: int, den: Shares, den_scale: int, *, party, lo: float, hi: float,
                 steps: int, iterations: int, signed: bool, qmax: float, what: str) -> Shares:
    """num / den (num None: 1 / den) at scale 2^f.

    1. Intervals of |den| on the grid tau_i = lo 2^(i/steps) (one ltz); p0 = w_i = 2 / (tau_i + tau_{i+1}) (sign of
       den if signed): piecewise constant, so |e0| = |1 - den p0| <= e_max = (r - 1) / (r + 1), r = 2^(1/steps).
    2. Layer 1: e0 = 1 - den p0 and q0 = num p0 (reciprocal: q0 = p0, no product).
    3. Layers 2..K: q_{k+1} = q_k (1 + e_k) and e_{k+1} = e_k^2 together; layer K+1: q_K at scale 2^f.
       q_K = num p0 prod_k (1 + e0^(2^k)) = num p0 (1 - e0^(2^K)) / (den p0) = (num / den) (1 - e0^(2^K)):
       the same p0 enters both chains, so its rounding cancels; the relative error is e_max^(2^K) plus truncations.
    """
    f = party.encoding.frac_bits
    a, b = math.log2(lo), math.log2(hi)
    if not (a == int(a) and b == int(b) and b > a):
        raise ValueError(f"{what}: lo and hi must be powers of two with lo < hi, got lo={lo}, hi={hi}")
    if iterations < 1:
        raise ValueError(f"{what}: iterations must be >= 1")
    m = int(round((b - a) * steps))
    r = 2.0 ** (1.0 / steps)
    edges = [lo * r ** i for i in range(m + 1)]
    w = [2.0 / (edges[i] + edges[i + 1]) for i in range(m)]
    e_max = (r - 1) / (r + 1)
    q_bound, es, qs = _chain_scales(qmax, e_max, f, what)
    iv = _intervals(den, den_scale, edges[1:-1], signed, party=party)
    e_item = lambda z, s: _Item(z, s, es, 1 + e_max)  # noqa: E731
    if num is None:
        sp = qs
        p0 = _piecewise(iv, w, sp, den.shape, party=party, odd=signed)
        (t,) = _layer([e_item(product_additive(den, p0), den_scale + sp)], party=party)
        q, q_scale = p0, qs
    else:
        delta = max(den_scale - es, num_scale - qs)
        sp = min(_max_scale(1 + e_max) - es, _max_scale(q_bound) - qs) - delta
        sp = min(sp, 40)
        if sp < b + 8:
            raise ValueError(f"{what}: hi={hi} is too large for the quotient bound {qmax:.4g}")
        p0 = _piecewise(iv, w, sp, den.shape, party=party, odd=signed)
        t, q = _layer([e_item(product_additive(den, p0), den_scale + sp),
                       _Item(product_additive(num, p0), num_scale + sp, qs, q_bound)], party=party)
        q_scale = qs
    e = _add_const(-t, 1.0, es, party=party)
    one_es = _ring(_int(1.0, es), party=party)
    for k in range(iterations):
        last = k == iterations - 1
        q_item = _Item(product_additive(q, add_public(e, one_es, party=party)), q_scale + es, f if last else qs, q_bound)
        if last:
            (q,) = _layer([q_item], party=party)
        else:
            q, e = _layer([q_item, _Item(square_additive(e), 2 * es, es, e_max ** 2)], party=party)
    return q


def value_top(f: int) -> float:
    """2^(62-2f): the largest magnitude a fixed-point value may have and still be multiplied by a value of size ~1
    (the product's 2f fractional bits stay below truncation's exact range 2^62). f = 20: 2^22 = 4.19e6."""
    return 2.0 ** (62 - 2 * f)


def _recip_lo(f: int) -> float:
    """The smallest |x| whose reciprocal is representable: max(2^-f, 2^-(62-2f)) (f = 20: 2^-20, every non-zero
    fixed-point value)."""
    return 2.0 ** -min(f, 62 - 2 * f)


_GUESS_NUM, _GUESS_BITS = 11, 4       # the initial guess 11/16 for 1/m, m in [1, 2): |1 - 11 m / 16| <= 3/8
_GUESS_EMAX = 0.375


def _normalize_signed(y: Shares, lo: float, hi: float, signed: bool, what: str, *, party):
    """(P, sp, a, b, intervals): P = sign(y) 2^-J at scale 2^sp, exact (sp = max(b - 1, 0)), J = floor(log2 |y|)
    clipped to [a, b - 1], from ONE compare.ltz on the octave thresholds 2^(a+1) .. 2^(b-1) (and -tau, [y < 0] if
    signed)."""
    f = party.encoding.frac_bits
    a, b = _octaves(lo, hi, what)
    iv = _intervals(y, f, [2.0 ** j for j in range(a + 1, b)], signed, party=party)
    sp = max(b - 1, 0)
    P = _piecewise(iv, [2.0 ** -j for j in range(a, b)], sp, y.shape, party=party, odd=signed)
    return P, sp, a, b, iv


def _watch_mantissa(m: Shares, ms: int, what: str, lo: float, hi: float, *, party):
    """m = |y| 2^-J is in [1, 2] exactly when lo <= |y| <= hi (below lo: J = a and m < 1, 0 for y = 0; above hi:
    J = b - 1 and m > 2; the product y P never wraps, so m is exact there too)."""
    _watch(lambda: _add_const(m, -1.5, ms, party=party), 0.5 + 2.0 ** -(ms - 2),
           f"{what}: |divisor| outside [{lo:.4g}, {hi:.4g}] (zero, or its reciprocal is not representable)",
           party=party, scale_bits=ms)


def _recip_chain(q: Shares | None, qs: int, e: Shares, es: int, iterations: int, out_scale: int, q_bound: float,
                 *, party) -> Shares:
    """Goldschmidt: q <- q (1 + e), e <- e^2 (one layer each iteration), from q (None: the public guess 11/16, so
    q_1 = 11/16 (1 + e0) is local and is truncated in the layer of e_1). Returns q_K at out_scale."""
    one = _ring(_int(1.0, es), party=party)
    e_sq = lambda: _Item(square_additive(e), 2 * es, es, _GUESS_EMAX ** 2)  # noqa: E731
    for k in range(iterations):
        last = k == iterations - 1
        if q is None:                          # q_0 public: q_1 = 11 (1 + e_0) at scale es + 4, exact
            z = mul_int(add_public(e, one, party=party), _GUESS_NUM).cur
            q_item = _Item(z, es + _GUESS_BITS, out_scale if last else qs, q_bound)
        else:
            q_item = _Item(product_additive(q, add_public(e, one, party=party)), qs + es, out_scale if last else qs,
                           q_bound)
        if last:
            (q,) = _layer([q_item], party=party)
        else:
            q, e = _layer([q_item, e_sq()], party=party)
    return q


def reciprocal(x: Shares, *, party, iterations: int = 4, lo: float | None = None, hi: float | None = None,
               positive: bool = False) -> Shares:
    """1 / x by normalisation x = sign 2^J m (m in [1, 2)), Goldschmidt's iteration on 1/m, and the exact 2^-J.

    Method: one batched compare.ltz locates |x| in the octaves [2^j, 2^(j+1)) of [lo, hi]; P = sign(x) 2^-J is a
    local combination of those bits, exact (a power of two at scale 2^(log2 hi - 1)). Layer 1: m = x P in [1, 2).
    e0 = 1 - 11 m / 16 (|e0| <= 3/8) and q1 = 11/16 (1 + e0) are local (11/16 is a dyadic guess); then
    q <- q (1 + e), e <- e^2 (one layer each) at 30 fractional bits, q_K = (1/m)(1 - e0^(2^K)); last layer: q_K P
    at scale 2^f. The value 1/m never needs more than 30 bits whatever |x| is, so the range covers every x whose
    reciprocal is representable.
    Range: lo <= |x| <= hi, powers of two; defaults lo = max(2^-f, 2^-(62-2f)), hi = 2^(62-2f) (f = 20:
    [2^-20, 2^22], every non-zero |x| <= 4.19e6); x > 0 if positive=True (no sign comparisons). Outside [lo, hi]
    (0 included) m leaves [1, 2]: m - 3/2 goes to the overflow guard (guard.watch; with party.guard enabled every
    party raises FixedPointOverflowError).
    Error (f = 20, defaults): |err| <= 2e-6 + 7e-7 |1/x|: the last layer multiplies 1/m, kept at fr = 22 fractional
    bits (relative 2^(1-fr) = 4.8e-7), by sign 2^-J at sr = min(log2 hi - 1, f - 1) bits (rounded, <= 1 ulp, only
    where 2^-J < 2^(1-f)), plus its own truncation (1 ulp) and 0.375^16 = 1.5e-7 from the iteration. Other f:
    |err| <= 2 ulp + (2^(1-fr) + 2e-7) |1/x|, fr = min(30, floor(62 - log2(1/lo)) - 1 - sr) (f = 16: 17, f = 24: 30).
    Cost: ltz(R n), R = K (positive) or 2K + 1 (signed), K = log2(hi/lo) - 1 thresholds (defaults, f = 20: 41 or
    83; before: [2^-10, 2^16], 25 or 51), then iterations + 2 layers of n, 2n, 2n, 2n, n, n: 8 + 3 (iterations + 2)
    rounds (defaults: 26; before: 23) and 16 (2 iterations + 1) = 144 bytes per element per party (before: 128) plus
    the ltz bytes. Nothing opened.
    """
    f = party.encoding.frac_bits
    lo = _recip_lo(f) if lo is None else lo
    hi = value_top(f) if hi is None else hi
    if iterations < 2:
        raise ValueError("reciprocal: iterations must be >= 2")
    with party.label("reciprocal"):
        _octaves(lo, hi, "reciprocal")
        a, b = _octaves(lo, hi, "reciprocal")
        # the final factor sign 2^-J at scale 2^sr, sr <= f - 1: rounded there (|error| <= 2^-f q, q <= 1) when
        # 2^-J < 2^-(f-1), i.e. for outputs below 2 ulp; fewer bits in it leave more to 1/m (fr)
        sr = min(max(b - 1, 0), f - 1)
        fr = min(MAX_SCALE, _max_scale(1.0 / lo * (1 + 2.0 ** -10)) - sr)
        if fr < f:
            raise ValueError(f"reciprocal: the range [{lo}, {hi}] is too wide for frac_bits={f}")
        P, sp, a, b, iv = _normalize_signed(x, lo, hi, not positive, "reciprocal", party=party)
        R = P if sr == sp else _piecewise(iv, [2.0 ** -j for j in range(a, b)], sr, x.shape, party=party,
                                          odd=not positive)
        qs = es = MAX_SCALE                  # 1/m <= 1 and e <= 3/8: 30 fractional bits each
        ms = es - _GUESS_BITS                # 11 m read at scale es
        (m,) = _layer([_Item(product_additive(x, P), f + sp, ms, 2.0)], party=party)
        _watch_mantissa(m, ms, "reciprocal", lo, hi, party=party)
        e = _add_const(-mul_int(m, _GUESS_NUM), 1.0, es, party=party)
        q = _recip_chain(None, qs, e, es, iterations, fr, 1.0 + 2.0 ** -10, party=party)
        (out,) = _layer([_Item(product_additive(q, R), fr + sr, f, 1.0 / lo * (1 + 2.0 ** -10))], party=party)
        return out


def div(x: Shares, y: Shares, *, party, iterations: int = 4, lo: float | None = None, hi: float | None = None,
        positive: bool = False, max_quotient: float = 2.0 ** 16) -> Shares:
    """x / y (broadcasting): normalise y = sign 2^J m, then (x sign 2^-J) / m by Goldschmidt's fused division.

    Method: one ltz locates |y| in the octaves of [lo, hi] (as reciprocal); the guess p0 = 11/16 sign(y) 2^-J is
    local and exact (a dyadic at scale 2^(log2 hi + 3)), |e0| = |1 - y p0| <= 3/8. Layer 1: e0 = 1 - y p0 and
    q0 = x p0; then `iterations` layers of q <- q (1 + e), e <- e^2, the last one truncating q to 2^f:
    q_K = (x/y)(1 - e0^(2^K)).
    Range: lo <= |y| <= hi (powers of two; defaults as reciprocal: f = 20: [2^-20, 2^22]; y > 0 if positive=True)
    and |x / y| <= max_quotient (default 2^16, the most that f = 20 and hi = 2^22 allow: f + log2(hi) + 3 bits of
    the guess must fit beside it, ValueError otherwise). |y| outside [lo, hi] (0 included: y p0 is then outside
    [11/16, 11/8]; y p0 does not wrap for |y| < 2^(58-f)) and |q0| > 1.375 max_quotient go to the overflow guard
    (guard.watch). q0 = x p0 is exact while |x/y| < 2^(61-f-log2(hi)-3) (f = 20: about 2^17); beyond that x p0
    wraps and the check of the quotient bound is only probabilistic.
    Error (f = 20, defaults): |err| <= 2e-6 + 1e-6 |x/y|. Other f: 2 ulp + 2^(3-min(qs, es)) |x/y|, from the
    chain scales qs, es below.
    Cost: ltz(R numel(y)) as reciprocal (defaults, f = 20: R = 83; before: 51), then iterations + 1 layers of 2n,
    2n, 2n, 2n, n: 8 + 3 (iterations + 1) rounds (defaults: 23, as before) and 144 bytes per element per party (as
    before) plus the ltz bytes. Nothing opened.
    """
    f = party.encoding.frac_bits
    lo = _recip_lo(f) if lo is None else lo
    hi = value_top(f) if hi is None else hi
    with party.label("div"):
        a, b = _octaves(lo, hi, "div")
        sp = max(b - 1, 0)
        q_bound, es, qs = _chain_scales(max_quotient, _GUESS_EMAX, f, "div")
        if f + sp + _GUESS_BITS > _max_scale(q_bound):
            raise ValueError(f"div: the quotient bound {max_quotient:.4g} is too large for hi={hi} (x 2^-J would "
                             f"not fit the ring); lower it or hi")
        P, sp, a, b, _ = _normalize_signed(y, lo, hi, not positive, "div", party=party)
        p0 = mul_int(P, _GUESS_NUM)          # 11/16 sign 2^-J at scale 2^(sp + 4): exact
        t, q = _layer([_Item(product_additive(y, p0), f + sp + _GUESS_BITS, es, 1.0 + _GUESS_EMAX),
                       _Item(product_additive(x, p0), f + sp + _GUESS_BITS, qs, q_bound)], party=party)
        # t = 11 m / 16 is in [11/16, 11/8] exactly when lo <= |y| <= hi (m = |y| 2^-J; y P never wraps)
        _watch(lambda: _add_const(t, -33.0 / 32, es, party=party), 11.0 / 32 + 2.0 ** -(es - 2),
               f"div: |divisor| outside [{lo:.4g}, {hi:.4g}] (zero, or its reciprocal is not representable)",
               party=party, scale_bits=es)
        _watch(lambda: q, q_bound, f"div: |x / y| above max_quotient={max_quotient:.4g}", party=party,
               scale_bits=qs)
        e = _add_const(-t, 1.0, es, party=party)
        return _recip_chain(q, qs, e, es, iterations, f, q_bound, party=party)


# ---------------------------------------------------------------------------------------------------------------------
# Normalisation x = 2^J m, m in [1, 2): log, rsqrt, sqrt

def _normalize(x: Shares, x_scale: int, a: int, b: int, m_scale: int, *, party, zero_below: bool = False,
               j_coef: float | None = None):
    """(m, m_scale, intervals, js, jc) with x = 2^J m, m in [1, 2), J = floor(log2 x) clipped to [a, b-1].

    One ltz on the thresholds 2^(a+1) .. 2^(b-1) (and 2^a if zero_below: interval 0 is then x < 2^a); P = 2^-J is
    a local combination of the bits (exact: an integer at scale 2^(b-1)); m = x P (one layer). js[i] is J on interval
    i (None below 2^a). With j_coef, jc = j_coef * J at scale 2^f comes out of the same layer (J j_coef is formed at
    the layer's pre-truncation scale, so j_coef is applied with ~30 more bits than at 2^f). With no threshold
    (b = a + 1) m = x 2^-a is x's ring value read at scale x_scale + a and J = a is public: no layer at all.
    Cost: ltz((#thresholds) n) + one layer of n (2n with j_coef)."""
    f = party.encoding.frac_bits
    js = ([None] if zero_below else []) + list(range(a, b))
    thresholds = [2.0 ** j for j in range(a if zero_below else a + 1, b)]
    iv = _intervals(x, x_scale, thresholds, False, party=party)
    if len(js) == 1:
        if x_scale + a < 8:
            raise ValueError(f"range [2^{a}, 2^{b}] is below the fixed-point resolution")
        jc = None if j_coef is None else public_shares(
            torch.full(x.shape, _int(a * j_coef, f), dtype=ring.DTYPE, device=party.device), party=party)
        return x, x_scale + a, iv, js, jc
    sp = max(b - 1, 0)
    p = _piecewise(iv, [2.0 ** -(j if j is not None else a) for j in js], sp, x.shape, party=party)
    items = [_Item(product_additive(x, p), x_scale + sp, m_scale, 2.0)]
    if j_coef is not None:
        jmax = max(abs(j) for j in js if j is not None) * abs(j_coef) + 1.0
        d = max(x_scale + sp - m_scale, min(_max_scale(2.0) - m_scale, _max_scale(jmax) - f))
        sj = f + d                       # the layer truncates by d: J j_coef enters at scale 2^(f + d)
        j = _piecewise(iv, [float(j if j is not None else a) for j in js], 0, x.shape, party=party)
        items.append(_Item(j.cur * _int(j_coef, sj, "J coefficient"), sj, f, jmax))
    outs = _layer(items, party=party)
    return outs[0], m_scale, iv, js, (outs[1] if j_coef is not None else None)


def _mantissa_poly(m: Shares, m_scale: int, name: str, *, party, out_scale: int, out_range: tuple,
                   abs_bits: int) -> Shares:
    """name(m) for m in [1, 2) by the degree-8 Chebyshev interpolant in u = 2m - 3 (3 layers). The powers' accuracy
    is capped at 2^-24: with f = 24 they would be held at ~30 bits, leaving the coefficients of u^5..u^8 (formed
    inside one 62-bit truncation) ~3 bits (50 ulp errors); the interpolants' own errors are 5e-9..6e-8 anyway."""
    u = _add_const(mul_int(m, 2), -3.0, m_scale, party=party)
    return _poly(u, m_scale, 1.0, _chebyshev_monomial(name, 8), party=party, out_scale=out_scale,
                 out_range=out_range, abs_bits=min(abs_bits, 24))


def _log(x: Shares, x_scale: int, lo: float, hi: float, *, party) -> Shares:
    f = party.encoding.frac_bits
    a, b = _octaves(lo, hi, "log")
    m, m_scale, iv, js, j_ln2 = _normalize(x, x_scale, a, b, min(MAX_SCALE, f + 4), party=party,
                                           j_coef=math.log(2))
    poly = _mantissa_poly(m, m_scale, "log", party=party, out_scale=f, out_range=(0.0, math.log(2)), abs_bits=f + 3)
    return poly + j_ln2


def _watch_domain(x: Shares, lo: float, hi: float, what: str, *, party) -> None:
    """Hand 2x - (lo + hi) to the overflow guard with limit hi - lo + ulp: |.| < limit exactly when lo <= x <= hi
    (x at scale 2^f; no comparison here, none at all without party.guard)."""
    f = party.encoding.frac_bits
    c = _int(lo, f, "domain") + _int(hi, f, "domain")
    _watch(lambda: add_public(mul_int(x, 2), _ring(-c, party=party), party=party), hi - lo + 2.0 ** -f,
           f"{what}: input outside [{lo:.4g}, {hi:.4g}]", party=party)


def log(x: Shares, *, party, lo: float | None = None, hi: float | None = None) -> Shares:
    """Natural log by normalisation: x = 2^J m, log x = J ln 2 + log m, log m a degree-8 polynomial on [1, 2).

    Method: one batched ltz gives the octave J of x; layer 1: m = x 2^-J (2^-J is local from the bits) and J ln 2
    (formed at 2^(f+36) before that layer's truncation, so ln 2 is not rounded to f bits); u = 2m - 3; log m by the
    degree-8 Chebyshev interpolant in u (approximation error 4e-8) in 3 layers. (CrypTen: Householder iterations
    on exp, each needing an exp.)
    Range: lo <= x <= hi, powers of two; lo defaults to 2^-f (every positive fixed-point value), hi to
    2^(62-2f) (f = 20: 2^22 = 4.19e6; before: 2^16). x outside [lo, hi] (x <= 0 included) goes to the overflow guard
    (guard.watch on 2x - (lo + hi): with party.guard enabled every party raises FixedPointOverflowError).
    Error (defaults): |err| <= 2.5e-6 on the whole range (two truncations to 2^f, plus 4e-8); other f: 3 ulp.
    Cost: ltz(K n), K = log2(hi/lo) - 1 (defaults, f = 20: 41; before: 35), + 4 layers of 2n, n, 2n, n: 8 + 12 =
    20 rounds; 96 bytes per element per party plus the ltz bytes. Nothing opened.
    """
    f = party.encoding.frac_bits
    lo = 2.0 ** -f if lo is None else lo
    hi = value_top(f) if hi is None else hi
    _octaves(lo, hi, "log")
    with party.label("log"):
        _watch_domain(x, lo, hi, "log", party=party)
        return _log(x, f, lo, hi, party=party)


def _root(x: Shares, lo: float, hi: float, power: float, *, party) -> Shares:
    """x^power for power = -1/2 (rsqrt) or +1/2 (sqrt, with 0 below lo): R_J * poly(m), R_J = 2^(power J)."""
    f = party.encoding.frac_bits
    name = "rsqrt" if power < 0 else "sqrt"
    a, b = _octaves(lo, hi, name)
    zero_below = power > 0
    # m and r = m^(+-1/2) carry max(f, 20) + 3 bits: the output is r times up to 2^(31-f) (sqrt, f = 16: 2^15), so
    # r's precision is relative, and f + 3 bits would leave 2^-19 of it at f = 16
    m_scale = min(MAX_SCALE, max(f, 20) + 4)
    m, m_scale, iv, js, _ = _normalize(x, f, a, b, m_scale, party=party, zero_below=zero_below)
    r_values = [0.0 if j is None else 2.0 ** (power * j) for j in js]
    r_max = max(r_values)
    r_poly_max = 2.0 ** (0.5 * max(power, 0.0))        # m^(+-1/2) on [1, 2): <= 1 (rsqrt) or < sqrt 2 (sqrt)
    budget = _max_scale(r_max * r_poly_max)
    sr = f + 2
    fr = min(MAX_SCALE, budget - sr)
    if fr < f - 2:   # r <= sqrt 2 carries fr bits: relative 2^-fr of the output (f = 24, [2^-24, 2^14]: fr = 23)
        raise ValueError(f"{name}: the range [{lo}, {hi}] is too wide for frac_bits={f}")
    r_range = (2.0 ** -0.5, 1.0) if power < 0 else (1.0, 2.0 ** 0.5)
    r = _mantissa_poly(m, m_scale, name, party=party, out_scale=fr, out_range=r_range, abs_bits=max(f, 20) + 3)
    rj = _piecewise(iv, r_values, sr, x.shape, party=party)
    (out,) = _layer([_Item(product_additive(rj, r), sr + fr, f, r_max * r_poly_max)], party=party)
    return out


def rsqrt(x: Shares, *, party, lo: float | None = None, hi: float | None = None) -> Shares:
    """1 / sqrt(x) = 2^(-J/2) m^(-1/2) with x = 2^J m, m in [1, 2).

    Method: one ltz gives J; m = x 2^-J (layer 1); m^(-1/2) by its degree-8 Chebyshev interpolant in u = 2m - 3
    (3 layers, error 6e-8); times the piecewise constant 2^(-J/2), local from the bits (layer 5). (CrypTen:
    exp-based initial guess + Newton iterations.)
    Range: lo <= x <= hi, powers of two; defaults lo = 2^-f (every positive fixed-point value), hi = 2^(62-2f)
    (f = 20: [2^-20, 2^22]; before: [2^-16, 2^16]; batch norm passes its own range). x outside [lo, hi] (x <= 0
    included) goes to the overflow guard (guard.watch on 2x - (lo + hi)).
    Error (defaults, f = 20): |err| <= 2e-6 + 1e-7 |out|; other f: 2 ulp + 1e-7 |out| (f = 24: 2 ulp + 3e-7 |out|:
    m^(-1/2) keeps fr = 23 bits).
    Cost: ltz(K n), K = log2(hi/lo) - 1 (defaults, f = 20: 41; before: 31), + 5 layers of n, n, 2n, n, n: 8 + 15 =
    23 rounds; 96 bytes per element per party plus the ltz bytes. Nothing opened.
    """
    f = party.encoding.frac_bits
    lo = 2.0 ** -f if lo is None else lo
    hi = value_top(f) if hi is None else hi
    _octaves(lo, hi, "rsqrt")
    with party.label("rsqrt"):
        _watch_domain(x, lo, hi, "rsqrt", party=party)
        return _root(x, lo, hi, -0.5, party=party)


def sqrt(x: Shares, *, party, lo: float | None = None, hi: float | None = None) -> Shares:
    """sqrt(x) = 2^(J/2) m^(1/2) with x = 2^J m; exactly 0 for x < lo (so sqrt(0) = 0).

    Method: as rsqrt (m^(1/2) by a degree-8 polynomial, error 5e-9, times 2^(J/2)), with one more threshold at lo
    itself: below it the piecewise factor is 0.
    Range: 0 <= x <= hi; lo is a power of two defaulting to 2^-f (every positive fixed-point value is >= lo), hi
    defaults to 2^(62-2f) (f = 20: 2^22; before: 2^16). x outside [0, hi] (negative included) goes to the overflow
    guard (guard.watch on 2x - hi). Error (defaults, f = 20): |err| <= 2e-6 + 1e-7 |out|; other f: 2 ulp + 1e-7 |out|.
    Cost: ltz(K n), K = log2(hi/lo) (defaults, f = 20: 42; before: 36), + 5 layers: 23 rounds; 96 bytes per element
    per party plus the ltz bytes. Nothing opened.
    """
    f = party.encoding.frac_bits
    lo = 2.0 ** -f if lo is None else lo
    hi = value_top(f) if hi is None else hi
    _octaves(lo, hi, "sqrt")
    with party.label("sqrt"):
        _watch_domain(x, 0.0, hi, "sqrt", party=party)
        return _root(x, lo, hi, 0.5, party=party)


# ---------------------------------------------------------------------------------------------------------------------
# sigmoid, tanh

def _half_logistic(x: Shares, *, party) -> tuple[Shares, Shares]:
    """(h, s): h = 1 / (1 + e^-a) at scale 2^f with a = min(|x|, 16), and s = [x < 0].

    a and s come from ONE compare.relu on [x, -x, x - 16, -x - 16] (a = relu(x) + relu(-x) - relu(x-16) - relu(-x-16),
    s = [-x > 0]); z = e^-a in [e^-16, 1] (exp with 3 squarings, valid on [-24, 0]); h = 1/(1 + z) by the degree-8
    Chebyshev interpolant in u = 2z - 1 (3 layers)."""
    f = party.encoding.frac_bits
    c = _int(LOGISTIC_CLAMP, f)
    both = Shares(torch.stack([x.cur, -x.cur] * 2), torch.stack([x.prev, -x.prev] * 2))   # x, -x, x, -x
    stacked = add_public(both, torch.tensor([0, 0, -c, -c], dtype=ring.DTYPE, device=party.device)
                         .view(-1, *([1] * x.cur.dim())), party=party)
    y, bits = compare.relu(stacked, party=party)
    a = Shares(y.cur[0] + y.cur[1] - y.cur[2] - y.cur[3], y.prev[0] + y.prev[1] - y.prev[2] - y.prev[3])
    s = bits.map(lambda t: t[1])
    z_scale = f + 4
    z = _exp(-a, f, LOGISTIC_SQUARINGS, 0.0, z_scale, party=party)
    u = _add_const(mul_int(z, 2), -1.0, z_scale, party=party)
    h = _poly(u, z_scale, 1.0, _chebyshev_monomial("recip1p", 8), party=party, out_scale=f, out_range=(0.5, 1.0),
              abs_bits=min(f, 21) + 3)   # capped: see _mantissa_poly (f = 24 would leave u^5..u^8 no coefficient bits)
    return h, s


def sigmoid(x: Shares, *, party) -> Shares:
    """1 / (1 + e^-x) with sign symmetry: sigma(x) = h for x >= 0, 1 - h for x < 0, h = 1 / (1 + e^-|x|).

    Method: one compare.relu on 4 n stacked values gives a = min(|x|, 16) and s = [x < 0]; z = e^-a
    (exp: Taylor-8 base, 3 squarings: 6 layers), h = 1/(1+z) with z in (0, 1] by a degree-8 polynomial (3 layers,
    error 3e-7), and sigma = h + s (1 - 2h) (ring product with the bit: 1 round, no truncation). Clamping |x| at 16
    changes sigma by at most e^-16 = 1.1e-7 and keeps exp inside its range: valid for every input.
    Range: all x (|x| < 2^(62-f)/2). Error: |err| <= 2e-6 (f = 20, 24; f = 16: 2 ulp).
    Cost: relu(4n) + 9 layers + 1 round: 8 + 27 + 1 = 36 rounds; 16 * 11 + 8 = 184 bytes per element per party
    plus relu(4n) bytes. Nothing opened.
    """
    with party.label("sigmoid"):
        h, s = _half_logistic(x, party=party)
        one = _ring(_int(1.0, party.encoding.frac_bits), party=party)
        return h + mul(s, add_public(mul_int(h, -2), one, party=party), party=party, fixed=False)


def tanh(x: Shares, *, party) -> Shares:
    """tanh(x) = 2 sigmoid(2x) - 1 = sign(x) (2h - 1), h = 1/(1 + e^-min(2|x|, 16)).

    Method, range and cost as sigmoid on 2x (|x| clamped at 8: tanh(8) = 1 - 2.3e-7). Error: |err| <= 4e-6
    (twice h's error).
    Cost: 36 rounds; 184 bytes per element per party plus relu(4n) bytes.
    """
    with party.label("tanh"):
        h, s = _half_logistic(mul_int(x, 2), party=party)
        w = add_public(mul_int(h, 2), _ring(-_int(1.0, party.encoding.frac_bits), party=party), party=party)
        return w - mul_int(mul(s, w, party=party, fixed=False), 2)


# ---------------------------------------------------------------------------------------------------------------------
# softmax, log_softmax

def _shifted_exp(x: Shares, dim: int, clamp: bool, *, party, keep: torch.Tensor | None = None):
    """(d, e, s): d = x - max(x, dim), e = e^max(d, -32) at scale 2^(f+4), s = sum(e, dim) (keepdim).

    keep: a public boolean mask broadcastable to x (False: the entry takes no part). Masked entries are set to
    -2 value_top(f), below every in-range value, before the max (local: a product with the 0/1 mask and a public
    addition), so the max is over the kept entries; their exponentials are multiplied by
    the mask (exact zeros). A row with no kept entry gets s = 1 (public), so its outputs are 0 (torch's convention)
    and the division stays in range. Requires clamp=True (a masked d is far below exp's range before the clamp)."""
    f = party.encoding.frac_bits
    if keep is not None:
        if not clamp:
            raise ValueError("softmax: a keep mask needs clamp=True")
        keep_int = keep.to(device=x.cur.device, dtype=torch.int64).expand(x.shape)
        x = mul_int(x, keep_int)
        x = add_public(x, (keep_int - 1) * _int(2 * value_top(f), f, "masked fill"), party=party)
    mx = compare.max(x, dim, keepdim=True, party=party)[0]
    d = x - mx
    dc = d
    if clamp:  # max(d, -32) = d + relu(-d - 32)
        c = _int(SOFTMAX_CLAMP, f)
        dc = d + compare.relu(add_public(-d, _ring(-c, party=party), party=party), party=party)[0]
    e = _exp(dc, f, SOFTMAX_SQUARINGS, 0.0, f + 4, party=party)
    if keep is not None:
        e = mul_int(e, keep_int)
    s = e.map(lambda t: t.sum(dim, keepdim=True))
    if keep is not None:
        empty = (~keep_int.bool().any(dim, keepdim=True)).to(torch.int64)  # public: rows with no kept entry
        if bool(empty.any()):
            s = add_public(s, empty * (1 << (f + 4)), party=party)
    return d, e, s


def _octave_hi(n: int) -> float:
    return 2.0 ** max(1, math.ceil(math.log2(n)))


def softmax(x: Shares, dim: int, *, party, clamp: bool = True, keep: torch.Tensor | None = None) -> Shares:
    """exp(x - max) / sum exp(x - max) along dim; with a public boolean `keep` mask (broadcastable to x), over the
    kept entries only (masked outputs are exactly 0, a row with none kept is all 0): the mask costs nothing.

    Method: compare.max (values); d = x - max <= 0, clamped to [-32, 0] with one compare.relu (clamp=True; an
    element 32 below the max gets e^-32 = 1.3e-14 instead of less); e = exp(d) (4 squarings: 7 layers, held at
    scale 2^(f+4)); s = sum e in [1, n]; then the fused division e / s (Goldschmidt, the numerator riding along)
    from a half-octave guess on [1, 2^ceil(log2 n)]: one ltz on T = 2 ceil(log2 n) - 1 thresholds per row,
    |e0| <= 0.172, 3 iterations (e0^8 <= 7.5e-7). For n <= 2: an octave guess, no comparison, 4 iterations.
    Range: every input (clamp=True); clamp=False requires max - min <= 32 along dim (exp's range).
    Error: |err| <= 3e-6 per output.
    Cost (R rows of n, N = R n): max(x, dim) + relu(N) + 7 layers of 8N in all + ltz(T R) + 4 layers of 4N + 3R in
    all: 8 ceil(log2 n) + 8 + 21 + 8 + 12 rounds (n = 10: 81) and 16 (12 N + 3 R) bytes per party plus the compare
    bytes (n <= 2: no ltz, 5 layers of 5N + 4R: 8 + 8 + 21 + 15 rounds). Nothing opened.
    """
    with party.label("softmax"):
        n = x.shape[dim]
        d, e, s = _shifted_exp(x, dim, clamp, party=party, keep=keep)
        steps, iters = (2, 3) if n > 2 else (1, 4)
        f = party.encoding.frac_bits
        return _goldschmidt(e, f + 4, s, f + 4, party=party, lo=1.0, hi=_octave_hi(n), steps=steps,
                            iterations=iters, signed=False, qmax=1.0, what="softmax")


def log_softmax(x: Shares, dim: int, *, party, clamp: bool = True) -> Shares:
    """x - max - log(sum exp(x - max)) along dim.

    Method: d, e, s as softmax; log(s) for s in [1, 2^ceil(log2 n)] by log's normalisation (one ltz on
    T = ceil(log2 n) - 1 thresholds per row and one layer, both skipped for n <= 2) and degree-8 polynomial; d is
    exact, so only log(s) carries error.
    Range: every input (clamp=True); clamp=False requires max - min <= 32 along dim.
    Error: |err| <= 2.5e-6.
    Cost (R rows of n, N = R n): max(x, dim) + relu(N) + 7 layers (8N) + [ltz(T R) + a layer of 2R] + 3 layers
    (4R): 8 ceil(log2 n) + 8 + 21 + 8 + 3 + 9 rounds (n = 10: 81), 16 (8N + 6R) bytes per party plus the compare
    bytes (n <= 2: 8 + 8 + 21 + 9 rounds, 16 (8N + 4R)). Nothing opened.
    """
    with party.label("log_softmax"):
        n = x.shape[dim]
        d, e, s = _shifted_exp(x, dim, clamp, party=party)
        return d - _log(s, party.encoding.frac_bits + 4, 1.0, _octave_hi(n), party=party)
