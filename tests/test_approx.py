"""Fixed-point approximations (protocols/approx.py) against float64 torch, in three real processes.

Inputs are rounded to the fixed-point grid first (ulp = 2^-20 = 9.5e-7), so each tolerance measures the protocol
alone; every tolerance is the bound stated in the function's docstring:
  exp           |err| <= 2e-6 on [-64, 0] (upper <= 12; default upper 15.127: 3e-6), 2e-6 + 1.5e-5 e^x on (0, 12];
                upper=0: 2e-6 on [-2^(squarings+1), 0]
  reciprocal    2e-6 + 7e-7 |1/x|        div           2e-6 + 1e-6 |x/y|
  log           2.5e-6                   rsqrt, sqrt   2e-6 + 1e-7 |out|
  sigmoid       2e-6                     tanh          4e-6
  softmax       3e-6                     log_softmax   2.5e-6
Costs are asserted exactly, per party: 3 rounds and 16 bytes per element for every truncation layer, plus the
comparisons, whose cost is measured by running compare.ltz / relu / max on shares of the same shape in the same
processes (their own costs are asserted in test_compare.py). party.audit must be empty after every protocol (nothing
is opened) before the test reveals the results.
"""
import math

import torch

from secure_lightning import ring
from secure_lightning.protocols import approx as AP
from secure_lightning.protocols import compare as CMP
from secure_lightning.protocols.sharing import public_shares, reveal_float, share

ULP = 2.0 ** -20


def _grid(x):
    return torch.round(x * 2 ** 20) / 2 ** 20


def _logspace(lo, hi, n, g):
    u = torch.rand(n, generator=g, dtype=torch.float64)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def _cost_of(party, fn, shape, **kw):
    """(rounds, bytes) of a compare.py protocol on shares of zeros of `shape` (costs depend on shapes only)."""
    z = public_shares(torch.zeros(shape, dtype=ring.DTYPE), party=party)
    with party.comm.cost() as c:
        fn(z, party=party, **kw)
    return c.rounds, c.bytes


def _secure(party, calls):
    """Run [(name, x, y, kwargs)]: x shared by P0 (y by P1 for div). Returns, per call, (output, (rounds, bytes),
    openings recorded by the protocol)."""
    out = []
    for name, x, y, kw in calls:
        a = share(x if party.rank == 0 else None, 0, party=party)
        b = None if y is None else share(y if party.rank == 1 else None, 1, party=party)
        before = len(party.audit)
        with party.comm.cost() as c:
            if name == "div":
                z = AP.div(a, b, party=party, **kw)
            else:
                z = getattr(AP, name)(a, party=party, **kw)
        opened = len(party.audit) - before
        out.append((reveal_float(z, party=party), (c.rounds, c.bytes), opened))
    return out


def _check(out, want, atol, rtol, what):
    err = (out - want).abs()
    bound = atol + rtol * want.abs()
    bad = err > bound
    assert not bad.any(), f"{what}: max excess {(err - bound).max():.3e}, max err {err.max():.3e}"


# ---------------------------------------------------------------------------------------------------------------------
# exp

def _exp_job(party, x, x16, x32):
    res = _secure(party, [("exp", x, None, {}), ("exp", x16, None, {"squarings": 3, "upper": 0.0, "clamp": False}),
                          ("exp", x32, None, {"squarings": 4, "upper": 0.0, "clamp": False}),
                          ("exp", x, None, {"upper": 12.0, "clamp": False})])
    return res, _cost_of(party, CMP.relu, (2, x.numel()))


