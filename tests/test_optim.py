"""torch.optim.SGD / Adam and lr schedulers stepping shared parameters, against float64 torch with the same grads.

Tolerances (ulp = 2^-20): an SGD step truncates lr * grad once (and momentum * buf once): <= 2 ulp per step, so
5 steps stay within 2e-5 of torch. Adam divides by sqrt(v) + eps with approx.sqrt (2e-6 + 2^-18 relative) and
approx.div (2^-18 relative + 3 ulp). The limit is the fixed-point second moment: v = (1 - beta2) g^2 is held to
~2 ulp absolute, so after bias correction sqrt(v_hat) has relative error ~ 2^-20 / ((1 - beta2) g^2); with
|g| in [0.5, 1.5] (v >= 2.5e-4 = 262 ulp at step 1) an update lr m / sqrt(v_hat) is accurate to ~0.5% relative,
so 4 steps at lr = 0.01 are held to 2e-4 absolute. (Gradients much smaller than sqrt(2^-20 / (1 - beta2)) ~ 0.03
make Adam's first steps inaccurate in 20-bit fixed point.)
"""
import pytest
import torch
from torch import nn

ULP = 2.0 ** -20


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _make(name, params, kw):
    cls = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW,
           "RMSprop": torch.optim.RMSprop}[name]
    return cls(params, **kw)


def _secure_steps(party, name, kw, w0, grads, sched):
    from secure_lightning.tensor import SharedTensor, reveal_tensor, share_tensor
    p = nn.Parameter(share_tensor(w0 if party.rank == 0 else None, 0, party))
    opt = _make(name, [p], kw)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) if sched else None
    costs, lrs = [], []
    for g in grads:
        p.grad = share_tensor(g if party.rank == 1 else None, 1, party)  # the gradient is secret to party 0
        with party.comm.cost() as c:
            opt.step()
        costs.append(c.total)
        if scheduler:
            scheduler.step()
        lrs.append(opt.param_groups[0]["lr"])
    opt.zero_grad()
    if name == "SGD":
        state = {k: reveal_tensor(v) for k, v in opt.state[p].items() if isinstance(v, SharedTensor)}
    else:  # the adaptive optimizers hold bias-corrected moments at their own scales
        from secure_lightning.tensor.optim_adaptive import opened_state
        state = opened_state(opt, p)
    return reveal_tensor(p.detach()), state, costs, lrs, p.grad is None, type(p).__name__


def _plain_steps(name, kw, w0, grads, sched):
    p = nn.Parameter(w0.double().clone())
    opt = _make(name, [p], kw)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) if sched else None
    for g in grads:
        p.grad = g.double()
        opt.step()
        if scheduler:
            scheduler.step()
    return p.detach(), opt.state[p]


SGD_CASES = [
    {"lr": 0.1},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01, "nesterov": True},
    {"lr": 0.05, "momentum": 0.8, "dampening": 0.1, "weight_decay": 0.001},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True, "foreach": True},
    {"lr": 0.1, "maximize": True},
    {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01, "foreach": False},  # the per-parameter loop
]


@pytest.mark.parametrize("kw", SGD_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_sgd_steps_match_torch(parties, kw):
    g = _gen(1)
    w0 = torch.randn(4, 6, generator=g)
    grads = [torch.randn(4, 6, generator=g) for _ in range(5)]
    p, state, costs, lrs, grad_none, ptype = parties.run(_secure_steps, "SGD", kw, w0, grads, True)[0]
    p_ref, state_ref = _plain_steps("SGD", kw, w0, grads, True)
    assert ptype == "SharedTensor" and grad_none  # zero_grad sets grads to None
    assert lrs == [0.1 * 0 + kw["lr"], kw["lr"] / 2, kw["lr"] / 2, kw["lr"] / 4, kw["lr"] / 4]
    assert (p.double() - p_ref).abs().max() < 2e-5
    if kw.get("momentum"):
        assert (state["momentum_buffer"].double() - state_ref["momentum_buffer"]).abs().max() < 2e-5


def test_sgd_step_cost_is_one_truncation(parties):
    w0, grads = torch.randn(10, 3, generator=_gen(2)), [torch.randn(10, 3, generator=_gen(3))]
    costs = parties.run(_secure_steps, "SGD", {"lr": 0.1}, w0, grads, False)[0][2]
    assert costs[0].rounds == 3 and costs[0].bytes == 16 * 30  # param.add_(grad, alpha=-lr): one truncation


ADAM_CASES = [
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 1e-3}),                                   # torch's defaults: eps = 1e-8
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.01}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1}),
    ("AdamW", {"lr": 1e-3}),
    ("Adam", {"lr": 0.01, "foreach": True}),
    ("Adam", {"lr": 0.01, "eps": 1e-3}),                      # a large eps: the division path
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1, "foreach": False}),
    ("RMSprop", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.01}),
]


