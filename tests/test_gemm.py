"""Exact int64 (mod 2^64) matmul/conv2d: the 16-bit limb path against torch's own int64 kernels, bit for bit.

Inputs are full-range random int64 (every bit random), so every limb pair and every wrap-around is exercised.
The bound on the inner dimension (2^21) is tested at its edge with all-ones limbs, the worst case for float64.
"""
import pytest
import torch
import torch.nn.functional as F

from secure_lightning import gemm
from secure_lightning.protocols import arithmetic as A
from secure_lightning.protocols.sharing import reveal, share

I64_MIN, I64_MAX = -(2 ** 63), 2 ** 63 - 1


def _rand(*shape, seed):
    g = torch.Generator().manual_seed(seed)  # public test data
    return torch.randint(I64_MIN, I64_MAX, shape, generator=g, dtype=torch.int64)


MATMUL_SHAPES = [
    ((7, 13), (13, 5)),            # 2-D
    ((3, 4, 9), (3, 9, 6)),        # batched
    ((2, 1, 4, 9), (3, 9, 6)),     # broadcast batch dims
    ((4, 9), (2, 3, 9, 5)),        # 2-D against batched
    ((9,), (9, 5)),                # 1-D @ 2-D
    ((4, 9), (9,)),                # 2-D @ 1-D
    ((9,), (9,)),                  # dot
    ((9,), (2, 9, 3)),             # 1-D @ batched
    ((2, 4, 9), (9,)),             # batched @ 1-D
    ((1, 1), (1, 1)),
]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_limb_matmul_equals_int64_bit_for_bit(sa, sb):
    a, b = _rand(*sa, seed=1), _rand(*sb, seed=2)
    want = torch.matmul(a, b)
    got = gemm.matmul(a, b, force_limbs=True)
    assert got.dtype == torch.int64 and got.shape == want.shape
    assert torch.equal(got, want)
    assert torch.equal(gemm.matmul(a, b), want)  # default CPU path is torch itself


def test_int64_matmul_wraps_like_the_ring():
    # a cross-check of the reference itself: one dot product computed with Python integers mod 2^64
    a, b = _rand(5, seed=3), _rand(5, seed=4)
    exact = sum(int(x) * int(y) for x, y in zip(a, b)) % 2 ** 64
    exact -= 2 ** 64 if exact >= 2 ** 63 else 0
    assert int(gemm.matmul(a, b, force_limbs=True)) == exact == int(torch.matmul(a, b))


CONV_CASES = [
    ((2, 3, 8, 8), (4, 3, 3, 3), {}),
    ((2, 4, 9, 7), (6, 2, 3, 2), dict(stride=2, padding=1, dilation=2, groups=2)),
    ((1, 6, 10, 10), (6, 1, 3, 3), dict(stride=(1, 2), padding=(2, 0), groups=6)),  # depthwise
    ((3, 5, 5), (2, 3, 2, 2), dict(padding=1)),                                       # unbatched
    ((2, 2, 6, 6), (3, 2, 3, 3), dict(padding="same")),
    ((1, 2, 6, 5), (2, 2, 1, 1), dict(stride=3)),
]


@pytest.mark.parametrize("sx,sw,kw", CONV_CASES)
def test_limb_conv2d_equals_int64_bit_for_bit(sx, sw, kw):
    x, w = _rand(*sx, seed=5), _rand(*sw, seed=6)
    want = F.conv2d(x, w, None, **kw)
    got = gemm.conv2d(x, w, **kw, force_limbs=True)
    assert got.dtype == torch.int64 and got.shape == want.shape
    assert torch.equal(got, want)


def test_inner_dimension_bound_raises(monkeypatch):
    big = torch.zeros(1, dtype=torch.int64).expand(2, gemm.MAX_INNER)  # 2^21 columns, no memory
    with pytest.raises(ValueError, match="2\\^21"):
        gemm.matmul(big, big.t(), force_limbs=True)
    monkeypatch.setattr(gemm, "MAX_INNER", 32)
    a, b = _rand(2, 31, seed=7), _rand(31, 3, seed=8)
    assert torch.equal(gemm.matmul(a, b, force_limbs=True), a @ b)  # just below the bound
    with pytest.raises(ValueError, match="matmul: inner dimension 32"):
        gemm.matmul(_rand(2, 32, seed=7), _rand(32, 3, seed=8), force_limbs=True)
    with pytest.raises(ValueError, match="conv2d: inner dimension 36"):  # C_in/groups * kh * kw = 4 * 3 * 3
        gemm.conv2d(_rand(1, 8, 5, 5, seed=9), _rand(2, 4, 3, 3, seed=10), groups=2, force_limbs=True)
    x, w = _rand(1, 6, 5, 5, seed=9), _rand(2, 3, 3, 3, seed=10)  # 27 < 32
    assert torch.equal(gemm.conv2d(x, w, groups=2, force_limbs=True), F.conv2d(x, w, groups=2))
    assert torch.equal(gemm.matmul(_rand(2, 40, seed=7), _rand(40, 3, seed=8)),  # torch's path has no bound
                       torch.matmul(_rand(2, 40, seed=7), _rand(40, 3, seed=8)))


