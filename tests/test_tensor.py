"""SharedTensor ops and gradients against float64 torch, in three real party processes.

Each check runs the same function on SharedTensors (inputs shared by party 0) and on float64 tensors, forward and
backward (loss = sum(y * v) with v a *secret* random tensor, so gradients are secret too), and compares.

Tolerances (ulp = 2^-20 ~ 9.5e-7): a fixed-point product adds <= 1 ulp of truncation plus the inputs' rounding
(0.5 ulp times the other operand, summed over an inner dimension of k terms). Values here are O(1), so linear layers
are held to ATOL_LINEAR = 2e-5 (k up to ~40), shape ops to exactness (2 ulp: input rounding only), and the
comparison-based ops (ReLU, max pooling), which are exact on the encoded values, to the same bounds as the linear ops
around them.
"""
import torch
import torch.nn.functional as F
from torch import nn

ULP = 2.0 ** -20
ATOL_LINEAR = 2e-5


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _share(party, x, requires_grad=False, owner=0):
    from secure_lightning.tensor import share_tensor
    return share_tensor(x if party.rank == owner else None, owner, party, requires_grad=requires_grad)


def _secure_fwd_bwd(party, fn, inputs, grad_mask, v):
    """Share inputs from party 0, y = fn(*inputs), backward of sum(y * v) with v shared by party 1."""
    from secure_lightning.tensor import reveal_tensor
    xs = [_share(party, x, m) for x, m in zip(inputs, grad_mask)]
    with party.comm.cost() as fwd:
        y = fn(*xs)
    vs = _share(party, v, owner=1)
    (y * vs).sum().backward()
    grads = [reveal_tensor(x.grad) if m else None for x, m in zip(xs, grad_mask)]
    return reveal_tensor(y.detach()), grads, fwd.total, len(party.audit)


def _plain_fwd_bwd(fn, inputs, grad_mask, v):
    xs = [x.clone().requires_grad_(m) for x, m in zip(inputs, grad_mask)]
    y = fn(*xs)
    (y * v).sum().backward()
    return y.detach(), [x.grad if m else None for x, m in zip(xs, grad_mask)]


def check(parties, fn, inputs, grad_mask=None, atol=ATOL_LINEAR, grad_atol=None, seed=0):
    inputs = [x.to(torch.float64) for x in inputs]
    grad_mask = grad_mask or [True] * len(inputs)
    with torch.no_grad():
        shape = fn(*inputs).shape
    v = torch.randn(shape, generator=_gen(seed + 100), dtype=torch.float64)
    y_ref, g_ref = _plain_fwd_bwd(fn, inputs, grad_mask, v)
    res = parties.run(_secure_fwd_bwd, fn, inputs, grad_mask, v)
    y, grads, cost, openings = res[0]
    err = (y.double() - y_ref).abs().max().item()
    assert err <= atol, f"forward error {err:.3g} > {atol:.3g}"
    for i, (g, gr) in enumerate(zip(grads, g_ref)):
        if gr is not None:
            err = (g.double() - gr).abs().max().item()
            assert err <= (grad_atol or atol), f"gradient of input {i}: error {err:.3g} > {grad_atol or atol:.3g}"
    return res


# ---- sharing and opening -------------------------------------------------------------------------------------------
def _share_reveal(party, xs):
    from secure_lightning.tensor import SharedTensor, reveal_tensor, share_tensor
    out = []
    for x in xs:
        with party.comm.cost() as c:
            s = share_tensor(x if party.rank == 0 else None, 0, party)
        with party.comm.cost() as r:
            v = reveal_tensor(s)
        with party.comm.cost() as r1:
            v1 = reveal_tensor(s, to=2)
        out.append((isinstance(s, SharedTensor), s.dtype, tuple(s.shape), v, v1, c.total, r.total, r1.total))
    return out, party.audit.report()


