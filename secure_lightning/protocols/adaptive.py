"""Adam, AdamW and RMSprop updates on shares, precise enough for torch.optim's defaults (eps = 1e-8).

Why torch's own kernels cannot run on 20-bit fixed point: (1 - beta2) g^2 is 1e-9 for g = 1e-3 (below one ulp,
2^-20 ~ 9.5e-7), eps = 1e-8 is zero, and m / (sqrt(v) + eps) then divides by zero-ish values: Adam diverges.

State, per element, at scales derived from f (`state_scales`):
  Adam:    m_hat at 2^FM and v_hat at 2^FV, the BIAS-CORRECTED moments (torch's m / (1 - beta1^t), v / (1 - beta2^t)),
           updated as exact rewrites of torch's recurrences:
             m_hat_t = m_hat + b1_t (g - m_hat),   b1_t = (1 - beta1) / (1 - beta1^t)
             v_hat_t = v_hat + b2_t (g^2 - v_hat), b2_t = (1 - beta2) / (1 - beta2^t)
           so the first step already holds g and g^2 at full precision (b_1 = 1).
  RMSprop: v_hat = v / (1 - alpha^t) at 2^FV (torch's square_avg, bias-corrected here so that small gradients keep
           their precision; the correction is folded back into eps and lr); momentum buffer at 2^f.
  FM = f + 10; FV = min(2f - 4, 36): v_hat resolution 2^-36 ~ 1.5e-11, so every |g| >= 2^-18 registers.
Update:
  1. Moments (2 layers): D = g^2 - v_hat (g^2 exact at 2^2f), truncated to 2^(FV - s) with 2^-s ~ b2, next to the
     m_hat update; then v_hat += b2 D. Public weights b carry 7 significant bits (relative error <= 2^-8, i.e. beta2
     = 0.999 acts as 0.999 +- 4e-6).
  2. r = 1 / sqrt(v_hat + 2^-FV) over the whole range by bit decomposition (wide.rsqrt_wide, relative error 5e-5).
  3. q = num r (num = m_hat, or g for RMSprop) and w = eps r in one layer; u = q / (1 + w) = num / (sqrt(v) + eps):
     u = q - q w when eps 2^(FV/2) <= 2^-8 (relative error w^2 <= 2^-16; Adam's default eps = 1e-8 qualifies),
     q (1 - w + w^2) up to 2^-4 (error 2^-12), else Goldschmidt's division on 1 + w (approx._goldschmidt).
  4. Clamp u to [-R, R], R the largest |num / sqrt(v)| ANY gradient sequence gives in exact arithmetic
     (Cauchy-Schwarz over the moment weights: Adam R_t^2 = sum_i a_i^2 / c_i, 7.27 at the defaults; RMSprop
     R = 1 / sqrt(1 - alpha)). Exact Adam never reaches the clamp; in fixed point it bounds what rounding can do
     where v_hat is a few ulp (there the clamped value is plain Adam's, +-R).
  5. p -= lr u (and lr wd p for AdamW, in the same truncation); Adam's coupled weight decay adds wd p to g first.
Range: |g| < GMAX = 2^floor(min((61.9 - 2f) / 2, (55.9 - FV) / 2)) (512 for f = 20, 8192 for f = 16, 64 for
f = 24): g^2 and b2 g^2 must fit the truncation's exact range. g is watched by the overflow guard (protocols.guard,
sampled: FixedPointOverflowError names the optimizer); an element that escapes the sample still moves by at most
lr R (the clamp), though its v_hat is then wrong.
Error per step (f = 20, defaults): u relative 2^-8 (b rounding, through v_hat: 2^-9) + 5e-5 (rsqrt) + 2^-16 (eps
series), plus 1 ulp (2^-20) of p per step from the final truncation: the update lr u is within 0.3% of torch's.
Cost per element and step (Adam): layers of 2, 1, (rsqrt_wide: 32 rounds, ~330 bytes), 2, 1, relu of 2 (8 rounds),
1 or 2 elements: 3 + 3 + 32 + 3 + 3 + 8 + 3 = 55 rounds, about 16 x 7 + 330 + relu(2) ~ 500 bytes per party
(+3 rounds, 16 bytes with coupled weight decay). RMSprop: the same without the m_hat item (+3 rounds, 16 bytes with
momentum). Nothing is opened.
"""
from __future__ import annotations

