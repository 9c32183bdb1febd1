"""Comparisons, ReLU, max/argmax and max pooling on replicated arithmetic shares.

Bits returned here are arithmetic Shares of ring integers 0/1 (NOT fixed-point scaled): multiply them into a
fixed-point value with a ring product (arithmetic.mul(..., fixed=False)), never a truncating one.

Building blocks (protocols/convert.py): msb (7 rounds, exact for every ring value) and inject (arithmetic b and b * x
from a binary bit b: 1 round, or 2 "relayed" from convert.RELAY_FROM outputs on, when the sender's inject traffic
halves and the others' stays; the table below gives the one-round figures). Roles: the `sender` of msb's first round
and of inject sends more than the other two; sender=None (the default) cuts the elements in three chunks led by P0,
P1, P2 in the same rounds (balanced), sender=k gives the role to P_k for all elements.

Ranges: comparisons of x and y are exact whenever x - y does not wrap, i.e. |x - y| < 2^63 as signed ring integers
(so for all fixed-point values with |x|, |y| < 2^62 raw, i.e. |value| < 2^(62-f)). ReLU's bit is exact for every ring
value but -2^63. Nothing is opened: party.audit stays empty.

Cost notation (bytes sent by ONE party; n elements; ceil packing of bit messages):
  T(n)  = sum_k ceil(n b_k / 8), b = (63, 31, 15, 7, 3, 1)    msb's AND tree, every party (~15 n)
  S(n)  = 2 (8 n + ceil(63 n / 8))                          msb round 1, the sender          (~31.75 n)
  H(n)  = ceil(63 n / 8)                                    msb round 1, the other two      (~7.9 n)
  Sb(n) = 2 (8 m + ceil(126 m / 8)), n = 3 m                msb round 1, balanced, each party (~15.8 n)
                                   rounds   single sender: sender / others          balanced (n = 3m), each party
  ltz, lt, gt, le, ge (n)          8        S+T+16n / H+T+8n                        Sb+T+32m     (~41.5 n)
  eq (n)                           8        as ltz on 2n elements                   as ltz on 2n
  relu (n)                         8        S+T+32n / H+T+16n  (~78.8 n / 38.9 n)   Sb+T+64m     (~52.2 n)
  relayed inject (>= RELAY_FROM)   +1       sender's inject part halves             ltz Sb+T+24m, relu Sb+T+48m
  relu_backward, mux (n)           1        8n (every party)
  max over n values, R rows        8 ceil(log2 n)     per level: see `max`
  max_pool2d                       as max with R = N C OH OW rows of K = kh kw values
  max_pool2d_backward              1        8 R K (every party)
  (average pooling, its geometry: protocols/pooling.py)

Narrower comparisons: `bits` = l < 64 (ltz, lt.., relu, max, max_pool2d) reads the compared values as l-bit signed
integers (convert.msb moves them up by 64 - l bits, locally): exact while they lie in [-2^(l-1), 2^(l-1)), and
the split and the carry tree send only the live bits: Sb and T above become ~11.8 n and ~11.1 n at l = 48. The
caller must know the range (the secure layers use l = 68 - f and hand the input to the overflow guard).
Inference: relu(need_bit=False) and max(need_onehot=False) skip what only a backward pass reads (relu ~47.0 n at
l = 64 without the bit).

Large inputs run in slices (convert.chunked, convert.CHUNK = 196,608 elements; max trees in row slices of at most
that many elements): the working set is bounded by one slice, the rounds above are multiplied by the number of
slices, ceil(n / CHUNK) (eq: ceil(2n / CHUNK), max: ceil(R / rows per slice)), and the bytes stay as above.
"""
from __future__ import annotations

import builtins
from dataclasses import dataclass

import torch

from .. import ring
from . import binary as B
from . import convert
from .arithmetic import mul
from .convert import chunked, inject, msb
from .pooling import PoolGeometry, batched, fold_windows, pool_geometry, unbatch, windows
from .sharing import Shares, add_public

def pad_neg(bits: int = 64) -> int:
    """Max pooling's padding for comparisons on `bits`-bit differences: -2^(bits-2), below every in-range value."""
    return -(1 << (bits - 2))


# ---------------------------------------------------------------------------------------------------------------------
# Helpers

