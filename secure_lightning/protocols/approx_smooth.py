"""Smooth activations of transformers on replicated shares: GELU (erf and tanh forms) and SiLU, with their
derivatives, as clamped piecewise polynomials of degree 12. Fixed point in and out (scale 2^f); nothing is opened.

Method (one comparison, then four truncation layers; approx.py's layer and scale conventions)
-------------------------------------------------------------------------------------------
  1. ONE compare.relu on the K stacked values x - t_i (public thresholds t_1 < ... < t_K): bits b_i = [x > t_i] and
     the hinges relu(x - t_i). The clamp xc = t_1 + relu(x - t_1) - relu(x - t_K) lies in [t_1, t_K] for EVERY x.
  2. The interval J of x (below t_1, the K - 1 pieces, above t_K) is known through the bits, so any piecewise-constant
     value is local: v_0 + sum_i b_i (v_i - v_{i-1}) with public integer weights. So are the midpoint m_J and the
     coefficients c_k(J) of piece J's polynomial, and u = (xc - m_J) / 2^e (e fixed per function, so |u| <= 1 on every
     piece: reading the ring value at scale f + e divides by 2^e for free). u is exact, and u = 0 outside [t_1, t_K].
  3. p_J(u) = sum_{k<=12} c_k(J) u^k in four layers, the secret coefficients entering as products:
        L1  u^2      L2  u^3, u^4      L3  u^8, U = sum_{j<=4} c_{4+j}(J) u^j, W = sum_{j<=4} c_{8+j}(J) u^j
        L4  c_0(J) + sum_{k<=4} c_k(J) u^k + u^4 U + u^8 W      (one truncation to 2^f)
     The derivative's polynomial (degree 11, its own coefficients) shares the powers: 2n more in L3, n more in L4.
  4. Above t_K the function is x (GELU, SiLU): c_0 = t_K there and relu(x - t_K) is added (exact); below t_1 it is 0.
     The derivative is 1 / 0 there.

Pieces are Chebyshev interpolants of torch's own float64 functions (F.gelu, F.gelu(approximate='tanh'), F.silu and
their autograd derivatives) on each piece, computed once. Range: the comparison runs on guard.comparison_bits (68 - f,
48 at f = 20, as ReLU's), exact for |x| < 2^(47-f) = 2^27 at f = 20, 32 times above any exact product's output; x is
handed to the overflow guard (guard.watch_comparison). No overflow can occur inside, because the powers are taken of
the clamped u.

Cost (n elements, per party): relu(K n) + 4 layers of n, 2n, 3n, n (values only) = 8 + 12 = 20 rounds and
16 * 7 = 112 bytes per element plus relu(K n) bytes; with the derivative (for backward) 16 * 10 = 160 bytes, same
rounds. relu(K n) is compare.relu's cost on K n elements on 48 bits (~44.3 K bytes per element, balanced).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import ring
from . import compare, guard
from .approx import _Item, _int, _layer, _max_scale
from .arithmetic import product_additive, square_additive
from .sharing import Shares, add_public

DEGREE = 12      # value polynomials; derivatives have degree 11
POWER_SCALE = 30  # u^2, u^3, u^4, u^8 (|u| <= 1) carry 30 fractional bits (their squares must stay below 2^62)


class PiecewiseSpec(NamedTuple):
    """A clamped piecewise polynomial: thresholds t_1..t_K, u = (xc - m_J) / 2^e, coefficient rows per interval
    J = 0..K (0: below t_1, K: above t_K; both constant), for the value and the derivative."""
    name: str
    thresholds: tuple
    e: int
    mids: tuple          # m_J, J = 0..K
    rhos: tuple          # |u| <= rhos[J] on interval J (0 outside [t_1, t_K])
    value: tuple         # value[J][k], k = 0..12
    deriv: tuple         # deriv[J][k], k = 0..11
    error: float         # max |p - fn| of the value pieces and tails (float64, measured on a fine grid)
    deriv_error: float


_FUNCTIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}
# Thresholds chosen for a value error below 2e-7 (GELU) / 2e-6 (SiLU, whose tail x e^-x decays slower): the functions
# equal x above t_K and 0 below t_1 within that error (GELU: 5.5 Q(5.5) = 1.0e-7; SiLU: 18 e^-18 = 2.7e-7).
_THRESHOLDS = {
    "gelu": (-5.5, -1.5, 1.5, 5.5),
    "gelu_tanh": (-5.5, -1.5, 1.5, 5.5),
    "silu": (-18.0, -4.0, 0.0, 4.0, 18.0),
}


def _derivative(fn):
    def d(x):
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            fn(x).sum().backward()
        return x.grad
    return d


def _chebyshev_piece(fn, lo: float, hi: float, degree: int, e: int) -> list:
    """Monomial coefficients in u = (x - mid) / 2^e of the Chebyshev interpolant of fn on [lo, hi]."""
    k = torch.arange(degree + 1, dtype=torch.float64)
    nodes = torch.cos((2 * k + 1) * math.pi / (2 * degree + 2))
    half, mid = (hi - lo) / 2, (hi + lo) / 2
    a = torch.linalg.solve(nodes.unsqueeze(1) ** k, fn(mid + half * nodes))   # in w = (x - mid) / half
    return (a * (2.0 ** e / half) ** k).tolist()                                # w = u 2^e / half


@lru_cache(maxsize=None)
def spec(name: str) -> PiecewiseSpec:
    """The piecewise tables of `name` ('gelu', 'gelu_tanh', 'silu'), with their measured float64 errors."""
    fn, t = _FUNCTIONS[name], _THRESHOLDS[name]
    dfn = _derivative(fn)
    K = len(t)
    e = math.ceil(math.log2(max(t[i + 1] - t[i] for i in range(K - 1)) / 2))
    mids = [t[0]] + [(t[i] + t[i + 1]) / 2 for i in range(K - 1)] + [t[-1]]
    value = [[0.0] * (DEGREE + 1)]
    deriv = [[0.0] * DEGREE]
    for i in range(K - 1):
        value.append(_chebyshev_piece(fn, t[i], t[i + 1], DEGREE, e))
        deriv.append(_chebyshev_piece(dfn, t[i], t[i + 1], DEGREE - 1, e))
    value.append([t[-1]] + [0.0] * DEGREE)
    deriv.append([1.0] + [0.0] * (DEGREE - 1))
    rhos = [0.0] + [(t[i + 1] - t[i]) / 2 ** (e + 1) for i in range(K - 1)] + [0.0]
    s = PiecewiseSpec(name, tuple(t), e, tuple(mids), tuple(rhos), tuple(map(tuple, value)), tuple(map(tuple, deriv)),
                      0.0, 0.0)
    x = torch.linspace(2 * t[0] - 1, 2 * t[-1] + 1, 400001, dtype=torch.float64)
    pv, pd = evaluate_plain(s, x)
    return s._replace(error=float((pv - fn(x)).abs().max()), deriv_error=float((pd - dfn(x)).abs().max()))


def evaluate_plain(s: PiecewiseSpec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The piecewise polynomials on plain float64 x (what the protocol computes, without fixed-point rounding)."""
    t = torch.tensor(s.thresholds, dtype=torch.float64)
    J = (x.unsqueeze(-1) > t).sum(-1)
    xc = x.clamp(s.thresholds[0], s.thresholds[-1])
    u = (xc - torch.tensor(s.mids, dtype=torch.float64)[J]) / 2.0 ** s.e
    cv, cd = torch.tensor(s.value, dtype=torch.float64)[J], torch.tensor(s.deriv, dtype=torch.float64)[J]
    pv = (cv * u.unsqueeze(-1) ** torch.arange(DEGREE + 1)).sum(-1) + (x - s.thresholds[-1]).clamp_min(0)
    pd = (cd * u.unsqueeze(-1) ** torch.arange(DEGREE)).sum(-1)
    return pv, pd