import math

import torch

from . import compare, guard
from .approx import _goldschmidt, _Item, _add_const, _int, _layer, _max_scale
from .arithmetic import mul_public_real, product_additive, square_additive
from .sharing import Shares
from .wide import rsqrt_wide

WEIGHT_BITS = 7          # significant bits of the public EMA weights b (at least)
FIRST_MOMENT_BITS = 14   # b1 multiplies g - m, which can be much larger than m: more bits where they fit
CLAMP_SLACK = 1 + 2.0 ** -10
LR_BITS = 10             # significant bits of lr and lr * weight_decay
EPS_SERIES_MAX = 2.0 ** -4  # eps r <= 2^-8: 1 - w; <= 2^-4: 1 - w + w^2; beyond: a division
R_SCALE_MAX = 32         # 1/sqrt(v) >= 2^-13: 2^-32 keeps it to 2^-19 relative, and leaves eps r its bits
Q_SCALE = 24             # u = num / (sqrt(v) + eps) at 2^-24: lr u is then exact to far below 2^-f
V_FLOOR_UNITS = 3        # v >= -2 units always (two truncations per step, each floor or floor + 1), so rsqrt's
                         # input v + 3 units is >= 1 (negligible: 3 x 2^-36 = 4.4e-11)


def state_scales(f: int) -> tuple[int, int]:
    """(FM, FV): the fixed-point scales of the first and second moments."""
    return f + 10, min(2 * f - 4, 36)


def grad_bound(f: int) -> float:
    """GMAX: |g| below it keeps g^2 and b g^2 inside the truncation range (see the module docstring)."""
    _, fv = state_scales(f)
    return 2.0 ** math.floor(min((61.9 - 2 * f) / 2, (55.9 - fv) / 2))


def adam_ratio_bound(beta1: float, beta2: float, t: int) -> float:
    """R_t = max |m_hat_t / sqrt(v_hat_t)| over all gradient sequences (Cauchy-Schwarz; 1 at t = 1)."""
    rho = beta1 * beta1 / beta2
    geo = t if abs(rho - 1.0) < 1e-12 else (1 - rho ** t) / (1 - rho)
    r2 = (1 - beta1) ** 2 * (1 - beta2 ** t) / ((1 - beta1 ** t) ** 2 * (1 - beta2)) * geo
    return math.sqrt(r2)


def _coded(b: float, bits: int) -> tuple[int, int]:
    """(K, round(b 2^K)) with b 2^K in [2^(bits-1), 2^bits): b with `bits` significant bits."""
    k = bits - 1 - math.floor(math.log2(b))
    return k, round(b * 2.0 ** k)


def _fits(items) -> bool:
    d = max(it.scale - it.out for it in items)
    return all(it.out + d <= _max_scale(it.bound) for it in items)


def _moments(g: Shares, v: Shares, b2: float, m: Shares | None, b1: float, *, party) -> tuple[Shares | None, Shares]:
    """v + b2 (g^2 - v) at 2^FV and m + b1 (g - m) at 2^FM (m None: skipped). 2 layers (3 when the m update cannot
    share the first one's truncation; never at torch's default betas)."""
    f = party.encoding.frac_bits
    fm, fv = state_scales(f)
    gmax = grad_bound(f)
    s = -math.floor(math.log2(b2))
    d_item = _Item(square_additive(g) - v.cur * (1 << (2 * f - fv)), 2 * f, fv - s, gmax * gmax)
    items = [d_item]
    if m is not None:  # b1 with as many bits (up to FIRST_MOMENT_BITS) as fit this layer's truncation
        k1 = FIRST_MOMENT_BITS - 1 - math.floor(math.log2(b1))
        k1 = max(min(k1, _max_scale(gmax * gmax) - (fv - s)), _coded(b1, WEIGHT_BITS)[0])
        m_item = _Item((g.cur * (1 << (fm - f)) - m.cur) * round(b1 * 2.0 ** k1), fm + k1, fm, 2 * gmax * b1)
        items = [d_item, m_item] if _fits([d_item, m_item]) else items
    outs = _layer(items, party=party)
    k2, c2 = _coded(b2, WEIGHT_BITS)
    later = [_Item(outs[0].cur * c2, fv - s + k2, fv, b2 * gmax * gmax)]
    if m is None:
        return None, v + _layer(later, party=party)[0]
    if len(items) == 2:
        return m + outs[1], v + _layer(later, party=party)[0]
    if _fits(later + [m_item]):
        dv, dm = _layer(later + [m_item], party=party)
        return m + dm, v + dv
    return m + _layer([m_item], party=party)[0], v + _layer(later, party=party)[0]


