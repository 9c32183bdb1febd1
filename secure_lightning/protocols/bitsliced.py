"""The sign bit (convert.msb) computed on bit rows: one row per bit position, n/8 bytes a row.

The word form of msb keeps every binary share as int64 words and, at each of its 7 rounds, packs the live bits of the
words it sends (8x8 bit transposes), unpacks what it receives, and draws and ANDs full 64-bit words even where one
bit in 64 is live. Here each share is transposed once into rows (`rows_of`: row j = bit j of every element, little
endian within a byte, exactly the position-major layout of binary.encode_message), so
  * a message is the concatenation of its rows: no packing or unpacking at all;
  * an AND touches, and the pair PRGs draw, only the live rows: level k of the carry tree works on about n / 2^k
    bits a share instead of 64 n.
Every message has as many bytes as the word form's, and the rounds are the same; only the local work and the layout
of the PRG draws differ (both members of a pair draw the same amounts in the same order, as ever).

A chunk of elements that does not fill whole bytes is padded to a multiple of 8 in the rows (`Layout`); the pad bits
never travel: such a message carries the whole bytes of its rows, then the valid bits of their partly filled bytes
packed together, ceil(valid bits / 8) bytes as the word form's stream. GPU tensors stay on the word form
(`applies`); `ENABLED = False` keeps every call on it (to compare the two).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .. import bitpack
from . import binary as B
from .sharing import Shares


ENABLED = True


class Rows(NamedTuple):
    """P_i's two XOR shares of a block of bit rows (uint8 [rows, n / 8]): cur = x_i, prev = x_{i-1}."""
    cur: torch.Tensor
    prev: torch.Tensor

    def at(self, index) -> "Rows":
        """The rows `index` (a slice: views) of both shares."""
        return Rows(self.cur[index], self.prev[index])


class Layout(NamedTuple):
    """The columns of a row block, `nbytes` a row: chunks of elements side by side, each padded to whole bytes.
    `full`: the byte columns all of whose bits hold elements (None: every column); `tails`: (column, bits) of the
    partly filled last byte of each chunk that has one; `valid`: the bit slots of the elements, in order (None: all)."""
    nbytes: int
    full: torch.Tensor | None = None
    tails: tuple = ()
    valid: np.ndarray | None = None

    @property
    def nbits(self) -> int:
        return 8 * (self.nbytes if self.full is None else len(self.full)) + sum(b for _, b in self.tails)