# ---------------------------------------------------------------------------------------------------------------------
# The protocol

def _select(bits: Shares, values, scale: int, *, party) -> Shares:
    """Shares of round(values[J] * 2^scale) for x in interval J (bits[i] = [x > t_i]). Local."""
    v = [_int(float(c), scale, "piecewise coefficient") for c in values]
    w = torch.tensor([v[i + 1] - v[i] for i in range(len(v) - 1)], dtype=ring.DTYPE, device=party.device)
    w = w.view(-1, *([1] * (bits.cur.dim() - 1)))
    acc = Shares((bits.cur * w).sum(0), (bits.prev * w).sum(0))
    return add_public(acc, torch.tensor(v[0], dtype=ring.DTYPE, device=party.device), party=party)


def _bound(rows, ks, rhos, shift: int = 0) -> float:
    """max over intervals J of sum_{k in ks} |c_k| rho_J^(k - shift) (a bound on |sum c_k u^(k - shift)| for
    |u| <= rho_J), at least 2^-10."""
    return max(max(sum(abs(r[k]) * rho ** (k - shift) for k in ks if k < len(r)) for r, rho in zip(rows, rhos)),
               2.0 ** -10)


def _top_scale(tables, rhos, f: int) -> int:
    """The common pre-truncation scale of L4: every table's sum of |c_k| rho^k fits below 2^62 there."""
    top = min(_max_scale(_bound(rows, range(len(rows[0])), rhos)) for rows in tables)
    if top - f < 8:
        raise ValueError("internal scale plan: piecewise polynomial coefficients too large for the ring")
    return top


