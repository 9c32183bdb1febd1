"""Ops users reach for (clamp/clip, hardtanh/relu6, leaky_relu, abs, sign, ...): values and gradients against float64
torch (tests/test_tensor.py's `check`), exact communication costs, and unsupported ops failing in the forward pass.

Tolerances: the piecewise ops are exact on the encoded values (the encoded max/min, bits from an exact comparison),
so their only error is the input's encoding (0.5 ulp) and the products around them in `check` (loss = sum(y * v)
with a secret v: one truncation, 1 ulp, plus 0.5 ulp times |v| ~ 3). 8 ulp covers that; leaky_relu adds one
truncation of slope * min(x, 0) in both passes (1 ulp more), same bound. Inputs avoid the kinks by more than 2^-10,
where torch's gradient convention at ties (clamp: inclusive bounds; abs: 0 at 0) may differ from the bits'.
"""
import torch
import torch.nn.functional as F
from torch import nn

from secure_lightning.protocols import binary as B

from tests.test_tensor import ULP, _share, check

ATOL_EXACT = 8 * ULP


def _nb(bits):
    return (bits + 7) // 8


LAYER_BITS = 48  # guard.comparison_bits at f = 20: the width of a secure layer's comparisons


def T(n, bits=64):
    """msb's AND tree, bytes per party for n elements compared on `bits` bits (protocols/binary.py)."""
    if bits == 64:
        return sum(_nb(b * n) for b in (63, 31, 15, 7, 3, 1))
    return sum(_nb(n * (bin(g).count("1") + bin(p).count("1"))) for g, p in B.group_generate_live(64 - bits))


def _split(m, bits):
    """msb's split round, balanced on n = 3 m elements: bytes per party."""
    return 2 * (8 * m + _nb(126 * m)) if bits == 64 else 2 * _nb(m * (3 * bits - 2))


def relu_bytes(n, bits=64):
    """compare.relu on n = 3 m elements, balanced: bytes per party (protocols/compare.py's cost table)."""
    m = n // 3
    return _split(m, bits) + T(n, bits) + 64 * m


def ltz_bytes(n, bits=64):
    m = n // 3
    return _split(m, bits) + T(n, bits) + 32 * m


def _away_from(x, points, gap=2.0 ** -10):
    """Move entries of x that lie within gap of a kink out of the way (torch's tie conventions differ)."""
    for p in points:
        near = (x - p).abs() < gap
        x = torch.where(near, x + 4 * gap, x)
    return x


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- clamp / clip / hardtanh / relu6 / leaky_relu / abs / sign: values and gradients -------------------------------
def test_clamp_family_values_and_gradients(parties):
    x = _away_from(torch.randn(4, 6, generator=_gen(0)) * 2, (-0.5, 0.5, 0.0, 0.25, -1.0, 1.0, 0.1))
    lo = _away_from(torch.linspace(-1.5, 0.0, 6), ())
    for fn in (lambda t: t.clamp(-0.5, 0.5), lambda t: torch.clamp(t, min=0.25), lambda t: t.clamp(max=0.1),
               lambda t: torch.clip(t, -0.5, 0.5), lambda t: t.clamp_min(0.1) + t.clamp_max(-0.5),
               lambda t: F.hardtanh(t), lambda t: nn.Hardtanh(-0.5, 0.25)(t), lambda t: F.relu6(t * 4),
               lambda t: nn.ReLU6()(t * 4), lambda t: (t * 1).clamp_(-0.5, 0.5),
               lambda t: F.hardtanh(t * 1, inplace=True), lambda t: t.clamp(0.5, -0.5)):
        check(parties, fn, [x], atol=ATOL_EXACT)
    # tensor bounds: a public lower bound, a shared upper bound (its gradient too)
    x2 = _away_from(x, list(lo) + [1.0])
    check(parties, lambda t: t.clamp(lo, torch.ones(6)), [x2], atol=ATOL_EXACT)
    check(parties, lambda t, h: torch.clamp(t, max=h), [x2, torch.full((1, 6), 0.3)], atol=ATOL_EXACT)
    check(parties, lambda t, lo, hi: torch.clamp(t, lo, hi), [x2, lo.view(1, 6) - 0.01, torch.full((4, 1), 0.7)],
          atol=ATOL_EXACT)


