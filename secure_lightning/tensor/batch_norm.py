"""Batch-norm statistics and gradients on replicated shares that stay exact at large n (ImageNet-sized channels).

The problem: a fixed-point product is held at 2f fractional bits until it is truncated, and truncation
(arithmetic.truncate_additive) is exact only for |z| < 2^62. Summing the n products of a whole channel before ONE
truncation (a dot product) therefore needs sum < 2^(62 - 2f) in real units: 4.2e6 for f = 20, i.e. n var < 4.2e6 --
var < 2.6 for an ImageNet stem at batch 128 (n = 1.6e6). Beyond that the result is silently wrong by ~2^(64 - 2f).

The remedy used here, everywhere a per-channel sum of products is needed:
  * chunks: products are summed over chunks of at most m = 2^CHUNK_BITS = 256 consecutive elements of a channel and
    every chunk sum is truncated on its own (one truncate_additive call for all chunks: 3 rounds, 16 bytes per chunk,
    i.e. 16/256 = 0.0625 bytes per element). A chunk needs only sum_chunk < 2^(62 - 2f): a root mean square of the
    chunk's terms below 2^(31 - f - CHUNK_BITS/2) (128 for f = 20).
  * pre-division: truncation by a public d is a division by 2^d; a sum is first divided by a power of two close to n
    (keeping a few guard bits), and only then multiplied by the remaining public factor 2^r/n in [1/2, 1] (or a little
    less), which can then be encoded with ~20 significant bits without leaving the truncation range.
  * rounding: truncate_additive returns floor(z/2^d) + Bernoulli(frac(z/2^d)) with the coin given by the uniformly
    random mask: errors of different chunks are independent, zero-mean and below one unit, so K chunk sums are off by
    at most K units and typically by sqrt(K)/2.

Training statistics (`train_stats`): mean and 64 var (the variance is held at 6 more bits, VAR_SCALE, for rsqrt) in
four truncation layers (12 rounds), every layer per channel except the chunk sums:
  F1  m1 = (sum x + sum_S x) / 2^a, a = ceil(log2 n), S the first 2^a - n elements of the channel: a convex combination
      of the data (weights 2/2^a and 1/2^a), so |m1 - mean| <= std * sqrt(|S| n) / 2^a <= std / 2 for ANY data;
      v1 = sum x / 2^r1 (r1 = floor(log2 n) - 4).
  F2  chunk sums of (x - m1)^2 (truncated to scale sigma = f + 2); mean at scale f + u from v1 * round(2^(..) / n).
  F3  T' = (sum of the chunk sums) / 2^r3 (r3 = floor(log2 n) - 5); delta = mean - m1 at scale f + u2; mean at scale f.
  F4  64 var = 64 (T' 2^r3 / n - delta^2) = 64 (mean (x - m1)^2 - (mean - m1)^2), exact identity.
  Cost: 12 rounds; bytes per party 16 per chunk (0.0625 per element) + 16 * 7 per channel. The old single dot product
  (mean 3 rounds, channel_dot 3, times 64/n 3) was 9 rounds; the forward saves 6 elsewhere (the running-statistics
  updates share one truncation with s = w inv), so the training forward went from 44 to 41 rounds.
  Range (`stats_plan` derives every scale from f and n and refuses a plan that does not fit the ring):
    * chunks: every chunk (256 consecutive elements of a channel row, or a group of whole rows when H*W < 256)
      needs sum (x - m1)^2 < 2^(62 - 2f), i.e. a root mean square of x - m1 over the chunk below 2^(27 - f):
      128 for f = 20 (2048 for f = 16, 8 for f = 24). As |m1 - mean| <= std / 2, data with std 10 fails only if
      some run of 256 values has rms >= 118 about m1, i.e. >= 11.8 std; Gaussian-like data is exact up to std ~100
      (f = 20). This also bounds var + (mean - m1)^2 < 2^(62 - 2f - 8) (2^14 for f = 20).
    * variance: var < 2^16 (rsqrt's range on 64 (var + eps) ends at 2^22): implied by the chunk bound for f >= 19.
    * mean: |mean| < 2^B, B = stats_plan(...).mean_bits: for f = 20, B = 14 for n <= 2^21, 12 for n <= 2^24
      (4096), 10 for n <= 2^26; for f = 24, 8 at n = 2^24.
    * n: any n >= 2 within those bounds; the public factor 2^r3/n keeps >= 19 significant bits for n <= 2^26 (f = 20).
  Error (f = 20, ulp = 2^-20, worst case; exact identities otherwise):
    mean: (1 + 2^-4 + 2^-u) ulp from the truncations + |mean| / (2 kv) (kv >= 2^22 for n <= 2^24) < 1.1 ulp + |mean|
      2^-23;
    var: 2^-26 (final truncation of 64 var) + 2^-27 (pre-division) + K 2^-22 / n <= 2^-30 (chunk truncations, K
      chunks; typically sqrt(K) 2^-23 / n) + 2^-20 var (public factor, k_var >= 2^19; exact for n a power of two)
      + 2 |mean - m1| (mean error) (the delta^2 term).
    Measured at n = 1.6e6 (128 x 112 x 112), std 0.1 ... 10, |mean| <= 5: the batch-norm OUTPUT error is dominated
    by rsqrt (relative ~16 std ulp, 1.5e-4 at std 10), not by the statistics; running var within 2.5e-6 relative,
    running mean within 1e-6 (tests/test_batch_norm_range.py).

Training backward (`train_backward`), dx = s (g - mean(g) - x_hat mean(g x_hat)), dw = sum g x_hat, db = sum g:
  B0  chunk sums of g xc (scale f) -> T_g = sum g xc; sum g / 2^rg (rg = floor(log2 n) - 6); si = s inv
  B1  dw = inv T_g; g_bar = mean(g) at scale f + 6 (pre-divided sum times round(2^(f+6+rg)/n))
  B2  gm = dw / n = mean(g x_hat) (dw times round(2^(f+e)/n), truncated by f + e, e = ceil(log2 n): |dw| < 2^21)
  B3  coef = si gm; s g_bar
  B4  t1 = s g, t2 = coef xc (the two products on activations);  dx = t1 - s g_bar - t2
  Cost: 15 rounds (as before); 32 bytes per element + 16 per chunk (0.0625 per element) + 7 * 16 per channel.
  Range: sum over a chunk of g xc < 2^(62 - 2f) (f = 20, std 10: |g| up to ~100 on average over 256 values);
  |dw| = |sum g x_hat| < 2^21; |s inv| = |w| / (var + eps) < 2^22 (as before); |mean(g)| < 2^15; |coef| =
  |s inv mean(g x_hat)| < 2^16 (B3 truncates it together with s mean(g) at scale f + 6); no product of n terms.
  Error: dw: 1 ulp + inv * K ulp (chunks, typically inv sqrt(K) ulp); s mean(g): 1 ulp + |s| 2^-6 ulp (as one
  product truncated once); mean(g x_hat): 1 ulp (public factor with >= 19 significant bits); dx: those times s,
  plus s's own relative error (rsqrt's, see above) and 1 ulp of s inv times |mean(g x_hat)| |xc| (s inv is held at
  scale f). Measured at n = 2^18, std 0.1 ... 10,
  g = v + y: dx within 2e-6, dw within 3.3e-5 (inv's relative error), db within 1.2e-6 of their largest elements.
Eval backward: B0 chunk sums of g xc and dx = g s; B1 dw = inv T_g. 6 rounds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..protocols import guard
from ..protocols.arithmetic import product_additive, square_additive, truncate_additive
from ..protocols.sharing import Shares

CHUNK_BITS = 8          # products are summed over chunks of at most 2^8 elements before a truncation
VAR_SCALE = 64          # the batch variance is produced as 64 var (6 more fractional bits; sqrt(64) = 8 is exact)
VAR_MAX_BITS = 16       # rsqrt's range: 64 (var + eps) <= 2^22
MEAN_GUARD = 4          # v1 = sum x / 2^(floor(log2 n) - 4): its truncation costs <= 2^-4 ulp of the mean
SUM_GUARD = 5           # T' = T / 2^(floor(log2 n) - 5)
MEAN_MAX_BITS = 14      # |mean| < 2^14 at most (less for large n, see stats_plan)
GRAD_GUARD = 6          # backward: sum g / 2^(floor(log2 n) - 6)
GRAD_EXTRA_BITS = 6     # backward: mean(g) held at scale f + 6 (|mean(g)| < 2^15), s mean(g) truncated once


def _floor_log2(n: int) -> int:
    return n.bit_length() - 1


def _ceil_log2(n: int) -> int:
    return (n - 1).bit_length()


# ---------------------------------------------------------------------------------------------------------------------
# Layers and chunks

def layer(items, *, party) -> list[Shares]:
    """ONE truncation (3 rounds, 16 bytes per element per party) for several items (z, d): additive shares z to be
    truncated by d bits each. The call truncates by D = max d; an item with d < D is first multiplied by 2^(D - d),
    so the caller's plan must keep |z| 2^(D - d) < 2^62. Returns replicated shares, one per item, in z's shape."""
    big = max(d for _, d in items)
    flat = [(z if d == big else z * (1 << (big - d))).reshape(-1) for z, d in items]
    y = truncate_additive(torch.cat(flat), big, party=party)
    out, k = [], 0
    for z, _ in items:
        n = z.numel()
        out.append(y.map(lambda t, k=k, n=n, s=z.shape: t[k:k + n].reshape(s)))
        # overflow guard: every item's output is below 2^(62 - D) in ring units when its plan holds (the data's
        # chunk rms, see the module docstring); sampled against half that, like every product (free when off)
        guard.watch(out[-1], 2.0 ** (61 - big), guard.describe("batch_norm", party), party=party, scale_bits=0)
        k += n
    return out


def as_ncl(t: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N, C, L), L = prod(spatial) (1 for (N, C))."""
    return t.reshape(t.shape[0], t.shape[1], -1)