def test_share_tensor_reveal_tensor_dtypes_and_cost(parties):
    xs = [torch.randn(3, 4, generator=_gen(0)), torch.tensor([0, 3, 9, 2]), torch.tensor([True, False, True])]
    res = parties.run(_share_reveal, xs)
    for rank, (out, audit) in enumerate(res):
        for x, (is_st, dtype, shape, v, v1, c, r, r1) in zip(xs, out):
            n = x.numel()
            assert is_st and shape == tuple(x.shape)
            assert dtype == {torch.float32: torch.float32, torch.int64: torch.int64, torch.bool: torch.bool}[x.dtype]
            assert v.dtype == x.dtype
            if x.is_floating_point():
                assert torch.allclose(v, x, atol=ULP)
            else:
                assert torch.equal(v, x)
            assert (v1 is not None) == (rank == 2)
            # share: 2 rounds; owner sends 2 x 88 header bytes + 2 ring elements per element
            assert c.rounds == 2 and c.bytes == (2 * 88 + 16 * n if rank == 0 else 0)
            assert r.rounds == 1 and r.bytes == 8 * n                      # open to all: 1 element each
            assert r1.rounds == 1 and r1.bytes == (8 * n if rank == 1 else 0)  # open to P2: P1 sends
        assert audit.count("->") == 2 * len(xs)


def _share_bad(party):
    from secure_lightning.encoding import FixedPointRangeError
    from secure_lightning.tensor import share_tensor
    try:
        share_tensor(torch.tensor([1.0, float("nan")]) if party.rank == 0 else None, 0, party)
    except FixedPointRangeError as e:
        return str(e)
    return "no error"


def test_share_tensor_bad_input_raises_on_every_party(parties):
    for msg in parties.run(_share_bad):
        assert "could not share" in msg or "NaN" in msg


# ---- arithmetic with shares and public values ------------------------------------------------------------------------
def _arith(party, a, b):
    from secure_lightning.tensor import reveal_tensor
    x, y = _share(party, a), _share(party, b, owner=1)
    pub = torch.linspace(-2, 2, a.shape[-1]) + 0.3
    costs, outs = {}, {}
    cases = {
        "x+y": lambda: x + y, "x-y": lambda: x - y, "x+3": lambda: x + 3, "2.5-x": lambda: 2.5 - x,
        "x+pub": lambda: x + pub, "-x": lambda: -x, "x*3": lambda: x * 3, "x*pubint": lambda: x * torch.tensor(-4),
        "x*0.25": lambda: x * 0.25, "x*pub": lambda: x * pub, "x*y": lambda: x * y, "x/4": lambda: x / 4,
        "x/pub": lambda: x / (pub + 3), "sum": lambda: x.sum(), "mean": lambda: x.mean(),
        "mean0": lambda: x.mean(0), "sumk": lambda: x.sum(1, keepdim=True), "x@yT": lambda: x @ y.t(),
        "pub@x": lambda: pub @ x.t(), "x**2": lambda: x ** 2, "x**3": lambda: x ** 3,
    }
    for k, f in cases.items():
        with party.comm.cost() as c:
            z = f()
        costs[k] = c.total
        outs[k] = reveal_tensor(z)
    return outs, costs


