"""Binary sharing, AND gates, adders and conversions (a2b, msb, b2a, bit_inject) in three real processes.

Values are checked exactly (these protocols are exact on Z_2^64); binary results are reconstructed in the test
process from the three parties' returned shares (no opening inside the parties, whose audit must stay empty).
Costs (bytes and rounds per party) are asserted exactly against the formulas in the docstrings.
"""
import torch

from secure_lightning import ring
from secure_lightning.protocols import binary as B
from secure_lightning.protocols import convert as C
from secure_lightning.protocols.sharing import reveal, share_encoded

EDGE = [0, 1, -1, 2, -2, 2 ** 62 - 1, -(2 ** 62), 2 ** 62, -(2 ** 62) - 1, 2 ** 63 - 1, -(2 ** 63), 12345, -12345]


def _values(n, seed):
    g = torch.Generator().manual_seed(seed)
    lo = torch.randint(0, 2 ** 32, (n,), generator=g)
    hi = torch.randint(0, 2 ** 32, (n,), generator=g)
    v = (hi << 32) ^ lo  # uniform over all of Z_2^64
    small = torch.randint(-(2 ** 20), 2 ** 20, (n // 4,), generator=g)
    return torch.cat([torch.tensor(EDGE, dtype=torch.int64), v, small])


def _nb(nbits):
    return (nbits + 7) // 8


def _bin_open(res):
    """Reconstruct a binary secret from [(cur, prev)] of the three parties, checking replication."""
    for i in range(3):
        assert torch.equal(res[i][1], res[(i - 1) % 3][0]), "replicated shares out of step"
    return res[0][0] ^ res[1][0] ^ res[2][0]


def _share_ring(party, vals, owner=0):
    return share_encoded(vals if party.rank == owner else None, owner, tuple(vals.shape), party=party)


def _bin_share(party, vals):
    """Test-only binary sharing of a public test vector (every party knows it): s_0, s_1 from the common PRG."""
    s0 = party.prg_common.ring(vals.shape)
    s1 = party.prg_common.ring(vals.shape)
    s = [s0, s1, vals ^ s0 ^ s1]
    return B.BinShares(s[party.rank], s[(party.rank - 1) % 3])


# ---------------------------------------------------------------------------------------------------------------------

def _and(party, x, y, live):
    a, b = _bin_share(party, x), _bin_share(party, y)
    with party.comm.cost() as c:
        z = B.and_(a, b, party=party, live=live)
    return (z.cur, z.prev), c.total, len(party.audit)


def test_and_values_and_packed_cost(parties):
    x, y = _values(200, 1), _values(200, 2)
    n = x.numel()
    for live, nbytes in [(B.ALL, 8 * n), (B.mask_range(0, 63), _nb(63 * n)), (1, _nb(n)), (0b1010, _nb(2 * n))]:
        res = parties.run(_and, x, y, live)
        assert torch.equal(_bin_open([r[0] for r in res]), x & y & B.as_i64(live))
        for _, cost, audit in res:
            assert cost.rounds == 1 and cost.bytes == nbytes and audit == 0


def _local_ops(party, x):
    a = _bin_share(party, x)
    with party.comm.cost() as c:
        outs = [B.not_(a, party=party), B.lshift(a, 3), B.rshift(a, 5), B.bit(a, 63),
                B.xor_public(a, 0x0F0F, party=party), B.and_public(a, 0xFF)]
    return [(o.cur, o.prev) for o in outs], c.total


def test_local_ops_are_free(parties):
    x = _values(50, 3)
    res = parties.run(_local_ops, x)
    want = [~x, x << 3, ring.rshift_logical(x, 5), ring.bit(x, 63), x ^ 0x0F0F, x & 0xFF]
    for k, w in enumerate(want):
        assert torch.equal(_bin_open([r[0][k] for r in res]), w)
    assert all(r[1].rounds == 0 and r[1].bytes == 0 for r in res)


def _add(party, x, y):
    a, b = _bin_share(party, x), _bin_share(party, y)
    with party.comm.cost() as c:
        z = B.add(a, b, party=party)
    return (z.cur, z.prev), c.total


def test_binary_add_exact(parties):
    x, y = _values(300, 4), _values(300, 5).flip(0)
    res = parties.run(_add, x, y)
    assert torch.equal(_bin_open([r[0] for r in res]), x + y)
    n = x.numel()
    ks = sum(_nb(b * n) for b in (123, 120, 114, 102, 78, 31))
    for _, cost in res:
        assert cost.rounds == 7 and cost.bytes == _nb(63 * n) + ks


# ---------------------------------------------------------------------------------------------------------------------
# Conversions

def _a2b_msb(party, x, sender):
    a = _share_ring(party, x)
    with party.comm.cost() as c1:
        xb = C.a2b(a, party=party, sender=sender)
    with party.comm.cost() as c2:
        m = C.msb(a, party=party, sender=sender)
    return (xb.cur, xb.prev), (m.cur, m.prev), c1.total, c2.total, len(party.audit)


def test_a2b_and_msb_exact_for_all_of_the_ring(parties):
    x = _values(2000, 6)
    n = x.numel()
    for sender in (0, 2):
        res = parties.run(_a2b_msb, x, sender)
        assert torch.equal(_bin_open([r[0] for r in res]), x)
        assert torch.equal(_bin_open([r[1] for r in res]), (x < 0).long())
        for rank, (_, _, ca, cm, audit) in enumerate(res):
            assert audit == 0
            split = 2 * (8 * n + _nb(63 * n)) if rank == sender else _nb(63 * n)
            ks = sum(_nb(b * n) for b in (123, 120, 114, 102, 78, 31))
            tree = sum(_nb(b * n) for b in (63, 31, 15, 7, 3, 1))
            assert (ca.rounds, ca.bytes) == (7, split + ks)
            assert (cm.rounds, cm.bytes) == (7, split + tree)


def _balanced(party, x):
    a = _share_ring(party, x)
    with party.comm.cost() as c1:
        xb = C.a2b(a, party=party)
    with party.comm.cost() as c2:
        m = C.msb(a, party=party)
    return (xb.cur, xb.prev), (m.cur, m.prev), c1.total, c2.total


def test_a2b_msb_balanced_senders(parties):
    x = _values(960, 9)[:960].view(30, 32)  # n = 960 = 3 m
    n, m = x.numel(), x.numel() // 3
    res = parties.run(_balanced, x)
    assert torch.equal(_bin_open([r[0] for r in res]), x)
    assert torch.equal(_bin_open([r[1] for r in res]), (x < 0).long())
    split = 2 * (8 * m + _nb(126 * m))
    ks = sum(_nb(b * n) for b in (123, 120, 114, 102, 78, 31))
    tree = sum(_nb(b * n) for b in (63, 31, 15, 7, 3, 1))
    for _, _, ca, cm in res:
        assert (ca.rounds, ca.bytes) == (7, split + ks)
        assert (cm.rounds, cm.bytes) == (7, split + tree)


def _b2a_inject(party, bits, x, sender):
    b = _bin_share(party, bits)
    a = _share_ring(party, x, owner=1)
    with party.comm.cost() as c1:
        y = C.b2a(b, party=party, sender=sender)
    with party.comm.cost() as c2:
        z = C.bit_inject(b, a, party=party, sender=sender)
    with party.comm.cost() as c3:
        w = C.b2a(b, party=party, sender=sender, nbits=8)
    outs = [reveal(v, party=party) for v in (y, z, w)]
    return outs, (c1.total, c2.total, c3.total)


def test_b2a_and_bit_inject(parties):
    x = _values(500, 7).view(-1, 2)
    n = x.numel()
    bits = _values(500, 8).view(-1, 2)  # random words: only bit 0 (or the low 8 bits) matter
    for sender in (0, 1, None):
        res = parties.run(_b2a_inject, bits, x, sender)
        for rank, (outs, (c1, c2, c3)) in enumerate(res):
            assert torch.equal(outs[0], bits & 1)
            assert torch.equal(outs[1], (bits & 1) * x)
            assert torch.equal(outs[2], bits & 0xFF)
            assert c1.rounds == c2.rounds == 1
            assert c3.rounds == 2  # 8 n >= convert.RELAY_FROM converted bits: relayed (see the test below)
            if sender is not None:
                s = rank == sender
                assert c1.bytes == (16 * n if s else 8 * n)
                assert c2.bytes == (32 * n if s else 8 * n)
                assert c3.bytes == 8 * 8 * n
        if sender is None:  # balanced: same total traffic (whole ring elements), spread over the three parties
            tot = [sum(r[1][k].bytes for r in res) for k in range(3)]
            assert tot == [32 * n, 48 * n, 24 * 8 * n]
            assert max(r[1][1].bytes for r in res) <= 48 * (n // 3 + 1)  # ~16 n each instead of 32 n / 8 n

def test_relayed_b2a_and_bit_inject(parties):
    """From convert.RELAY_FROM outputs on, inject takes two rounds and P_n relays its output share to P_p: the
    sender's traffic halves (it sends to P_n only), the others' stays at 8 bytes per output."""
    from secure_lightning.protocols.convert import RELAY_FROM
    n = RELAY_FROM + 240
    x = _values(n, 9)[:n].view(-1, 2)
    bits = _values(n, 10)[:n].view(-1, 2)
    for sender in (2, None):
        res = parties.run(_b2a_inject, bits, x, sender)
        for rank, (outs, (c1, c2, c3)) in enumerate(res):
            assert torch.equal(outs[0], bits & 1)
            assert torch.equal(outs[1], (bits & 1) * x)
            assert torch.equal(outs[2], bits & 0xFF)
            assert c1.rounds == c2.rounds == c3.rounds == 2
            if sender is not None:
                s = rank == sender
                assert c1.bytes == 8 * n
                assert c2.bytes == (16 * n if s else 8 * n)
                assert c3.bytes == 8 * 8 * n
        if sender is None:  # 3 and 4 ring elements per output in all, against 4 and 6 in one round
            assert [sum(r[1][k].bytes for r in res) for k in range(3)] == [24 * n, 32 * n, 24 * 8 * n]