def test_leaky_relu_abs_sign_values_and_gradients(parties):
    x = _away_from(torch.randn(4, 6, generator=_gen(1)) * 2, (0.0,))
    x[0, 0] = 0.0  # sign(0) = 0 exactly (its gradient is 0 everywhere)
    for fn in (F.leaky_relu, lambda t: F.leaky_relu(t, 0.2), nn.LeakyReLU(0.25), lambda t: torch.sign(t) * t,
               lambda t: nn.LeakyReLU(0.1, inplace=True)(t * 1), torch.sgn):
        check(parties, fn, [x], atol=ATOL_EXACT)
    x = x[1:]  # abs: away from 0 (torch's gradient at 0 is 0, the bit's -1)
    for fn in (torch.abs, lambda t: t.abs(), abs, lambda t: (t * 1).abs_(), lambda t: torch.absolute(t)):
        check(parties, fn, [x], atol=ATOL_EXACT)


def _piecewise_costs(party, x, g):
    """Forward and backward cost of each op on a fresh shared x (requires_grad) with a shared upstream gradient."""
    ops = {
        "clamp": lambda t: t.clamp(-0.5, 0.5), "clamp_min": lambda t: t.clamp(min=0.1),
        "clamp_max": lambda t: t.clamp(max=0.1), "relu6": F.relu6, "hardtanh": F.hardtanh, "abs": torch.abs,
        "sign": torch.sign, "leaky": F.leaky_relu, "leaky_pow2": lambda t: F.leaky_relu(t, 0.125),
    }
    out = {}
    for k, f in ops.items():
        xs = _share(party, x, True)
        gs = _share(party, g, owner=1)
        with party.comm.cost() as fwd:
            y = f(xs)
        with party.comm.cost() as bwd:
            y.backward(gs)
        _ = xs.grad.shares  # a deferred scale (leaky_pow2) would settle here, outside the measured blocks
        out[k] = (fwd.total.rounds, fwd.total.bytes, bwd.total.rounds, bwd.total.bytes)
    return out, len(party.audit)


def test_piecewise_costs_exact(parties):
    n = 48  # 2 n = 96 = 3 m with m a multiple of 4: the balanced chunks pack to whole bytes
    x, g = torch.randn(6, 8, generator=_gen(2)), torch.randn(6, 8, generator=_gen(3))
    for out, opened in parties.run(_piecewise_costs, x, g):
        assert opened == 0
        for k in ("clamp", "relu6", "hardtanh"):  # one ReLU on 2n elements; backward g * (b1 - b2)
            assert out[k] == (8, relu_bytes(2 * n), 1, 8 * n), (k, out[k])
        for k in ("clamp_min", "clamp_max", "abs"):  # one ReLU on n; backward one ring product
            assert out[k] == (8, relu_bytes(n), 1, 8 * n), (k, out[k])
        assert out["sign"] == (8, ltz_bytes(2 * n), 0, 0)
        # relu + one truncation of 0.01 * min(x, 0); backward: ring product, then the same truncation
        assert out["leaky"] == (11, relu_bytes(n) + 16 * n, 4, 8 * n + 16 * n), out["leaky"]
        assert out["leaky_pow2"] == (8, relu_bytes(n), 1, 8 * n), out["leaky_pow2"]  # 2^-3 defers its scale


# ---- nearest upsampling ----------------------------------------------------------------------------------------------
def _upsample_cost(party, x):
    xs = _share(party, x, True)
    with party.comm.cost() as fwd:
        y = nn.Upsample(scale_factor=2)(xs * 0.5)  # a deferred scale passes through
    g = _share(party, torch.ones(y.shape), owner=1)
    with party.comm.cost() as bwd:
        y.backward(g * 0.25)  # and a deferred gradient scale too
    return fwd.total.bytes + fwd.total.rounds, bwd.total.bytes + bwd.total.rounds