def test_arithmetic_with_public_and_shared_operands_value_and_cost(parties):
    a = torch.randn(3, 5, generator=_gen(1))
    b = torch.randn(3, 5, generator=_gen(2))
    pub = torch.linspace(-2, 2, 5) + 0.3
    want = {"x+y": a + b, "x-y": a - b, "x+3": a + 3, "2.5-x": 2.5 - a, "x+pub": a + pub, "-x": -a, "x*3": a * 3,
            "x*pubint": a * -4, "x*0.25": a * 0.25, "x*pub": a * pub, "x*y": a * b, "x/4": a / 4,
            "x/pub": a / (pub + 3), "sum": a.sum(), "mean": a.mean(), "mean0": a.mean(0),
            "sumk": a.sum(1, keepdim=True), "x@yT": a @ b.t(), "pub@x": pub @ a.t(), "x**2": a ** 2, "x**3": a ** 3}
    # x * 0.25 and x / 4 defer 2 fractional bits (free; settled by the opening, outside the measured block)
    free = {"x+y", "x-y", "x+3", "2.5-x", "x+pub", "-x", "x*3", "x*pubint", "sum", "sumk", "x*0.25", "x/4"}
    one_trunc = {"x*pub", "x*y", "x/pub", "mean", "mean0", "x@yT", "pub@x", "x**2"}
    for outs, costs in parties.run(_arith, a, b):
        for k, w in want.items():
            assert torch.allclose(outs[k].double(), w.double(), atol=2e-5), k
            n = w.numel()
            if k in free:
                assert costs[k].bytes == 0 and costs[k].rounds == 0, k
            elif k in one_trunc:  # one truncation: 3 rounds, 16 bytes per output element
                assert costs[k].rounds == 3 and costs[k].bytes == 16 * n, (k, costs[k])
        assert costs["x**3"].rounds == 6  # square, then one product


# ---- linear layers ---------------------------------------------------------------------------------------------------
def test_linear_matmul_gradients(parties):
    g = _gen(3)
    x, w, b = torch.randn(4, 7, generator=g), torch.randn(5, 7, generator=g), torch.randn(5, generator=g)
    check(parties, lambda x, w, b: F.linear(x, w, b), [x, w, b])
    x3 = torch.randn(2, 3, 7, generator=g)
    check(parties, lambda x, w, b: F.linear(x, w, b), [x3, w, b])
    y = torch.randn(2, 7, 3, generator=g)
    check(parties, lambda a, b: a @ b, [x3, y])
    check(parties, lambda a, b: torch.bmm(a, b), [x3, y])


def test_conv2d_gradients_all_arguments(parties):
    g = _gen(4)
    x = torch.randn(2, 4, 9, 8, generator=g)
    w = torch.randn(6, 2, 3, 3, generator=g)
    b = torch.randn(6, generator=g)
    res = check(parties, lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, dilation=2, groups=2), [x, w, b],
                atol=4e-5)
    assert res[0][2].rounds == 3  # one truncation
    w2 = torch.randn(3, 4, 5, 2, generator=g)
    check(parties, lambda x, w: F.conv2d(x, w, stride=(2, 1), padding=(2, 0)), [x, w2], atol=4e-5)
    x1, w1 = torch.randn(2, 3, 11, generator=g), torch.randn(4, 3, 3, generator=g)
    check(parties, lambda x, w: F.conv1d(x, w, padding=1, stride=2), [x1, w1], atol=4e-5)


def _shape_ops(x, y):
    a = x.view(2, 3, 4).permute(2, 0, 1).reshape(4, 6)
    b = torch.flatten(y.transpose(0, 1), 0).unsqueeze(0).expand(4, 24)[:, :6]
    c = torch.cat([a, b.t().t()], dim=1)
    d = torch.stack([c, -c], 0)[1].squeeze()
    e = F.pad(d, (1, 2, 0, 1))[1:, ::2]
    f = e.index_select(1, torch.tensor([0, 2, 2])) + e.gather(1, torch.tensor([[1, 0]] * 4))[:, :1]
    h = torch.chunk(f, 3, dim=1)[1].repeat(2, 3).flip(0) + x[torch.tensor([0, 5]), 1:4].sum()
    return torch.cat([h.reshape(-1), e.sum(0), e.narrow(1, 2, 3).mean(1), a[:, 2]])


def test_shape_and_indexing_ops_gradients_are_local(parties):
    g = _gen(5)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    res = check(parties, _shape_ops, [x, y], atol=4 * ULP, grad_atol=4e-5)
    cost = res[0][2]
    assert cost.bytes == 0 or cost.rounds <= 3  # only the single mean truncates