def test_exp_accuracy_cost_no_openings(parties):
    g = torch.Generator().manual_seed(10)
    edges = torch.tensor([0.0, ULP, -ULP, -64.0, 12.0, -1.0, 1.0, -20.0], dtype=torch.float64)
    x = _grid(torch.cat([edges, torch.linspace(-64, 12, 3000, dtype=torch.float64),
                         torch.rand(1000, generator=g, dtype=torch.float64) * 76 - 64]))
    x16 = _grid(torch.cat([torch.tensor([0.0, -ULP, -16.0]), torch.linspace(-16, 0, 1500, dtype=torch.float64)]))
    x32 = _grid(torch.cat([torch.tensor([0.0, -ULP, -32.0]), torch.linspace(-32, 0, 1500, dtype=torch.float64)]))
    res = parties.run(_exp_job, x, x16, x32)
    for ((_, cost, opened), (_, cost16, opened16), (_, cost32, opened32), (_, cost12, opened12)), relu in res:
        assert opened == opened16 == opened32 == opened12 == 0
        # default (clamp to [-64, exp_top(f)]): relu(2n) + 8 layers; before the clamp 24 rounds, 144 bytes
        assert cost == (relu[0] + 24, relu[1] + 144 * x.numel())
        assert cost12 == (24, 144 * x.numel())          # clamp=False: 8 layers: 3 polynomial (n, 2n, n) + 5 squarings
        assert cost16 == (18, 112 * x16.numel())        # 3 polynomial + 3 squarings (sigmoid, tanh)
        assert cost32 == (21, 128 * x32.numel())        # 3 polynomial + 4 squarings (softmax, log_softmax)
    out, out16, out32, out12 = (r[0] for r in res[0][0])
    neg = x <= 0
    _check(out[neg], torch.exp(x[neg]), 3e-6, 0.0, "exp on [-64, 0]")     # default upper 15.127: 3e-6
    _check(out[~neg], torch.exp(x[~neg]), 2e-6, 1.5e-5, "exp on (0, 12]")
    _check(out12[neg], torch.exp(x[neg]), 2e-6, 0.0, "exp(upper=12, clamp=False) on [-64, 0]")
    _check(out12[~neg], torch.exp(x[~neg]), 2e-6, 1.5e-5, "exp(upper=12, clamp=False) on (0, 12]")
    _check(out16, torch.exp(x16), 2e-6, 0.0, "exp(squarings=3) on [-16, 0]")
    _check(out32, torch.exp(x32), 2e-6, 0.0, "exp(squarings=4) on [-32, 0]")
    assert out[x == 0].eq(1.0).all() or (out[x == 0] - 1).abs().max() <= ULP


# ---------------------------------------------------------------------------------------------------------------------
# reciprocal, div

def _recip_job(party, x, xp, num, den):
    res = _secure(party, [("reciprocal", x, None, {}), ("reciprocal", xp, None, {"positive": True}),
                          ("div", num, den, {})])
    k = 41  # log2(2^22 / 2^-20) - 1 thresholds (the defaults at f = 20; before: [2^-10, 2^16], 25)
    ref = [_cost_of(party, CMP.ltz, (2 * k + 1, x.numel())), _cost_of(party, CMP.ltz, (k, xp.numel())),
           _cost_of(party, CMP.ltz, (2 * k + 1, den.numel()))]
    return res, ref


def test_reciprocal_and_div_accuracy_cost(parties):
    g = torch.Generator().manual_seed(11)
    powers = torch.tensor([2.0 ** j for j in range(-10, 17)], dtype=torch.float64)   # lo .. hi
    mag = torch.cat([powers, powers[:-1] * 1.5, powers[:-1] * 1.999, _logspace(2 ** -10, 2 ** 16, 1500, g)])
    sign = torch.where(torch.rand(mag.numel(), generator=g) < 0.5, -1.0, 1.0).double()
    x = _grid(mag * sign)
    xp = _grid(torch.cat([powers, _logspace(2 ** -10, 2 ** 16, 1000, g)]))
    den = _grid(_logspace(2 ** -10, 2 ** 16, 1500, g)) * torch.where(torch.rand(1500, generator=g) < 0.5, -1.0, 1.0)
    q = torch.exp(torch.rand(1500, generator=g, dtype=torch.float64) * math.log(2 ** 16)) * (
        torch.rand(1500, generator=g, dtype=torch.float64) * 2 - 1)
    num = _grid((q * den).clamp(-4e6, 4e6))
    runs = parties.run(_recip_job, x, xp, num, den)
    for (res, ref) in runs:
        (_, c1, o1), (_, c2, o2), (_, c3, o3) = res
        assert o1 == o2 == o3 == 0
        # reciprocal: ltz + 6 layers (m: n; e1, q1: 2n; 2n; 2n; q4: n; q4 2^-J: n); before: 5 layers, 128 bytes
        assert c1 == (ref[0][0] + 18, ref[0][1] + 144 * x.numel())
        assert c2 == (ref[1][0] + 18, ref[1][1] + 144 * xp.numel())
        assert c3 == (ref[2][0] + 15, ref[2][1] + 144 * den.numel())   # div: layers (2n, 2n, 2n, 2n, n), as before
    (r, _, _), (rp, _, _), (d, _, _) = runs[0][0]
    _check(r, 1 / x, 2e-6, 7e-7, "reciprocal")
    _check(rp, 1 / xp, 2e-6, 7e-7, "reciprocal(positive)")
    _check(d, num / den, 2e-6, 1e-6, "div")


