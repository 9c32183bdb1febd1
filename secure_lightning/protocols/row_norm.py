"""LayerNorm and RMSNorm over rows of D values on replicated shares (the last dims of a tensor, flattened): forward
statistics and normalised values, and the backward pass. Fixed point in and out (scale 2^f); nothing is opened.

Why the plain recipe fails: a transformer token may have variance 1e-6 with eps = 1e-5, so r = 1/sqrt(var + eps) is
~300; an error e in the mean then moves every output by e r (1 ulp -> 3e-4), and var + eps at scale 2^f has 3 bits.
So (R rows, D = row length, a = ceil(log2 D)):
  * the normalised numerator is EXACT and local: D xc = D x - sum x (LayerNorm), x (RMSNorm); the 1/D goes into the
    rsqrt's piecewise constant for free, r/D = 2^(-J/2) m^(-1/2) / sqrt(D) with S + D eps = 2^J m;
  * the mean is only needed to centre the sum of squares: S = sum (x - mu~)^2 = D var + D (mu - mu~)^2, so an
    error of ~1 ulp in mu~ changes var by 1e-12. mu~ = (sum x >> a) k / 2^h with k = round(2^(a+h)/D) (two
    truncations of R values; one when D is a power of two);
  * S keeps sigma = min(2f - 1, 40 - (62 - 2f)) fractional bits (38 at f = 20), so var + eps = 1e-5 has 21 bits, and
    rsqrt runs on S + D eps over the octaves [2^floor(log2(D eps)), 2^(63-2f)] (one ltz on R (b - a - 1) values).
  * x_hat = (D xc) (r/D) is one product truncated from scale f + s_r (s_r = 61 - f - log2 sqrt(D): |x_hat| < sqrt(D)
    always), so r/D keeps ~20 significant bits even for the largest variance.
Range: |mean| < 2^(31-f) (2048 at f = 20; |sum x >> a| is handed to the overflow guard), S = D var < 2^(62-2f)
(4.2e6 at f = 20: var < 4096 at D = 1024), D eps >= 2^-f. S + D eps outside [lo, 2^(62-2f)] goes to the overflow
guard: a row with 2^(62-2f) <= S < 2^(63-2f) is always flagged (its truncation is either exact, above the bound, or
off by -2^(63-2f), below 0); a row with S >= 2^(63-2f) wraps the ring before the check, like an overflowing dot
product, and is caught only when the wrapped value lands outside the domain.
Error (f = 20): |x_hat - torch| <= 3e-6 + 2e-6 |x_hat| on those ranges (rsqrt's m^(-1/2) at 2^-24, r/D's 20 bits,
one truncation); the affine output adds one product (1 ulp + |w| times that).

Cost (per party; n = R D elements): LayerNorm forward 2 (1 if D = 2^a) + 1 layers of R values, rsqrt on R values
(ltz(K R) + 5 layers of R, R, 2R, R, R; K = log2(2^(63-2f) / lo) - 1), x_hat (one layer of n),
w x_hat (one layer of n): 35 rounds (32 for D a power of two, +3 with a weight), 16 bytes per element (32 with a
weight) + per-row terms. RMSNorm: no mean: 29 rounds (32 with a weight). Backward (both): 4 layers, 12 rounds: 32 bytes per element with a weight, 16 without.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import ring
from . import approx
from .approx import MAX_SCALE, _Item, _layer, _max_scale
from .arithmetic import product_additive, square_additive, truncate_additive
from .sharing import Shares, add_public

MEAN_HEADROOM = 1      # bits kept free above the mean's bound in its second truncation


def _trunc(zs: list, d: int, *, party) -> list[Shares]:
    """ONE truncation by d of several additive tensors (3 rounds, 16 bytes per element)."""
    y = truncate_additive(torch.cat([z.reshape(-1) for z in zs]), d, party=party)
    out, k = [], 0
    for z in zs:
        out.append(y.map(lambda t, k=k, n=z.numel(), s=z.shape: t[k:k + n].reshape(s)))
        k += z.numel()
    return out


def _row_sum(x: Shares) -> Shares:
    return x.map(lambda t: t.sum(-1, keepdim=True))


def _ring(v: int, *, party) -> torch.Tensor:
    return torch.tensor(v, dtype=ring.DTYPE, device=party.device)


def mean_bits(f: int) -> int:
    """|mean| < 2^mean_bits(f) = 2^(31 - f): the mean's second truncation keeps ~f bits of 2^a/D beside it."""
    return 31 - f


