"""Transformer ops on shares: GELU (erf and tanh forms), SiLU, LayerNorm, RMSNorm; values and gradients against
float64 torch on the same (fixed-point grid) inputs, exact communication costs, secure_module on nn layers, and the
overflow guard on a LayerNorm row outside its range.

Tolerances (f = 20, ulp = 2^-20 = 9.5e-7; inputs are on the fixed-point grid, so only the protocols err):
  GELU / SiLU value: the docstrings' bounds, 3e-6 / 4e-6 (polynomial error 1.8e-7 / 1.4e-6 plus fixed-point rounding);
  measured ~1.1e-6 / 2.2e-6. Gradient (check's loss sum(y v), v ~ N(0, 1) secret, |v| < 4.5 here): |v| times the
  derivative's bound (5e-6 / 8e-6) plus one truncation: 2.5e-5 / 4e-5.
  LayerNorm / RMSNorm: x_hat within 3e-6 + 2e-6 |x_hat| (row_norm.py); outputs here are |y| < 8 with |w| < 1.5:
  ATOL_NORM = 3e-5. Gradients: dx = r (v w - ...) grows with r = 1/sqrt(var + eps) (r ~ 300 on the small-variance
  tokens, |dx| ~ 1e3): 4e-6 + 2e-6 max|dx| (r's relative error, ~2^-20 from rsqrt's piecewise factor, as in the
  forward; plus 1 ulp of r m1 and of r m2 times |x_hat|).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from secure_lightning.protocols import guard

from tests.test_ops_users import LAYER_BITS, ltz_bytes, relu_bytes
from tests.test_tensor import _plain_fwd_bwd, _secure_fwd_bwd, _share

ULP = 2.0 ** -20
ATOL_GELU, GRAD_GELU = 3e-6, 2.5e-5
ATOL_SILU, GRAD_SILU = 4e-6, 4e-5
ATOL_NORM, REL_GRAD = 3e-5, 2e-6


def _grid(x):
    return torch.round(x.double() * 2 ** 20) / 2 ** 20


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _compare(parties, fn, inputs, atol, grad_atol, rel_grad=0.0, seed=0):
    """fn on shares vs float64 torch (forward; backward of sum(y v) with a secret v); a gradient may err by
    grad_atol + rel_grad * max|its torch value|. Returns the errors."""
    inputs = [_grid(x) for x in inputs]
    mask = [True] * len(inputs)
    with torch.no_grad():
        shape = fn(*inputs).shape
    v = torch.randn(shape, generator=_gen(seed + 100), dtype=torch.float64).clamp(-4.5, 4.5)
    y_ref, g_ref = _plain_fwd_bwd(fn, inputs, mask, v)
    y, grads, _, opened = parties.run(_secure_fwd_bwd, fn, inputs, mask, v)[0]
    assert opened == 1 + len(inputs)  # the reveals of y and the gradients only
    err = (y.double() - y_ref).abs().max().item()
    assert err <= atol, f"forward error {err:.3g} > {atol:.3g}"
    errs = [err]
    for i, (g, gr) in enumerate(zip(grads, g_ref)):
        e = (g.double() - gr).abs().max().item()
        bound = grad_atol + rel_grad * gr.abs().max().item()
        assert e <= bound, f"gradient of input {i}: error {e:.3g} > {bound:.3g}"
        errs.append(e)
    return errs


# ---- GELU, SiLU --------------------------------------------------------------------------------------------------
def _activation_inputs():
    x = torch.linspace(-10, 10, 2001, dtype=torch.float64)
    big = torch.tensor([1e3, -1e3, 3e4, -3e4, 5.5, -5.5, 18.0, -18.0, 5.5 + 2 ** -20, 0.0], dtype=torch.float64)
    return torch.cat([x, big]).reshape(1, -1)


def test_gelu_values_and_gradients_all_ranges(parties):
    x = _activation_inputs()
    for fn in (F.gelu, nn.GELU(), lambda t: F.gelu(t, approximate="tanh"), nn.GELU(approximate="tanh")):
        _compare(parties, fn, [x], ATOL_GELU, GRAD_GELU)


def test_silu_values_and_gradients_all_ranges(parties):
    x = _activation_inputs()
    for fn in (F.silu, nn.SiLU(), lambda t: F.silu(t * 1, inplace=False)):
        _compare(parties, fn, [x], ATOL_SILU, GRAD_SILU)


def _large_values(party, x):
    from secure_lightning.tensor import reveal_tensor
    xs = _share(party, x)
    return [reveal_tensor(f(xs)) for f in (F.gelu, lambda t: F.gelu(t, approximate="tanh"), F.silu)]


def test_gelu_silu_are_x_or_zero_for_large_inputs(parties):
    """Beyond the outer thresholds (5.5 GELU, 18 SiLU) the output is x or 0 up to truncation noise (2 ulp)."""
    x = torch.tensor([20.0, 1e3, 4e6, -20.0, -1e3, -4e6], dtype=torch.float64)
    for y in parties.run(_large_values, x)[0]:
        want = torch.where(x > 0, x, torch.zeros_like(x))
        assert (y.double() - want).abs().max() <= 2 * ULP, y


def _smooth_costs(party, n):
    from secure_lightning.tensor import SharedTensor
    out = {}
    with guard.enabled(party):  # as under the strategy: layers compare on 48 bits, their inputs watched
        for name, fn in (("gelu", F.gelu), ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh")), ("silu", F.silu)):
            x = torch.linspace(-8, 8, n)
            with torch.no_grad():
                xs = _share(party, x)
                with party.comm.cost() as plain:
                    fn(xs)
            xs = _share(party, x, True)
            with party.comm.cost() as fwd:
                y = fn(xs)
            g = _share(party, torch.ones(n), owner=1)
            with party.comm.cost() as bwd:
                y.backward(g)
            assert isinstance(xs.grad, SharedTensor)
            out[name] = [(c.total.rounds, c.total.bytes) for c in (plain, fwd, bwd)]
    return out, len(party.audit)


def test_gelu_silu_costs_exact(parties):
    n = 48  # K n = 192 / 240 = 3 m with m a multiple of 8: the balanced comparison packs whole bytes
    for out, opened in parties.run(_smooth_costs, n):
        assert opened == 0
        for name, K in (("gelu", 4), ("gelu_tanh", 4), ("silu", 5)):
            plain, fwd, bwd = out[name]
            # one relu on K n; layers of n, 2n, 3n, n (+ 2n, n for the derivative)
            assert plain == (20, relu_bytes(K * n, LAYER_BITS) + 16 * 7 * n), (name, plain)
            assert fwd == (20, relu_bytes(K * n, LAYER_BITS) + 16 * 10 * n), (name, fwd)
            assert bwd == (3, 16 * n), (name, bwd)  # g p'(x): one product


# ---- LayerNorm, RMSNorm ------------------------------------------------------------------------------------------
def _tokens(rows, d, seed, std=1.0, mean=0.0):
    return torch.randn(rows, d, generator=_gen(seed), dtype=torch.float64) * std + mean


def _mixed_tokens(d, seed):
    """Rows of a transformer-like activation: ordinary, small-variance (var 1e-6), large-variance (var 1e3) and
    offset tokens, plus a constant row (var 0: x_hat = 0, its gradient r g with r = eps^-1/2)."""
    return torch.cat([_tokens(2, d, seed), _tokens(2, d, seed + 1, 1e-3, 0.3), _tokens(2, d, seed + 2, 31.6, -2.0),
                      _tokens(1, d, seed + 3, 1.0, 40.0), torch.full((1, d), 0.25, dtype=torch.float64)])


def _wb(d, seed):
    g = _gen(seed)
    return (torch.rand(d, generator=g, dtype=torch.float64) + 0.5, torch.randn(d, generator=g, dtype=torch.float64))


def test_layer_norm_values_and_gradients_small_and_large_variance(parties):
    x = _mixed_tokens(12, 0)
    w, b = _wb(12, 1)

    _compare(parties, lambda t, w, b: F.layer_norm(t, (12,), w, b), [x, w, b], ATOL_NORM, 4e-6, REL_GRAD)
    _compare(parties, lambda t: F.layer_norm(t, (12,)), [x], ATOL_NORM, 4e-6, REL_GRAD)              # no affine
    _compare(parties, lambda t, w: F.layer_norm(t, (12,), w, None, eps=1e-6), [x, w], ATOL_NORM, 4e-6, REL_GRAD)
    _compare(parties, lambda t, b: F.layer_norm(t, [12], None, b, 1e-3), [x, b], ATOL_NORM, 4e-6, REL_GRAD)


def test_layer_norm_modules_and_multi_dim_shapes(parties):
    x = _mixed_tokens(8, 2).reshape(2, 4, 8)
    # plain (public, frozen) parameters: the input's gradient is compared; shared ones in the secure_module test
    ln = nn.LayerNorm(8).double().requires_grad_(False)
    ln_nb = nn.LayerNorm(8, bias=False).double().requires_grad_(False)
    ln_na = nn.LayerNorm(8, elementwise_affine=False).double()
    for m in (ln, ln_nb, ln_na):
        _compare(parties, m, [x], ATOL_NORM, 4e-6, REL_GRAD)
    # normalized over the last two dims (D = 4 * 8 = 32: a power of two, one mean truncation)
    w2, b2 = _wb(32, 3)
    _compare(parties, lambda t, w, b: F.layer_norm(t, (4, 8), w.reshape(4, 8), b.reshape(4, 8)), [x, w2, b2],
             ATOL_NORM, 4e-6, REL_GRAD)


def test_rms_norm_values_and_gradients(parties):
    x = _mixed_tokens(12, 4)
    w, _ = _wb(12, 5)
    for fn, inputs in (
            (lambda t, w: F.rms_norm(t, (12,), w), [x, w]),                    # eps None: float32 eps, as torch
            (lambda t, w: F.rms_norm(t, (12,), w, eps=1e-5), [x, w]),
            (lambda t: F.rms_norm(t, [12], eps=1e-6), [x]),
            (nn.RMSNorm(12, eps=1e-5).double().requires_grad_(False), [x]),
            (nn.RMSNorm([3, 4], elementwise_affine=False).double(), [x.reshape(8, 3, 4)])):
        _compare(parties, fn, inputs, ATOL_NORM, 4e-6, REL_GRAD)


def _norm_costs(party, R, D):
    from secure_lightning.tensor import SharedTensor  # noqa: F401
    x = torch.randn(R, D, generator=_gen(7))
    w, b = torch.rand(D, generator=_gen(8)) + 0.5, torch.randn(D, generator=_gen(9))
    out = {}
    for name, fn, params in (("ln", F.layer_norm, (w, b)), ("ln_plain", F.layer_norm, ()),
                             ("rms", F.rms_norm, (w,)), ("rms_plain", F.rms_norm, ())):
        xs = _share(party, x, True)
        ps = [_share(party, p, True) for p in params]
        with party.comm.cost() as fwd:
            y = fn(xs, (D,), *ps, eps=1e-5)
        g = _share(party, torch.ones(R, D), owner=1)
        with party.comm.cost() as bwd:
            y.backward(g)
        out[name] = [(c.total.rounds, c.total.bytes) for c in (fwd, bwd)]
    return out, len(party.audit)


def test_layer_norm_rms_norm_costs_exact(parties):
    R, D = 24, 12
    n = R * D
    K = (63 - 40) - (-14) - 1       # rsqrt's octave thresholds: 2^(a+1) .. 2^(b-1), a = floor(log2(D eps)) = -14
    rsqrt = ltz_bytes(K * R) + 16 * 6 * R  # one ltz per row, then layers of R, R, 2R, R, R
    for out, opened in parties.run(_norm_costs, R, D):
        assert opened == 0
        # LayerNorm: mean (two truncations: D is not a power of two), sum of squares, rsqrt, x_hat, x_hat w
        assert out["ln"][0] == (3 + 3 + 3 + 23 + 3 + 3, 16 * 3 * R + rsqrt + 16 * n + 16 * n)
        assert out["ln_plain"][0] == (35, 16 * 3 * R + rsqrt + 16 * n)
        # backward: [g w, sum g w, dw, sum g w x_hat, r]; [m1, m2]; [r m1, r m2]; [dx]
        assert out["ln"][1] == (12, 16 * (n + R + D + R + R) + 16 * 2 * R + 16 * 2 * R + 16 * n)
        assert out["ln_plain"][1] == (12, 16 * (R + R) + 16 * 2 * R + 16 * 2 * R + 16 * n)
        # RMSNorm: no mean; backward without m1
        assert out["rms"][0] == (3 + 23 + 3 + 3, 16 * R + rsqrt + 16 * n + 16 * n)
        assert out["rms_plain"][0] == (29, 16 * R + rsqrt + 16 * n)
        assert out["rms"][1] == (12, 16 * (n + D + R + R) + 16 * R + 16 * R + 16 * n)
        assert out["rms_plain"][1] == (12, 16 * (R + R) + 16 * R + 16 * R + 16 * n)


def _guarded_layer_norm(party, x):
    from secure_lightning.encoding import FixedPointRangeError
    from secure_lightning.protocols import guard
    from secure_lightning.tensor import reveal_tensor
    guard.enable(party)
    try:
        return "ok", reveal_tensor(F.layer_norm(_share(party, x), (x.shape[-1],)))  # reveal runs the check first
    except FixedPointRangeError as e:
        return type(e).__name__, str(e)
    finally:
        guard.disable(party)


def test_layer_norm_row_outside_range_is_stopped_by_the_guard(parties):
    """A row with sum of squares S = 12 * 700^2 = 5.9e6 in [2^22, 2^23) (f = 20) leaves truncation's exact range:
    flagged whatever the truncation returns (row_norm.py's Range); the in-range row alone passes."""
    x = torch.cat([_tokens(1, 12, 11, 1.0), 700.0 * torch.tensor([[1.0, -1.0] * 6], dtype=torch.float64)])
    for kind, msg in parties.run(_guarded_layer_norm, x):
        assert kind == "FixedPointOverflowError", msg
        assert "layer_norm" in msg, msg
    ok = parties.run(_guarded_layer_norm, x[:1])
    assert ok[0][0] == "ok"


# ---- secure_module on nn layers ----------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 12), nn.LayerNorm(12), nn.GELU(), nn.Linear(12, 12), nn.RMSNorm(12),
                                 nn.SiLU(), nn.Linear(12, 8), nn.GELU(approximate="tanh"), nn.LayerNorm(8))

    def forward(self, x):
        return self.net(x)


def _block(seed=0):
    torch.manual_seed(seed)
    m = Block()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape))  # non-trivial norm weights and biases
    return m


def _secure_block(party, x, v):
    from secure_lightning.nn import secure_module
    from secure_lightning.tensor import reveal_tensor
    m = _block(seed=party.rank)  # only party 0's values count
    secure_module(m, party, owner=0)
    xs = _share(party, x)
    y = m(xs)
    (y * _share(party, v, owner=1)).sum().backward()
    return reveal_tensor(y.detach()), {k: reveal_tensor(p.grad) for k, p in m.named_parameters()}


@pytest.mark.parametrize("seed", [0])
def test_secure_module_transformer_layers_match_torch(parties, seed):
    x = _grid(torch.randn(2, 3, 8, generator=_gen(20)))
    v = torch.randn(2, 3, 8, generator=_gen(21), dtype=torch.float64)
    ref = _block(seed).double()
    y_ref = ref(x)
    (y_ref * v).sum().backward()
    y, grads = parties.run(_secure_block, x, v)[0]
    assert (y.double() - y_ref.detach()).abs().max() < 1e-4
    for k, p in ref.named_parameters():
        assert (grads[k].double() - p.grad).abs().max() < 3e-4, k
