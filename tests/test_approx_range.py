"""The approximations on their WHOLE input range, through the tensor API users call (torch.exp, torch.reciprocal,
1/x, x/y, torch.log, torch.rsqrt, torch.sqrt, torch.sigmoid, torch.tanh, F.softmax, F.log_softmax, F.cross_entropy)
forward and backward, against float64 torch on the fixed-point-rounded inputs, in three real processes.

Inputs span -1e6..1e6 (log-spaced magnitudes, both signs, and 0) and tiny positives down to 2^-f. Each value is
either correct within the error stated in protocols/approx.py (tolerances below, with the reason), correct by
clamping (exp below -64, sigmoid/tanh, softmax), or not representable: then, with the overflow guard enabled
(protocols/guard.py), guard.check raises FixedPointOverflowError in every party naming the function. Without the
guard nothing is opened by these ops (party.audit stays empty until the test reveals the results).

Tolerances (f = 20, ulp = 2^-20 = 9.5e-7):
  exp           3e-6 for x <= 0 (clamped below -64: e^-64 = 1.6e-28; 2e-6 with upper <= 12: the last squaring
                keeps 20 bits so that e^15.127 fits), 2e-6 + 1.5e-5 e^x on (0, 12],
                2e-6 + 3e-5 e^x on (12, exp_top = 15.127] (the last squarings keep fewer fractional bits there)
  reciprocal    2e-6 + 7e-7 |1/x|     div 2e-6 + 1e-6 |x/y|     log 2.5e-6     rsqrt, sqrt 2e-6 + 1e-7 |out|
  sigmoid 2e-6, tanh 4e-6, softmax 3e-6, log_softmax 2.5e-6 (all clamp internally: valid for every input)
Gradients: d = v * f'(x) for a secret random v (|v| < 4) is the forward's error times |v| (or the documented
op's error for quotients) plus one product's truncation (1 ulp); each test says which.
"""
import math

import torch
import torch.nn.functional as F

from secure_lightning.encoding import FixedPoint
from secure_lightning.protocols import approx as AP
from secure_lightning.protocols import guard
from secure_lightning.protocols.sharing import reveal_float, share

ULP = 2.0 ** -20
TOP = AP.exp_top(20)                       # 15.127: e^TOP < 2^22 / 1.0625^2


def _grid(x, f=20):
    return torch.round(x.double() * 2 ** f) / 2 ** f


def _mags(lo_exp, hi_exp, n):
    return 10.0 ** torch.linspace(lo_exp, hi_exp, n, dtype=torch.float64)


WIDE = _grid(torch.cat([-_mags(-6, 6, 37).flip(0), torch.zeros(1), _mags(-6, 6, 37)]))   # -1e6 .. 1e6