def sum_sq_scale(f: int) -> int:
    """sigma: the scale of S + D eps; rsqrt's normalisation needs sigma + log2(hi) <= 61 with hi = 2^(63-2f)."""
    return min(2 * f - 1, 61 - (63 - 2 * f))


R_EXTRA_BITS = 8       # backward holds r = 1 / sqrt(var + eps) at 2^(f + 8): r < 2^-8 for var > 2^16 keeps bits


class Saved(NamedTuple):
    x_hat: Shares      # (R, D) at 2^f
    r_num: Shares      # (R, 1): r / D (LayerNorm) or r (RMSNorm) at 2^s_r
    s_r: int
    r_mult: int        # r = r_num * r_mult


def _mean(x: Shares, *, party) -> Shares:
    """mu~ (R, 1) at 2^f, within ~1 ulp + |mu| 2^-(h+1) of the mean (module docstring)."""
    f = party.encoding.frac_bits
    D = x.shape[-1]
    a = (D - 1).bit_length()
    s = _row_sum(x)
    (q,) = _trunc([s.cur], a, party=party) if a else (s,)
    M = 2.0 ** mean_bits(f)
    approx._watch(lambda: q, M * D / 2 ** a + 2.0 ** -f, "layer_norm: |mean| above 2^(31 - frac_bits)", party=party)
    if D == 1 << a:
        return q
    h = 61 - f - mean_bits(f) - MEAN_HEADROOM
    k = round(2.0 ** (a + h) / D)
    (mu,) = _trunc([q.cur * k], h, party=party)
    return mu


def _rsqrt_rows(v: Shares, v_scale: int, lo: float, hi: float, outs, *, party) -> list[Shares]:
    """[c * v^(-1/2) at scale s for (c, s) in outs], one normalisation and one mantissa polynomial for all (as
    approx.rsqrt, with v at scale v_scale and the constants c folded into the piecewise factor 2^(-J/2))."""
    f = party.encoding.frac_bits
    a, b = approx._octaves(lo, hi, "layer_norm")
    m, m_scale, iv, js, _ = approx._normalize(v, v_scale, a, b, min(MAX_SCALE, max(f, 20) + 4), party=party)
    fr = 25
    r = approx._mantissa_poly(m, m_scale, "rsqrt", party=party, out_scale=fr, out_range=(2.0 ** -0.5, 1.0),
                              abs_bits=max(f, 20) + 3)
    values = [[c * 2.0 ** (-0.5 * j) for j in js] for c, _ in outs]
    d = min(_max_scale(max(vals)) - s for vals, (_, s) in zip(values, outs))
    items = []
    for vals, (_, s) in zip(values, outs):
        rj = approx._piecewise(iv, vals, s + d - fr, v.shape, party=party)
        items.append(_Item(product_additive(rj, r), s + d, s, max(vals)))
    return _layer(items, party=party)


