"""torch.optim on shares: `_foreach_*` ops, and foreach as the default for shared parameters.

torch.optim has two paths: a per-parameter loop of single-tensor ops (add_, mul_, lerp_, addcmul_, addcdiv_, sqrt:
functional.py, registered in ops_pointwise.py / ops_nonlinear.py) and the foreach path of list ops (below). In the
loop every product with a public real (lr * grad, momentum * buf) is its own truncation: 3 rounds per parameter. The
list ops `_foreach_add_(params, grads, alpha=-lr)` and `_foreach_mul_(tensors, scalar)` put the products of ALL
parameters into ONE truncation (3 rounds for the whole list); the other list ops apply the single-tensor function to
each element.

Default: torch picks foreach by itself only for plain tensors on accelerators. For param groups left at
foreach=None (torch's "let the library choose") whose parameters are all SharedTensors, a global optimizer step
pre-hook (torch.optim.optimizer.register_optimizer_step_pre_hook, registered when this module is imported) runs
SGD (not fused or differentiable) with foreach=True for that step and sets
foreach back to None after it (the param groups and optimizer state dicts stay as the user made them). So a plain
`torch.optim.SGD(model.parameters(), lr=lr)` step costs one truncation (3 rounds, 16 bytes per parameter element)
for the whole model; with momentum two from the second step on (6 rounds, buf *= momentum first).
foreach=False keeps the per-parameter loop (3 rounds per parameter and product).
"""
from __future__ import annotations

import weakref

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from ..protocols import local as L
from ..protocols.arithmetic import mul_public_real
from .dispatch import aten, assign_inplace, implements, is_integral, public_value, wrap
from .functional import add, addcdiv, addcmul, clone, copy_, div, lerp, mul, neg, sqrt
from .shared import SharedTensor


def _scale_all(tensors, scalar):
    """[t * scalar for t in tensors] with one truncation for all secret ones (scalar a public real)."""
    c = public_value(scalar)
    secret = [t for t in tensors if isinstance(t, SharedTensor) and t.public is None]
    if not secret or is_integral(c):
        return [mul(t, scalar) for t in tensors]
    party = secret[0].party
    raw = [t.raw_shares for t in secret]  # deferred scales (pooled layers' bias gradients) fold into the truncation
    top = max(e for _, e in raw)
    flat = L.cat([(L.mul_int(s, 1 << (top - e)) if e < top else s).map(lambda v: v.reshape(-1)) for s, e in raw])
    prod = mul_public_real(flat, c, party=party, extra_bits=top)
    off, scaled = 0, {}
    for t in secret:
        n = t.numel()
        scaled[id(t)] = wrap(prod.map(lambda s: s[off:off + n].reshape(t.shape)), party)
        off += n
    return [scaled[id(t)] if id(t) in scaled else mul(t, scalar) for t in tensors]


def _pairs(other, n):
    return other if isinstance(other, (list, tuple)) else [other] * n


@implements(aten._foreach_add.List, aten._foreach_add.Scalar, aten._foreach_add.ScalarList,
            aten._foreach_add.Tensor)
def foreach_add(self, other, alpha=1):
    others = _pairs(other, len(self))
    if alpha != 1:
        others = _scale_all(others, alpha)
    return [add(a, b) for a, b in zip(self, others)]


@implements(aten._foreach_add_.List, aten._foreach_add_.Scalar, aten._foreach_add_.ScalarList,
            aten._foreach_add_.Tensor)
def foreach_add_(self, other, alpha=1):
    for t, new in zip(self, foreach_add(self, other, alpha)):
        assign_inplace(t, new)


@implements(aten._foreach_sub.List, aten._foreach_sub.Scalar)
def foreach_sub(self, other, alpha=1):
    return foreach_add(self, other, -alpha)


@implements(aten._foreach_sub_.List, aten._foreach_sub_.Scalar)
def foreach_sub_(self, other, alpha=1):
    foreach_add_(self, other, -alpha)


@implements(aten._foreach_mul.Scalar, aten._foreach_mul.List, aten._foreach_mul.ScalarList,
            aten._foreach_mul.Tensor)