def chunk_count(shape, m: int = 1 << CHUNK_BITS) -> int:
    """Chunks per channel that chunk_sums makes for an (N, C, *spatial) input."""
    n_batch, length = shape[0], math.prod(shape[2:])
    if length >= m:
        return n_batch * -(-length // m)
    return -(-n_batch // (m // length))


def chunk_sums(z: torch.Tensor, m: int = 1 << CHUNK_BITS) -> torch.Tensor:
    """Sums of z (N, C, L) over chunks of at most m elements of each channel: runs of m along L when L >= m (the last
    one shorter when m does not divide L), else groups of m // L whole rows of the batch. Returns (K, C). Local."""
    n_batch, c, length = z.shape
    if length >= m:
        q, rem = divmod(length, m)
        parts = [z[:, :, :q * m].reshape(n_batch, c, q, m).sum(-1)]
        if rem:
            parts.append(z[:, :, q * m:].sum(-1, keepdim=True))
        s = torch.cat(parts, -1) if rem else parts[0]
        return s.transpose(1, 2).reshape(-1, c)
    s = z.sum(-1)
    group = m // length
    pad = -n_batch % group
    if pad:
        s = torch.cat([s, s.new_zeros(pad, c)])
    return s.reshape(-1, group, c).sum(1)


def _subset_sum(t: torch.Tensor, count: int) -> torch.Tensor:
    """Per-channel sum of the first `count` elements of each channel of t (N, C, L), in (batch, position) order."""
    length = t.shape[2]
    rows, rest = divmod(count, length)
    s = t[:rows].sum((0, 2))
    if rest:
        s = s + t[rows, :, :rest].sum(-1)
    return s


# ---------------------------------------------------------------------------------------------------------------------
# Training statistics

@dataclass(frozen=True)
class StatsPlan:
    """Public scales of train_stats for n values per channel and frac_bits f (see the module docstring)."""
    n: int
    f: int
    a: int             # F1 truncation: m1 = (sum x + sum_S x) / 2^a
    subset: int        # |S| = 2^a - n
    r1: int            # v1 = sum x / 2^r1
    sigma: int         # scale of the chunk sums of squares
    u: int             # the F2 mean is at scale f + u
    kv: int            # mean = v1 * kv / 2^(D2 + u) ... (see train_stats)
    d3: int            # F3 truncation
    r3: int            # T' = T / 2^r3
    u2: int            # delta = mean - m1 at scale f + u2
    d4: int            # F4 truncation
    k_var: int         # 64 var = T' k_var / 2^d4 - 64 delta^2
    var_bits: float    # var + delta^2 < 2^var_bits
    mean_bits: int     # |mean| < 2^mean_bits

    @property
    def d2(self) -> int:
        return 2 * self.f - self.sigma


@lru_cache(maxsize=256)
def stats_plan(n: int, f: int, chunks: int) -> StatsPlan:
    """Scales for train_stats; `chunks` = chunk_count(shape). Raises ValueError if n is too large for f."""
    if n < 2:
        raise ValueError("batch_norm statistics need n >= 2")
    lg = math.log2(n)
    a = _ceil_log2(n)
    # chunk sums < 2^(62 - 2f) bound their average: var + delta^2 < 2^(62 - 2f) K / n; rsqrt bounds var < 2^16
    v = min(62 - 2 * f + math.log2(chunks / n), VAR_MAX_BITS)
    r1 = max(0, _floor_log2(n) - MEAN_GUARD)
    sigma = f + 2
    d2 = 2 * f - sigma
    d4 = math.floor(61 - f - math.log2(VAR_SCALE) - v)
    d3 = math.floor(60 - v - sigma - SUM_GUARD)
    r3 = min(max(0, _floor_log2(n) - SUM_GUARD), d3)
    b = math.floor(min(61 - lg - f - a + r1, 61 - f - d3, 61 - 2 * f, MEAN_MAX_BITS))
    u = 61 - f - d2 - b
    u2 = min(u, (6 + d4 - f) // 2)
    kv = round(2.0 ** (d2 + r1 + u) / n)
    k_var = round(VAR_SCALE * 2.0 ** (f + d4 - sigma + r3) / n)
    xmax = 2.0 ** b + 2.0 ** (31 - f) + 2.0 ** (v / 2)
    checks = {
        "m1": a + f + math.log2(xmax) <= 61.5,
        "v1": lg + b + f + a - r1 <= 61.5,
        "scales": min(b, u, u2, d3 - u, d4 + 6 - f - 2 * u2, d2 - 0, r3) >= 0 and d3 >= r3,
        "precision": kv >= 2 ** 16 and k_var >= 2 ** 14,
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"batch_norm: no exact statistics plan for n = {n} values per channel with frac_bits = {f} "
                         f"(failed: {', '.join(bad)}); use fewer values per channel or fewer fractional bits")
    return StatsPlan(n, f, a, (1 << a) - n, r1, sigma, u, kv, d3, r3, u2, d4, k_var, v, b)


def train_stats(x: Shares, *, party) -> tuple[Shares, Shares, Shares]:
    """(mean, 64 var, xc = x - mean) of x (N, C, *spatial) over every dim but 1; mean and 64 var of shape
    (1, C, 1, ...), biased variance, scale f. Cost: 12 rounds (4 truncations), 16 bytes per chunk and 112 per channel
    per party. Error and range: module docstring."""
    f = party.encoding.frac_bits
    shape = x.shape
    c = shape[1]
    n = math.prod(shape) // c
    p = stats_plan(n, f, chunk_count(shape))
    stat_shape = [1, c] + [1] * (len(shape) - 2)
    x3 = x.map(as_ncl)

    def per_channel(s: Shares) -> Shares:
        return s.map(lambda t: t.reshape(1, c, 1))

    # F1: coarse mean m1 (a convex combination of the data) and the pre-divided sum v1
    total = x3.cur.sum((0, 2))
    coarse = total + _subset_sum(x3.cur, p.subset) if p.subset else total
    m1, v1 = layer([(coarse, p.a), (total, p.r1)], party=party)
    m1 = per_channel(m1)
    # F2: chunk sums of (x - m1)^2 at scale sigma; the mean at scale f + u
    xc = x3 - m1                                       # centred on m1 (fresh tensors: corrected in place below)
    sq = chunk_sums(square_additive(xc))
    q, mean_u = layer([(sq, p.d2), (v1.cur * p.kv, p.d2)], party=party)
    # F3: T' = T / 2^r3 at scale sigma; delta = mean - m1 at scale f + u2; the mean at scale f
    t_sum = q.cur.sum(0)
    delta_u = mean_u.cur - m1.cur.reshape(-1) * (1 << p.u)
    t_pre, delta, mean = layer([(t_sum, p.r3), (delta_u, p.u - p.u2), (mean_u.cur, p.u)], party=party)
    # F4: 64 var = T' k_var / 2^d4 - 64 delta^2
    z = t_pre.cur * p.k_var - square_additive(delta) * (1 << (6 + p.d4 - f - 2 * p.u2))
    (var_k,) = layer([(z, p.d4)], party=party)
    # xc = (x - m1) - (mean - m1), in place on the F2 tensors
    shift = per_channel(mean - m1.map(lambda t: t.reshape(-1)))
    xc = Shares(xc.cur.sub_(shift.cur), xc.prev.sub_(shift.prev)).map(lambda t: t.reshape(shape))
    return mean.map(lambda t: t.reshape(stat_shape)), var_k.map(lambda t: t.reshape(stat_shape)), xc


# ---------------------------------------------------------------------------------------------------------------------
# Gradients

def _chunked_dot_item(a: Shares, b: Shares):
    """Additive chunk sums of a * b (same (N, C, *spatial) shape), at scale 2f: an item for `layer`."""
    return chunk_sums(product_additive(a.map(as_ncl), b.map(as_ncl)))


def train_backward(g: Shares, xc: Shares, inv: Shares, s: Shares, n: int, *, party, need_dw: bool = True):
    """(dx, dw, db) of training-mode batch norm (see the module docstring); inv, s of shape (1, C, 1, ...).
    dw, db of shape (C,). Cost: 15 rounds; 32 bytes per element + 16 per chunk + per channel."""
    f = party.encoding.frac_bits
    c = g.shape[1]
    rg = max(0, min(_floor_log2(n) - GRAD_GUARD, f))      # sum g / 2^rg: its truncation costs <= 2^-6 ulp of mean(g)
    k_bar = round(2.0 ** (f + GRAD_EXTRA_BITS + rg) / n)  # mean(g) at scale f + 6
    e = _ceil_log2(n)
    k_n = round(2.0 ** (f + e) / n)

    def pc(t):
        return t.reshape(1, c, *[1] * (len(g.shape) - 2))

    g_sum = g.map(lambda t: as_ncl(t).sum((0, 2)))       # (C,), exact ring sum: db
    # B0: sum g xc by chunks; sum g / 2^rg; s inv
    chunks, g_pre, si = layer([(_chunked_dot_item(g, xc), f), (g_sum.cur, rg),
                               (product_additive(s, inv), f)], party=party)
    t_g = chunks.map(lambda t: t.sum(0))
    inv_c = inv.map(lambda t: t.reshape(-1))
    # B1: dw = inv sum(g xc); mean(g) at scale f + 6
    dw, g_bar = layer([(product_additive(inv_c, t_g), f), (g_pre.cur * k_bar, f)], party=party)
    # B2: mean(g x_hat) = dw / n
    (gm,) = layer([(dw.cur * k_n, f + e)], party=party)
    # B3: coef = s inv mean(g x_hat); s mean(g)
    coef, sg_bar = layer([(product_additive(si, gm.map(pc)), f),
                          (product_additive(s, g_bar.map(pc)), f + GRAD_EXTRA_BITS)], party=party)
    # B4: the two products on activations
    t1, t2 = layer([(product_additive(s, g), f), (product_additive(coef, xc), f)], party=party)
    dx = t1 - sg_bar - t2
    return dx, (dw if need_dw else None), g_sum


def eval_backward(g: Shares, xc: Shares, inv: Shares, s: Shares, *, party, need_dw: bool):
    """(dx, dw, db) of eval-mode batch norm: dx = g s, dw = inv sum(g xc) (chunked), db = sum g. 6 rounds with dw
    (3 without); 16 bytes per element + 16 per chunk."""
    f = party.encoding.frac_bits
    g_sum = g.map(lambda t: as_ncl(t).sum((0, 2)))
    if not need_dw:
        (dx,) = layer([(product_additive(g, s), f)], party=party)
        return dx, None, g_sum
    chunks, dx = layer([(_chunked_dot_item(g, xc), f), (product_additive(g, s), f)], party=party)
    (dw,) = layer([(product_additive(inv.map(lambda t: t.reshape(-1)), chunks.map(lambda t: t.sum(0))), f)],
                  party=party)
    return dx, dw, g_sum
