"""Conversions between arithmetic shares (Z_2^64) and binary (XOR) shares: a2b, msb, b2a, bit_inject.

Both directions use the same observation about replication: with roles s (`sender`), n = s+1, p = s-1,
  * arithmetic x = x_s + x_p + x_n, where P_s holds x_s and x_p, so v = x_s + x_p is known to P_s alone and
    c = x_n is known to P_n and P_p: x = v + c is a sum of TWO addends (the 3 -> 2 reduction is local);
  * binary b = b_s ^ b_p ^ b_n: d = b_s ^ b_p is known to P_s, c = b_n to P_n and P_p, b = d ^ c.
A product of something P_s knows with something P_n and P_p both know is then computed in one round by a 3-party
OT-style exchange whose masks all come from the pair PRGs (nothing from torch's generator, no masks sent), and whose
output is already replicated (no resharing round). Large conversions (inject from RELAY_FROM outputs on) take a second
round instead, in which P_n relays its output share to P_p: 4 ring elements per product instead of 6.

Every protocol states `Cost:` per party, split by role (s / n / p); "n" below means number of elements.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import ring
from . import binary as B, bitsliced
from .binary import BinShares
from .sharing import Shares

G_LIVE = B.mask_range(0, 63)  # generate bits 0..62 feed the carries into bits 1..63
# inject relays from this many output elements on: 2 rounds and 4 ring elements per output instead of 1 round and 6
RELAY_FROM = 2048
CHUNK = 3 << 16  # elements per slice of a large comparison circuit (196,608: a multiple of 24, see `chunked`)


def chunked(n: int, step: int, fn) -> list:
    """Run fn(lo, hi) -> [Shares whose dim 0 has hi - lo entries] on consecutive slices [lo, hi) of range(n) of
    `step` entries, one slice after the other, each result written into a preallocated output. n <= step: fn(0, n).

    Memory: the working set of a comparison circuit (~400 bytes per element: the split's masks, the carry tree's
    words, the unpacked bits of each message) is that of one slice, plus the outputs. Cost: fn's rounds once per
    slice (ceil(n / step) times); bytes unchanged when every slice's element count is a multiple of 24 (then each
    slice's balanced thirds are multiples of 8 and its packed bit fields fill whole bytes, so the per-party sums of
    the slices equal the unsliced totals).
    """
    if n <= step:
        return fn(0, n)
    outs = None
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        res = fn(lo, hi)
        if outs is None:
            outs = [Shares(*(torch.empty((n,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device) for t in r))
                    for r in res]
        for o, r in zip(outs, res):
            o.cur[lo:hi], o.prev[lo:hi] = r.cur, r.prev
        del res
    return outs


# ---------------------------------------------------------------------------------------------------------------------
# Arithmetic -> binary

def _split_part(x: Shares, sender: int, p_live: int, g_live: int, *, party) -> B.Part:
    """One sender's share of split_generate_propagate's round (all PRG draws happen here, before the round)."""
    s, nx, pv = B.roles(sender)
    rank, shape, dev = party.rank, x.shape, x.cur.device
    gm, pm = B.as_i64(g_live), B.as_i64(p_live)
    if rank == s:
        v = x.cur + x.prev
        u_s, r1, w1 = (party.prg_next.ring(shape, dev) for _ in range(3))
        u_p, r0, w0 = (party.prg_prev.ring(shape, dev) for _ in range(3))
        u_n = (v ^ u_s ^ u_p) & pm
        a_n = (v ^ r0 ^ w0) & gm
        a_p = (v ^ r1 ^ w1) & gm
        return B.Part({nx: [(u_n, p_live), (a_n, g_live)], pv: [(u_n, p_live), (a_p, g_live)]}, {},
                      lambda got: (BinShares(r1 & gm, r0 & gm), BinShares(u_s & pm, u_p & pm)))
    is_n = rank == nx
    other = pv if is_n else nx
    prg_s = party.prg_prev if is_n else party.prg_next  # the stream shared with P_s
    c = x.cur if is_n else x.prev                       # x_n: P_n holds (x_n, x_s), P_p holds (x_p, x_n)
    u_mine, r_mine, w = (prg_s.ring(shape, dev) for _ in range(3))  # P_n: u_s, R1, W'; P_p: u_p, R0, W
    h = (r_mine ^ (c & (w ^ r_mine))) & gm               # c ? W : R  (bitwise)

    def finish(got):
        u_n, a = got[s]
        g_n = ((c & a) ^ got[other][0] ^ r_mine) & gm
        if is_n:
            return BinShares(g_n, r_mine & gm), BinShares((u_n ^ c) & pm, u_mine & pm)
        return BinShares(r_mine & gm, g_n), BinShares(u_mine & pm, (u_n ^ c) & pm)

    return B.Part({other: [(h, g_live)]}, {s: [(shape, p_live), (shape, g_live)], other: [(shape, g_live)]}, finish)


def _cat_bin(xs, shape) -> BinShares:
    return BinShares(torch.cat([x.cur for x in xs]).view(shape), torch.cat([x.prev for x in xs]).view(shape))


def split_generate_propagate(x: Shares, p_live: int = B.ALL, g_live: int = G_LIVE, *, party,
                             sender: int | None = None):
    """(g, p) = (v & c, v ^ c) as binary shares, for x = v + c with v = x_s + x_p (P_s) and c = x_n (P_n, P_p).

    One round:
      1. P_s: u_s <- PRG_{s,n}, u_p <- PRG_{p,s}, u_n = v ^ u_s ^ u_p (binary shares of v), sent to P_n and P_p.
      2. g = v & c with output shares g_s = R1 <- PRG_{s,n}, g_p = R0 <- PRG_{p,s}, g_n = (v & c) ^ R0 ^ R1.
         P_n must learn (v & c) ^ R0: P_s sends a = v ^ R0 ^ W (W <- PRG_{s,p}); the helper P_p, who knows c, R0 and
         W, sends h = c ? W : R0 (bitwise); P_n computes (c & a) ^ h. Symmetrically P_p learns (v & c) ^ R1 from
         a' = v ^ R1 ^ W' (W' <- PRG_{s,n}) and h' = c ? W' : R1 from P_n.
    Privacy: P_n sees u_n (masked by u_p), a (masked by W) and h (= W where c = 1, = R0 where c = 0): uniform apart
    from what it should learn, (v & c) ^ R0, itself masked by R0 where c = 1 (where c = 0 the bit v & c = 0 is known
    to P_n anyway). Symmetric for P_p; P_s receives nothing.
    sender=None (balanced): the flattened elements are cut in three chunks (balanced_bounds), chunk j with sender
    P_j, all in the same round.
    Cost: 1 round. Single sender: P_s sends message_nbytes([(n, p_live), (n, g_live)]) to each of P_n and P_p, which
    send ceil(n |g_live| / 8) bytes each. Balanced, n = 3m: each party sends, to each peer, the sender fields of its
    chunk and the helper field of one other chunk in one message: 2 message_nbytes([(m, p_live), (m, g_live),
    (m, g_live)]).
    """
    with party.label("split"):
        if sender is not None:
            return B.run_parts([_split_part(x, sender, p_live, g_live, party=party)], party=party)[0]
        flat = x.map(lambda t: t.reshape(-1))
        bounds = B.balanced_bounds(flat.cur.numel())
        parts = [_split_part(flat.map(lambda t: t[lo:hi]), j, p_live, g_live, party=party) for j, lo, hi in bounds]
        res = B.run_parts(parts, party=party)
        return _cat_bin([r[0] for r in res], x.shape), _cat_bin([r[1] for r in res], x.shape)


def a2b(x: Shares, *, party, sender: int | None = None) -> BinShares:
    """Arithmetic -> binary: XOR shares of the 64-bit word x (exact for every value of Z_2^64).

    x = v + c (see module doc); (g, p) by split_generate_propagate, carries by a Kogge-Stone prefix tree,
    x = p ^ (G << 1).
    Cost: 7 rounds. Round 1 (split): single sender P_s 2 (8n + ceil(63n/8)) bytes, P_n / P_p ceil(63n/8);
    balanced (default, n = 3m) 2 (8m + ceil(126m/8)) each. Then every party sum_d ceil(n b_d / 8) with
    b = (123, 120, 114, 102, 78, 31) (~71 bytes per element). Balanced total ~86.8 bytes per element per party.
    Ref: ABY3 Sec. 5.3 (A2B with a parallel prefix adder); Kogge-Stone.
    """
    with party.label("a2b"):
        g, p = split_generate_propagate(x, B.ALL, G_LIVE, party=party, sender=sender)
        carries = B.prefix_generate(g, p, party=party, width=63)
        return B.xor(p, B.lshift(B.and_public(carries, G_LIVE), 1))


def msb(x: Shares, *, party, sender: int | None = None, bits: int = 64) -> BinShares:
    """Sign bit of x as a binary share at bit 0: [x < 0] for x read as signed. bits = 64: exact for EVERY x in
    Z_2^64; bits = l < 64: the sign of x read as an l-bit signed integer, exact while -2^(l-1) <= x < 2^(l-1).

    msb(v + c) = v_63 ^ c_63 ^ carry_63. With l < 64 bits, x is first moved up by z = 64 - l bits (x 2^z mod 2^64,
    local): the low z bits of every share are then zero, so only the top l bits of the split's messages and of the
    carry tree are live (reduction mod 2^l is a ring homomorphism; the sign of an in-range x is bit l - 1 of it).
    After split_generate_propagate, g and p are shifted left by one bit so that the carry into bit 63 is the group
    generate of a full 64-bit word (bit 0: g = p = 0), computed by binary.group_generate (a reduction tree).
    Cost: 7 rounds. Round 1 (split): single sender P_s 2 message_nbytes([(n, l), (n, l - 1)]) bytes, P_n and P_p
    ceil(n (l - 1) / 8); balanced (default, n = 3m) 2 message_nbytes([(m, l), (m, l - 1), (m, l - 1)]) each.
    Rounds 2-7 (tree): every party sum_k ceil(n b_k / 8), b = group_generate's live bits at lo = 64 - l:
    (63, 31, 15, 7, 3, 1) for l = 64, (47, 23, 11, 5, 2, 1) for l = 48. Per element, balanced: ~30.8 bytes each
    (l = 64), ~22.95 (l = 48).
    On the CPU the split and the tree run on bit rows (bitsliced.msb: same messages' bytes and rounds, less local
    work); GPU tensors (or bitsliced.ENABLED = False) take the word form below.
    """
    if not 2 <= bits <= 64:
        raise ValueError(f"msb: bits must be in [2, 64], got {bits}")
    z = 64 - bits
    with party.label("msb"):
        if z:
            x = x.map(lambda t: t << z)
        if bitsliced.applies(x):
            return bitsliced.msb(x, party=party, sender=sender, bits=bits)
        g, p = split_generate_propagate(x, B.mask_range(z, 64), B.mask_range(z, 63), party=party, sender=sender)
        top = B.group_generate(B.lshift(g, 1), B.lshift(p, 1), party=party, lo=z)
        return B.bit(B.xor(p, top), 63)


# ---------------------------------------------------------------------------------------------------------------------
# Binary -> arithmetic

def _norm_items(items):
    return [(it, None) if it is None or isinstance(it, Shares) else tuple(it) for it in items]


def _pick(t, index):
    return t if index is None else t[..., index]


def _out_shape(b: BinShares, x, index) -> tuple:
    bs = b.shape if index is None else b.shape[:-1] + (len(index),)
    return bs if x is None else torch.broadcast_shapes(bs, x.shape)


def _receiver_sum(c, t, f, e, x_n, x_s, idx) -> torch.Tensor:
    """The receiver's addend of b x: c (x_n + x_s) + t e + t x_n f; of b itself (x_n None): c + t f."""
    ci, ti, fi = _pick(c, idx), _pick(t, idx), _pick(f, idx)
    if x_n is None:
        return ci + ti * fi
    return ci * (x_n + x_s) + ti * e + ti * x_n * fi


def _helper_sum(c, t, v, w, x_p, x_n, idx) -> torch.Tensor:
    """The helper's addend of b x: c x_p - t W - t x_n V; of b itself (x_p None): -t V."""
    ti, vi = _pick(t, idx), _pick(v, idx)
    if x_p is None:
        return -ti * vi
    return _pick(c, idx) * x_p - ti * w - ti * x_n * vi


def _inject_part(b: BinShares, items, sender: int, *, party) -> B.Part:
    """One sender's share of inject's round (all PRG draws happen here, before the round)."""
    s, nx, pv = B.roles(sender)
    rank, dev = party.rank, b.cur.device
    shapes = [_out_shape(b, x, i) for x, i in items]
    if rank == s:
        d = (b.cur ^ b.prev) & 1
        v1 = party.prg_next.ring(b.shape, dev)
        v0 = party.prg_prev.ring(b.shape, dev)
        r1 = [party.prg_next.ring(sh, dev) for sh in shapes]
        r0 = [party.prg_prev.ring(sh, dev) for sh in shapes]
        to_n, to_p = [(d + v0, B.ALL)], [(d + v1, B.ALL)]
        for (x, idx), sh in zip(items, shapes):
            if x is None:
                continue
            dx = _pick(d, idx) * (x.cur + x.prev)
            to_n.append((dx + party.prg_prev.ring(sh, dev), B.ALL))
            to_p.append((dx + party.prg_next.ring(sh, dev), B.ALL))
        return B.Part({nx: to_n, pv: to_p}, {}, lambda got: [Shares(a, c) for a, c in zip(r1, r0)])

    # P_n (receiver of PRG_{s,p}-masked values, helper for the mirror) and P_p are symmetric:
    is_n = rank == nx
    prg_s = party.prg_prev if is_n else party.prg_next   # the stream shared with P_s
    other = pv if is_n else nx
    c = (b.cur if is_n else b.prev) & 1                  # c = b_n
    t = 1 - 2 * c
    x_n = [None if x is None else (x.cur if is_n else x.prev) for x, _ in items]
    x_mine = [None if x is None else (x.prev if is_n else x.cur) for x, _ in items]  # x_s at P_n, x_p at P_p
    # as receiver: A = c (x_n + x_mine) + ...; as helper: A = c x_mine - ...; the two sum to c x.
    vm = prg_s.ring(b.shape, dev)
    r_mine = [prg_s.ring(sh, dev) for sh in shapes]
    help_msgs = []
    for k, ((x, idx), sh) in enumerate(zip(items, shapes)):
        w = None if x is None else prg_s.ring(sh, dev)
        help_msgs.append((_helper_sum(c, t, vm, w, x_mine[k], x_n[k], idx) - r_mine[k], B.ALL))
    specs_s = [(b.shape, B.ALL)] + [(sh, B.ALL) for (x, _), sh in zip(items, shapes) if x is not None]

    def finish(got):
        f, es = got[s][0], iter(got[s][1:])
        outs = []
        for k, (x, idx) in enumerate(items):
            e = None if x is None else next(es)
            y_n = _receiver_sum(c, t, f, e, x_n[k], x_mine[k], idx) + got[other][k] - r_mine[k]
            outs.append(Shares(y_n, r_mine[k]) if is_n else Shares(r_mine[k], y_n))
        return outs

    return B.Part({other: help_msgs}, {s: specs_s, other: [(sh, B.ALL) for sh in shapes]}, finish)


def _inject_relay_part(b: BinShares, items, sender: int, *, party) -> B.Part:
    """One sender's share of inject's first round in the relayed form; its result is the Part of the second round
    (P_n relays y_n to P_p), whose result is the outputs. All PRG draws happen here, before the first round."""
    s, nx, pv = B.roles(sender)
    rank, dev = party.rank, b.cur.device
    shapes = [_out_shape(b, x, i) for x, i in items]

    def done(outs):
        return B.Part({}, {}, lambda got: outs)

    if rank == s:
        d = (b.cur ^ b.prev) & 1
        v = party.prg_prev.ring(b.shape, dev)                       # V, R0, W <- PRG_{s,p}
        r0 = [party.prg_prev.ring(sh, dev) for sh in shapes]
        msgs = [(d + v, B.ALL)]
        for (x, idx), sh in zip(items, shapes):
            if x is not None:
                msgs.append((_pick(d, idx) * (x.cur + x.prev) + party.prg_prev.ring(sh, dev), B.ALL))
        r1 = [party.prg_next.ring(sh, dev) for sh in shapes]        # R1 <- PRG_{s,n}
        return B.Part({nx: msgs}, {}, lambda got: done([Shares(a, c) for a, c in zip(r1, r0)]))

    if rank == pv:  # helper: A_p - R0 to P_n, then y_n back from P_n
        c = b.prev & 1                                               # b_n
        t = 1 - 2 * c
        v = party.prg_next.ring(b.shape, dev)
        r0 = [party.prg_next.ring(sh, dev) for sh in shapes]
        help_msgs = []
        for (x, idx), sh, r in zip(items, shapes, r0):
            w = None if x is None else party.prg_next.ring(sh, dev)
            x_p, x_n = (None, None) if x is None else (x.cur, x.prev)
            help_msgs.append((_helper_sum(c, t, v, w, x_p, x_n, idx) - r, B.ALL))

        def relayed(got):
            return B.Part({}, {nx: [(sh, B.ALL) for sh in shapes]},
                          lambda got2: [Shares(r, y) for r, y in zip(r0, got2[nx])])
        return B.Part({nx: help_msgs}, {}, relayed)

    # receiver P_n: A_n = c (x_n + x_s) + t e + t x_n f, y_n = A_n + (A_p - R0) - R1, then y_n to P_p
    c = b.cur & 1
    t = 1 - 2 * c
    r1 = [party.prg_prev.ring(sh, dev) for sh in shapes]

    def received(got):
        f, es = got[s][0], iter(got[s][1:])
        ys = []
        for k, ((x, idx), r) in enumerate(zip(items, r1)):
            e, x_n, x_s = (None, None, None) if x is None else (next(es), x.cur, x.prev)
            ys.append(_receiver_sum(c, t, f, e, x_n, x_s, idx) + got[pv][k] - r)
        return B.Part({pv: [(y, B.ALL) for y in ys]}, {}, lambda got2: [Shares(y, r) for y, r in zip(ys, r1)])

    specs_s = [(b.shape, B.ALL)] + [(sh, B.ALL) for (x, _), sh in zip(items, shapes) if x is not None]
    return B.Part({}, {s: specs_s, pv: [(sh, B.ALL) for sh in shapes]}, received)


def inject(b: BinShares, items: Sequence, *, party, sender: int | None = None) -> list[Shares]:
    """Arithmetic shares of b and of b * x for a binary bit b (bit 0 of each word), all in one round, or in two
(relayed) from RELAY_FROM output elements on.

    items: a list whose entries are None (output: b itself, b2a) or Shares x (output: b * x), or a pair
    (None | Shares x, index) where `index` (a public 1-D LongTensor) says which bit along the last dimension each last-
    dimension entry of x uses (b[..., index]); bit shapes broadcast against x.
    With b = d ^ c = c + t d, t = 1 - 2c (d known to P_s, c to P_n and P_p), and x = x' + x_n, x' = x_s + x_p:
        b x = c x + t d x' + t d x_n.
    P_s sends f = d + V and, per product, e = d x' + W to P_n (V, W <- PRG_{s,p}); P_n then holds
    A_n = c (x_n + x_s) + t e + t x_n f, the helper P_p holds A_p = c x_p - t W - t x_n V, A_n + A_p = b x.
    (For b itself: A_n = c + t f, A_p = -t V.) Output y_s = R1 <- PRG_{s,n}, y_p = R0 <- PRG_{p,s}; P_p sends
    A_p - R0 to P_n, who gets y_n = A_n + (A_p - R0) - R1. One round: the mirror image (masks from PRG_{s,n}, helper
    P_n) gives y_n to P_p. Relayed (RELAY_FROM output elements or more, _inject_relay_part): P_n sends y_n to P_p in
    a second round (P_p's own share, masked by R1, which P_p does not hold). Every received element is masked by a
    fresh pairwise PRG value the receiver does not hold.
    sender=None (balanced): the last dimension of b is cut in three chunks (balanced_bounds), chunk j with sender
    P_j (items follow their bits), all in the same round(s).
    Cost: 8 bytes per ring element. One round (fewer than RELAY_FROM outputs): P_s sends, to each of P_n and P_p,
    one element per bit (f) plus one per product output element (e); P_n and P_p send one element per output
    element (bits and products): 6 elements per product output, 4 per bit output in all. Relayed, 2 rounds: P_s
    sends f and the e's to P_n only (half its traffic), P_n and P_p one element per output each, as before: 4
    elements per product output, 3 per bit output in all. Balanced with equal chunks: every party sends the sum of
    the three roles' traffic over a third of the elements.
    Ref: the 3-party OT of ABY3 Sec. 5.4 (bit injection), rearranged so every mask is derived, not sent.
    """
    items = _norm_items(items)
    relay = sum(math.prod(_out_shape(b, x, i)) for x, i in items) >= RELAY_FROM
    make_part = _inject_relay_part if relay else _inject_part

    def run(parts):
        res = B.run_parts(parts, party=party)
        return B.run_parts(res, party=party) if relay else res

    with party.label("inject"):
        if sender is not None or b.cur.dim() == 0:
            return run([make_part(b, items, 0 if sender is None else sender, party=party)])[0]
        L = b.shape[-1]
        parts, sels = [], []
        for j, lo, hi in B.balanced_bounds(L):
            sub, sel = [], []
            for x, idx in items:
                if idx is not None:
                    pos = torch.nonzero((idx >= lo) & (idx < hi)).squeeze(-1)
                    sub.append((None if x is None else x.map(lambda t: t[..., pos]), idx[pos] - lo))
                    sel.append(pos)
                else:
                    if x is not None and x.cur.dim() and x.shape[-1] == L:
                        x = x.map(lambda t: t[..., lo:hi])
                    sub.append((x, None))
                    sel.append(None)
            parts.append(make_part(b.map(lambda t: t[..., lo:hi]), sub, j, party=party))
            sels.append(sel)
        res = run(parts)
        outs = []
        for k, (x, idx) in enumerate(items):
            chunks = [r[k] for r in res]
            cur = torch.cat([c.cur for c in chunks], -1)
            prev = torch.cat([c.prev for c in chunks], -1)
            if idx is not None:  # undo the grouping of positions by chunk
                order = torch.cat([sel[k] for sel in sels])
                inv = torch.empty_like(order)
                inv[order] = torch.arange(order.numel(), device=order.device)
                cur, prev = cur[..., inv], prev[..., inv]
            outs.append(Shares(cur, prev))
        return outs


def b2a(b: BinShares, *, party, sender: int | None = None, nbits: int = 1) -> Shares:
    """Binary -> arithmetic. nbits = 1: the bit 0 of each word as a ring 0/1. nbits = k > 1: the k-bit unsigned value
    of the low k bits (sum of 2^j b_j, each bit converted in the same round).

    Cost (inject): 1 round below RELAY_FROM converted bits: single sender P_s sends 16 bytes per converted bit, P_n and
    P_p 8; balanced (default) ~32/3 bytes per converted bit each (32 m for n = 3 m bits). Relayed: 2 rounds, 8 bytes
    per converted bit from every role (24 m each, balanced).
    """
    with party.label("b2a"):
        if nbits == 1:
            flat = b.map(lambda t: t.reshape(-1))
            return inject(flat, [None], party=party, sender=sender)[0].map(lambda t: t.view(b.shape))
        bits = B.BinShares(*(torch.stack([ring.bit(t, j) for j in range(nbits)], dim=-1).reshape(-1) for t in b))
        y = inject(bits, [None], party=party, sender=sender)[0].map(lambda t: t.view(tuple(b.shape) + (nbits,)))
        w = torch.tensor([B.as_i64(1 << j) for j in range(nbits)], dtype=ring.DTYPE, device=y.cur.device)
        return y.map(lambda t: (t * w).sum(-1))


def bit_inject(b: BinShares, x: Shares, *, party, sender: int | None = None) -> Shares:
    """b * x for a binary bit b (bit 0) and arithmetic x (any scale: the product keeps x's scale, no truncation).

    Cost (inject): 1 round below RELAY_FROM elements: single sender P_s sends 32 bytes per element (16 to each peer),
    P_n and P_p 8; balanced (default) ~16 bytes per element each (48 m for n = 3 m). Relayed: 2 rounds; P_s sends
    16 bytes per element, P_n and P_p 8 (32 m each, balanced).
    """
    with party.label("bit_inject"):
        if b.shape == x.shape:  # flatten, so that the balanced mode spreads the roles over all elements
            flat = inject(b.map(lambda t: t.reshape(-1)), [x.map(lambda t: t.reshape(-1))], party=party,
                          sender=sender)[0]
            return flat.map(lambda t: t.view(x.shape))
        return inject(b, [x], party=party, sender=sender)[0]