# ---------------------------------------------------------------------------------------------------------------------
# log, rsqrt, sqrt

def _roots_job(party, xl, xr, xs):
    res = _secure(party, [("log", xl, None, {}), ("rsqrt", xr, None, {}), ("sqrt", xs, None, {})])
    # thresholds at the defaults [2^-20, 2^22] (f = 20): 41, 41, 42 (before: 35, 31, 36 with hi = 2^16)
    ref = [_cost_of(party, CMP.ltz, (41, xl.numel())), _cost_of(party, CMP.ltz, (41, xr.numel())),
           _cost_of(party, CMP.ltz, (42, xs.numel()))]
    return res, ref


def test_log_rsqrt_sqrt_accuracy_cost(parties):
    g = torch.Generator().manual_seed(12)

    def pw(a, b):
        p = torch.tensor([2.0 ** j for j in range(a, b + 1)], dtype=torch.float64)
        return torch.cat([p, p * 1.999, p * 1.5])

    xl = _grid(torch.cat([pw(-20, 15), torch.tensor([2.0 ** 16]), _logspace(2 ** -20, 2 ** 16, 1500, g)]))
    xr = _grid(torch.cat([pw(-16, 15), torch.tensor([2.0 ** 16]), _logspace(2 ** -16, 2 ** 16, 1500, g)]))
    xs = _grid(torch.cat([torch.zeros(3), pw(-20, 15), torch.tensor([2.0 ** 16]),
                          _logspace(2 ** -20, 2 ** 16, 1500, g)]))
    runs = parties.run(_roots_job, xl, xr, xs)
    for res, ref in runs:
        (_, cl, ol), (_, cr, orr), (_, cs, os_) = res
        assert ol == orr == os_ == 0
        assert cl == (ref[0][0] + 12, ref[0][1] + 96 * xl.numel())     # ltz + layers (2n: m and J ln 2; n, 2n, n)
        assert cr == (ref[1][0] + 15, ref[1][1] + 96 * xr.numel())     # ltz + layers (n; n, 2n, n; n)
        assert cs == (ref[2][0] + 15, ref[2][1] + 96 * xs.numel())
    (lg, _, _), (rs, _, _), (sq, _, _) = runs[0][0]
    _check(lg, torch.log(xl), 2.5e-6, 0.0, "log")
    _check(rs, torch.rsqrt(xr), 2e-6, 1e-7, "rsqrt")
    want = torch.sqrt(xs)
    _check(sq, want, 2e-6, 1e-7, "sqrt")
    assert sq[:3].eq(0).all()  # sqrt(0) is exactly 0


# ---------------------------------------------------------------------------------------------------------------------
# sigmoid, tanh

def _logistic_job(party, x):
    res = _secure(party, [("sigmoid", x, None, {}), ("tanh", x, None, {})])
    return res, _cost_of(party, CMP.relu, (4, x.numel()))


def test_sigmoid_tanh_accuracy_cost_all_inputs(parties):
    g = torch.Generator().manual_seed(13)
    edges = torch.tensor([0.0, ULP, -ULP, 8.0, -8.0, 16.0, -16.0, 16.0 + ULP, -16.0 - ULP, 40.0, -40.0,
                          1e4, -1e4, 4e6, -4e6], dtype=torch.float64)
    x = _grid(torch.cat([edges, torch.linspace(-40, 40, 2000, dtype=torch.float64),
                         torch.randn(1000, generator=g, dtype=torch.float64) * 6]))
    runs = parties.run(_logistic_job, x)
    for res, relu_cost in runs:
        for _, cost, opened in res:
            assert opened == 0
            # relu(4n) + 9 layers (exp: n, 2n, n, n, n, n; 1/(1+z): n, 2n, n) + 1 ring-product round (8 n bytes)
            assert cost == (relu_cost[0] + 28, relu_cost[1] + 184 * x.numel())
    (sg, _, _), (th, _, _) = runs[0][0]
    _check(sg, torch.sigmoid(x), 2e-6, 0.0, "sigmoid")
    _check(th, torch.tanh(x), 4e-6, 0.0, "tanh")


# ---------------------------------------------------------------------------------------------------------------------
# softmax, log_softmax