def test_limb_path_exact_at_the_largest_inner_dimension():
    # all limbs 0xFFFF: each limb product is (2^16 - 1)^2, the float64 sums reach (2^21 - 1)(2^16 - 1)^2 < 2^53
    k = gemm.MAX_INNER - 1
    a = torch.full((1, k), -1, dtype=torch.int64)
    got = gemm.matmul(a, a.t(), force_limbs=True)
    assert int(got) == k  # (-1)(-1) summed k times


# ---------------------------------------------------------------------------------------------------------------------
# secure products: the limb path gives the same ring results as the default path

def _secure_products(party, x, y, xc, wc):
    sx = share(x if party.rank == 0 else None, 0, party=party)
    sy = share(y if party.rank == 1 else None, 1, party=party)
    sxc = share(xc if party.rank == 0 else None, 0, party=party)
    swc = share(wc if party.rank == 2 else None, 2, party=party)
    out = {}
    for force in (False, True):
        out[("matmul", force)] = reveal(A.matmul(sx, sy, party=party, fixed=False, force_limbs=force), party=party)
        out[("conv", force)] = reveal(A.conv2d(sxc, swc, 1, 1, 1, 2, party=party, fixed=False, force_limbs=force),
                                      party=party)
        out[("matmul_fixed", force)] = reveal(A.matmul(sx, sy, party=party, force_limbs=force), party=party)
    return out