def _coef(rows, k: int, bits: Shares, scale: int, *, party) -> Shares:
    return _select(bits, [r[k] if k < len(r) else 0.0 for r in rows], scale, party=party)


def _l3_items(rows, rhos, bits, powers, top: int, *, party) -> list:
    """U = sum_{j<=4} c_{4+j} u^j and W = sum_{j<=4} c_{8+j} u^j, each formed at scale min(top, what its bound
    allows) and truncated by POWER_SCALE (as u^8 in the same layer)."""
    items = []
    for first in (5, 9):
        bound = _bound(rows, range(first, first + 4), rhos, first - 1)
        pre = min(top, _max_scale(bound))
        z = torch.zeros_like(bits.cur[0])
        for j in range(1, 5):
            uj, sj = powers[j]
            z = z + product_additive(_coef(rows, first + j - 1, bits, pre - sj, party=party), uj)
        items.append(_Item(z, pre, pre - POWER_SCALE, bound))
    return items


def _l4_item(rows, rhos, bits, powers, top: int, U: tuple, W: tuple, *, party) -> _Item:
    """c_0 + sum_{k<=4} c_k u^k + u^4 U + u^8 W at scale top, truncated to 2^f."""
    z = _coef(rows, 0, bits, top, party=party).cur
    for k in range(1, 5):
        uk, sk = powers[k]
        z = z + product_additive(_coef(rows, k, bits, top - sk, party=party), uk)
    for (uk, sk), (g, sg) in ((powers[4], U), (powers[8], W)):   # u^4 U, u^8 W: lifted to scale top
        z = z + product_additive(uk, g) * (1 << (top - sk - sg))
    return _Item(z, top, party.encoding.frac_bits, _bound(rows, range(len(rows[0])), rhos))


