"""The sign bit (convert.msb) computed on bit rows: one row per bit position, n/8 bytes a row.

The word form of msb keeps every binary share as int64 words and, at each of its 7 rounds, packs the live bits of the
words it sends (8x8 bit transposes), unpacks what it receives, and draws and ANDs full 64-bit words even where one
bit in 64 is live. Here each share is transposed once into rows (`rows_of`: row j = bit j of every element, little
endian within a byte, exactly the position-major layout of binary.encode_message), so
  * a message is the concatenation of its rows: no packing or unpacking at all;
  * an AND touches, and the pair PRGs draw, only the live rows: level k of the carry tree works on about n / 2^k
    bits a share instead of 64 n.
The bytes sent are identical to the word form's, field by field, and so are the rounds; only the local work and the
layout of the PRG draws differ (both members of a pair draw the same amounts in the same order, as ever).

It needs whole bytes per row: a CPU tensor whose split chunks all hold a multiple of 8 elements (`applies`); other
shapes (and GPU tensors) stay on the word form, whose bytes are the same. `ENABLED = False` keeps every call on the
word form (to compare the two).
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

    def __getitem__(self, index) -> "Rows":  # type: ignore[override]
        return Rows(self.cur[index], self.prev[index])


def applies(x: Shares, sender: int | None) -> bool:
    """Whether msb on x may run on rows: CPU, and every chunk of the split (one, or three balanced) a multiple of 8."""
    n = x.cur.numel()
    if not ENABLED or x.cur.device.type != "cpu" or n == 0:
        return False
    sizes = [n] if sender is not None else [hi - lo for _, lo, hi in B.balanced_bounds(n)]
    return all(m % 8 == 0 for m in sizes)


def rows_of(words: torch.Tensor, lo: int, hi: int = 64) -> torch.Tensor:
    """Bits lo..hi-1 of int64 words (n a multiple of 8) as rows: uint8 [hi - lo, n / 8]. Local."""
    n = words.numel()
    return bitpack.pack_words(words.reshape(-1), list(range(lo, hi))).view(hi - lo, n // 8)


def words_of_row(row: torch.Tensor, n: int) -> torch.Tensor:
    """One row (uint8 [n / 8]) as int64 0/1 words (the bit at bit 0). Local."""
    return torch.from_numpy(np.unpackbits(row.contiguous().numpy(), count=n, bitorder="little").astype(np.int64))


def draw(prg, rows: int, nbytes: int) -> torch.Tensor:
    """rows x nbytes uniform bytes from a pair stream (the next rows * nbytes bytes of it)."""
    if rows * nbytes == 0:
        return torch.zeros(rows, nbytes, dtype=torch.uint8)
    buf = np.frombuffer(prg.random_bytes(rows * nbytes), dtype=np.uint8)
    return torch.from_numpy(buf if buf.flags.writeable else buf.copy()).view(rows, nbytes)


def exchange_rows(sends: dict, recvs: dict, *, party) -> dict:
    """One round: sends[peer] = [uint8 row blocks], recvs[peer] = [(rows, bytes a row)]; the blocks to one peer
    travel as one message (their bytes in order). Cost: 1 round; the bytes of the blocks."""
    msgs = {peer: torch.cat([b.reshape(-1) for b in blocks]) for peer, blocks in sends.items() if blocks}
    specs = {peer: ((sum(r * w for r, w in s),), torch.uint8) for peer, s in recvs.items() if s}
    got = party.comm.round(msgs, specs)
    out = {}
    for peer, s in recvs.items():
        off, parts = 0, []
        for r, w in s:
            parts.append(got[peer][off:off + r * w].view(r, w))
            off += r * w
        out[peer] = parts
    return out


def and_rows(pairs, *, party) -> list[Rows]:
    """Several ANDs of row blocks (x, y) in ONE round, as binary.and_many (ABY3 Sec. 5.1): z_i = x_i y_i ^ x_i y_{i-1}
    ^ x_{i-1} y_i ^ alpha_i sent to P_{i+1}. Cost: 1 round; the bytes of the blocks (one bit per live bit)."""
    zs = []
    for x, y in pairs:
        z = x.cur & (y.cur ^ y.prev)
        z ^= x.prev & y.cur
        z ^= draw(party.prg_next, *z.shape)
        z ^= draw(party.prg_prev, *z.shape)
        zs.append(z)
    with party.label("and"):
        got = exchange_rows({party.next: zs}, {party.prev: [tuple(z.shape) for z in zs]}, party=party)[party.prev]
    return [Rows(z, g) for z, g in zip(zs, got)]


def _strided(mask: int, back: int = 0) -> slice:
    """The positions of `mask` (an arithmetic progression), less `back`, as a slice of rows."""
    pos = B.positions(mask)
    if not pos:
        return slice(0, 0)
    step = pos[1] - pos[0] if len(pos) > 1 else 1
    return slice(pos[0] - back, pos[-1] - back + 1, step)


def group_generate(g: Rows, p: Rows, *, party, lo: int) -> None:
    """binary.group_generate on rows [64, n / 8] (g, p already shifted, bits below lo zero), in place: row 63 of g
    ends as the carry out. Same live bits per level, so the same rounds and bytes (6 rounds)."""
    with party.label("group_generate"):
        for k, (gm, pm) in enumerate(B.group_generate_live(lo), start=1):
            half = 1 << (k - 1)
            tg, tp = _strided(gm), _strided(pm)
            pairs = [(p[tg], g[_strided(gm, half)])]
            if pm:
                pairs.append((p[tp], p[_strided(pm, half)]))
            res = and_rows(pairs, party=party)
            g.cur[tg] ^= res[0].cur
            g.prev[tg] ^= res[0].prev
            if pm:
                p.cur[tp], p.prev[tp] = res[1].cur, res[1].prev


def _split_part(x: Shares, sender: int, z: int, g_rows: Rows, p_rows: Rows, cols: slice, *, party) -> B.Part:
    """convert._split_part on rows, for one chunk: the same messages (p rows z..63, g rows z..62), the results
    written into g_rows / p_rows (shifted up one row: bit j at row j + 1) at columns `cols`."""
    s, nx, pv = sender % 3, (sender + 1) % 3, (sender - 1) % 3
    nb, lp, lg = x.cur.numel() // 8, 64 - z, 63 - z

    def put(g: Rows, p: Rows):
        g_rows.cur[1 + z:64, cols], g_rows.prev[1 + z:64, cols] = g.cur, g.prev
        p_rows.cur[1 + z:65, cols], p_rows.prev[1 + z:65, cols] = p.cur, p.prev

    if party.rank == s:
        v = rows_of(x.cur + x.prev, z)
        u_s, r1, w1 = draw(party.prg_next, lp, nb), draw(party.prg_next, lg, nb), draw(party.prg_next, lg, nb)
        u_p, r0, w0 = draw(party.prg_prev, lp, nb), draw(party.prg_prev, lg, nb), draw(party.prg_prev, lg, nb)
        u_n = v ^ u_s ^ u_p
        a_n, a_p = v[:lg] ^ r0 ^ w0, v[:lg] ^ r1 ^ w1
        return B.Part({nx: [u_n, a_n], pv: [u_n, a_p]}, {}, lambda got: put(Rows(r1, r0), Rows(u_s, u_p)))
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

    return B.Part({other: [h]}, {s: [(lp, nb), (lg, nb)], other: [(lg, nb)]}, finish)


def msb(x: Shares, *, party, sender: int | None, bits: int) -> B.BinShares:
    """convert.msb on rows (x already moved up by z = 64 - bits; `applies(x, sender)` must hold): the sign as bit 0
    of int64 words. Cost: as convert.msb, 7 rounds and the same bytes."""
    z = 64 - bits
    flat = x.map(lambda t: t.reshape(-1))
    n = flat.cur.numel()
    # rows 0..64: row j + 1 holds bit j (the tree reads g, p shifted up one bit: rows 0..63); row 64 = bit 63 of p
    g = Rows(*(torch.zeros(65, n // 8, dtype=torch.uint8) for _ in range(2)))
    p = Rows(*(torch.zeros(65, n // 8, dtype=torch.uint8) for _ in range(2)))
    bounds = [(sender, 0, n)] if sender is not None else B.balanced_bounds(n)
    with party.label("split"):
        parts = [_split_part(flat.map(lambda t: t[lo:hi]), j, z, g, p, slice(lo // 8, hi // 8), party=party)
                 for j, lo, hi in bounds]
        B.run_parts(parts, party=party, exchange=exchange_rows)
    group_generate(g[:64], p[:64], party=party, lo=z)  # leaves row 64 of p as it was
    sign = Rows(g.cur[63] ^ p.cur[64], g.prev[63] ^ p.prev[64])
    return B.BinShares(words_of_row(sign.cur, n).view(x.shape), words_of_row(sign.prev, n).view(x.shape))