# ---- ReLU, pooling ---------------------------------------------------------------------------------------------------
def test_relu_variants_keep_the_bit(parties):
    g = _gen(6)
    x = torch.randn(3, 10, generator=g)
    x[0, :3] = torch.tensor([0.0, 1e-6, -1e-6])
    for fn in (F.relu, torch.relu, lambda t: t.relu(), nn.ReLU(), nn.ReLU(inplace=True),
               lambda t: F.relu(t, inplace=True)):
        res = check(parties, lambda t: fn(t * 1), [x], atol=2 * ULP)
        assert res[0][2].rounds == 8  # compare.relu: 8 rounds, no truncation


def _relu_costs(party, x):
    xs = _share(party, x, True)
    with party.comm.cost() as fwd:
        y = F.relu(xs)
    g = _share(party, torch.ones_like(x) if party.rank == 0 else None)
    with party.comm.cost() as bwd:
        y.backward(g)
    return fwd.total.rounds, bwd.total.rounds, bwd.total.bytes


def test_relu_backward_is_one_ring_product(parties):
    x = torch.randn(4, 8, generator=_gen(7))
    for rf, rb, bb in parties.run(_relu_costs, x):
        assert rf == 8 and rb == 1 and bb == 8 * x.numel()


def test_pooling_gradients(parties):
    g = _gen(8)
    x = torch.randn(2, 3, 8, 8, generator=g)
    check(parties, lambda t: F.max_pool2d(t, 2), [x], atol=2 * ULP)
    check(parties, lambda t: F.max_pool2d(t, 3, stride=2, padding=1), [x], atol=2 * ULP)
    check(parties, lambda t: nn.MaxPool2d(2, ceil_mode=True)(t[..., :7, :7]), [x], atol=2 * ULP)
    # 1152 windows of 4: every comparison level's inject has >= convert.RELAY_FROM outputs (relayed, onehot included)
    big = torch.randn(2, 4, 24, 24, generator=g) * 3
    check(parties, lambda t: F.max_pool2d(F.relu(t), 2), [big], atol=2 * ULP)
    # average pools (pooling.avg_pool2d): 1 ulp truncation + |window sum| 2^-(f+1) from rounding 1/divisor; window
    # sums here are below ~20, so 16 ulp
    check(parties, lambda t: F.avg_pool2d(t, 2), [x], atol=16 * ULP)
    check(parties, lambda t: F.avg_pool2d(t, 3, stride=2, padding=1, count_include_pad=False), [x], atol=16 * ULP)
    check(parties, lambda t: F.adaptive_avg_pool2d(t, 1), [x], atol=16 * ULP)
    check(parties, lambda t: F.adaptive_avg_pool2d(t, (3, 2)), [x], atol=16 * ULP)
    check(parties, lambda t: torch.flatten(nn.AdaptiveAvgPool2d((1, 1))(t), 1), [x], atol=16 * ULP)


def test_small_network_functional_forward_backward(parties):
    g = _gen(9)
    x = torch.randn(2, 1, 8, 8, generator=g)
    w1, b1 = torch.randn(4, 1, 3, 3, generator=g) * 0.5, torch.randn(4, generator=g) * 0.1
    w2, b2 = torch.randn(3, 4 * 3 * 3, generator=g) * 0.3, torch.randn(3, generator=g) * 0.1

    def net(x, w1, b1, w2, b2):
        h = F.max_pool2d(F.relu(F.conv2d(x, w1, b1, padding=1)), 2)
        h = F.avg_pool2d(h, 2, stride=1)
        return F.linear(torch.flatten(h, 1), w2, b2)
    check(parties, net, [x, w1, b1, w2, b2], atol=5e-5)