@pytest.mark.parametrize("name,kw", ADAM_CASES, ids=lambda v: v if isinstance(v, str) else str(len(v)))
def test_adaptive_steps_match_torch(parties, name, kw):
    """Gradients of every scale from 1e-4 to 10 (and an exact zero). Tolerance: the net update within 1% of torch's
    plus 0.4% of the steps' total size lr |u| (protocols.adaptive: u relative <= 0.3% per step; the net update can be
    much smaller than the steps when they cancel) plus 8 ulp (one per step, and p's encoding); the moments within
    1% relative plus 0.4% of the largest gradient (or its square) the element saw (the EMA weights carry 7 to 14
    bits and multiply g - m, which can be much larger than m), plus 2 ulp."""
    g = _gen(4)
    w0 = torch.randn(3, 5, generator=g)
    mags = 10.0 ** torch.linspace(-4, 1, 15).view(3, 5)
    grads = [torch.sign(torch.randn(3, 5, generator=g)) * mags * (torch.rand(3, 5, generator=g) + 0.5)
             for _ in range(4)]
    grads[0][0, 0] = 0.0  # a zero gradient entry
    p, state, _, _, _, _ = parties.run(_secure_steps, name, kw, w0, grads, False)[0]
    p_ref, state_ref = _plain_steps(name, kw, w0, grads, False)
    du, du_ref = p.double() - w0, p_ref - w0.double()
    steps_total = len(grads) * kw["lr"] * (10 if name == "RMSprop" else 1)  # sum of |lr u_t| <= this (|u| ~ 1)
    tol = 0.01 * du_ref.abs() + 0.004 * steps_total + 8 * ULP
    assert ((du - du_ref).abs() <= tol).all(), (du - du_ref, du_ref)
    gmax = torch.stack(grads).abs().amax(0).double()
    for key in ("exp_avg", "exp_avg_sq", "square_avg", "momentum_buffer"):
        if key in state_ref:
            scale = {"exp_avg": gmax, "exp_avg_sq": gmax ** 2, "square_avg": gmax ** 2,
                     "momentum_buffer": 10.0 * len(grads) / 4}[key]   # buf sums u, |u| <= 10 (1/sqrt(1 - alpha))
            ref = state_ref[key].double()
            assert ((state[key] - ref).abs() <= 0.01 * ref.abs() + 0.004 * scale + 2 * ULP).all(), key


# ---------------------------------------------------------------------------------------------------------------------
# foreach by default: one truncation for the whole model's lr * grad

SHAPES = [(4, 3), (3,), (2, 2, 2), (5,)]


def _model_steps(party, kw, ws, grads):
    from secure_lightning.tensor import reveal_tensor, share_tensor
    ps = [nn.Parameter(share_tensor(w if party.rank == 0 else None, 0, party)) for w in ws]
    opt = torch.optim.SGD(ps, **kw)
    costs = []
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = share_tensor(g if party.rank == 1 else None, 1, party)
        with party.comm.cost() as c:
            opt.step()
        costs.append(c.total)
    return [reveal_tensor(p.detach()) for p in ps], costs, opt.param_groups[0]["foreach"]


@pytest.mark.parametrize("kw", [{"lr": 0.1}, {"lr": 0.1, "foreach": False}, {"lr": 0.05, "momentum": 0.9}],
                         ids=["default", "loop", "momentum"])
def test_sgd_default_step_truncates_all_parameters_at_once(parties, kw):
    g = _gen(5)
    ws = [torch.randn(s, generator=g) for s in SHAPES]
    grads = [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(2)]
    res = parties.run(_model_steps, kw, ws, grads)
    ref = [nn.Parameter(w.double().clone()) for w in ws]
    opt = torch.optim.SGD(ref, **kw)
    for gs in grads:
        for p, gr in zip(ref, gs):
            p.grad = gr.double()
        opt.step()
    n = sum(w.numel() for w in ws)
    for ps, costs, foreach in res:
        assert foreach == kw.get("foreach")  # the param group is left as the user made it
        for p, r in zip(ps, ref):
            assert (p.double() - r.detach()).abs().max() < 1e-5
        if kw.get("foreach") is False:  # torch's per-parameter loop: one truncation per parameter
            assert [(c.rounds, c.bytes) for c in costs] == [(3 * len(ws), 16 * n)] * 2
        elif kw.get("momentum"):  # step 1: buf = grad, p -= lr buf; then also buf *= momentum (one truncation)
            assert [(c.rounds, c.bytes) for c in costs] == [(3, 16 * n), (6, 32 * n)]
        else:  # foreach by default: p -= lr grad for all parameters in one truncation
            assert [(c.rounds, c.bytes) for c in costs] == [(3, 16 * n)] * 2


def _adam_huge_gradient(party):
    from secure_lightning.encoding import FixedPointOverflowError
    from secure_lightning.protocols import guard
    from secure_lightning.tensor import share_tensor
    guard.enable(party)
    try:
        p = nn.Parameter(share_tensor(torch.zeros(100) if party.rank == 0 else None, 0, party))
        opt = torch.optim.Adam([p])
        p.grad = share_tensor(torch.full((100,), 3000.0) if party.rank == 0 else None, 0, party)
        opt.step()
        guard.check(party=party)
    except FixedPointOverflowError as e:
        return str(e)
    finally:
        guard.disable(party)
    return "no error"


def test_adam_gradient_beyond_its_range_raises_on_all_parties(parties):
    """|g| >= 512 (f = 20) does not fit Adam's second moment: the guard names the optimizer, never a wrong step."""
    for msg in parties.run(_adam_huge_gradient):
        assert msg.startswith("FixedPointOverflowError in Adam gradient") and "5.1e2" in msg, msg
