"""Replicated XOR sharing of packed 64-bit words, AND gates, and parallel prefix adders.

A binary secret x = x_0 ^ x_1 ^ x_2 (each an int64 word = 64 independent bits). Party P_i holds
BinShares(cur=x_i, prev=x_{i-1}). XOR, NOT, shifts and AND with a public word are local; an AND of two secrets is one
round (ABY3 Sec. 5.1, re-randomised with a fresh XOR zero-sharing from the pair PRGs).

Communication is counted in the bits actually sent: every word-valued message field carries a `live` mask (a Python
int, bit j set = bit j of each word matters); only live bits travel, packed 8 per byte across all fields of one
message (`ring.pack_bits`), so a field of n words with k live bits costs k*n/8 bytes (the message total rounded up to a
whole byte). A field whose mask is all 64 bits is sent as raw int64 words (8 bytes each).

Every protocol here states `Cost:` per party as (rounds, bytes sent). "n" is the number of words.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from .. import bitpack, ring

ALL = (1 << 64) - 1  # every bit of a word is live


def as_i64(mask: int) -> int:
    """A 64-bit mask (Python int in [0, 2^64)) as the signed value an int64 tensor holds."""
    mask &= ALL
    return mask - (1 << 64) if mask >> 63 else mask


def positions(mask: int) -> list[int]:
    """Bit positions set in a 64-bit mask, ascending."""
    return [j for j in range(64) if (mask >> j) & 1]


def mask_range(lo: int, hi: int) -> int:
    """Mask with bits lo..hi-1 set."""
    return ((1 << max(hi, lo)) - 1) ^ ((1 << lo) - 1)


def mask_every(step: int, start: int, hi: int = 64) -> int:
    """Mask with bits start, start+step, ... (< hi) set."""
    m = 0
    for j in range(start, hi, step):
        m |= 1 << j
    return m


class BinShares(NamedTuple):
    """P_i's two XOR shares of a word tensor: cur = x_i, prev = x_{i-1}."""
    cur: torch.Tensor
    prev: torch.Tensor

    @property
    def shape(self):
        return self.cur.shape

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "BinShares":
        """Apply a local structural map (view, index, cat of slices, ...) to both shares."""
        return BinShares(fn(self.cur), fn(self.prev))

    def __xor__(self, o: "BinShares") -> "BinShares":
        return BinShares(self.cur ^ o.cur, self.prev ^ o.prev)


# ---------------------------------------------------------------------------------------------------------------------
# Local operations (0 rounds, 0 bytes)

def zero_xor_share(shape, *, party) -> torch.Tensor:
    """alpha_i = PRG_{i,i+1} ^ PRG_{i-1,i}: three XOR shares of zero. Cost: 0 rounds, 0 bytes."""
    return party.prg_next.ring(shape, party.device) ^ party.prg_prev.ring(shape, party.device)


def public_bin(value: torch.Tensor, *, party) -> BinShares:
    """XOR shares of a public word tensor: x_0 = value, x_1 = x_2 = 0. Cost: 0."""
    z = torch.zeros_like(value)
    return BinShares(value if party.rank == 0 else z, value if party.rank == 1 else z)


def xor(x: BinShares, y: BinShares) -> BinShares:
    """x ^ y. Cost: 0."""
    return BinShares(x.cur ^ y.cur, x.prev ^ y.prev)


def xor_public(x: BinShares, c, *, party) -> BinShares:
    """x ^ c for a public word (tensor or int), folded into share x_0. Cost: 0."""
    c = torch.as_tensor(as_i64(c) if isinstance(c, int) else c, dtype=ring.DTYPE, device=x.cur.device)
    cur = x.cur ^ c if party.rank == 0 else x.cur.expand(torch.broadcast_shapes(x.cur.shape, c.shape)).clone()
    prev = x.prev ^ c if party.rank == 1 else x.prev.expand(torch.broadcast_shapes(x.prev.shape, c.shape)).clone()
    return BinShares(cur, prev)