def _public(y, like: Shares, *, party) -> torch.Tensor:
    """A public float tensor/number in fixed point, on the shares' device."""
    y = torch.as_tensor(y)
    if not y.is_floating_point():
        y = y.to(torch.float64)
    return party.encoding.encode(y, what="public comparison operand").to(like.cur.device)


def _diff(x: Shares, y, *, party) -> Shares:
    """x - y for y Shares or public (float tensor / number)."""
    if isinstance(y, Shares):
        return x - y
    return add_public(x, -_public(y, x, party=party), party=party)


def _one_minus(b: Shares, *, party) -> Shares:
    """1 - b for an arithmetic bit. Cost: 0."""
    return add_public(-b, torch.ones((), dtype=ring.DTYPE, device=b.cur.device), party=party)


def _ones(shape, *, party) -> Shares:
    o = torch.ones(shape, dtype=ring.DTYPE, device=party.device)
    z = torch.zeros_like(o)
    return Shares(o if party.rank == 0 else z, o if party.rank == 1 else z)


def _where(cond: torch.Tensor, a: Shares, b: Shares) -> Shares:
    """Public selection (cond is public): elementwise a where cond else b. Cost: 0."""
    return Shares(torch.where(cond, a.cur, b.cur), torch.where(cond, a.prev, b.prev))


# ---------------------------------------------------------------------------------------------------------------------
# Comparisons

def ltz(x: Shares, *, party, sender: int | None = None, bits: int = 64) -> Shares:
    """[x < 0] as an arithmetic 0/1 bit (exact for every ring value; x read as signed). bits = l < 64: x read as an
    l-bit signed integer (convert.msb), exact while |x| < 2^(l-1); fewer bytes (see convert.msb).

    Cost: 8 rounds (msb 7 + b2a 1). Single sender: S(n) + T(n) + 16 n bytes, others H(n) + T(n) + 8 n.
    Balanced (n = 3 m): Sb(n) + T(n) + 32 m bytes each. Relayed b2a (n >= convert.RELAY_FROM): 9 rounds, the
    sender's 16 n becomes 8 n, balanced 24 m. n > convert.CHUNK: per slice, same bytes.
    Error: none (exact for every ring value).
    """
    with party.label("ltz"):
        flat = x.map(lambda t: t.reshape(-1))

        def one(lo, hi):
            part = flat.map(lambda t: t[lo:hi])
            return inject(msb(part, party=party, sender=sender, bits=bits), [None], party=party, sender=sender)

        bit = chunked(flat.cur.numel(), convert.CHUNK, one)[0]
        return bit.map(lambda t: t.view(x.shape))


def lt(x: Shares, y, *, party, sender: int | None = None) -> Shares:
    """[x < y]; y Shares or public float tensor/number (encoded with party.encoding). Cost: as ltz.
    Error: none while x - y does not wrap (|x|, |y| < 2^62 raw)."""
    with party.label("lt"):
        return ltz(_diff(x, y, party=party), party=party, sender=sender)


def gt(x: Shares, y, *, party, sender: int | None = None) -> Shares:
    """[x > y] = [y - x < 0]. Cost: as ltz."""
    with party.label("gt"):
        return ltz(-_diff(x, y, party=party), party=party, sender=sender)


def le(x: Shares, y, *, party, sender: int | None = None) -> Shares:
    """[x <= y] = 1 - [x > y]. Cost: as ltz."""
    return _one_minus(gt(x, y, party=party, sender=sender), party=party)


def ge(x: Shares, y, *, party, sender: int | None = None) -> Shares:
    """[x >= y] = 1 - [x < y]. Cost: as ltz."""
    return _one_minus(lt(x, y, party=party, sender=sender), party=party)