def _softmax_job(party, xs):
    out = []
    for x in xs:
        a = share(x if party.rank == 0 else None, 0, party=party)
        row = []
        for fn in (AP.softmax, AP.log_softmax):
            before = len(party.audit)
            with party.comm.cost() as c:
                y = fn(a, -1, party=party)
            opened = len(party.audit) - before
            row.append((reveal_float(y, party=party), (c.rounds, c.bytes), opened))
        out.append(row)
    x = xs[0]
    R, n = x.shape
    t_soft, t_log = 2 * math.ceil(math.log2(n)) - 1, math.ceil(math.log2(n)) - 1
    ref = {"max": _cost_of(party, lambda z, party: CMP.max(z, -1, keepdim=True, party=party), x.shape),
           "relu": _cost_of(party, CMP.relu, x.shape),
           "ltz_soft": _cost_of(party, CMP.ltz, (t_soft, R, 1)), "ltz_log": _cost_of(party, CMP.ltz, (t_log, R, 1))}
    return out, ref


def test_softmax_log_softmax_accuracy_cost_all_inputs(parties):
    g = torch.Generator().manual_seed(14)
    x10 = torch.randn(64, 10, generator=g, dtype=torch.float64) * 4
    x10[0] = 0.0                                          # all equal
    x10[1, :5] = 3.0                                      # ties at the max
    x10[2] = torch.linspace(-1000, 1000, 10)             # spread far beyond exp's range: clamp
    x10[3] = torch.randn(10, generator=g, dtype=torch.float64) * 1e4
    x16 = torch.zeros(4, 16, dtype=torch.float64)         # s = 16 = the top of the grid
    x16[1] = torch.randn(16, generator=g, dtype=torch.float64) * 3
    x2 = torch.randn(32, 2, generator=g, dtype=torch.float64) * 5   # n <= 2: no comparison in the division
    x1 = torch.randn(8, 1, generator=g, dtype=torch.float64)
    x100 = torch.randn(8, 100, generator=g, dtype=torch.float64) * 6   # many elements clamped at max - 32
    xs = [_grid(x) for x in (x10, x16, x2, x1, x100)]
    runs = parties.run(_softmax_job, xs)
    for out, ref in runs:
        for row in out:
            for _, _, opened in row:
                assert opened == 0
        (_, cs, _), (_, cl, _) = out[0]
        N, R = xs[0].numel(), xs[0].shape[0]
        cmp_r = ref["max"][0] + ref["relu"][0]
        cmp_b = ref["max"][1] + ref["relu"][1]
        # softmax: exp (7 layers, 8N) + ltz + Goldschmidt 3 iterations (N + R, 2 x (N + R), N)
        assert cs == (cmp_r + 21 + ref["ltz_soft"][0] + 12, cmp_b + ref["ltz_soft"][1] + 16 * (12 * N + 3 * R))
        # log_softmax: exp (8N) + ltz + layer (m and J ln 2: 2R) + polynomial (R, 2R, R)
        assert cl == (cmp_r + 21 + ref["ltz_log"][0] + 12, cmp_b + ref["ltz_log"][1] + 16 * (8 * N + 6 * R))
    for x, ((sm, _, _), (lsm, _, _)) in zip(xs, runs[0][0]):
        _check(sm, torch.softmax(x, -1), 3e-6, 0.0, f"softmax n={x.shape[-1]}")
        _check(lsm, torch.log_softmax(x, -1), 2.5e-6, 0.0, f"log_softmax n={x.shape[-1]}")


# ---------------------------------------------------------------------------------------------------------------------
# Parameter errors (raised before any message, identically in every party)

def _bad_params_job(party):
    x = public_shares(torch.ones(3, dtype=ring.DTYPE), party=party)
    msgs = []
    for call in (lambda: AP.exp(x, party=party, upper=20.0),
                 lambda: AP.exp(x, party=party, squarings=0),
                 lambda: AP.exp(x, party=party, squarings=2, upper=12.0),
                 lambda: AP.reciprocal(x, party=party, lo=0.3),
                 lambda: AP.log(x, party=party, hi=1000.0),
                 lambda: AP.div(x, x, party=party, max_quotient=2.0 ** 30),
                 lambda: AP.exp(x, party=party, squarings=2, upper=4.0)):        # clamp at -8: e^-8 >> 1 ulp
        try:
            call()
            msgs.append(None)
        except ValueError as e:
            msgs.append(str(e))
    return msgs, len(party.audit)


def test_bad_parameters_raise_clear_errors(parties):
    for msgs, opened in parties.run(_bad_params_job):
        assert opened == 0
        assert "upper" in msgs[0] and "squarings" in msgs[1] and "more squarings" in msgs[2]
        assert "powers of two" in msgs[3] and "powers of two" in msgs[4]
        assert "quotient" in msgs[5]
        assert "half an ulp" in msgs[6]