def not_(x: BinShares, *, party, live: int = ALL) -> BinShares:
    """Bitwise NOT of the live bits (x ^ live). Cost: 0."""
    return xor_public(x, live, party=party)


def and_public(x: BinShares, c) -> BinShares:
    """x & c for a public word (tensor or int mask). Cost: 0."""
    if isinstance(c, int):
        c = as_i64(c)
    return BinShares(x.cur & c, x.prev & c)


def lshift(x: BinShares, k: int) -> BinShares:
    """x << k (bits shifted out are dropped). Cost: 0."""
    return x.map(lambda t: ring.lshift(t, k))


def rshift(x: BinShares, k: int) -> BinShares:
    """Logical x >> k. Cost: 0."""
    return x.map(lambda t: ring.rshift_logical(t, k))


def bit(x: BinShares, i: int) -> BinShares:
    """Bit i of every word, moved to bit 0 (other bits zero). Cost: 0."""
    return x.map(lambda t: ring.bit(t, i))


# ---------------------------------------------------------------------------------------------------------------------
# Messages of packed live bits

def message_nbytes(specs: Sequence[tuple]) -> int:
    """Bytes of a message made of fields `(shape, live)`: 8 per word for live == ALL, else the live bits of all
    such fields packed together, 8 a byte."""
    full, nbits = 0, 0
    for shape, live in specs:
        n = torch.Size(shape).numel()
        if live & ALL == ALL:
            full += 8 * n
        else:
            nbits += n * bin(live & ALL).count("1")
    return full + ring.packed_nbytes(nbits)


FEW_BITS = 4  # up to this many live bits a word, shifts beat converting every word to its 64 bits (numpy)


