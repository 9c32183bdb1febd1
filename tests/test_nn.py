"""secure_module: layer swapping by type table, sharing parameters and buffers, state dicts, reverting to plaintext.

Tolerance: a small network's secure outputs match float64 torch within 1e-4 (a few fixed-point products and the
batch-norm rsqrt approximation, 2e-6 + 2^-18 relative, on O(1) values). Weight gradients sum per-position products
over N*H*W = 128 positions; each truncation is a floor (bias up to 1 ulp), so they are held to ATOL_GRAD = 3e-4
(128 positions x ~2 ulp, times the batch-norm scale ~1).
"""
import pytest
import torch
from torch import nn

ATOL = 1e-4
ATOL_GRAD = 3e-4


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3), nn.ReLU(), nn.AvgPool2d(2, stride=1), nn.Dropout(0.0),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5), nn.Softmax(dim=1))
        self.loss = nn.CrossEntropyLoss()

    def forward(self, x):
        return self.head(self.features(x))


def _net(seed=0):
    torch.manual_seed(seed)
    m = Net()
    with torch.no_grad():  # non-trivial batch-norm state
        m.features[1].running_mean.uniform_(-0.5, 0.5)
        m.features[1].running_var.uniform_(0.5, 2.0)
        m.features[1].weight.uniform_(0.5, 1.5)
    return m


def _secure_net(party, x):
    from secure_lightning.nn import SecureBatchNorm2d, SecureMaxPool2d, SecureReLU, reveal_state_dict, secure_module
    from secure_lightning.tensor import SharedTensor, reveal_tensor, share_tensor
    m = _net(seed=party.rank)  # only party 0's values count
    with party.comm.cost() as c:
        secure_module(m, party, owner=0)
    f = m.features
    kinds = (isinstance(f[1], SecureBatchNorm2d), isinstance(f[2], SecureReLU), isinstance(f[3], SecureMaxPool2d),
             isinstance(f[1], nn.BatchNorm2d))
    params = [(type(p).__name__, isinstance(p, nn.Parameter), p.requires_grad) for p in m.parameters()]
    buffers = {n: isinstance(b, SharedTensor) for n, b in m.named_buffers()}
    xs = share_tensor(x if party.rank == 0 else None, 0, party)
    m.eval()
    y_eval = reveal_tensor(m(xs))
    m.train()
    y_train = m(xs)
    loss = m.loss(y_train, torch.tensor([1, 4]))
    loss.backward()
    grads = {n: reveal_tensor(p.grad) for n, p in m.named_parameters()}
    sd = reveal_state_dict(m, party, to=0)
    return kinds, params, buffers, y_eval, reveal_tensor(y_train.detach()), grads, sd, c.total


def test_secure_module_swaps_layers_shares_state_and_matches_torch(parties):
    x = torch.randn(2, 1, 8, 8, generator=_gen(1))
    res = parties.run(_secure_net, x)
    ref = _net(seed=0).double()
    ref.eval()
    y_eval_ref = ref(x.double())
    ref.train()
    y_train_ref = ref(x.double())
    ref.loss(y_train_ref, torch.tensor([1, 4])).backward()
    for rank, (kinds, params, buffers, y_eval, y_train, grads, sd, cost) in enumerate(res):
        assert all(kinds)
        assert all(t == "SharedTensor" and is_p and rg for t, is_p, rg in params)
        assert buffers == {"features.1.running_mean": True, "features.1.running_var": True,
                           "features.1.num_batches_tracked": False}
        assert (y_eval.double() - y_eval_ref).abs().max() < ATOL
        assert (y_train.double() - y_train_ref.detach()).abs().max() < ATOL
        for n, p in ref.named_parameters():
            assert (grads[n].double() - p.grad).abs().max() < ATOL_GRAD, n
        # 1 structure-check round + 2 sharing rounds; the owner sends 2 ring elements per value
        n_values = sum(p.numel() for p in ref.parameters()) + 8
        assert cost.rounds == 3
        assert cost.bytes == 16 + (2 * 88 + 16 * n_values if rank == 0 else 0)
        assert (sd is not None) == (rank == 0)
    sd = res[0][6]
    for k, v in ref.state_dict().items():  # running stats were updated once in train mode on both sides
        assert (sd[k].double() - v.double()).abs().max() < ATOL, k