def eq(x: Shares, y, *, party, sender: int | None = None) -> Shares:
    """[x == y] = 1 - [x < y] - [y < x], both signs in the same rounds.

    Cost: 8 rounds; as ltz on 2 n elements (single sender: S(2n) + T(2n) + 32 n, others H(2n) + T(2n) + 16 n).
    Large n: slices of CHUNK / 2 elements (CHUNK comparisons each), 8 rounds per slice.
    """
    with party.label("eq"):
        d = _diff(x, y, party=party)
        shape = d.shape
        d = d.map(lambda t: t.reshape(-1))

        def one(lo, hi):  # slices of CHUNK / 2 elements: 2 (hi - lo) comparisons each
            both = Shares(*(torch.stack([t[lo:hi], -t[lo:hi]]).reshape(-1) for t in d))
            bits = inject(msb(both, party=party, sender=sender), [None], party=party, sender=sender)[0]
            bits = bits.map(lambda t: t.view(2, hi - lo))
            return [Shares(bits.cur[0] + bits.cur[1], bits.prev[0] + bits.prev[1])]

        both = chunked(d.cur.numel(), convert.CHUNK // 2, one)[0]
        return _one_minus(both.map(lambda t: t.view(shape)), party=party)


def mux(bit: Shares, a: Shares, b: Shares, *, party) -> Shares:
    """bit ? a : b = b + bit (a - b) for an arithmetic 0/1 bit (a, b any scale). Cost: 1 round, 8 bytes per element."""
    with party.label("mux"):
        return b + mul(bit, a - b, party=party, fixed=False)


# ---------------------------------------------------------------------------------------------------------------------
# ReLU

def relu(x: Shares, *, party, sender: int | None = None, bits: int = 64,
         need_bit: bool = True) -> tuple[Shares, Shares | None]:
    """(relu(x), drelu) with drelu = [x > 0] (torch's threshold_backward convention: gradient 0 at x = 0).

    drelu = NOT msb(x - 1) (exact for every ring value except -2^63); relu(x) = drelu * x and drelu itself come out
    of one inject round. relu(x) is exact (no truncation): the encoded value of max(x, 0).
    bits = l < 64: the sign is that of x - 1 read as an l-bit integer (convert.msb), exact while -2^(l-1) < x <=
    2^(l-1); the split and the carry tree send fewer bits. need_bit=False (no backward will run): drelu is not
    converted (returned as None), the inject round carries relu(x) only.
    Cost: 8 rounds (msb 7 + inject 1). Single sender: S(n) + T(n) + 32 n bytes, others H(n) + T(n) + 16 n
    (~78.8 / 38.9 bytes per element). Balanced (default, n = 3 m): Sb(n) + T(n) + 64 m each (~52.2 n); with
    need_bit=False the inject round is 48 m (~47 n). l = 48: Sb and T shrink to ~11.8 n and ~11.1 n (convert.msb):
    ~44.3 n with the bit, ~39 n without. Relayed inject (n >= convert.RELAY_FROM): 9 rounds; the sender's 32 n
    becomes 16 n, balanced 48 m with the bit and 32 m without (~39 n and ~33.6 n at l = 48).
    n > convert.CHUNK: slices of CHUNK elements, 8 or 9 rounds each, same bytes; working memory ~185 bytes per
    slice element besides the outputs.
    Error: none (relu(x) is the exact encoded max(x, 0); the bit is exact for every x in range).
    """
    with party.label("relu"):
        flat = x.map(lambda t: t.reshape(-1))
        minus1 = torch.full((), -1, dtype=ring.DTYPE, device=x.cur.device)

        def one(lo, hi):
            part = flat.map(lambda t: t[lo:hi])
            pos = B.not_(msb(add_public(part, minus1, party=party), party=party, sender=sender, bits=bits),
                         party=party, live=1)
            return inject(pos, [None, part] if need_bit else [part], party=party, sender=sender)

        outs = chunked(flat.cur.numel(), convert.CHUNK, one)
        y = outs[-1].map(lambda t: t.view(x.shape))
        return y, (outs[0].map(lambda t: t.view(x.shape)) if need_bit else None)


def relu_backward(grad: Shares, drelu_bit: Shares, *, party) -> Shares:
    """grad * drelu (ring product, no truncation: the bit is an integer). Cost: 1 round, 8 bytes per element."""
    with party.label("relu_backward"):
        return mul(grad, drelu_bit, party=party, fixed=False)


# ---------------------------------------------------------------------------------------------------------------------
# Max / argmax

def _max_last(x: Shares, *, party, sender: int | None = None, bits: int = 64,
              need_onehot: bool = True) -> tuple[Shares, Shares | None]:
    """Max over the last dimension by a pairwise tree (_max_rows) on slices of rows: a multiple of 24 rows of at
    most convert.CHUNK elements in all (at least 24 rows), so the bytes are those of one tree over all rows."""
    n = x.shape[-1]
    if n == 0:
        raise ValueError("max over an empty dimension")
    x2 = x.map(lambda t: t.reshape(-1, n))
    rows = builtins.max(24, convert.CHUNK // n // 24 * 24)
    outs = chunked(x2.shape[0], rows, lambda lo, hi: _max_rows(x2.map(lambda t: t[lo:hi]), party=party,
                                                               sender=sender, bits=bits, need_onehot=need_onehot))
    vals = outs[0].map(lambda t: t.view(x.shape[:-1]))
    return vals, (outs[1].map(lambda t: t.view(x.shape)) if need_onehot else None)


def _max_rows(x: Shares, *, party, sender: int | None = None, bits: int = 64,
              need_onehot: bool = True) -> list[Shares]:
    """Max over the last dimension of (R, n) rows by a pairwise tree: (values (R,), onehot (R, n)).

    Level: candidates (0,1), (2,3), ... are compared (an odd last one is carried); bit = [a >= b] (ties keep the
    lower index, so the onehot has exactly one 1: the first maximum, as torch.argmax); new = b + bit (a - b). Every
    original position remembers which candidate holds it; the onehots of the two paired groups are updated in the
    same inject round as the values: oh_a *= bit, oh_b -= bit * oh_b (the first level needs only b2a of the bit).
    All rows are flattened into one vector per level so that the balanced mode spreads the sender role over them.
    need_onehot=False: [values] only (each level's inject carries the selection alone); else [values, onehot].
    """
    n = x.shape[-1]
    if n == 0:
        raise ValueError("max over an empty dimension")
    lead = x.shape[:-1]
    x2 = x.map(lambda t: t.reshape(-1, n))
    R, dev = x2.shape[0], x.cur.device
    owner = torch.arange(n, device=dev)
    cand, oh = x2, None  # oh None: every position's onehot entry is the public 1
    level = 0
    while cand.shape[-1] > 1:
        m = cand.shape[-1]
        k = m // 2
        a = cand.map(lambda t: t[:, 0:2 * k:2])
        b = cand.map(lambda t: t[:, 1:2 * k:2])
        diff = a - b
        pos = torch.nonzero(owner < 2 * k).squeeze(-1)
        pair_of = owner[pos] // 2
        side_b = (owner[pos] % 2 == 1)
        q = pos.numel()
        with party.label(f"level{level}"):
            flat_diff = diff.map(lambda t: t.reshape(-1))
            ge_bit = B.not_(msb(flat_diff, party=party, sender=sender, bits=bits), party=party, live=1)  # [a >= b]
            if not need_onehot:
                sel, = inject(ge_bit, [flat_diff], party=party, sender=sender)
            elif oh is None:
                sel, bit = inject(ge_bit, [flat_diff, None], party=party, sender=sender)
                g = bit.map(lambda t: t.view(R, k)[:, pair_of])
                at_pos = _where(side_b, _one_minus(g, party=party), g)
                oh = _ones((R, n), party=party)
            else:
                ohp = oh.map(lambda t: t[:, pos])
                flat_index = (torch.arange(R, device=dev).view(R, 1) * k + pair_of.view(1, q)).reshape(-1)
                sel, prod = inject(ge_bit, [flat_diff, (ohp.map(lambda t: t.reshape(-1)), flat_index)],
                                   party=party, sender=sender)
                prod = prod.map(lambda t: t.view(R, q))
                at_pos = _where(side_b, ohp - prod, prod)
        if need_onehot:
            cur, prev = oh.cur.clone(), oh.prev.clone()
            cur[:, pos], prev[:, pos] = at_pos.cur, at_pos.prev
            oh = Shares(cur, prev)
        new = b + sel.map(lambda t: t.view(R, k))
        if m % 2:
            new = Shares(torch.cat([new.cur, cand.cur[:, -1:]], -1), torch.cat([new.prev, cand.prev[:, -1:]], -1))
        cand = new
        owner = torch.where(owner < 2 * k, owner // 2, torch.full_like(owner, k))
        level += 1
    vals = cand.map(lambda t: t.view(lead))
    if not need_onehot:
        return [vals]
    if oh is None:
        oh = _ones((R, n), party=party)
    return [vals, oh.map(lambda t: t.view(x.shape))]


def max(x: Shares, dim: int, keepdim: bool = False, *, party, sender: int | None = None, bits: int = 64,
        need_onehot: bool = True) -> tuple[Shares, Shares | None]:
    """(max along `dim`, onehot of the (first) argmax, same shape as x).

    ceil(log2 n) comparison levels of 8 rounds each (msb 7 + one inject round that also updates the onehots).
    Values are exact. Level l with m candidates compares N = R * floor(m/2) pairs (R = numel / n rows) and updates
    the onehot entries of the q positions per row that sit in a pair (all but a carried odd group).
    Cost per level, single sender: sender S(N) + T(N) + 16 (2N) bytes at level 0, S(N) + T(N) + 16 (2N + R q)
    later; others H(N) + T(N) + 8 (2N) at level 0, H(N) + T(N) + 8 (N + R q) later. Balanced: the same total
    spread over the three parties (each sends ~1/3 of the sum over roles). A level whose inject has
    convert.RELAY_FROM outputs or more takes 9 rounds, and the sender's 16 (...) halves to 8 (...).
    Range: |x| < 2^62 raw (differences must not wrap); bits = l < 64 compares the differences as l-bit integers
    (convert.msb; |x| < 2^(l-2) raw), fewer bytes. need_onehot=False: no onehot (None), each level's inject round
    carries the selected values only (2N elements fewer per level in all, and no onehot updates).
    """
    dim = dim % builtins.max(x.cur.dim(), 1)
    with party.label("max"):
        xt = x.map(lambda t: t.movedim(dim, -1))
        vals, oh = _max_last(xt, party=party, sender=sender, bits=bits, need_onehot=need_onehot)
        oh = oh.map(lambda t: t.movedim(-1, dim)) if need_onehot else None
        if keepdim:
            vals = vals.map(lambda t: t.unsqueeze(dim))
        return vals, oh


def argmax(x: Shares, dim: int, keepdim: bool = False, *, party, sender: int | None = None) -> Shares:
    """Onehot bits (same shape as x) of the first maximum along `dim`. Cost: as max (keepdim has no effect on the
    onehot, which always has x's shape)."""
    return max(x, dim, keepdim, party=party, sender=sender)[1]


# ---------------------------------------------------------------------------------------------------------------------
# Max pooling

@dataclass
class MaxPoolSaved:
    """What max_pool2d_backward needs: the onehot of each window's maximum and the window geometry."""
    onehot: Shares        # (N, C, OH, OW, K) arithmetic bits
    geometry: PoolGeometry


def max_pool2d(x: Shares, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *, party,
               sender: int | None = None, bits: int = 64,
               need_onehot: bool = True) -> tuple[Shares, MaxPoolSaved | None]:
    """F.max_pool2d on shares (all torch arguments), plus the saved onehot for backward.

    Windows are gathered locally (padding = the public pad_neg(bits), below every in-range value), then max over the
    K = kh * kw window elements with the comparison tree of `max`: ceil(log2 K) levels of 8 rounds, values exact.
    Cost: as `max` with R = N C OH OW rows of n = K values (e.g. 2x2: 16 rounds per slice of rows, see _max_last).
    Range: |x| < 2^62 raw; bits = l < 64 (as in `max`): |x| < 2^(l-2) raw, padding -2^(l-2).
    need_onehot=False (no backward will run): values only, the saved selection is None (see `max`).
    """
    geo = pool_geometry(tuple(x.shape), kernel_size, stride, padding, dilation, ceil_mode, op="max_pool2d")
    with party.label("max_pool2d"):
        win = windows(x, geo, pad_neg(bits), party=party)
        vals, oh = _max_last(win, party=party, sender=sender, bits=bits, need_onehot=need_onehot)
    return unbatch(vals, geo), (MaxPoolSaved(oh, geo) if need_onehot else None)


def max_pool2d_backward(grad_out: Shares, saved: MaxPoolSaved, *, party) -> Shares:
    """Gradient of max_pool2d: grad_out routed to each window's argmax (onehot * grad, a ring product), then summed
    into the input positions (local col2im). Cost: 1 round; 8 bytes per (output element x K) per party."""
    geo = saved.geometry
    with party.label("max_pool2d_backward"):
        g = batched(grad_out).map(lambda t: t.unsqueeze(-1))
        return fold_windows(mul(saved.onehot, g, party=party, fixed=False), geo)