def evaluate(x: Shares, s: PiecewiseSpec, *, party, derivative: bool = False) -> tuple[Shares, Shares | None]:
    """(p(x), p'(x) or None) at scale 2^f for the piecewise spec s (module docstring: method, cost)."""
    f = party.encoding.frac_bits
    t = s.thresholds
    K = len(t)
    enc = torch.tensor([_int(v, f, "threshold") for v in t], dtype=ring.DTYPE,
                       device=party.device).view(-1, *([1] * x.cur.dim()))
    stacked = add_public(Shares(x.cur.unsqueeze(0).expand(K, *x.shape), x.prev.unsqueeze(0).expand(K, *x.shape)),
                         -enc, party=party)
    width = guard.comparison_bits(party)  # x is a layer's activation: compared on 68 - f bits, x watched
    guard.watch_comparison(x, width, s.name, party=party)
    y, bits = compare.relu(stacked, party=party, bits=width)
    low, high = y.map(lambda r: r[0]), y.map(lambda r: r[-1])
    xc = add_public(low - high, enc[0].reshape(()), party=party)                   # clamp(x, t_1, t_K)
    u = xc - _select(bits, s.mids, f, party=party)                                 # (xc - m_J) at scale f
    su = f + s.e                                                                   # u itself: |u| <= 1
    P = POWER_SCALE
    (u2,) = _layer([_Item(square_additive(u), 2 * su, P, 1.0)], party=party)
    u3, u4 = _layer([_Item(product_additive(u, u2), su + P, P, 1.0), _Item(square_additive(u2), 2 * P, P, 1.0)],
                    party=party)
    powers = {1: (u, su), 2: (u2, P), 3: (u3, P), 4: (u4, P)}
    tables = [s.value] + ([s.deriv] if derivative else [])
    top = _top_scale(tables, s.rhos, f)
    l3 = [_Item(square_additive(u4), 2 * P, P, 1.0)]
    for rows in tables:
        l3 += _l3_items(rows, s.rhos, bits, powers, top, party=party)
    out3 = _layer(l3, party=party)
    powers[8] = (out3[0], P)
    outs = _layer([_l4_item(rows, s.rhos, bits, powers, top, (out3[1 + 2 * i], l3[1 + 2 * i].out),
                            (out3[2 + 2 * i], l3[2 + 2 * i].out), party=party)
                   for i, rows in enumerate(tables)], party=party)
    value = outs[0] + high                                                         # + relu(x - t_K): x above t_K
    return value, (outs[1] if derivative else None)


def gelu(x: Shares, *, party, approximate: str = "none", derivative: bool = False):
    """GELU(x) = x Phi(x) (approximate='none') or x sigma(2 sqrt(2/pi) (x + 0.044715 x^3)) ('tanh'), and its
    derivative when asked (saved for backward).

    Pieces: thresholds -5.5, -1.5, 1.5, 5.5 (3 pieces of degree 12 in u = (x - m_J) / 2); 0 below -5.5, x above 5.5.
    Range: |x| < 2^27 at f = 20 (module docstring). Error (f = 20): |err| <= 3e-6 (value; polynomial error 1.8e-7 erf form, 6e-8
    tanh form, the rest fixed-point rounding), derivative <= 5e-6 (polynomial error 2.3e-6 / 8e-7); exact x above
    5.5 and exactly 0 below -5.5 (where |GELU(x) - x| resp. |GELU(x)| <= 1.04e-7).
    Cost: relu(4n) + 4 layers: 20 rounds; 112 bytes per element per party plus relu(4n) bytes (derivative too:
    160 bytes): ~289 bytes per element (~337 with the derivative). PUMA's piecewise GELU (0 / degree 3 / degree 6 / x on -4, -1.95, 3) costs ltz(3n) + 4 layers
    and a mux round here (18 rounds, ~229 bytes) with error 2e-2 (the jump at x = 3).
    """
    name = {"none": "gelu", "tanh": "gelu_tanh"}[approximate]
    with party.label("gelu"):
        return evaluate(x, spec(name), party=party, derivative=derivative)


def silu(x: Shares, *, party, derivative: bool = False):
    """SiLU(x) = x sigmoid(x), and its derivative when asked.

    Pieces: thresholds -18, -4, 0, 4, 18 (4 pieces of degree 12 in u = (x - m_J) / 8); 0 below -18, x above 18.
    Range: |x| < 2^27 at f = 20 (module docstring). Error (f = 20): |err| <= 4e-6 (polynomial error 1.4e-6), derivative
    <= 8e-6 (5.8e-6).
    Cost: relu(5n) + 4 layers: 20 rounds; 112 bytes per element per party plus relu(5n) bytes (derivative too: 160).
    (x * sigmoid(x) with approx.sigmoid: 39 rounds, ~210 + relu(4n) bytes, 2e-6 |x| error.)
    """
    with party.label("silu"):
        return evaluate(x, spec("silu"), party=party, derivative=derivative)
