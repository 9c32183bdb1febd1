"""Arithmetic protocols against float64 torch, in three real processes.

Tolerance: every fixed-point product is truncated once, with error in [0, 1] ulp (2^-20) on top of the input
encoding error (<= 0.5 ulp per input, amplified by the other operand). We assert |secure - float64| <= 4 ulp * (1 + |a||b|
terms), via atol = 1e-5 * k for k-term sums: rounding of inputs (2 * 0.5 ulp * |other|) plus 1 ulp of truncation.
"""
import torch
import torch.nn.functional as F

from secure_lightning.protocols import arithmetic as A
from secure_lightning.protocols.sharing import public_shares, reveal, reveal_float, share

ULP = 2.0 ** -20


def _share_pair(party, x, y):
    return share(x if party.rank == 0 else None, 0, party=party), share(y if party.rank == 1 else None, 1, party=party)


def _mul(party, x, y):
    a, b = _share_pair(party, x, y)
    with party.comm.cost() as c:
        z = A.mul(a, b, party=party)
    return reveal_float(z, party=party), c.total


def test_mul_broadcast_matches_torch(parties):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 5, generator=g, dtype=torch.float64) * 10
    y = torch.randn(3, 5, generator=g, dtype=torch.float64) * 10
    res = parties.run(_mul, x, y)
    want = x * y
    for out, cost in res:
        # inputs rounded to 0.5 ulp each: |err| <= 0.5ulp(|x|+|y|) + 1 ulp truncation
        assert torch.allclose(out, want, rtol=0, atol=ULP * (1 + 0.5 * (x.abs() + y.abs()).max().item()) + 1e-12)
        assert cost.rounds == 3
        assert cost.bytes == 2 * 8 * want.numel()


def _matmul(party, x, y, force):
    a, b = _share_pair(party, x, y)
    with party.comm.cost() as c:
        z = A.matmul(a, b, party=party, force_limbs=force)
    return reveal_float(z, party=party), c.total


def test_matmul_cost_and_value(parties):
    g = torch.Generator().manual_seed(1)
    m, k, n = 7, 33, 5
    x = torch.randn(2, m, k, generator=g, dtype=torch.float64)
    y = torch.randn(k, n, generator=g, dtype=torch.float64)
    for force in (False, True):
        res = parties.run(_matmul, x, y, force)
        for out, cost in res:
            assert torch.allclose(out, x @ y, atol=k * ULP * 4)
            assert cost.rounds == 3 and cost.bytes == 2 * 8 * 2 * m * n


def _conv(party, x, w, kw):
    a, b = _share_pair(party, x, w)
    return reveal_float(A.conv2d(a, b, **kw, party=party), party=party)


def test_conv2d_all_arguments(parties):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 9, 9, generator=g, dtype=torch.float64)
    w = torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
    kw = dict(stride=2, padding=1, dilation=2, groups=2)
    out = parties.run(_conv, x, w, kw)[0]
    assert torch.allclose(out, F.conv2d(x, w, **kw), atol=18 * ULP * 4)


def _trunc_many(party, n, d):
    g = torch.Generator().manual_seed(3)  # public test vector, same on all parties
    vals = torch.randint(-(2 ** 61), 2 ** 61, (n,), generator=g)
    vals[:4] = torch.tensor([2 ** 62 - 1, -(2 ** 62) + 1, 0, -1])
    x = public_shares(vals, party=party)
    y = reveal(A.truncate(x, d, party=party), party=party)
    err = y - torch.div(vals, 2 ** d, rounding_mode="floor")
    return int(((err != 0) & (err != 1)).sum()), int(err.min()), int(err.max())


def test_truncate_no_large_errors_1e7(parties):
    bad, lo, hi = parties.run(_trunc_many, 10 ** 7, 20)[0]
    assert bad == 0 and lo >= 0 and hi <= 1
