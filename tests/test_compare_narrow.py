"""Comparisons on fewer than 64 bits, and the inference forms of ReLU and max (no bit, no onehot kept).

A secure layer compares on l = guard.comparison_bits = 68 - f bits (48 at f = 20): the compared values are read as
l-bit signed integers, which is exact while they lie in [-2^(l-1), 2^(l-1)) raw. Tests: exact results on in-range
values up to the range's edges, exact byte counts (the split and the carry tree send only the live bits), the
inference forms' smaller inject round, and the overflow guard stopping a ReLU whose input leaves the range.
Tolerances: everything here is exact on the encoded values (comparisons, ReLU, max are exact; the only error is the
0.5 ulp input encoding).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secure_lightning.protocols import binary as B
from secure_lightning.protocols import compare as CMP
from secure_lightning.protocols import guard
from secure_lightning.protocols.sharing import reveal, share

F_BITS = 20
L = 48  # guard.comparison_bits at f = 20


def _nb(bits):
    return (bits + 7) // 8


def tree(n, bits=64):
    """group_generate's bytes per party on n words whose low 64 - bits bits are dead."""
    return sum(_nb(n * (bin(g).count("1") + bin(p).count("1"))) for g, p in B.group_generate_live(64 - bits))


def split(m, bits=64):
    """The balanced split round on n = 3 m elements, bytes per party: (u, a) of its own chunk + a helper word."""
    if bits == 64:
        return 2 * (8 * m + _nb(126 * m))
    return 2 * _nb(m * (bits + 2 * (bits - 1)))


def _raw(v):
    return torch.tensor(v, dtype=torch.float64) / 2 ** F_BITS


def _edges():
    """Values at the edges of the 48-bit range (raw), and ordinary ones."""
    top = 2 ** (L - 1)
    raw = [top, top - 1, top - 2, -top + 1, -top + 2, 0, 1, -1, 2, -2]
    g = torch.Generator().manual_seed(3)
    return torch.cat([_raw(raw), torch.randn(1008 - len(raw), generator=g, dtype=torch.float64) * 1e3])


def _enc(x):
    return torch.round(x * 2 ** F_BITS).long()


def test_tree_live_bits():
    assert [bin(g).count("1") + bin(p).count("1") for g, p in B.group_generate_live(0)] == [63, 31, 15, 7, 3, 1]
    assert [bin(g).count("1") + bin(p).count("1") for g, p in B.group_generate_live(16)] == [47, 23, 11, 5, 2, 1]


def _narrow(party, x):
    a = share(x if party.rank == 0 else None, 0, party=party, data=False)
    with party.comm.cost() as c48:
        y, bit = CMP.relu(a, party=party, bits=L)
    with party.comm.cost() as c48i:
        yi, none = CMP.relu(a, party=party, bits=L, need_bit=False)
    with party.comm.cost() as c64i:
        y64, _ = CMP.relu(a, party=party, need_bit=False)
    with party.comm.cost() as cl:
        neg = CMP.ltz(a, party=party, bits=L)
    audit = len(party.audit)
    outs = [reveal(t, party=party) for t in (y, bit, yi, y64, neg)]
    return outs, none, [c.total for c in (c48, c48i, c64i, cl)], audit


def test_relu_and_ltz_on_48_bits_exact_to_the_edges_with_costs(parties):
    x = _edges()
    n, m = x.numel(), x.numel() // 3
    ex = _enc(x)
    for (y, bit, yi, y64, neg), none, (c48, c48i, c64i, cl), audit in parties.run(_narrow, x):
        assert audit == 0 and none is None
        in_range = ex > -2 ** (L - 1)  # relu reads x - 1 on 48 bits: exact for -2^47 < x <= 2^47
        assert torch.equal(y[in_range], ex.clamp(min=0)[in_range])
        assert torch.equal(bit[in_range], (ex > 0).long()[in_range])
        assert torch.equal(yi, y) and torch.equal(y64, ex.clamp(min=0))
        low = ex < 2 ** (L - 1)   # ltz exact for -2^47 <= x < 2^47
        assert torch.equal(neg[low], (ex < 0).long()[low])
        assert (c48.rounds, c48.bytes) == (8, split(m, L) + tree(n, L) + 64 * m)
        assert (c48i.rounds, c48i.bytes) == (8, split(m, L) + tree(n, L) + 48 * m)  # inject: 4m + 2m elements
        assert (c64i.rounds, c64i.bytes) == (8, split(m) + tree(n) + 48 * m)
        assert (cl.rounds, cl.bytes) == (8, split(m, L) + tree(n, L) + 32 * m)
        assert c48.bytes < 0.86 * (split(m) + tree(n) + 64 * m)  # vs 64 bits: 44.3 against 52.2 bytes/element