def layout_of(sizes: list[int]) -> tuple[list[Layout], Layout]:
    """Chunks of `sizes` elements side by side, each padded to whole bytes: their layouts and the whole one's."""
    def one(m):
        return Layout(m // 8) if m % 8 == 0 else \
            Layout(m // 8 + 1, torch.arange(m // 8), ((m // 8, m % 8),), np.arange(m))
    chunks = [one(m) for m in sizes]
    if all(c.full is None for c in chunks):
        return chunks, Layout(sum(c.nbytes for c in chunks))
    offs = np.cumsum([0] + [c.nbytes for c in chunks[:-1]])
    return chunks, Layout(sum(c.nbytes for c in chunks),
                          torch.cat([o + torch.arange(m // 8) for o, m in zip(offs.tolist(), sizes)]),
                          tuple((int(o) + m // 8, m % 8) for o, m in zip(offs, sizes) if m % 8),
                          np.concatenate([8 * o + np.arange(m) for o, m in zip(offs, sizes)]))


def applies(x: Shares) -> bool:
    """Whether msb on x runs on rows: a non-empty CPU tensor (and ENABLED)."""
    return ENABLED and x.cur.device.type == "cpu" and x.cur.numel() > 0


def rows_of(words: torch.Tensor, lo: int, hi: int = 64) -> torch.Tensor:
    """Bits lo..hi-1 of int64 words as rows: uint8 [hi - lo, ceil(n / 8)] (pad bits zero). Local."""
    flat = words.reshape(-1)
    if flat.numel() % 8:
        flat = torch.cat([flat, flat.new_zeros(8 - flat.numel() % 8)])
    return bitpack.pack_words(flat, list(range(lo, hi))).view(hi - lo, flat.numel() // 8)


def words_of_row(row: torch.Tensor, lay: Layout) -> torch.Tensor:
    """One row's elements as int64 0/1 words (the bit at bit 0). Local."""
    bits = np.unpackbits(row.contiguous().numpy(), bitorder="little")
    return torch.from_numpy((bits if lay.valid is None else bits[lay.valid]).astype(np.int64))


def draw(prg, rows: int, nbytes: int) -> torch.Tensor:
    """rows x nbytes uniform bytes from a pair stream (the next rows * nbytes bytes of it)."""
    if rows * nbytes == 0:
        return torch.zeros(rows, nbytes, dtype=torch.uint8)
    buf = np.frombuffer(prg.random_bytes(rows * nbytes), dtype=np.uint8)
    return torch.from_numpy(buf if buf.flags.writeable else buf.copy()).view(rows, nbytes)


def _encode(blocks: list) -> torch.Tensor:
    """Blocks (rows, Layout) -> one message: the whole bytes of every block, then the valid bits of all the partly
    filled bytes packed together. For n elements a row that is k n / 8 bytes rounded up once, as the word form's
    stream (binary.encode_message)."""
    whole = [(b if lay.full is None else b[:, lay.full]).reshape(-1) for b, lay in blocks]
    tails = [_tail_bits(b, lay).reshape(-1) for b, lay in blocks if lay.tails]
    if tails:
        whole.append(torch.from_numpy(np.packbits(np.concatenate(tails), bitorder="little")))
    return torch.cat(whole) if len(whole) > 1 else whole[0]


def _tail_bits(block: torch.Tensor, lay: Layout) -> np.ndarray:
    """uint8 0/1 [rows, sum of tail bits]: the valid bits of each row's partly filled bytes."""
    cols = block[:, [c for c, _ in lay.tails]].numpy()
    bits = np.unpackbits(cols[..., None], axis=-1, bitorder="little")
    return np.concatenate([bits[:, t, :b] for t, (_, b) in enumerate(lay.tails)], axis=1)


def _decode(buf: torch.Tensor, specs: list) -> list[torch.Tensor]:
    """Inverse of _encode for specs (rows, Layout): row blocks, pad bits zero."""
    out, off = [], 0
    for r, lay in specs:
        if lay.full is None:
            out.append(buf[off:off + r * lay.nbytes].view(r, lay.nbytes))
            off += r * lay.nbytes
            continue
        blk = torch.zeros(r, lay.nbytes, dtype=torch.uint8)
        blk[:, lay.full] = buf[off:off + r * len(lay.full)].view(r, len(lay.full))
        off += r * len(lay.full)
        out.append(blk)
    if any(lay.tails for _, lay in specs):
        bits, pos = np.unpackbits(buf[off:].numpy(), bitorder="little"), 0
        for blk, (r, lay) in zip(out, specs):
            k = sum(b for _, b in lay.tails)
            if not k:
                continue
            chunk = bits[pos:pos + r * k].reshape(r, k)
            pos += r * k
            t = 0
            for c, b in lay.tails:
                blk[:, c] = torch.from_numpy(np.packbits(chunk[:, t:t + b], axis=1, bitorder="little")[:, 0])
                t += b
    return out


def exchange_rows(sends: dict, recvs: dict, *, party) -> dict:
    """One round: sends[peer] = [(row block, Layout)], recvs[peer] = [(rows, Layout)]; the blocks to one peer travel
    as one message (_encode). Cost: 1 round; ceil(valid bits / 8) bytes per message."""
    msgs = {peer: _encode(blocks) for peer, blocks in sends.items() if blocks}
    specs = {peer: ((-(-sum(r * lay.nbits for r, lay in s) // 8),), torch.uint8) for peer, s in recvs.items() if s}
    got = party.comm.round(msgs, specs)
    return {peer: _decode(got[peer], s) if s else [] for peer, s in recvs.items()}


def and_rows(pairs, lay: Layout, *, party) -> list[Rows]:
    """Several ANDs of row blocks (x, y) of layout `lay` in ONE round, as binary.and_many (ABY3 Sec. 5.1): z_i =
    x_i y_i ^ x_i y_{i-1} ^ x_{i-1} y_i ^ alpha_i sent to P_{i+1}. Cost: 1 round; the valid bits, packed."""
    zs = []
    for x, y in pairs:
        z = x.cur & (y.cur ^ y.prev)
        z ^= x.prev & y.cur
        z ^= draw(party.prg_next, *z.shape)
        z ^= draw(party.prg_prev, *z.shape)
        zs.append(z)
    with party.label("and"):
        got = exchange_rows({party.next: [(z, lay) for z in zs]}, {party.prev: [(z.shape[0], lay) for z in zs]},
                            party=party)[party.prev]
    return [Rows(z, g) for z, g in zip(zs, got)]


def _strided(mask: int, back: int = 0) -> slice:
    """The positions of `mask` (an arithmetic progression), less `back`, as a slice of rows."""
    pos = B.positions(mask)
    if not pos:
        return slice(0, 0)
    step = pos[1] - pos[0] if len(pos) > 1 else 1
    return slice(pos[0] - back, pos[-1] - back + 1, step)


def group_generate(g: Rows, p: Rows, lay: Layout, *, party, lo: int) -> None:
    """binary.group_generate on rows [64, n / 8] (g, p already shifted, bits below lo zero), in place: row 63 of g
    ends as the carry out. Same live bits per level, so the same rounds and bytes (6 rounds)."""
    with party.label("group_generate"):
        for k, (gm, pm) in enumerate(B.group_generate_live(lo), start=1):
            half = 1 << (k - 1)
            tg, tp = _strided(gm), _strided(pm)
            pairs = [(p.at(tg), g.at(_strided(gm, half)))]
            if pm:
                pairs.append((p.at(tp), p.at(_strided(pm, half))))
            res = and_rows(pairs, lay, party=party)
            g.cur[tg] ^= res[0].cur
            g.prev[tg] ^= res[0].prev
            if pm:
                p.cur[tp], p.prev[tp] = res[1].cur, res[1].prev


def _split_part(x: Shares, sender: int, z: int, lay: Layout, g_rows: Rows, p_rows: Rows, cols: slice, *,
                party) -> B.Part:
    """convert._split_part on rows, for one chunk of layout `lay`: the same messages (p rows z..63, g rows z..62),
    the results written into g_rows / p_rows (shifted up one row: bit j at row j + 1) at columns `cols`."""
    s, nx, pv = B.roles(sender)
    nb, lp, lg = lay.nbytes, 64 - z, 63 - z

    def put(g: Rows, p: Rows):
        g_rows.cur[1 + z:64, cols], g_rows.prev[1 + z:64, cols] = g.cur, g.prev
        p_rows.cur[1 + z:65, cols], p_rows.prev[1 + z:65, cols] = p.cur, p.prev

    if party.rank == s:
        v = rows_of(x.cur + x.prev, z)
        u_s, r1, w1 = draw(party.prg_next, lp, nb), draw(party.prg_next, lg, nb), draw(party.prg_next, lg, nb)
        u_p, r0, w0 = draw(party.prg_prev, lp, nb), draw(party.prg_prev, lg, nb), draw(party.prg_prev, lg, nb)
        u_n = v ^ u_s ^ u_p
        a_n, a_p = v[:lg] ^ r0 ^ w0, v[:lg] ^ r1 ^ w1
        return B.Part({nx: [(u_n, lay), (a_n, lay)], pv: [(u_n, lay), (a_p, lay)]}, {},
                      lambda got: put(Rows(r1, r0), Rows(u_s, u_p)))
    is_n = party.rank == nx
    other = pv if is_n else nx
    prg_s = party.prg_prev if is_n else party.prg_next
    c = rows_of(x.cur if is_n else x.prev, z)
    u_mine, r_mine, w = draw(prg_s, lp, nb), draw(prg_s, lg, nb), draw(prg_s, lg, nb)
    h = r_mine ^ (c[:lg] & (w ^ r_mine))

    def finish(got):
        u_n, a = got[s]
        g_n = (c[:lg] & a) ^ got[other][0] ^ r_mine
        p_n = u_n ^ c
        put(Rows(g_n, r_mine), Rows(p_n, u_mine)) if is_n else put(Rows(r_mine, g_n), Rows(u_mine, p_n))

    return B.Part({other: [(h, lay)]}, {s: [(lp, lay), (lg, lay)], other: [(lg, lay)]}, finish)


def msb(x: Shares, *, party, sender: int | None, bits: int) -> B.BinShares:
    """convert.msb on rows (x already moved up by z = 64 - bits; `applies(x)` must hold): the sign as bit 0 of int64
    words. Cost: as convert.msb, 7 rounds and the same bytes."""
    z = 64 - bits
    flat = x.map(lambda t: t.reshape(-1))
    n = flat.cur.numel()
    bounds = [(sender, 0, n)] if sender is not None else B.balanced_bounds(n)
    chunks, lay = layout_of([hi - lo for _, lo, hi in bounds])
    # rows 0..64: row j + 1 holds bit j (the tree reads g, p shifted up one bit: rows 0..63); row 64 = bit 63 of p
    g = Rows(*(torch.zeros(65, lay.nbytes, dtype=torch.uint8) for _ in range(2)))
    p = Rows(*(torch.zeros(65, lay.nbytes, dtype=torch.uint8) for _ in range(2)))
    parts, col = [], 0
    for (j, lo, hi), c in zip(bounds, chunks):
        parts.append(_split_part(flat.map(lambda t: t[lo:hi]), j, z, c, g, p, slice(col, col + c.nbytes),
                                 party=party))
        col += c.nbytes
    with party.label("split"):
        B.run_parts(parts, party=party, exchange=exchange_rows)
    group_generate(g.at(slice(0, 64)), p.at(slice(0, 64)), lay, party=party, lo=z)  # leaves row 64 of p as it was
    sign = Rows(g.cur[63] ^ p.cur[64], g.prev[63] ^ p.prev[64])
    return B.BinShares(words_of_row(sign.cur, lay).view(x.shape), words_of_row(sign.prev, lay).view(x.shape))