def test_nearest_upsample_forward_backward_are_local(parties):
    x = torch.randn(2, 3, 3, 4, generator=_gen(4))
    for fn in (lambda t: F.interpolate(t, scale_factor=2, mode="nearest"), nn.Upsample(scale_factor=(2, 3)),
               lambda t: F.interpolate(t, size=(5, 7)), lambda t: F.interpolate(t[:, :, 0], scale_factor=3),
               lambda t: F.interpolate(t.unsqueeze(2).expand(2, 3, 2, 3, 4), scale_factor=(1, 2, 2))):
        check(parties, fn, [x], atol=4 * ULP)  # exact copies: input rounding and check's product only
    assert parties.run(_upsample_cost, x) == [(0, 0)] * 3


# ---- norms -----------------------------------------------------------------------------------------------------------
# approx.sqrt / rsqrt (f = 20): 2e-6 + 1e-7 |out|; normalize multiplies rsqrt's error by |x| (~3 here), and the
# gradients add two or three products: ATOL_NORM = 3e-5 on O(1) values (test_tensor.py's ATOL_APPROX).
ATOL_NORM = 3e-5


def test_norm_and_normalize_values_and_gradients(parties):
    x = torch.randn(4, 5, generator=_gen(5))
    xz = x.clone()
    xz[2] = 0.0  # a zero vector normalizes to 0 as in torch (torch's gradient there is 1/eps = 1e12: not compared)
    for fn in (lambda t: F.normalize(t, dim=1), lambda t: F.normalize(t, dim=0), lambda t: t.norm(dim=1),
               torch.norm, lambda t: torch.linalg.vector_norm(t, 2, dim=-1, keepdim=True),
               lambda t: torch.linalg.vector_norm(t, 1, dim=0), lambda t: torch.linalg.norm(t, dim=1)):
        check(parties, fn, [x], atol=ATOL_NORM)
    check(parties, lambda t, w: F.normalize(t, dim=1) * w, [xz, torch.ones(4, 1)], grad_mask=[False, True],
          atol=ATOL_NORM)


def _norm_costs(party, x):
    from secure_lightning.protocols import approx
    from secure_lightning.protocols import arithmetic as A
    from secure_lightning.protocols import local as L
    xs = _share(party, x, True)
    with party.comm.cost() as n_fwd:
        n = xs.norm(dim=1)
    gn = _share(party, torch.ones(4), owner=1)
    with party.comm.cost() as n_bwd:
        n.backward(gn)
    xs2 = _share(party, x, True)
    with party.comm.cost() as z_fwd:
        y = F.normalize(xs2, dim=1)
    g = _share(party, torch.ones(4, 6), owner=1)
    with party.comm.cost() as z_bwd:
        y.backward(g)
    # the pieces on their own: square, sum, sqrt / rsqrt of s, products
    sq = xs.shares
    with party.comm.cost() as p_sq:
        s = L.sum(A.square(sq, party=party), dim=1, keepdim=True)
    with party.comm.cost() as p_sqrt:
        approx.sqrt(s, party=party)
    with party.comm.cost() as p_rsqrt:
        approx.rsqrt(L.add_public(s, 2.0 ** -20, party=party), party=party)
    return [(c.total.rounds, c.total.bytes) for c in (n_fwd, n_bwd, z_fwd, z_bwd, p_sq, p_sqrt, p_rsqrt)]


def test_norm_costs_exact(parties):
    x = torch.randn(4, 6, generator=_gen(6))
    N, R = 24, 4  # elements, vectors
    for nf, nb, zf, zb, sq, sqrt_, rsqrt_ in parties.run(_norm_costs, x):
        assert sq == (3, 16 * N)
        assert nf == (26, sq[1] + sqrt_[1])                            # square, sum, sqrt
        assert nb == (29, rsqrt_[1] + 16 * R + 16 * N)                 # rsqrt(s + 2^-f), g r, (g r) x
        assert zf == (29, sq[1] + rsqrt_[1] + 16 * N)                  # square, sum, rsqrt, x r
        assert zb == (9, 16 * N + 16 * N + 16 * N)                     # g y, y sum(g y), r (g - y sum(g y))