def foreach_mul(self, other):
    if not isinstance(other, (list, tuple)) and not isinstance(other, SharedTensor):
        return _scale_all(self, other)
    return [mul(a, b) for a, b in zip(self, _pairs(other, len(self)))]


@implements(aten._foreach_mul_.Scalar, aten._foreach_mul_.List, aten._foreach_mul_.ScalarList,
            aten._foreach_mul_.Tensor)
def foreach_mul_(self, other):
    for t, new in zip(self, foreach_mul(self, other)):
        assign_inplace(t, new)


@implements(aten._foreach_div.Scalar, aten._foreach_div.List, aten._foreach_div.ScalarList)
def foreach_div(self, other):
    if not isinstance(other, (list, tuple)) and not isinstance(other, SharedTensor):
        return _scale_all(self, 1.0 / float(other))
    return [div(a, b) for a, b in zip(self, _pairs(other, len(self)))]


@implements(aten._foreach_div_.Scalar, aten._foreach_div_.List, aten._foreach_div_.ScalarList)
def foreach_div_(self, other):
    for t, new in zip(self, foreach_div(self, other)):
        assign_inplace(t, new)


@implements(aten._foreach_neg.default)
def foreach_neg(self):
    return [neg(t) for t in self]


@implements(aten._foreach_sqrt.default)
def foreach_sqrt(self):
    return [sqrt(t) for t in self]


@implements(aten._foreach_sqrt_.default)
def foreach_sqrt_(self):
    for t in self:
        assign_inplace(t, sqrt(t))


@implements(aten._foreach_lerp_.Scalar, aten._foreach_lerp_.List)
def foreach_lerp_(self, tensors1, weight):
    for t, e, w in zip(self, tensors1, _pairs(weight, len(self))):
        assign_inplace(t, lerp(t, e, w))


@implements(aten._foreach_addcmul_.Scalar, aten._foreach_addcmul_.ScalarList)
def foreach_addcmul_(self, tensor1, tensor2, value=1):
    for t, a, b, v in zip(self, tensor1, tensor2, _pairs(value, len(self))):
        assign_inplace(t, addcmul(t, a, b, v))


@implements(aten._foreach_addcdiv_.Scalar, aten._foreach_addcdiv_.ScalarList)
def foreach_addcdiv_(self, tensor1, tensor2, value=1):
    for t, a, b, v in zip(self, tensor1, tensor2, _pairs(value, len(self))):
        assign_inplace(t, addcdiv(t, a, b, v))


@implements(aten._foreach_zero_.default)
def foreach_zero_(self):
    for t in self:
        assign_inplace(t, mul(t, 0))


@implements(aten._foreach_copy_.default)
def foreach_copy_(self, src, non_blocking=False):
    for t, s in zip(self, src):
        copy_(t, s)


@implements(aten._foreach_clone.default)
def foreach_clone(self):
    return [clone(t) for t in self]


# ---------------------------------------------------------------------------------------------------------------------
# foreach by default for shared parameters

def _foreach_ready(opt, group) -> bool:
    """True for a param group torch would run per parameter, whose list ops all have handlers above."""
    if group.get("foreach") is not None or group.get("fused") or group.get("differentiable"):
        return False
    if not isinstance(opt, torch.optim.SGD):
        return False  # Adam, AdamW and RMSprop on shares run tensor.optim_adaptive's chunked kernel instead
    params = group["params"]
    return bool(params) and all(isinstance(p, SharedTensor) for p in params)


_FOREACH_SET: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # optimizer -> groups set for this step


def _foreach_pre_hook(opt, args, kwargs):
    groups = [g for g in opt.param_groups if _foreach_ready(opt, g)]
    for g in groups:
        g["foreach"] = True
    if groups:
        _FOREACH_SET[opt] = groups


def _foreach_post_hook(opt, args, kwargs):
    for g in _FOREACH_SET.pop(opt, ()):
        g["foreach"] = None


_FOREACH_HOOKS = (register_optimizer_step_pre_hook(_foreach_pre_hook),
                  register_optimizer_step_post_hook(_foreach_post_hook))