def test_unsupported_layers_are_named_with_advice():
    from secure_lightning.nn import SecureLayers, UnsupportedLayerError
    cases = [
        (nn.Sequential(nn.Linear(2, 2), nn.ELU()), ["'1' (ELU)", "nn.ReLU"]),
        (nn.Sequential(nn.LSTM(2, 2)), ["LSTM", "recurrent"]),
        (nn.Sequential(nn.MaxPool2d(2, return_indices=True)), ["return_indices"]),
        (nn.Sequential(nn.GroupNorm(1, 3)), ["GroupNorm", "BatchNorm"]),
        (nn.Sequential(nn.CrossEntropyLoss(weight=torch.ones(3))), ["class weights"]),
    ]
    for module, words in cases:
        with pytest.raises(UnsupportedLayerError) as e:
            SecureLayers().apply(module)
        for w in words:
            assert w in str(e.value)


def test_swap_and_revert_change_classes_in_place():
    from secure_lightning.nn import SecureLayers, SecureReLU
    m = _net()
    relu = m.features[2]
    SecureLayers().apply(m)
    assert type(relu) is SecureReLU and m.features[2] is relu
    x = torch.randn(2, 1, 8, 8)
    m.eval()
    y = m(x)  # plain tensors: secure layers fall back to torch
    SecureLayers().revert(m)
    assert type(relu) is nn.ReLU
    assert torch.allclose(m(x), y)


def _mismatch(party):
    from secure_lightning.nn import secure_module
    m = nn.Linear(3, 2) if party.rank != 2 else nn.Linear(3, 3)
    try:
        secure_module(m, party)
    except ValueError as e:
        return str(e)
    return "no error"


def test_secure_module_detects_different_models(parties):
    for msg in parties.run(_mismatch):
        assert "different parameter names or shapes" in msg


def _checkpoint(party, x):
    from secure_lightning.nn import (
        load_share_state_dict, restore_plain, reveal_state_dict, secure_module, share_state_dict,
    )
    from secure_lightning.tensor import reveal_tensor, share_tensor
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    secure_module(m, party)
    saved = share_state_dict(m)
    before = reveal_state_dict(m, party, to=None)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    xs = share_tensor(x if party.rank == 0 else None, 0, party)
    m(xs).sum().backward()
    opt.step()
    changed = reveal_state_dict(m, party, to=None)
    fresh = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    load_share_state_dict(fresh, saved, party)
    load_share_state_dict(m, saved, party)
    after = reveal_state_dict(m, party, to=None)
    fresh_sd = reveal_state_dict(fresh, party, to=None)
    m.eval()
    y_secure = reveal_tensor(m(xs))
    restore_plain(m, after)
    plain_types = {type(p).__name__ for p in m.parameters()}
    y_plain = m(x)
    return before, changed, after, fresh_sd, y_secure, y_plain.detach(), plain_types, sorted(saved), type(m[2])


def test_share_state_dict_roundtrip_and_restore_plain(parties):
    x = torch.randn(5, 4, generator=_gen(2))
    for before, changed, after, fresh_sd, y_secure, y_plain, types, keys, relu_cls in parties.run(_checkpoint, x):
        assert any((changed[k] - before[k]).abs().max() > 1e-3 for k in before if before[k].is_floating_point())
        for k in before:
            assert torch.equal(after[k], before[k]) and torch.equal(fresh_sd[k], before[k]), k
        assert types == {"Parameter"} and relu_cls is nn.ReLU
        assert (y_plain - y_secure).abs().max() < ATOL
        assert "1.num_batches_tracked" in keys


def _tied(party):
    from secure_lightning.nn import secure_module
    from secure_lightning.tensor import SharedTensor
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    b.bias.requires_grad_(False)
    m = nn.Sequential(a, nn.ReLU(), b)
    secure_module(m, party)
    return m[0].weight is m[2].weight, isinstance(m[2].bias, SharedTensor), m[2].bias.requires_grad