# ---- dropout, comparisons, errors -------------------------------------------------------------------------------------
def _dropout(party, x):
    from secure_lightning.tensor import reveal_tensor
    xs = _share(party, x, True)
    y = F.dropout(xs, 0.5, training=True)
    y.sum().backward()
    y2 = nn.Dropout(0.25)(xs)
    y3 = F.dropout(xs, 0.5, training=False)
    return reveal_tensor(y), reveal_tensor(xs.grad), reveal_tensor(y2), y3 is xs


def test_dropout_mask_is_common_and_public(parties):
    x = torch.rand(20, 50, generator=_gen(10)) + 0.5
    res = parties.run(_dropout, x)
    y, gx, y2, same = res[0]
    keep = y != 0
    assert same
    assert torch.allclose(y[keep], 2 * x[keep], atol=2 * ULP)
    assert torch.equal(gx, keep.float() * 2)  # the gradient uses the same public mask
    assert 0.4 < keep.float().mean() < 0.6
    keep2 = y2 != 0
    assert torch.allclose(y2[keep2], x[keep2] / 0.75, atol=4 * ULP) and 0.65 < keep2.float().mean() < 0.85
    for r in res[1:]:
        assert torch.equal(r[0], y)


def _compare_ops(party, a, b, labels):
    from secure_lightning.tensor import reveal_tensor
    x, y = _share(party, a), _share(party, b, owner=1)
    lab = _share(party, labels, owner=2)
    out = {
        "gt": x > y, "le": x <= 0.5, "eq": lab == 3, "max": torch.max(x, 1).values, "argmax": x.argmax(1),
        "acc": (x.argmax(1) == lab).float().mean(), "where": torch.where(x > y, x, y), "abs": x.abs(),
        "clamp": x.clamp(-0.5, 0.5), "maximum": torch.maximum(x, y), "onehot": F.one_hot(lab, 5),
    }
    return {k: reveal_tensor(v) for k, v in out.items()}


def test_comparisons_argmax_and_secret_accuracy(parties):
    a, b = torch.randn(6, 5, generator=_gen(11)), torch.randn(6, 5, generator=_gen(12))
    labels = torch.tensor([0, 3, 3, 1, 4, 2])
    out = parties.run(_compare_ops, a, b, labels)[0]
    assert torch.equal(out["gt"], a > b) and torch.equal(out["le"], a <= 0.5) and torch.equal(out["eq"], labels == 3)
    assert torch.allclose(out["max"], a.max(1).values, atol=ULP)
    assert torch.equal(out["argmax"], a.argmax(1))
    assert abs(out["acc"].item() - (a.argmax(1) == labels).float().mean().item()) < 1e-5
    assert torch.allclose(out["where"], torch.where(a > b, a, b), atol=2 * ULP)
    assert torch.allclose(out["abs"], a.abs(), atol=2 * ULP)
    assert torch.allclose(out["clamp"], a.clamp(-0.5, 0.5), atol=2 * ULP)
    assert torch.allclose(out["maximum"], torch.maximum(a, b), atol=2 * ULP)
    assert torch.equal(out["onehot"], F.one_hot(labels, 5))


def _errors(party):
    from secure_lightning.tensor import UnsupportedOpError
    x = _share(party, torch.ones(2, 4, 4))
    msgs = []
    for f in (lambda: torch.sin(x), lambda: x.sum().item(), lambda: bool(x.sum() > 0),
              lambda: F.max_pool2d(x, 2, return_indices=True), lambda: F.elu(x), lambda: x.floor(),
              lambda: torch.rand_like(x), lambda: x.long()):
        try:
            f()
            msgs.append("no error")
        except UnsupportedOpError as e:
            msgs.append(str(e))
    return msgs, repr(x)


def test_unsupported_ops_raise_naming_the_op_and_advice(parties):
    msgs, rep = parties.run(_errors)[0]
    assert "aten.sin" in msgs[0]
    assert "_local_scalar_dense" in msgs[1] and "reveal_tensor" in msgs[1]
    assert "reveal_tensor" in msgs[2]
    assert "return_indices" in msgs[3]
    assert "elu" in msgs[4] and "ReLU" in msgs[4]
    assert "floor" in msgs[5]
    assert "prg_common" in msgs[6]
    assert "integer" in msgs[7]
    assert "SharedTensor(shape=(2, 4, 4)" in rep