def _pool_values(party, x):
    a = share(x if party.rank == 0 else None, 0, party=party, data=False)
    with party.comm.cost() as c:
        y, saved = CMP.max_pool2d(a, 2, party=party, bits=L, need_onehot=False)
    with party.comm.cost() as cv:
        v, oh = CMP.max(a, -1, party=party, bits=L, need_onehot=False)
    return reveal(y, party=party), saved, reveal(v, party=party), oh, c.total, cv.total


def test_max_pool_values_only_on_48_bits(parties):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 6, 8, generator=g, dtype=torch.float64) * 1e3
    x[0, 0, 0, :4] = _raw([2 ** (L - 2) - 1, -(2 ** (L - 2)) + 1, 5, 2 ** (L - 2) - 2])  # the watched range's edges
    ex = _enc(x)
    R = ex.numel() // 4  # 2x2 windows; level 0: 2R comparisons, level 1: R
    for y, saved, v, oh, c, cv in parties.run(_pool_values, x):
        assert saved is None and oh is None
        assert torch.equal(y, F.max_pool2d(ex.double(), 2).long())
        assert torch.equal(v, ex.max(-1).values)
        # per level, balanced: split + tree on N pairs, inject of the selected differences alone (6N/3 elements)
        want = sum(split(N // 3, L) + tree(N, L) + 16 * N for N in (2 * R, R))
        assert (c.rounds, c.bytes) == (16, want)


def _layer_costs(party, x):
    from secure_lightning.tensor import share_tensor
    xs = share_tensor(x if party.rank == 0 else None, 0, party, requires_grad=True)
    relu, pool = nn.ReLU(), nn.MaxPool2d(2)
    with guard.enabled(party), party.comm.cost() as train:  # guard on, as under the strategy: 48-bit comparisons
        y = pool(relu(xs))
    with guard.enabled(party), torch.no_grad(), party.comm.cost() as infer:
        pool(relu(xs))
    with torch.no_grad(), party.comm.cost() as unwatched:  # guard off: nothing watches the input, all 64 bits
        pool(relu(xs))
    return train.total.bytes, infer.total.bytes, unwatched.total.bytes


def test_layers_skip_the_backward_state_under_no_grad(parties):
    x = torch.randn(3, 4, 6, 8, generator=torch.Generator().manual_seed(5))  # 576 elements, 144 windows
    n, R = x.numel(), x.numel() // 4
    relu_train = split(n // 3, L) + tree(n, L) + 64 * (n // 3)
    relu_infer = split(n // 3, L) + tree(n, L) + 48 * (n // 3)
    pool_infer = sum(split(N // 3, L) + tree(N, L) + 16 * N for N in (2 * R, R))
    unwatched = (split(n // 3, 64) + tree(n, 64) + 48 * (n // 3)
                 + sum(split(N // 3, 64) + tree(N, 64) + 16 * N for N in (2 * R, R)))
    for train, infer, infer64 in parties.run(_layer_costs, x):
        assert infer == relu_infer + pool_infer
        assert infer64 == unwatched
        assert train > infer + (relu_train - relu_infer)  # training also keeps the onehot


def _relu_out_of_range(party, x):
    from secure_lightning import FixedPointOverflowError
    from secure_lightning.tensor import share_tensor
    guard.enable(party)
    try:
        xs = share_tensor(x if party.rank == 0 else None, 0, party)
        big = xs.sum(-1, keepdim=True)  # 64 values of 3e6: 1.9e8 > 2^27, beyond the 48-bit range (no product)
        F.relu(big)
        try:
            guard.check(party=party)
        except FixedPointOverflowError as e:
            return str(e)
        return None
    finally:
        guard.disable(party)


def test_guard_stops_a_relu_input_beyond_the_comparison_range(parties):
    fake = type("P", (), {"encoding": type("E", (), {"frac_bits": 20})(), "guard": guard.Guard()})()
    assert guard.comparison_bits(fake) == L
    fake.guard = None  # no guard, nothing watches the input: all 64 bits
    assert guard.comparison_bits(fake) == 64
    x = torch.full((2, 64), 3e6)
    for msg in parties.run(_relu_out_of_range, x):
        assert msg is not None and "relu" in msg, msg


@pytest.mark.parametrize("bits", [1, 65])
def test_msb_refuses_impossible_widths(bits):
    from secure_lightning.protocols.convert import msb
    with pytest.raises(ValueError, match="bits"):
        msb(None, party=None, bits=bits)