def test_secure_matmul_conv_force_limbs_equal_default(parties):
    g = torch.Generator().manual_seed(12)
    x, y = torch.randn(2, 5, 16, generator=g) * 4, torch.randn(16, 3, generator=g) * 4
    xc, wc = torch.randn(2, 4, 6, 6, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    out = parties.run(_secure_products, x, y, xc, wc)[0]
    # ring products (no truncation) are deterministic: bit for bit equal, and equal to the plaintext ring product
    assert torch.equal(out[("matmul", True)], out[("matmul", False)])
    assert torch.equal(out[("conv", True)], out[("conv", False)])
    enc = lambda t: torch.round(t.double() * 2 ** 20).long()  # noqa: E731
    assert torch.equal(out[("matmul", False)], enc(x) @ enc(y))
    assert torch.equal(out[("conv", False)], F.conv2d(enc(xc), enc(wc), None, 1, 1, 1, 2))
    # with truncation each path rounds with its own randomness: within 1 ulp of each other
    assert (out[("matmul_fixed", True)] - out[("matmul_fixed", False)]).abs().max() <= 1


def test_cpu_autotune_times_both_paths_once_per_shape_and_stays_exact(monkeypatch):
    """A 2-D product of at least AUTOTUNE_MIN_MACS multiply-adds is timed both ways on its first call and the faster
    exact path kept for its shape and layout; smaller or batched products always take torch's int64 GEMM."""
    monkeypatch.setattr(gemm, "_FLOAT_FASTER", {})
    calls = []
    real = gemm._float_matmul
    monkeypatch.setattr(gemm, "_float_matmul", lambda a, b: calls.append(a.shape) or real(a, b))
    a, b = _rand(64, 256, seed=1), _rand(256, 300, seed=2)   # 4.9 M multiply-adds
    want = torch.matmul(a, b)
    assert torch.equal(gemm.matmul(a, b), want) and len(calls) == 1    # timed: both paths ran
    key = ("matmul", 64, 256, 300, a.stride(), b.stride())
    assert list(gemm._FLOAT_FASTER) == [key]
    for _ in range(2):
        assert torch.equal(gemm.matmul(a, b), want)
    assert len(calls) == 1 + 2 * gemm._FLOAT_FASTER[key]                 # later calls: the kept path only
    monkeypatch.setitem(gemm._FLOAT_FASTER, key, True)                   # either choice gives the same ring value
    assert torch.equal(gemm.matmul(a, b), want)
    small = _rand(30, 16, seed=3)
    assert torch.equal(gemm.matmul(small, small.t()), small @ small.t()) and len(gemm._FLOAT_FASTER) == 1


# extreme digits: d0 = -2^21 (products 2^42), and d0 = d1 = -2^21 / d0 = d1 = 2^21 - 1 (cross terms at their largest)
EXTREME = [-(2 ** 21), -(2 ** 21) - 2 ** 43, (2 ** 21 - 1) + ((2 ** 21 - 1) << 22)]


@pytest.mark.parametrize("v", EXTREME)
def test_digit_product_exact_at_its_term_bound(v):
    """At DIGIT_MAX_TERMS (2^11) terms of 2^42 a float64 sum reaches 2^53, still exact; the shifts with several digit
    pairs are cast one by one there. Full-range random operands exercise every wrap-around."""
    k = gemm.DIGIT_MAX_TERMS
    a, b = torch.full((5, k), v), torch.full((k, 3), v)
    assert torch.equal(gemm._digit_product(a, b, torch.matmul, k), a @ b)
    a, b = _rand(9, k, seed=4), _rand(k, 7, seed=5)
    assert torch.equal(gemm._digit_product(a, b, torch.matmul, k), a @ b)
    with pytest.raises(ValueError, match="not exact"):
        gemm._digit_product(a, b, torch.matmul, k + 1)


@pytest.mark.parametrize("xs,ws,stride,padding,groups", [((3, 4, 11, 9), (6, 4, 3, 3), 1, 1, 1),
                                                          ((2, 6, 10, 10), (6, 3, 5, 5), 2, 0, 2),
                                                          ((4, 1, 28, 28), (20, 1, 5, 5), 1, 0, 1)])
def test_digit_conv_equals_int64_conv(xs, ws, stride, padding, groups):
    x, w = _rand(*xs, seed=6), _rand(*ws, seed=7)
    want = F.conv2d(x, w, None, stride, padding, 1, groups)
    inner = ws[1] * ws[2] * ws[3]
    got = gemm._digit_product(x, w, lambda a, b: F.conv2d(a, b, None, stride, padding, 1, groups), inner)
    assert torch.equal(got, want)


@pytest.mark.parametrize("n,k,m", [(1, 800, 50), (16, 9, 40), (40, 9, 16), (3, 5, 2), (0, 4, 3), (5, 4, 0)])
def test_few_rows_or_columns_run_as_gemv_exactly(n, k, m):
    a, b = _rand(n, k, seed=8), _rand(k, m, seed=9)
    assert torch.equal(gemm.matmul(a, b), a @ b)
    wt = _rand(m, k, seed=10).t()  # a linear layer's weight, transposed view
    assert torch.equal(gemm.matmul(a, wt), a @ wt)


def test_cpu_conv_autotune_keeps_one_choice_per_shape_and_stays_exact(monkeypatch):
    monkeypatch.setattr(gemm, "_FLOAT_FASTER", {})
    x, w = _rand(16, 8, 12, 12, seed=11), _rand(16, 8, 3, 3, seed=12)  # 16 x 16 x 100 outputs x 72 = 1.8 M
    monkeypatch.setattr(gemm, "AUTOTUNE_MIN_MACS", 1 << 20)
    want = F.conv2d(x, w, None, 1, 0)
    for _ in range(3):
        assert torch.equal(gemm.conv2d(x, w), want)
    assert list(gemm._FLOAT_FASTER) == [("conv2d", tuple(x.shape), tuple(w.shape), 1, 0, 1, 1)]
    x2, want2 = x.repeat(2, 1, 1, 1), want.repeat(2, 1, 1, 1)
    monkeypatch.setattr(gemm, "_digit_product", lambda *a, **k: want2 + 1)  # a float path that is off by one
    assert torch.equal(gemm.conv2d(x2, w), want2)   # timed: faster or not, it disagrees with int64
    assert gemm._FLOAT_FASTER[("conv2d", (32, 8, 12, 12), (16, 8, 3, 3), 1, 0, 1, 1)] is False
    assert torch.equal(gemm.conv2d(x2, w), want2)   # and is never used
    big = _rand(16, 8, 3, 3, seed=13).repeat(1, 32, 1, 1)  # 2304 terms per output: int64 only
    assert torch.equal(gemm.conv2d(x.repeat(1, 32, 1, 1), big), F.conv2d(x.repeat(1, 32, 1, 1), big))
    assert len(gemm._FLOAT_FASTER) == 2