def forward(x: Shares, eps: float, *, party, center: bool) -> tuple[Shares, Saved]:
    """x_hat = (x - mean) / sqrt(var + eps) (center=True, LayerNorm) or x / sqrt(mean(x^2) + eps) (RMSNorm) over the
    last dim of x (R, D). Returns x_hat at 2^f and what backward needs. Cost and error: module docstring."""
    f = party.encoding.frac_bits
    D = x.shape[-1]
    sigma = sum_sq_scale(f)
    if center:
        xc = x - _mean(x, party=party)
        num = x.map(lambda t: t * D) - _row_sum(x)                  # D (x - mean), exact
        num_factor = 1.0 / math.sqrt(D)
    else:
        xc, num, num_factor = x, x, math.sqrt(D)
    (s,) = _trunc([square_additive(xc).sum(-1, keepdim=True)], 2 * f - sigma, party=party)
    hi = 2.0 ** (63 - 2 * f)
    lo = 2.0 ** max(math.floor(math.log2(D * eps)), -f) if eps > 0 else 2.0 ** -f
    v = add_public(s, _ring(round(D * eps * 2.0 ** sigma), party=party), party=party)
    top = 2.0 ** (62 - 2 * f)       # the sum of squares' exact range
    c = round(lo * 2.0 ** sigma) + round(top * 2.0 ** sigma)
    approx._watch(lambda: add_public(v.map(lambda t: t * 2), _ring(-c, party=party), party=party), top - lo,
                  f"{'layer_norm' if center else 'rms_norm'}: sum of squares outside [{lo:.3g}, 2^{62 - 2 * f}] "
                  f"(row variance too large, or D eps below 2^-f)", party=party, scale_bits=sigma)
    s_r = min(_max_scale(math.sqrt(D)) - f, 2 * f + R_EXTRA_BITS)
    (r_num,) = _rsqrt_rows(v, sigma, lo, hi, [(num_factor, s_r)], party=party)
    (x_hat,) = _trunc([product_additive(num, r_num)], s_r, party=party)
    return x_hat, Saved(x_hat, r_num, s_r, D if center else 1)


def backward(g: Shares, saved: Saved, w: Shares | None, xw: Shares | None, *, party, center: bool,
             need_dw: bool) -> tuple[Shares, Shares | None]:
    """(dx (R, D), dw (D,) or None) of x_hat w (w None: x_hat) for the upstream gradient g (R, D); xw = x_hat w
    (the forward's output before the bias). With gw = g w, m1 = mean(gw), m2 = mean(gw x_hat):
        dx = r (gw - m1 - x_hat m2)      (RMSNorm: no m1);     dw = sum over rows of g x_hat.
    Layers: [gw, dw, sum gw, sum gw x_hat, r at 2^(f+8)] (truncated by f); [m1, m2] (times round(2^h / D), truncated
    by h); [r m1, r m2]; [r gw - r m1 - x_hat r m2]: 12 rounds; 32 bytes per element with w (16 without) + per row
    and column. Range: |m1|, |m2| < 2^(31 - f) (guard), |dx| and |r gw| < 2^(61 - 2f - 8) (guard on dx)."""
    f = party.encoding.frac_bits
    D = g.shape[-1]
    rb = f + R_EXTRA_BITS
    zs, what = [], []
    if w is not None:
        gw_add = product_additive(g, w.map(lambda t: t.reshape(1, D)))
        zs.append(gw_add)
        what.append("gw")
        if center:
            zs.append(gw_add.sum(-1, keepdim=True))
            what.append("s1")
    if need_dw:
        zs.append(product_additive(g, saved.x_hat).sum(0))
        what.append("dw")
    zs.append(product_additive(g, xw if w is not None else saved.x_hat).sum(-1, keepdim=True))
    zs.append(saved.r_num.cur * (saved.r_mult << (f + rb - saved.s_r)))   # r: from 2^s_r to 2^rb
    what += ["s2", "r"]
    got = dict(zip(what, _trunc(zs, f, party=party)))
    gw, r = got.get("gw", g), got["r"]
    s1 = got["s1"] if "s1" in got else _row_sum(g)
    h = 61 - f - mean_bits(f)
    k = round(2.0 ** h / D)
    sums = [s1, got["s2"]] if center else [got["s2"]]
    means = _trunc([t.cur * k for t in sums], h, party=party)
    for mv in means:
        approx._watch(lambda mv=mv: mv, 2.0 ** mean_bits(f), "layer_norm backward: |mean of gradients| above "
                      "2^(31 - frac_bits)", party=party)
    cs = _trunc([product_additive(r, mv) for mv in means], rb, party=party)        # r m1, r m2 at 2^f
    z = product_additive(r, gw) - product_additive(saved.x_hat, cs[-1]) * (1 << (rb - f))
    if center:
        z = z - cs[0].cur * (1 << rb)
    (dx,) = _trunc([z], rb, party=party)
    approx._watch(lambda: dx, 2.0 ** (61 - 2 * f - R_EXTRA_BITS), "layer_norm backward: gradient above "
                  "2^(61 - 2 frac_bits - 8)", party=party)
    return dx, got.get("dw")