def _no_openings(party):
    x = _share(party, torch.randn(2, 3, 6, 6, generator=_gen(13)), True)
    w = _share(party, torch.randn(4, 3, 3, 3, generator=_gen(14)), True)
    y = F.max_pool2d(F.relu(F.conv2d(x, w, padding=1)), 2).mean()
    y.backward()
    return len(party.audit)


def test_forward_backward_opens_nothing(parties):
    assert parties.run(_no_openings) == [0, 0, 0]


# ---- approximations: softmax family, losses, batch norm ------------------------------------------------------------
# approx.py bounds (f = 20): softmax 2e-6, log_softmax 3e-6, exp 4e-6 (x <= 0), rsqrt/sqrt 2e-6 + 2^-18 |out|,
# reciprocal/div |q| 2^-18 + 3 ulp. Gradients add one or two products: ATOL_APPROX = 3e-5 on O(1) values.
ATOL_APPROX = 3e-5


def test_softmax_log_softmax_gradients(parties):
    x = torch.randn(4, 10, generator=_gen(20)) * 3
    check(parties, lambda t: F.softmax(t, dim=1), [x], atol=ATOL_APPROX)
    check(parties, lambda t: torch.log_softmax(t, -1), [x], atol=ATOL_APPROX)
    check(parties, lambda t: t.softmax(0), [x], atol=ATOL_APPROX)
    check(parties, lambda t: nn.LogSoftmax(dim=1)(t), [x], atol=ATOL_APPROX)


def test_losses_mse_nll_cross_entropy_public_targets(parties):
    g = _gen(21)
    x, t = torch.randn(5, 7, generator=g) * 2, torch.randn(5, 7, generator=g)
    labels = torch.tensor([0, 6, 3, 3, 1])
    probs = torch.softmax(torch.randn(5, 7, generator=g), 1)
    check(parties, lambda a, b: F.mse_loss(a, b), [x, t], atol=ATOL_APPROX)
    check(parties, lambda a, b: nn.MSELoss(reduction="sum")(a, b), [x, t], atol=ATOL_APPROX)
    check(parties, lambda a: F.nll_loss(F.log_softmax(a, 1), labels), [x], atol=ATOL_APPROX)
    for kw in ({}, {"reduction": "sum"}, {"reduction": "none"}, {"label_smoothing": 0.1}):
        check(parties, lambda a: F.cross_entropy(a, labels, **kw), [x], atol=ATOL_APPROX * 3)
    check(parties, lambda a: nn.CrossEntropyLoss()(a, probs), [x], atol=ATOL_APPROX)


def _ce_secret_labels(party, x, labels):
    from secure_lightning.tensor import reveal_tensor
    xs = _share(party, x, True)
    lab = _share(party, labels, owner=1)  # int64 SharedTensor: only party 1 knows the labels
    loss = F.cross_entropy(xs, lab)
    loss.backward()
    loss2 = F.nll_loss(F.log_softmax(xs, 1), lab, reduction="sum")
    return reveal_tensor(loss), reveal_tensor(xs.grad), reveal_tensor(loss2), lab.dtype, len(party.audit)


def test_cross_entropy_secret_integer_labels(parties):
    x = torch.randn(6, 4, generator=_gen(22)) * 2
    labels = torch.tensor([3, 0, 1, 1, 2, 3])
    loss, grad, loss2, dtype, _ = parties.run(_ce_secret_labels, x, labels)[0]
    xr = x.double().requires_grad_()
    ref = F.cross_entropy(xr, labels)
    ref.backward()
    assert dtype == torch.int64
    assert abs(loss.item() - ref.item()) < ATOL_APPROX
    assert (grad.double() - xr.grad).abs().max() < ATOL_APPROX
    assert abs(loss2.item() - F.cross_entropy(x.double(), labels, reduction="sum").item()) < 6 * ATOL_APPROX


