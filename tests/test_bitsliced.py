"""msb on bit rows (protocols/bitsliced.py) against the word form, in three real processes.

Both forms run on the same shares in the same parties; the signs are reconstructed in the test process and checked
exactly against plain torch (the protocol is exact), and the two forms must cost the same bytes, messages and rounds
under every label (the row layout only changes the local work).
"""
import pytest
import torch

from secure_lightning.protocols import bitsliced, compare
from secure_lightning.protocols import convert as C
from secure_lightning.protocols.sharing import reveal

from tests.test_binary import _bin_open, _share_ring, _values


def _both_forms(party, x, sender, bits):
    a = _share_ring(party, x)
    out = []
    for enabled in (True, False):
        bitsliced.ENABLED = enabled
        try:
            assert bitsliced.applies(a) == enabled
            with party.comm.cost() as c:
                m = C.msb(a, party=party, sender=sender, bits=bits)
        finally:
            bitsliced.ENABLED = True
        out.append(((m.cur, m.prev), {k: (v.bytes, v.messages, v.rounds) for k, v in c.by_label.items()}))
    return out


def _signed(x, bits):
    """x read as a `bits`-bit signed integer is negative."""
    return ((x >> (bits - 1)) & 1).long() if bits < 64 else (x < 0).long()


@pytest.mark.parametrize("n,sender,bits", [(1992, None, 64), (1992, None, 48), (1992, 1, 48), (1992, 2, 64),
                                           (1992, None, 2), (1993, None, 48), (500, None, 64), (13, 0, 48),
                                           (7, None, 64), (1, None, 48)])
def test_rows_match_the_word_form_bit_for_bit_and_byte_for_byte(parties, n, sender, bits):
    """1992 = 3 x 664: balanced chunks of whole bytes; the other sizes leave chunks (or the whole) padded in the
    rows, whose messages then carry the valid bits only."""
    x = _values(2000, 11)[:n]
    if bits < 64:
        x = x.remainder(2 ** bits) - 2 ** (bits - 1)  # in the range of a bits-bit signed integer
    res = parties.run(_both_forms, x, sender, bits)
    want = _signed(x, bits)
    for form in (0, 1):
        assert torch.equal(_bin_open([r[form][0] for r in res]), want)
    for rank in range(3):
        rows_cost, words_cost = res[rank][0][1], res[rank][1][1]
        assert rows_cost == words_cost
        assert sum(r for _, _, r in rows_cost.values()) == 7


def _relu_chunked(party, x):
    a = _share_ring(party, x)
    y, bit = compare.relu(a, party=party, bits=48)
    return reveal(y, party=party), reveal(bit, party=party)


def test_relu_on_rows_across_chunks(parties):
    n = C.CHUNK + 24 * 37  # two slices, the second of 888 elements (balanced thirds of 296)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-(2 ** 40), 2 ** 40, (n,), generator=g)
    y, bit = parties.run(_relu_chunked, x)[0]
    assert torch.equal(y, x.clamp(min=0))
    assert torch.equal(bit, (x > 0).long())