def _bit_columns(flat: torch.Tensor, live: int) -> torch.Tensor:
    """The live bits of int64 words as uint8 0/1, position-major: bit j of every word, for each live j ascending."""
    pos = positions(live)
    if flat.device.type != "cpu":
        return torch.cat([torch.bitwise_right_shift(flat, j).bitwise_and(1).to(torch.uint8) for j in pos])
    a = flat.contiguous().numpy().view(np.uint64)
    if len(pos) <= FEW_BITS:
        return torch.from_numpy(np.concatenate([((a >> np.uint64(j)) & np.uint64(1)).astype(np.uint8) for j in pos]))
    bits = np.unpackbits(a.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    return torch.from_numpy(np.ascontiguousarray(bits[:, pos].T)).reshape(-1)


def _words_from_columns(cols: torch.Tensor, n: int, live: int) -> torch.Tensor:
    """Inverse of _bit_columns for n words: int64 words, zero outside the live bits."""
    pos = positions(live)
    if cols.device.type != "cpu":
        w = torch.zeros(n, dtype=ring.DTYPE, device=cols.device)
        for k, j in enumerate(pos):
            w |= torch.bitwise_left_shift(cols[k * n:(k + 1) * n].to(ring.DTYPE), j)
        return w
    c = cols.numpy().reshape(len(pos), n)
    if len(pos) <= FEW_BITS:
        w = np.zeros(n, dtype=np.uint64)
        for k, j in enumerate(pos):
            w |= c[k].astype(np.uint64) << np.uint64(j)
        return torch.from_numpy(w.view(np.int64))
    full = np.zeros((n, 64), dtype=np.uint8)
    full[:, pos] = c.T
    return torch.from_numpy(np.packbits(full, axis=1, bitorder="little").view(np.int64).reshape(n).copy())


def _aligned(specs) -> bool:
    """Every packed field fills whole bytes: the fields can be packed one by one (the same bytes as packing the
    concatenated stream)."""
    return all(n * bin(live & ALL).count("1") % 8 == 0 for n, live in specs if live & ALL not in (0, ALL))


def _by_transpose(flat_or_n, live: int, device) -> bool:
    """Pack this field with bitpack's 8x8 transposes (CPU, whole groups of 8 words, more than FEW_BITS live)."""
    return device.type == "cpu" and flat_or_n % 8 == 0 and bin(live).count("1") > FEW_BITS


def encode_message(fields: Sequence[tuple]) -> torch.Tensor:
    """Fields `(words int64 tensor, live mask)` -> one uint8 tensor: raw full words first, then packed live bits
    (field by field, live position by position, the bit of every word; 8 bits a byte, little-endian)."""
    raw, packed = [], []
    for t, live in fields:
        flat = t.reshape(-1)
        if live & ALL == ALL:
            raw.append(flat.contiguous().view(torch.uint8))
        elif live & ALL:
            packed.append((flat, live & ALL))
    parts = raw
    if packed and _aligned((f.numel(), live) for f, live in packed):
        parts = parts + [bitpack.pack_words(f, positions(live)) if _by_transpose(f.numel(), live, f.device)
                         else ring.pack_bits(_bit_columns(f, live)) for f, live in packed]
    elif packed:
        parts = parts + [ring.pack_bits(torch.cat([_bit_columns(f, live) for f, live in packed]))]
    if not parts:
        return torch.zeros(0, dtype=torch.uint8)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def decode_message(buf: torch.Tensor, specs: Sequence[tuple], device) -> list[torch.Tensor]:
    """Inverse of encode_message for fields `(shape, live)`: int64 words, zero outside the live bits."""
    buf = buf.to(device)
    out: list = [None] * len(specs)
    off = 0
    for i, (shape, live) in enumerate(specs):
        if live & ALL == ALL:
            n = torch.Size(shape).numel()
            out[i] = buf[off:off + 8 * n].clone().view(ring.DTYPE).view(shape)
            off += 8 * n
    packed = [(i, torch.Size(shape).numel(), live & ALL) for i, (shape, live) in enumerate(specs)
              if live & ALL not in (0, ALL)]
    if packed and _aligned((n, live) for _, n, live in packed):
        for i, n, live in packed:
            k = n * bin(live).count("1")
            chunk = buf[off:off + k // 8]
            if _by_transpose(n, live, buf.device):
                out[i] = bitpack.unpack_words(chunk, n, positions(live)).view(specs[i][0])
            else:
                bits = ring.unpack_bits(chunk, k, dtype=torch.uint8)
                out[i] = _words_from_columns(bits, n, live).to(device).view(specs[i][0])
            off += k // 8
    elif packed:
        bits = ring.unpack_bits(buf[off:], sum(n * bin(live).count("1") for _, n, live in packed), dtype=torch.uint8)
        pos = 0
        for i, n, live in packed:
            k = n * bin(live).count("1")
            out[i] = _words_from_columns(bits[pos:pos + k], n, live).to(device).view(specs[i][0])
            pos += k
    for i, (shape, live) in enumerate(specs):
        if out[i] is None:  # no live bits at all
            out[i] = torch.zeros(shape, dtype=ring.DTYPE, device=device)
    return out


def exchange(sends: dict, recvs: dict, *, party) -> dict:
    """One round: sends[peer] = [(words, live), ...] and recvs[peer] = [(shape, live), ...].

    Fields to the same peer travel as one message (`encode_message`). All three parties call it at the same step.
    Returns {peer: [int64 word tensors]}. Cost: 1 round; message_nbytes of each message sent.
    """
    msgs = {peer: encode_message(f) for peer, f in sends.items() if f}
    specs = {peer: ((message_nbytes(s),), torch.uint8) for peer, s in recvs.items() if s}
    got = party.comm.round(msgs, specs)
    return {peer: decode_message(got[peer], s, party.device) if s else [] for peer, s in recvs.items()}


class Part(NamedTuple):
    """One sub-protocol's share of a round: what it sends, what it expects, and how it finishes.

    All randomness must be drawn BEFORE the round (when the Part is built), so that several Parts sharing a round
    draw from the pair streams in the same order on both members of each pair.
    """
    sends: dict    # {peer: [(words, live), ...]}
    recvs: dict    # {peer: [(shape, live), ...]}
    finish: Callable  # finish({peer: [received words]}) -> result


def run_parts(parts: Sequence[Part], *, party, exchange: Callable = exchange) -> list:
    """Run several Parts in ONE round: their fields to the same peer are merged into one message (bits packed
    together; `exchange` does the round, e.g. bitsliced.exchange_rows for fields of bit rows).
    Cost: 1 round; per peer, message_nbytes of the merged fields."""
    sends: dict = {}
    recvs: dict = {}
    for pt in parts:
        for peer, f in pt.sends.items():
            sends.setdefault(peer, []).extend(f)
        for peer, s in pt.recvs.items():
            recvs.setdefault(peer, []).extend(s)
    got = exchange(sends, recvs, party=party)
    out, offset = [], {peer: 0 for peer in recvs}
    for pt in parts:
        mine = {}
        for peer, s in pt.recvs.items():
            mine[peer] = got[peer][offset[peer]:offset[peer] + len(s)]
            offset[peer] += len(s)
        out.append(pt.finish(mine))
    return out


def roles(sender: int) -> tuple[int, int, int]:
    """(s, n, p) = (sender, sender + 1, sender - 1) mod 3: the roles of the one-round sender protocols (convert.py,
    bitsliced.py)."""
    return sender % 3, (sender + 1) % 3, (sender - 1) % 3


def balanced_bounds(n: int) -> list[tuple[int, int, int]]:
    """Split range(n) into three near-equal chunks [(sender, lo, hi)], chunk j led by P_j (empty chunks dropped):
    sizes ceil(n/3), ..., as torch.tensor_split."""
    q, r = divmod(n, 3)
    out, lo = [], 0
    for j in range(3):
        hi = lo + q + (1 if j < r else 0)
        if hi > lo:
            out.append((j, lo, hi))
        lo = hi
    return out


# ---------------------------------------------------------------------------------------------------------------------
# AND gates

def and_many(pairs: Sequence[tuple], *, party) -> list[BinShares]:
    """Several independent ANDs `(x, y, live)` in ONE round (shapes broadcast per pair).

    P_i computes z_i = x_i y_i ^ x_i y_{i-1} ^ x_{i-1} y_i ^ alpha_i (alpha a fresh XOR zero-sharing, so the output is
    re-randomised), keeps the live bits and sends them to P_{i+1}; it receives z_{i-1} from P_{i-1}.
    Cost: 1 round; message_nbytes of all pairs (live bits of every pair's output words, packed together).
    Output bits outside `live` are zero. Ref: ABY3 (Mohassel, Rindal, CCS 2018), Sec. 5.1.
    """
    fields, specs = [], []
    for x, y, live in pairs:
        z = x.cur & (y.cur ^ y.prev)  # a fresh tensor of the broadcast shape: the rest works in place
        z ^= x.prev & y.cur
        z ^= party.prg_next.ring(z.shape, party.device)  # ^ PRG_{i-1,i} below: zero_xor_share, drawn in its order
        z ^= party.prg_prev.ring(z.shape, party.device)
        z &= as_i64(live)
        fields.append((z, live))
        specs.append((z.shape, live))
    with party.label("and"):
        got = exchange({party.next: fields}, {party.prev: specs}, party=party)[party.prev]
    return [BinShares(z, g) for (z, _), g in zip(fields, got)]


def and_(x: BinShares, y: BinShares, *, party, live: int = ALL) -> BinShares:
    """x & y on the `live` bits (others zero). Cost: 1 round; ceil(n k / 8) bytes for k < 64 live bits, else 8 n."""
    return and_many([(x, y, live)], party=party)[0]


# ---------------------------------------------------------------------------------------------------------------------
# Parallel prefix adders on (generate, propagate) words

def group_generate_live(lo: int) -> list[tuple[int, int]]:
    """(G mask, P mask) of each level of group_generate when the bits below `lo` are dead (zero in g and p)."""
    levels = []
    for k in range(1, 7):
        size, half = 1 << k, 1 << (k - 1)
        tops = [(j, j * size + size - 1) for j in range(64 >> k)]
        gm = sum(1 << top for j, top in tops if j * size + half - 1 >= lo)        # the low half holds a live bit
        pm = sum(1 << top for j, top in tops if j * size > lo) if k < 6 else 0  # a live bit lies below the group
        levels.append((gm, pm))
    return levels


def group_generate(g: BinShares, p: BinShares, *, party, lo: int = 0) -> BinShares:
    """Carry out of a 64-bit addition: bit 63 of the result = G[0..63] (other bits: partial groups / zero).

    Inputs: g = a & b and p = a ^ b of the addends. Only the bits the tree reads need be valid: g everywhere, p at
    bits 1..63. A Brent-Kung up-sweep (reduction tree): level k = 1..6 combines adjacent groups of 2^(k-1) bits,
        G = G_hi ^ (P_hi & G_lo),   P = P_hi & P_lo   (XOR is OR here: G and P of a group are never both 1);
    both ANDs of a level travel in one round. A group whose low half holds no live bit keeps G = G_hi (no AND), and
    P is computed only for groups with a live bit below them (no other P is ever read). lo = 0: live ANDs per
    level 32+31, 16+15, 8+7, 4+3, 2+1, 1 (120 bits in all); `lo` > 0 (bits below lo are zero in both g and p, as
    for a comparison on the top 64 - lo bits): fewer (lo = 16: 47, 23, 11, 5, 2, 1; 89 bits).
    Cost: 6 rounds; per party sum_k ceil(n b_k / 8) bytes, b_k the live bits of level k (group_generate_live).
    Ref: Brent and Kung, "A regular layout for parallel adders", IEEE TC 1982.
    """
    with party.label("group_generate"):
        for k, (gm, pm) in enumerate(group_generate_live(lo), start=1):
            size, half = 1 << k, 1 << (k - 1)
            pairs = [(p, lshift(g, half), gm)]
            if pm:
                pairs.append((p, lshift(p, half), pm))
            res = and_many(pairs, party=party)
            g = xor(and_public(g, mask_every(size, size - 1)), res[0])
            p = res[1] if pm else p
    return g


def prefix_generate(g: BinShares, p: BinShares, *, party, width: int = 63) -> BinShares:
    """All prefix carries: bit i of the result = G[0..i] for i < width (Kogge-Stone).

    Level d = 1, 2, 4, ...: G[i] ^= P[i] & G[i-d] for d <= i < width, P[i] &= P[i-d] for 2d <= i < width (the P still
    read later); both in one round. Inputs need g valid at 0..width-1 and p at 1..width-1.
    Cost: ceil(log2 width) rounds (6 for 63); per level ceil(n ((width - d) + max(0, width - 2d)) / 8) bytes per party
    (the last level has no P): for width 63 the live bits are 123, 120, 114, 102, 78, 31.
    Ref: Kogge and Stone, IEEE TC 1973.
    """
    with party.label("prefix_generate"):
        d = 1
        while d < width:
            gm = mask_range(d, width)
            pm = mask_range(2 * d, width) if 2 * d < width else 0
            pairs = [(p, lshift(g, d), gm)]
            if pm:
                pairs.append((p, lshift(p, d), pm))
            res = and_many(pairs, party=party)
            g = xor(g, res[0])
            p = res[1] if pm else p
            d *= 2
    return g


def add(x: BinShares, y: BinShares, *, party) -> BinShares:
    """x + y mod 2^64 on binary shares (ripple-free: g = x & y, then Kogge-Stone over 63 carry positions).

    Cost: 7 rounds; per party ceil(63 n / 8) (for g) plus prefix_generate's bytes (width 63).
    """
    with party.label("bin_add"):
        g = and_(x, y, party=party, live=mask_range(0, 63))
        p = xor(x, y)
        carries = prefix_generate(g, p, party=party, width=63)
        return xor(p, lshift(and_public(carries, mask_range(0, 63)), 1))