def _v(n, seed):
    g = torch.Generator().manual_seed(seed)
    return _grid((torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * 4)


def _check(out, want, atol, rtol, what):
    err = (out - want).abs()
    bound = atol + rtol * want.abs()
    bad = err > bound
    assert not bad.any(), (f"{what}: max excess {(err - bound).max():.3e} at x index {int((err - bound).argmax())}, "
                           f"max err {err.max():.3e}")


# ---------------------------------------------------------------------------------------------------------------------
# Jobs (run in every party)

def _op(name, x, y=None):
    return {
        "exp": lambda: torch.exp(x), "reciprocal": lambda: torch.reciprocal(x), "rdiv": lambda: 1.0 / x,
        "div": lambda: x / y, "log": lambda: torch.log(x), "rsqrt": lambda: torch.rsqrt(x),
        "sqrt": lambda: torch.sqrt(x), "sigmoid": lambda: torch.sigmoid(x), "tanh": lambda: torch.tanh(x),
        "softmax": lambda: F.softmax(x, -1), "log_softmax": lambda: F.log_softmax(x, -1),
        "cross_entropy": lambda: F.cross_entropy(x, y, reduction="sum"),
    }[name]()


def _fwd_bwd(party, name, x, v, y=None, backward=True):
    """y = op(x) on SharedTensors (x shared by P0, y by P1); backward of sum(out * v) (v shared by P1).
    Returns (out, grad_x, grad_y, openings made by the op and its backward) in float64."""
    from secure_lightning.tensor import share_tensor
    xs = share_tensor(x if party.rank == 0 else None, 0, party, requires_grad=backward, data=False)
    ys = None
    if y is not None:
        if y.dtype == torch.int64:
            ys = y                                                    # public class labels
        else:
            ys = share_tensor(y if party.rank == 1 else None, 1, party, requires_grad=backward, data=False)
    before = len(party.audit)
    out = _op(name, xs, ys)
    gx = gy = None
    if backward:
        vs = share_tensor(v if party.rank == 1 else None, 1, party, data=False)
        (out * vs).sum().backward()
    opened = len(party.audit) - before
    res = reveal_float(out.detach().shares, party=party)
    if backward:
        gx = reveal_float(xs.grad.shares, party=party)
        if ys is not None and y.dtype != torch.int64:
            gy = reveal_float(ys.grad.shares, party=party)
    return res, gx, gy, opened


def _guarded(party, name, x, y=None):
    """op(x) with the overflow guard on; returns the error message of guard.check (None: passed)."""
    from secure_lightning.tensor import share_tensor
    guard.enable(party)
    try:
        xs = share_tensor(x if party.rank == 0 else None, 0, party, data=False)
        ys = None if y is None else share_tensor(y if party.rank == 1 else None, 1, party, data=False)
        _op(name, xs, ys)
        try:
            guard.check(party=party)
        except guard.FixedPointOverflowError as e:
            return str(e)
        return None
    finally:
        guard.disable(party)


def _plain_grad(name, x, v, y=None):
    xr = x.clone().requires_grad_()
    yr = None if y is None else (y if y.dtype == torch.int64 else y.clone().requires_grad_())
    out = _op(name, xr, yr)
    (out * v).sum().backward()
    return out.detach(), xr.grad, (None if y is None or y.dtype == torch.int64 else yr.grad)


# ---------------------------------------------------------------------------------------------------------------------
# exp

def test_exp_whole_range_forward_backward(parties):
    x = torch.cat([WIDE[WIDE <= TOP], _grid(torch.linspace(-70, TOP, 200, dtype=torch.float64)),
                   torch.tensor([-200.0, -64.0, -1e6 + 0.5, TOP])])
    v = _v(x.numel(), 1)
    runs = parties.run(_fwd_bwd, "exp", x, v)
    out, gx, _, opened = runs[0]
    assert all(r[3] == 0 for r in runs)
    want, gwant, _ = _plain_grad("exp", x, v)
    for lo, hi, rel in ((-math.inf, 0.0, 0.0), (0.0, 12.0, 1.5e-5), (12.0, TOP, 3e-5)):
        m = (x > lo) & (x <= hi)
        _check(out[m], want[m], 3e-6 if hi == 0.0 else 2e-6, rel, f"exp on ({lo}, {hi}]")
        # backward: v * out (one product: the forward's error times |v| <= 4, plus 1 ulp), where it is
        # representable (|v e^x| < 2^22: the product itself would overflow beyond, the overflow guard's business)
        m = m & (gwant.abs() < 2.0 ** 21)
        _check(gx[m], gwant[m], 4 * 3e-6 + ULP, 4 * rel, f"exp backward on ({lo}, {hi}]")
    assert out[x <= -64].abs().max() <= 3e-6                 # clamped: e^x < 1.6e-28 comes out as ~0


def test_exp_above_the_top_saturates_or_is_checked(parties):
    big = torch.tensor([TOP + 0.01, 16.0, 40.0, 1e3, 1e6])
    out, _, _, opened = parties.run(_fwd_bwd, "exp", big, big, backward=False)[0]
    assert opened == 0
    # without the guard: saturated at e^TOP (never a wrapped value), within exp's stated error there
    _check(out, torch.full_like(out, math.exp(TOP)), 2e-6, 3e-5, "exp saturation")
    msgs = parties.run(_guarded, "exp", torch.tensor([1.0, 2.0, 1e6]))
    assert all(m is not None and "exp" in m for m in msgs), msgs
    assert parties.run(_guarded, "exp", WIDE[WIDE <= TOP]) == [None] * 3    # -1e6 .. TOP: nothing flagged


# ---------------------------------------------------------------------------------------------------------------------
# reciprocal, 1/x, x/y

def _divisors(seed):
    """Non-zero |x| from 2^-20 (the smallest fixed-point value) to 2^22 = 4.19e6, both signs, incl. 1e-4, 1e-5, 1e6."""
    g = torch.Generator().manual_seed(seed)
    mags = torch.cat([torch.tensor([2.0 ** -20, 2.0 ** -19, 1e-5, 1e-4, 1e-3, 1.0, 1e3, 1e6, 2.0 ** 22]),
                      _mags(-6, 6, 37), torch.exp(torch.rand(150, generator=g, dtype=torch.float64)
                                                  * math.log(2.0 ** 42) - math.log(2.0 ** 20))])
    mags = _grid(mags)
    mags = mags[mags > 0]
    return torch.cat([mags, -mags])


def test_reciprocal_whole_range_forward(parties):
    x = _divisors(2)
    for name in ("reciprocal", "rdiv"):
        out, _, _, opened = parties.run(_fwd_bwd, name, x, x, backward=False)[0]
        assert opened == 0
        _check(out, 1 / x, 2e-6, 7e-7, name)           # 1/1e6 ~ 1 ulp: within 2e-6; 1/2^-20 = 2^20: 0.7 ulp rel


def test_reciprocal_and_div_backward(parties):
    # gradients -v / x^2 and -v x / y^2 must be representable (< 2^22 with |v| < 4): |x| >= 2^-9, |y| >= 2^-7
    x = _divisors(3)
    x = x[x.abs() >= 2.0 ** -9]
    v = _v(x.numel(), 4)
    out, gx, _, _ = parties.run(_fwd_bwd, "reciprocal", x, v)[0]
    want, gwant, _ = _plain_grad("reciprocal", x, v)
    _check(out, want, 2e-6, 7e-7, "reciprocal")
    # -v out^2: out's relative error eps = 7e-7 + 2e-6/|out| doubles, so |err| <= 2 eps |g| + truncations
    # = 1.4e-6 |g| + 4e-6 |v| |out| (|v| < 4) + 4 ulp
    _check(gx, gwant, 4 * ULP + 1.6e-5 * (1 / x).abs(), 1.5e-6, "reciprocal backward")
    # x / y: quotients within div's max_quotient (2^16), also in backward: v / y and (x / y) / y (torch's formula
    # for d/dy) stay below 2^14 with |x/y| <= 2^10 and |y| >= 2^-4
    g = torch.Generator().manual_seed(5)
    y = x[x.abs() >= 2.0 ** -4]
    q = (torch.rand(y.numel(), generator=g, dtype=torch.float64) * 2 - 1) * 2.0 ** 10
    num = _grid((q * y).clamp(-4e6, 4e6))
    v = _v(y.numel(), 6)
    out, gnum, gy, opened = parties.run(_fwd_bwd, "div", num, v, y)[0]
    assert opened == 0
    want, gnum_w, gy_w = _plain_grad("div", num, v, y)
    _check(out, want, 2e-6, 1e-6, "x / y")
    _check(gnum, gnum_w, 4 * 2e-6 + ULP, 1e-6, "x / y backward (numerator: v / y)")
    # d/dy = -v ((x / y) / y): the inner quotient's error (2e-6 + 1e-6|x/y|) divided by |y| >= 2^-4, the outer
    # quotient's 2e-6 + 1e-6 |.|, times |v| < 4
    _check(gy, gy_w, 4 * (2e-6 * 17 + 2e-6), 4 * 2e-6 + 4 * 16 * 1e-6, "x / y backward (divisor)")


def test_reciprocal_div_out_of_range_are_checked(parties):
    for name, x, y in (("reciprocal", torch.tensor([0.0, 1.0, 2.0]), None),
                       ("reciprocal", torch.tensor([2.0 ** 23, -2.0 ** 24]), None),
                       ("rdiv", torch.tensor([0.0]), None),
                       ("div", torch.tensor([1.0, -3.0]), torch.tensor([0.0, 0.0])),
                       ("div", torch.tensor([1e5, -1e5]), torch.tensor([0.5, 0.25]))):   # |x/y| > 2^16
        msgs = parties.run(_guarded, name, x, y)
        assert all(m is not None for m in msgs), (name, x, msgs)
        assert all(("reciprocal" in m or "div" in m) for m in msgs), msgs
    assert parties.run(_guarded, "reciprocal", _divisors(7)[:64]) == [None] * 3
    d = _divisors(8)[:64]
    assert parties.run(_guarded, "div", _grid(d.sign() * d.abs().clamp(max=2.0 ** 15)), d) == [None] * 3


# ---------------------------------------------------------------------------------------------------------------------
# log, rsqrt, sqrt

def _positives(seed):
    """2^-20 (the smallest positive value) .. 2^22, log-spaced, plus 1e-6 .. 1e6."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.tensor([2.0 ** -20, 3 * 2.0 ** -20, 2.0 ** -16, 1e-5, 1e-4, 1.0, 1e6, 2.0 ** 22]),
                   _mags(-6, 6, 37),
                   torch.exp(torch.rand(150, generator=g, dtype=torch.float64) * math.log(2.0 ** 42)
                             - math.log(2.0 ** 20))])
    x = _grid(x)
    return x[x > 0]


def test_log_rsqrt_sqrt_whole_range_forward(parties):
    x = _positives(9)
    res = {name: parties.run(_fwd_bwd, name, x, x, backward=False)[0] for name in ("log", "rsqrt", "sqrt")}
    assert all(r[3] == 0 for r in res.values())
    _check(res["log"][0], torch.log(x), 2.5e-6, 0.0, "log")
    _check(res["rsqrt"][0], torch.rsqrt(x), 2e-6, 1e-7, "rsqrt")
    _check(res["sqrt"][0], torch.sqrt(x), 2e-6, 1e-7, "sqrt")
    z = torch.zeros(4, dtype=torch.float64)
    assert parties.run(_fwd_bwd, "sqrt", z, z, backward=False)[0][0].eq(0).all()   # sqrt(0) = 0 exactly


def test_log_rsqrt_sqrt_backward(parties):
    # gradients must be representable: log' = v / x (a quotient <= 2^16 for div: x >= 2^-13), rsqrt' = -v/2 x^-1.5
    # (x^-1.5 <= 2^19: x >= 2^-12), sqrt' = v / (2 sqrt x) (x >= 2^-20 is fine)
    x = _positives(10)
    v = _v(x.numel(), 11)
    for name, lo in (("log", 2.0 ** -13), ("rsqrt", 2.0 ** -12), ("sqrt", 2.0 ** -20)):
        xi, vi = x[x >= lo], v[x >= lo]
        out, gx, _, opened = parties.run(_fwd_bwd, name, xi, vi)[0]
        assert opened == 0
        want, gwant, _ = _plain_grad(name, xi, vi)
        if name == "log":      # v / x: div's error 2e-6 + 1e-6 |v/x|
            _check(gx, gwant, 2e-6, 1e-6, "log backward")
        elif name == "rsqrt":  # (-0.5 v) out^3: out's relative error 1e-7 + 2e-6/out, tripled, plus the truncation
            # of -0.5 v (1 ulp) times out^3 = x^-1.5
            _check(gx, gwant, 4 * ULP + 1.01 * ULP * xi ** -1.5, 3e-7 + 6e-6 * xi.sqrt(), "rsqrt backward")
        else:                  # v / (2 out): div's error plus out's relative error 1e-7 (+ 2e-6 abs)
            _check(gx, gwant, 4e-6, 2e-6 + 2e-6 / xi.sqrt(), "sqrt backward")


def test_log_rsqrt_sqrt_out_of_domain_are_checked(parties):
    for name, x in (("log", torch.tensor([0.0, 1.0])), ("log", torch.tensor([-1.0, -1e6])),
                    ("log", torch.tensor([2.0 ** 23])), ("rsqrt", torch.tensor([0.0])),
                    ("rsqrt", torch.tensor([-5.0, 1.0])), ("sqrt", torch.tensor([-1.0, 4.0])),
                    ("sqrt", torch.tensor([-ULP]))):
        msgs = parties.run(_guarded, name, x)
        assert all(m is not None and name in m for m in msgs), (name, x, msgs)
    x = _positives(12)[:64]
    for name in ("log", "rsqrt", "sqrt"):
        assert parties.run(_guarded, name, x) == [None] * 3
    assert parties.run(_guarded, "sqrt", torch.zeros(3)) == [None] * 3


# ---------------------------------------------------------------------------------------------------------------------
# sigmoid, tanh

def test_sigmoid_tanh_whole_range(parties):
    x = torch.cat([WIDE, _grid(torch.linspace(-20, 20, 101, dtype=torch.float64))])
    v = _v(x.numel(), 13)
    for name, tol in (("sigmoid", 2e-6), ("tanh", 4e-6)):
        out, gx, _, opened = parties.run(_fwd_bwd, name, x, v)[0]
        assert opened == 0
        want, gwant, _ = _plain_grad(name, x, v)
        _check(out, want, tol, 0.0, name)
        # v s (1 - s) / v (1 - t^2): two products on values in [0, 1] (or [-1, 1]): |v| (3 tol) + 2 ulp
        _check(gx, gwant, 4 * 3 * tol + 2 * ULP, 0.0, f"{name} backward")


# ---------------------------------------------------------------------------------------------------------------------
# softmax, log_softmax, cross-entropy

def _logits():
    g = torch.Generator().manual_seed(14)
    x = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3
    signs = torch.where(torch.rand(10, generator=g) < 0.5, -1.0, 1.0).double()
    x[0] = signs * _mags(-6, 6, 10)                          # -1e6 .. 1e6, log-spaced, mixed signs
    x[1] = -1e6
    x[1, 3] = 1e6                                              # one huge logit: exactly one-hot
    x[2] = -1e6                                                # all equal, huge negative
    x[3, :2] = 1e6                                             # two tied huge logits
    x[3, 2:] = torch.linspace(-1e6, 1e6 - 1, 8)
    x[4] = _mags(-6, 6, 10) * torch.tensor([1, -1] * 5)
    x[5] = torch.linspace(-40, 40, 10)
    return _grid(x)


def test_softmax_log_softmax_cross_entropy_whole_range(parties):
    x = _logits()
    v = _v(x.numel(), 15).reshape(x.shape)
    for name, tol, gtol in (("softmax", 3e-6, 4e-5), ("log_softmax", 2.5e-6, 4e-5)):
        out, gx, _, opened = parties.run(_fwd_bwd, name, x, v)[0]
        assert opened == 0
        want, gwant, _ = _plain_grad(name, x, v)
        _check(out, want, tol, 0.0, name)
        # backward: softmax y (v - sum(v y)) / v - softmax sum(v): sums of 10 products of |v| < 4 with values in
        # [0, 1] carrying 3e-6 each, plus truncations: 10 * 4 * 3e-6 = 1.2e-4 at worst; observed far less
        _check(gx, gwant, gtol * 3, 0.0, f"{name} backward")
    labels = torch.tensor([3, 3, 0, 1, 5, 9, 2, 7])
    out, gx, _, opened = parties.run(_fwd_bwd, "cross_entropy", x, torch.tensor(1.0), labels)[0]
    assert opened == 0
    want, gwant, _ = _plain_grad("cross_entropy", x, torch.tensor(1.0), labels)
    # the loss sums 8 rows of -log_softmax[label] (2.5e-6 each); it is ~1e6-sized for rows whose label is far
    # below the max: those terms are exact differences d = x - max, so only log(s) carries error
    _check(out.reshape(1), want.reshape(1), 8 * 2.5e-6, 0.0, "cross_entropy")
    _check(gx, gwant, 3e-6 + 2.5e-6, 0.0, "cross_entropy backward (softmax - onehot)")


def _softmax_rows(party, x):
    from secure_lightning.tensor import share_tensor
    xs = share_tensor(x if party.rank == 0 else None, 0, party, data=False)
    sm = F.softmax(xs, -1)
    lsm = F.log_softmax(xs, -1)
    return reveal_float(sm.shares, party=party), reveal_float(lsm.shares, party=party)


def test_softmax_rows_with_one_huge_logit_are_one_hot(parties):
    x = torch.full((3, 10), -1e6, dtype=torch.float64)
    x[0, 3] = 1e6
    x[1, 7] = 0.0
    x[2] = torch.linspace(-1e6, 1e6, 10)
    sm, lsm = parties.run(_softmax_rows, x)[0]
    onehot = F.one_hot(torch.tensor([3, 7, 9]), 10).double()
    _check(sm, onehot, 3e-6, 0.0, "softmax one-hot rows")
    # log_softmax: 0 at the max (|err| <= 2.5e-6), x - max elsewhere exactly up to log(s)'s error
    _check(lsm, torch.log_softmax(x, -1), 2.5e-6, 0.0, "log_softmax one-hot rows")


def _softmax_grad_dim1(party, x, g):
    from secure_lightning.tensor import share_tensor
    xs = share_tensor(x if party.rank == 0 else None, 0, party, requires_grad=True)
    gs = share_tensor(g if party.rank == 1 else None, 1, party, data=False)
    y = F.softmax(xs, 1)
    with party.comm.cost() as c:
        y.backward(gs)
    return reveal_float(xs.grad.shares, party=party), (c.total.rounds, c.total.bytes)


def test_softmax_backward_along_a_middle_dim(parties):
    """dx = y (g - sum(g y)) along dim 1 of (B, n, C): one batched dot product per row (one truncation per row),
    then one product per entry: 6 rounds, 16 (N + R) bytes. Tolerance: softmax's 3e-6 times |g| < 4 summed over
    the row (n = 5) plus 2 ulp of truncation."""
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 4
    g = _v(x.numel(), 17).reshape(x.shape)
    xt = _grid(x).requires_grad_()
    torch.softmax(xt, 1).backward(g)
    N, R = x.numel(), x.numel() // 5
    for gx, cost in parties.run(_softmax_grad_dim1, _grid(x), g):
        assert cost == (6, 16 * (N + R)), cost
        _check(gx, xt.grad, 5 * 4 * 3e-6 + 2 * ULP, 0.0, "softmax backward along dim 1")


def _lsm_backward_aten(party, logp, g):
    from secure_lightning.tensor import share_tensor
    lp = share_tensor(logp if party.rank == 0 else None, 0, party, data=False)
    gs = share_tensor(g if party.rank == 1 else None, 1, party, data=False)
    out = torch.ops.aten._log_softmax_backward_data.default(gs, lp, 1, torch.float32)
    return reveal_float(out.shares, party=party)


def test_log_softmax_backward_data_never_feeds_exp_unbounded_values(parties):
    logp = torch.log_softmax(_logits(), -1)                  # down to -2e6
    g = _v(logp.numel(), 16).reshape(logp.shape)
    out = parties.run(_lsm_backward_aten, _grid(logp), g)[0]
    want = g - torch.softmax(_logits(), -1) * g.sum(1, keepdim=True)
    _check(out, want, 4 * 10 * 5e-6, 0.0, "aten _log_softmax_backward_data")


# ---------------------------------------------------------------------------------------------------------------------
# other fractional precisions

def _at_f(party, f, calls):
    """Run approx functions on shares encoded with FixedPoint(f) (the party's encoding, temporarily)."""
    old = party.encoding
    party.encoding = FixedPoint(f)
    try:
        out = []
        for name, x in calls:
            a = share(x if party.rank == 0 else None, 0, party=party, data=False)
            out.append(reveal_float(getattr(AP, name)(a, party=party), party=party))
        return out
    finally:
        party.encoding = old


def test_other_frac_bits(parties):
    for f in (16, 24):
        ulp = 2.0 ** -f
        top = AP.exp_top(f)
        hi = 2.0 ** (62 - 2 * f)
        rlo = 2.0 ** -min(f, 62 - 2 * f)
        g = torch.Generator().manual_seed(f)
        xe = _grid(torch.cat([torch.linspace(-80, top, 400, dtype=torch.float64), torch.tensor([-1e4, top])]), f)
        xr = _grid(torch.exp(torch.rand(300, generator=g, dtype=torch.float64) * math.log(hi / rlo)
                             + math.log(rlo)), f)
        xr = torch.cat([xr, torch.tensor([rlo, hi])])
        xr = torch.cat([xr, -xr])
        xp = _grid(torch.exp(torch.rand(300, generator=g, dtype=torch.float64) * math.log(hi * 2 ** f)
                             - f * math.log(2)), f)
        xp = torch.cat([xp[xp > 0], torch.tensor([ulp, hi])])
        xs = _grid(torch.cat([torch.linspace(-30, 30, 301, dtype=torch.float64), torch.tensor([-1e3, 1e3])]), f)
        e, r, lg, rs, sq, sg, th = parties.run(_at_f, f, [("exp", xe), ("reciprocal", xr), ("log", xp),
                                                          ("rsqrt", xp), ("sqrt", xp), ("sigmoid", xs),
                                                          ("tanh", xs)])[0]
        neg = xe <= 0
        # exp: the stated bound for other f is 4 ulp (+ 3e-5 e^x for x > 0, f = 24: 5e-5): one ulp of the final
        # truncation, the rest from the squarings, whose scales are capped at 30 bits whatever f is (f = 24: 3.3 ulp
        # measured), and for x > 0 the few bits of the t^5..t^8 coefficients (f = 24: 3.9e-5 measured)
        _check(e[neg], torch.exp(xe[neg]), 4 * ulp, 0.0, f"exp f={f} (x <= 0)")
        _check(e[~neg], torch.exp(xe[~neg]), 4 * ulp, 3e-5 if f < 24 else 5e-5, f"exp f={f} (x > 0)")
        fr = min(30, math.floor(62 - math.log2(1 / rlo * (1 + 2 ** -10) * 1.0625)) - min(62 - 2 * f - 1, f - 1))
        _check(r, 1 / xr, 2 * ulp, 2.0 ** (1 - fr) + 2e-7, f"reciprocal f={f}")
        _check(lg, torch.log(xp), 3 * ulp, 0.0, f"log f={f}")
        # rsqrt: 2 ulp + 1e-7 |out| (f = 24: 3e-7 |out|: r = m^-1/2 keeps 23 bits, its polynomial 2^-24)
        _check(rs, torch.rsqrt(xp), 2 * ulp, 1e-7 if f < 24 else 3e-7, f"rsqrt f={f}")
        _check(sq, torch.sqrt(xp), 2 * ulp, 1e-7, f"sqrt f={f}")
        # sigmoid, tanh: 2e-6 / 4e-6 as at f = 20, or 2 / 4 ulp when that is larger (f = 16)
        _check(sg, torch.sigmoid(xs), max(2e-6, 2 * ulp), 0.0, f"sigmoid f={f}")
        _check(th, torch.tanh(xs), max(4e-6, 4 * ulp), 0.0, f"tanh f={f}")