def _ratio(num: Shares, num_scale: int, v: Shares, bound: float, eps: float, *, party) -> tuple[Shares, int]:
    """(u, scale): num / (sqrt(v) + eps) clamped to [-bound, bound], v at 2^FV (v >= 0)."""
    f = party.encoding.frac_bits
    _, fv = state_scales(f)
    qmax = 4 * bound                                     # rounding slack where v is a few ulp
    sr = min(R_SCALE_MAX, 59 - fv // 2, _max_scale(qmax) - num_scale)
    r = rsqrt_wide(_add_const(v, float(V_FLOOR_UNITS), 0, party=party), fv, sr, party=party)
    w_max = eps * 2.0 ** (fv / 2)                         # r <= 2^(FV/2)
    sq = Q_SCALE
    dq = num_scale + sr - sq
    sw = min(_max_scale(w_max) - dq, _max_scale(qmax * w_max) - sq, 40)
    ke = sw + dq - sr
    ce = round(eps * 2.0 ** ke)
    if ce < 1 << (WEIGHT_BITS - 1):
        raise ValueError(f"eps={eps} is too small to be represented next to 1/sqrt(v) at frac_bits={f}")
    q, w = _layer([_Item(product_additive(num, r), num_scale + sr, sq, qmax),
                   _Item(r.cur * ce, sr + ke, sw, w_max)], party=party)
    if w_max <= EPS_SERIES_MAX:     # 1 / (1 + w) = 1 - w (+ w^2): relative error w^2 (w^3) <= 2^-16 (2^-12)
        (qw,) = _layer([_Item(product_additive(q, w), sq + sw, sq, qmax * w_max)], party=party)
        u = q - qw
        if w_max > EPS_SERIES_MAX ** 2:
            (qww,) = _layer([_Item(product_additive(qw, w), sq + sw, sq, qmax * w_max ** 2)], party=party)
            u = u + qww
        u_scale = sq
    else:                           # q / (1 + w) by Goldschmidt's division on [1, 2^ceil(log2(1 + w_max))]
        hi = 2.0 ** max(1, math.ceil(math.log2(1 + w_max)))
        u = _goldschmidt(q, sq, _add_const(w, 1.0, sw, party=party), sw, party=party, lo=1.0, hi=hi, steps=1,
                         iterations=4, signed=False, qmax=qmax, what="eps division")
        u_scale = f
    return _clamp(u, bound * CLAMP_SLACK, u_scale, party=party), u_scale


def _clamp(u: Shares, bound: float, scale: int, *, party) -> Shares:
    """min(max(u, -bound), bound) = u - relu(u - bound) + relu(-u - bound): one relu on 2n. Cost: relu(2n)."""
    c = _int(bound, scale, "clamp bound")
    both = Shares(torch.stack([u.cur, -u.cur]), torch.stack([u.prev, -u.prev]))
    y, _ = compare.relu(_add_const(both, -c, 0, party=party), party=party)
    return u - y.map(lambda t: t[0]) + y.map(lambda t: t[1])


def _apply(p: Shares, u: Shares, u_scale: int, u_bound: float, lr: float, decay: float, *, party) -> Shares:
    """p - lr u - decay p (decay = lr wd for AdamW, else 0) in one truncation; |u| <= u_bound."""
    f = party.encoding.frac_bits
    k, c = _coded(lr, LR_BITS)
    items = [_Item(u.cur * c, u_scale + k, f, lr * u_bound)]
    if decay:
        kd, cd = _coded(decay, LR_BITS)
        items.append(_Item(p.cur * cd, f + kd, f, decay * party.encoding.max_abs))
    outs = _layer(items, party=party)
    new = p - outs[0]
    return new - outs[1] if decay else new


def adam_step(p: Shares, g: Shares, m: Shares, v: Shares, *, t: int, lr: float, beta1: float, beta2: float,
              eps: float, weight_decay: float, decoupled: bool, maximize: bool, party):
    """One Adam (decoupled=False) or AdamW (decoupled=True) step on flat shares: (p, m_hat, v_hat) after step t.
    p, g at 2^f; m_hat at 2^FM, v_hat at 2^FV (see the module docstring for the method, error and cost)."""
    f = party.encoding.frac_bits
    fm, _ = state_scales(f)
    with party.label("adam"):
        guard.watch(g, grad_bound(f), "Adam gradient (|g| must stay below the second moment's range)", party=party)
        if maximize:
            g = -g
        if weight_decay and not decoupled:
            g = g + mul_public_real(p, weight_decay, party=party)
        b1 = (1 - beta1) / (1 - beta1 ** t)
        b2 = (1 - beta2) / (1 - beta2 ** t)
        m, v = _moments(g, v, b2, m, b1, party=party)
        bound = adam_ratio_bound(beta1, beta2, t)
        u, u_scale = _ratio(m, fm, v, bound, eps, party=party)
        decay = lr * weight_decay if decoupled else 0.0
        return _apply(p, u, u_scale, bound * CLAMP_SLACK, lr, decay, party=party), m, v


def rmsprop_step(p: Shares, g: Shares, v: Shares, buf: Shares | None, *, t: int, lr: float, alpha: float,
                 eps: float, weight_decay: float, momentum: float, maximize: bool, party):
    """One RMSprop step (not centered) on flat shares: (p, v_hat, buf) after step t.

    v_hat = v / (1 - alpha^t) at 2^FV is held bias-corrected like Adam's (v_hat_1 = g^2 at full precision, where
    torch's v_1 = (1 - alpha) g^2 would lose small gradients); with c_t = sqrt(1 - alpha^t), torch's ratio
    u = g / (sqrt(v) + eps) equals u' / c_t for u' = g / (sqrt(v_hat) + eps / c_t), |u'| <= c_t / sqrt(1 - alpha).
    buf (momentum > 0) at 2^f."""
    f = party.encoding.frac_bits
    with party.label("rmsprop"):
        guard.watch(g, grad_bound(f), "RMSprop gradient (|g| must stay below the second moment's range)",
                    party=party)
        if maximize:
            g = -g
        if weight_decay:
            g = g + mul_public_real(p, weight_decay, party=party)
        c_t = math.sqrt(1 - alpha ** t)
        _, v = _moments(g, v, (1 - alpha) / (1 - alpha ** t), None, 0.0, party=party)
        bound = c_t / math.sqrt(1 - alpha)
        u, u_scale = _ratio(g, f, v, bound, eps / c_t, party=party)
        if not momentum:
            return _apply(p, u, u_scale, bound * CLAMP_SLACK, lr / c_t, 0.0, party=party), v, buf
        (u,) = _layer([_Item(u.cur * _int(1 / c_t, 10), u_scale + 10, f, CLAMP_SLACK / math.sqrt(1 - alpha))],
                      party=party)                             # torch's u = u' / c_t, at 2^f for the buffer
        buf = u if buf is None else mul_public_real(buf, momentum, party=party) + u
        return _apply(p, buf, f, CLAMP_SLACK / math.sqrt(1 - alpha) / (1 - momentum), lr, 0.0, party=party), v, buf