def test_tied_parameters_stay_tied_and_requires_grad_is_kept(parties):
    for tied, shared, rg in parties.run(_tied):
        assert tied and shared and not rg


def _module_methods(party, x):
    import copy
    from secure_lightning.nn import secure_module
    from secure_lightning.tensor import SharedTensor, reveal_tensor, share_tensor
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    secure_module(m, party)
    m.to("cpu").float().train().eval()
    m2 = copy.deepcopy(m)
    xs = share_tensor(x if party.rank == 0 else None, 0, party)
    with torch.no_grad():
        y, y2 = reveal_tensor(m(xs)), reveal_tensor(m2(xs))
    return (y - y2).abs().max().item() < 1e-5, m2[0].weight is not m[0].weight, isinstance(m2[0].weight, SharedTensor), repr(m[0].weight)


def test_module_methods_keep_shares(parties):
    x = torch.randn(5, 4, generator=_gen(3))
    for same, distinct, shared, rep in parties.run(_module_methods, x):
        assert same and distinct and shared
        assert rep.startswith("SharedTensor(shape=(3, 4)")


# ---------------------------------------------------------------------------------------------------------------------
# Eval-mode batch norm: the per-channel scale weight / sqrt(running_var + eps) is computed once and cached

def _bn_net():
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-0.5, 0.5)
    return m


def _bn_cache(party, x, y):
    import torch.nn.functional as F
    from secure_lightning.nn import load_share_state_dict, secure_module, share_state_dict
    from secure_lightning.tensor import reveal_tensor, share_tensor
    m = _bn_net()
    secure_module(m, party)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    xs = share_tensor(x if party.rank == 0 else None, 0, party)
    bn, costs, outs = m[1], {}, {}

    def eval_out():
        with torch.no_grad():
            return reveal_tensor(m(xs))

    def bn_cost(name):  # the batch-norm layer alone, on the current conv output
        with torch.no_grad():
            h = m[0](xs)
            with party.comm.cost() as c:
                out = bn(h)
        costs[name] = c.total
        return reveal_tensor(out)

    def step():
        loss = F.cross_entropy(m(xs), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    m.eval()
    with torch.no_grad():
        h = m[0](xs)
        with party.comm.cost() as c:  # uncached: the functional call recomputes the scale
            F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.1, bn.eps)
    costs["functional"] = c.total
    outs["bn1"], outs["bn2"] = bn_cost("first"), bn_cost("second")
    outs["eval"] = eval_out()
    m.train()
    step()  # a training step: running statistics and weight change
    m.eval()
    saved = share_state_dict(m)
    outs["after_train"] = eval_out()
    step()  # a step in eval mode (no train() call): the optimizer writes the weight in place
    outs["bn_after_eval_step"] = bn_cost("after_eval_step")
    outs["after_eval_step"] = eval_out()
    load_share_state_dict(m, saved, party)
    bn_cost("after_load")
    outs["after_load"] = eval_out()
    bn.eps = 1e-3
    bn_cost("after_eps")
    outs["after_eps"] = eval_out()
    return outs, costs, m[1].__dict__.get("_secure_eval_scale") is not None