def test_elementwise_approximations_and_secret_division(parties):
    g = _gen(23)
    pos = torch.rand(3, 6, generator=g) * 4 + 0.25
    x = torch.randn(3, 6, generator=g)
    check(parties, lambda a: torch.exp(a), [x], atol=ATOL_APPROX)
    check(parties, lambda a: torch.log(a), [pos], atol=ATOL_APPROX)
    check(parties, lambda a: a.sqrt(), [pos], atol=ATOL_APPROX)
    check(parties, lambda a: torch.rsqrt(a), [pos], atol=ATOL_APPROX)
    check(parties, lambda a: a.reciprocal() + 2.0 / a, [pos], atol=ATOL_APPROX)
    check(parties, lambda a, b: a / b, [x, pos], atol=ATOL_APPROX * 3)
    check(parties, lambda a: torch.sigmoid(a) + torch.tanh(a), [x], atol=ATOL_APPROX)


def _bn(party, x, w, b, rm, rv, steps):
    from secure_lightning.tensor import reveal_tensor
    xs, ws, bs = _share(party, x, True), _share(party, w, True), _share(party, b, True)
    rms, rvs = _share(party, rm), _share(party, rv)
    outs = []
    for training in steps:
        y = F.batch_norm(xs, rms, rvs, ws, bs, training=training, momentum=0.1, eps=1e-5)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        outs.append(reveal_tensor(y.detach()))
    return outs, [reveal_tensor(t) for t in (xs.grad, ws.grad, bs.grad, rms, rvs)]


def test_batch_norm_train_and_eval_with_running_stats(parties):
    g = _gen(24)
    x = torch.randn(4, 3, 5, 5, generator=g) * 2 + 1
    w, b = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g)
    rm, rv = torch.zeros(3), torch.ones(3)
    steps = [True, True, False]
    outs, (gx, gw, gb, rm_s, rv_s) = parties.run(_bn, x, w, b, rm, rv, steps)[0]
    xr, wr, br = (t.double().requires_grad_() for t in (x, w, b))
    rmr, rvr = rm.double(), rv.double()
    for training, y in zip(steps, outs):
        yr = F.batch_norm(xr, rmr, rvr, wr, br, training=training, momentum=0.1, eps=1e-5)
        (yr * torch.linspace(-1, 1, yr.numel(), dtype=torch.float64).reshape(yr.shape)).sum().backward()
        assert (y.double() - yr.detach()).abs().max() < 1e-4, training
    for got, want in ((gx, xr.grad), (gw, wr.grad), (gb, br.grad), (rm_s, rmr), (rv_s, rvr)):
        assert (got.double() - want).abs().max() < 2e-4


def _public_constants(party, x):
    from secure_lightning.tensor import reveal_tensor
    xs = _share(party, x)
    z = torch.zeros_like(xs)
    public_before = z.public is not None
    row = z[1]                      # a view of a public constant
    z[0] = xs[0] * 2                # written through a view: z is no longer public
    row.add_(1.0)                   # written through the other view
    with party.comm.cost() as c:
        w = z * 3                   # public integer: free either way
    return public_before, z.public is None, row.public is None, reveal_tensor(z), reveal_tensor(w), c.total.bytes


def test_public_constants_track_in_place_writes_through_views(parties):
    x = torch.randn(3, 4, generator=_gen(30))
    before, z_secret, row_secret, z, w, nbytes = parties.run(_public_constants, x)[0]
    want = torch.zeros(3, 4)
    want[0] = 2 * x[0]
    want[1] = 1.0
    assert before and z_secret and row_secret and nbytes == 0
    assert torch.allclose(z, want, atol=2 * ULP) and torch.allclose(w, 3 * want, atol=6 * ULP)