# ---- topk ------------------------------------------------------------------------------------------------------------
def _topk(party, x, g, k, kw):
    from secure_lightning.protocols import compare
    from secure_lightning.tensor import reveal_tensor
    xs = _share(party, x, True)
    gs = _share(party, g, owner=1)
    with party.comm.cost() as fwd:
        v, i = torch.topk(xs, k, **kw)
    with party.comm.cost() as bwd:
        v.backward(gs)
    with party.comm.cost() as one_max:
        compare.max(xs.shares, kw.get("dim", -1), party=party)
    costs = [(c.total.rounds, c.total.bytes) for c in (fwd, bwd, one_max)]
    opened = len(party.audit)
    return reveal_tensor(v.detach()), reveal_tensor(i), i.dtype, reveal_tensor(xs.grad), costs, opened


def test_topk_values_secret_indices_gradient_and_cost(parties):
    x = torch.randn(5, 7, generator=_gen(7))
    for k, kw in ((1, {}), (3, {}), (2, {"largest": False}), (4, {"dim": 0})):
        ref = torch.topk(x.double().requires_grad_(), k, **kw)
        g = torch.randn(ref.values.shape, generator=_gen(8), dtype=torch.float64)
        ref.values.backward(g)
        xr = ref.values.grad_fn.next_functions[0][0].variable
        for v, i, dtype, grad, (fwd, bwd, one_max), opened in parties.run(_topk, x, g, k, kw):
            assert (v.double() - ref.values.detach()).abs().max() <= 2 * ULP  # exact selections of the encodings
            assert dtype == torch.int64 and torch.equal(i, ref.indices) and opened == 0
            assert (grad.double() - xr.grad).abs().max() <= 2 * ULP        # g routed through ring products
            assert fwd == (k * one_max[0], k * one_max[1])                 # k maxima; the masking is local
            assert bwd == (1, 8 * k * x.numel())                            # one ring product per (k x n) element


# ---- maximum / minimum with gradients; unsupported ops fail in forward, naming the caller's line ---------------------
def test_maximum_minimum_gradients_both_sides(parties):
    g = _gen(9)
    a, b = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    for fn in (torch.maximum, torch.minimum, lambda s, t: torch.max(s, t), lambda s, t: s.maximum(t * 0.5)):
        check(parties, fn, [a, b], atol=ATOL_EXACT)


def _unsupported_errors(party):
    from secure_lightning.tensor import UnsupportedOpError
    x = _share(party, torch.randn(2, 6), True)
    msgs = []
    for f in (lambda: torch.sin(x),                                          # no handler at all
              lambda: F.mish(x),                                             # an activation without a protocol
              lambda: _raw_clamp(x)):                                        # forward only: refused in forward
        try:
            f()
            msgs.append("no error")
        except UnsupportedOpError as e:
            msgs.append(str(e))
    return msgs


def _raw_clamp(x):
    with torch._C.DisableTorchFunctionSubclass():   # reach aten.clamp below its autograd Function
        return torch.clamp(x, -0.5, 0.5)


def test_unsupported_op_fails_in_forward_with_the_callers_file_and_line(parties):
    import inspect
    src, first = inspect.getsourcelines(_unsupported_errors)
    lines = {name: first + i for i, line in enumerate(src) for name in ("torch.sin", "F.mish") if name in line}
    src, first = inspect.getsourcelines(_raw_clamp)
    raw_line = first + next(i for i, line in enumerate(src) if "torch.clamp" in line)
    sin, mish, clamp = parties.run(_unsupported_errors)[0]
    assert "aten.sin" in sin and f"tests/test_ops_users.py:{lines['torch.sin']} in <lambda>" in sin
    assert "mish" in mish and f"test_ops_users.py:{lines['F.mish']} in <lambda>" in mish
    assert "aten.clamp" in clamp and "gradient is not" in clamp and "torch.clamp / x.clamp" in clamp
    assert f"test_ops_users.py:{raw_line} in _raw_clamp" in clamp, clamp