def test_eval_batch_norm_scale_is_cached_and_refreshed(parties):
    import torch.nn.functional as F
    x = torch.randn(4, 2, 4, 4, generator=_gen(7))
    y = torch.tensor([0, 3, 1, 2])
    ref = _bn_net().double()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    xd = x.double()

    def step():
        loss = F.cross_entropy(ref(xd), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    ref.eval()
    with torch.no_grad():
        want = {"bn": ref[1](ref[0](xd)), "eval": ref(xd)}
    ref.train()
    step()
    ref.eval()
    with torch.no_grad():
        want["after_train"] = ref(xd)
        saved = {k: v.clone() for k, v in ref.state_dict().items()}
    step()
    with torch.no_grad():
        want["bn_after_eval_step"] = ref[1](ref[0](xd))
        want["after_eval_step"] = ref(xd)
        ref.load_state_dict(saved)
        ref[1].eps = 1e-3
        want["after_eps"] = ref(xd)
    n = 4 * 3 * 4 * 4
    for outs, costs, cached in parties.run(_bn_cache, x, y):
        assert cached
        for k in ("bn1", "bn2"):
            assert (outs[k].double() - want["bn"]).abs().max() < ATOL
        assert (outs["eval"].double() - want["eval"]).abs().max() < ATOL
        # the first eval forward computes the scale (approx.rsqrt, 23 rounds, and the product with the weight, 3)
        # and applies it (3): exactly what the uncached functional call costs; later forwards only apply it
        first, second, func = costs["first"], costs["second"], costs["functional"]
        assert (first.rounds, first.bytes) == (func.rounds, func.bytes)
        assert first.rounds == 23 + 3 + 3
        assert (second.rounds, second.bytes) == (3, 16 * n)
        for k in ("after_eval_step", "after_load"):  # every state change recomputes the scale
            assert (costs[k].rounds, costs[k].bytes) == (first.rounds, first.bytes), k
        assert costs["after_eps"].rounds == first.rounds  # a larger eps: rsqrt's range starts higher (fewer bytes)
        assert (outs["after_train"].double() - want["after_train"]).abs().max() < ATOL
        assert (outs["bn_after_eval_step"].double() - want["bn_after_eval_step"]).abs().max() < ATOL
        assert (outs["after_eval_step"].double() - want["after_eval_step"]).abs().max() < ATOL
        assert (outs["after_load"].double() - want["after_train"]).abs().max() < ATOL
        assert (outs["after_eps"].double() - want["after_eps"]).abs().max() < ATOL


# ---------------------------------------------------------------------------------------------------------------------
# ReLU -> MaxPool2d in a Sequential runs as pool -> ReLU on shares

def _relu_pool_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
                         nn.ReLU(), nn.MaxPool2d(2))


def _relu_pool(party, x):
    from secure_lightning.nn import SecureSequential, secure_module
    from secure_lightning.tensor import reveal_tensor, share_tensor
    m = _relu_pool_net()
    secure_module(m, party, owner=0)
    seen = []
    m[1].register_forward_hook(lambda mod, i, o: seen.append(tuple(o.shape)))
    xs = share_tensor(x if party.rank == 0 else None, 0, party, requires_grad=True)
    with party.comm.cost() as fused:
        y = m(xs)
    with party.comm.cost() as written:  # the same layers called one by one, in the written order
        z = xs
        for layer in m:
            z = layer(z)
    with torch.no_grad(), party.comm.cost() as public_in:  # a public input turns shared at the conv: still reordered
        m(x)
    with torch.no_grad(), party.comm.cost() as shared_in:
        m(xs)
    y.sum().backward()
    sliced = m[:2]
    return (reveal_tensor(y), reveal_tensor(z), reveal_tensor(xs.grad), reveal_tensor(m[0].weight.grad),
            reveal_tensor(sliced(xs)), type(sliced) is SecureSequential, seen, fused.total.bytes, written.total.bytes,
            public_in.total.bytes == shared_in.total.bytes)


def test_relu_before_max_pool_runs_after_it_with_the_same_values_and_gradients(parties):
    """Values and gradients equal plain torch's (tolerance ATOL / ATOL_GRAD, as above); the reordered pass sends
    less than the written order; a slice ending in the ReLU still applies it; the ReLU's hook still runs."""
    x = torch.randn(2, 2, 9, 9, generator=_gen(4))
    m = _relu_pool_net()
    xp = x.clone().requires_grad_()
    want = m(xp)
    want.sum().backward()
    for y, z, gx, gw, head, is_seq, seen, fused, written, public_same in parties.run(_relu_pool, x):
        assert public_same
        assert torch.allclose(y.double(), want.double(), atol=ATOL) and torch.allclose(z, y, atol=ATOL)
        assert torch.allclose(gx.double(), xp.grad.double(), atol=ATOL_GRAD)
        assert torch.allclose(gw.double(), m[0].weight.grad.double(), atol=ATOL_GRAD)
        assert torch.allclose(head.double(), m[:2](x).double(), atol=ATOL)  # the slice's ReLU is applied
        assert is_seq and seen == [(2, 3, 4, 4), (2, 3, 7, 7), (2, 3, 4, 4), (2, 3, 4, 4), (2, 3, 7, 7)]
        assert fused < written
