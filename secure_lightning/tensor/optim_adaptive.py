"""torch.optim.Adam, AdamW and RMSprop on shared parameters: the update runs as protocols.adaptive, in bounded chunks.

torch's optimizers keep their classes, param groups, state dicts, hooks, closures and LR schedulers; only the
functional kernel (`torch.optim.adam.adam`, `torch.optim.rmsprop.rmsprop`, which `step()` calls after it has
gathered the parameters that have gradients) is routed here when the parameters are SharedTensors. Plain
parameters still run torch's own kernel.

State: the optimizer's usual keys hold this library's precise moments (protocols.adaptive):
  Adam/AdamW  state["exp_avg"] = m / (1 - beta1^t) at 2^(f+10); state["exp_avg_sq"] = v / (1 - beta2^t) at 2^FV
  RMSprop     state["square_avg"] = v / (1 - alpha^t) at 2^FV; state["momentum_buffer"] as torch's, at 2^f
(FV = min(2f - 4, 36)). They are bias-corrected and held at other scales than 2^f, so read them with
`opened_state` (which converts them to torch's values), not reveal_tensor.

Memory: parameters are processed in chunks of at most `CHUNK` elements (all tensors of the group back to back), so the
step's transient memory is bounded by the chunk, not by the model: about 1 KB per chunk element per party.
Communication: protocols.adaptive's cost per element, plus that cost's rounds once per chunk.
"""
from __future__ import annotations

import torch
import torch.optim.adam as _torch_adam
import torch.optim.rmsprop as _torch_rmsprop

from ..protocols import adaptive as A
from ..protocols import local as L
from ..protocols.sharing import Shares
from .sharing_io import reveal_tensor
from .dispatch import UnsupportedOpError, assign_inplace
from .shared import SharedTensor, note_write

CHUNK = 1 << 16

_ADAM = _torch_adam.adam
_RMSPROP = _torch_rmsprop.rmsprop


def _segments(sizes, chunk: int):
    """Yield lists of (tensor index, start, end) covering the flattened tensors back to back, <= chunk elements each."""
    cur, used = [], 0
    for i, n in enumerate(sizes):
        a = 0
        while a < n:
            b = min(n, a + chunk - used)
            cur.append((i, a, b))
            used += b - a
            a = b
            if used == chunk:
                yield cur
                cur, used = [], 0
    if cur:
        yield cur


def _flat_writable(t: SharedTensor) -> None:
    """Make t's two shares contiguous, distinct tensors, so that chunks can be written through flat views."""
    cur, prev = t.shares
    if not (cur.is_contiguous() and prev.is_contiguous()) or cur.untyped_storage().data_ptr() == \
            prev.untyped_storage().data_ptr():
        assign_inplace(t, t.shares.map(lambda s: s.contiguous().clone()))


def _gather(ts, seg) -> Shares:
    return L.cat([Shares(ts[i].shares.cur.reshape(-1)[a:b], ts[i].shares.prev.reshape(-1)[a:b]) for i, a, b in seg])


def _scatter(ts, seg, new: Shares) -> None:
    off = 0
    for i, a, b in seg:
        t = ts[i]
        t.shares.cur.view(-1)[a:b].copy_(new.cur[off:off + b - a])
        t.shares.prev.view(-1)[a:b].copy_(new.prev[off:off + b - a])
        off += b - a


def _finish_writes(groups) -> None:
    for ts in groups:
        for t in ts:
            note_write(t.shares.cur)
            note_write(t.shares.prev)
            t.public = None


def _check_shared(params, name: str) -> bool:
    shared = [isinstance(p, SharedTensor) for p in params]
    if not any(shared):
        return False
    if not all(shared):
        raise UnsupportedOpError(f"{name}: a param group mixes shared and plain parameters; share them all "
                                 "(secure_lightning.nn.share_module) or put the plain ones in their own optimizer")
    return True


def _refuse(name: str, **flags) -> None:
    on = [k for k, v in flags.items() if v]
    if on:
        raise UnsupportedOpError(f"torch.optim.{name}({', '.join(f'{k}=...' for k in on)}) is not supported on "
                                 f"shared parameters; use the defaults for these options")


def _run_chunks(tensor_lists, steps, kernel) -> None:
    """kernel(flat Shares..., t) -> new flat Shares for each list, over chunks of parameters with equal step t."""
    for t_value in sorted({int(s) for s in steps}):
        idx = [i for i, s in enumerate(steps) if int(s) == t_value]
        lists = [[tl[i] for i in idx] for tl in tensor_lists]
        for ts in lists:
            for x in ts:
                _flat_writable(x)
        for seg in _segments([x.numel() for x in lists[0]], CHUNK):
            outs = kernel(*[_gather(ts, seg) for ts in lists], t=t_value)
            for ts, new in zip(lists, outs):
                if new is not None:
                    _scatter(ts, seg, new)
        _finish_writes(lists)


def adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, foreach=None, capturable=False,
         differentiable=False, fused=None, grad_scale=None, found_inf=None, has_complex=False,
         decoupled_weight_decay=False, *, amsgrad, beta1, beta2, lr, weight_decay, eps, maximize):
    """torch.optim.adam.adam with shared parameters routed to protocols.adaptive.adam_step (Adam and AdamW)."""
    if not _check_shared(params, "Adam"):
        return _ADAM(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, foreach=foreach,
                     capturable=capturable, differentiable=differentiable, fused=fused, grad_scale=grad_scale,
                     found_inf=found_inf, has_complex=has_complex, decoupled_weight_decay=decoupled_weight_decay,
                     amsgrad=amsgrad, beta1=beta1, beta2=beta2, lr=lr, weight_decay=weight_decay, eps=eps,
                     maximize=maximize)
    _refuse("Adam", amsgrad=amsgrad, capturable=capturable, differentiable=differentiable, fused=fused,
            grad_scale=grad_scale is not None)
    for s in state_steps:
        s += 1
    party = params[0].party
    hyper = dict(lr=float(lr), beta1=float(beta1), beta2=float(beta2), eps=float(eps),
                 weight_decay=float(weight_decay), decoupled=bool(decoupled_weight_decay), maximize=bool(maximize))

    def kernel(p, m, v, g, t):
        return A.adam_step(p, g, m, v, t=t, party=party, **hyper) + (None,)

    _run_chunks([params, exp_avgs, exp_avg_sqs, grads], state_steps, kernel)


def rmsprop(params, grads, square_avgs, grad_avgs, momentum_buffer_list, state_steps, foreach=None, maximize=False,
            differentiable=False, capturable=False, has_complex=False, *, lr, alpha, eps, weight_decay, momentum,
            centered):
    """torch.optim.rmsprop.rmsprop with shared parameters routed to protocols.adaptive.rmsprop_step."""
    if not _check_shared(params, "RMSprop"):
        return _RMSPROP(params, grads, square_avgs, grad_avgs, momentum_buffer_list, state_steps, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, capturable=capturable,
                        has_complex=has_complex, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                        momentum=momentum, centered=centered)
    _refuse("RMSprop", centered=centered, capturable=capturable, differentiable=differentiable)
    for s in state_steps:
        s += 1
    party = params[0].party
    hyper = dict(lr=float(lr), alpha=float(alpha), eps=float(eps), weight_decay=float(weight_decay),
                 momentum=float(momentum), maximize=bool(maximize))
    lists = [params, square_avgs, grads] + ([momentum_buffer_list] if momentum else [])

    def kernel(p, v, g, buf=None, *, t):
        p, v, buf = A.rmsprop_step(p, g, v, buf, t=t, party=party, **hyper)
        return (p, v, None) + ((buf,) if momentum else ())

    _run_chunks(lists, state_steps, kernel)


_torch_adam.adam = adam
_torch_rmsprop.rmsprop = rmsprop


def opened_state(optimizer: torch.optim.Optimizer, param) -> dict:
    """Open one shared parameter's optimizer state as torch would hold it (collective: every party calls it).
    Adam/AdamW: exp_avg, exp_avg_sq (torch's raw moments) and step; RMSprop: square_avg, momentum_buffer, step."""
    state = optimizer.state[param]
    f = param.party.encoding.frac_bits
    fm, fv = A.state_scales(f)
    t = int(state["step"])
    out = {"step": state["step"]}
    group = next(g for g in optimizer.param_groups if any(q is param for q in g["params"]))
    if isinstance(optimizer, torch.optim.Adam):
        b1, b2 = group["betas"]
        out["exp_avg"] = reveal_tensor(state["exp_avg"]).double() * 2.0 ** (f - fm) * (1 - b1 ** t)
        out["exp_avg_sq"] = reveal_tensor(state["exp_avg_sq"]).double() * 2.0 ** (f - fv) * (1 - b2 ** t)
    elif isinstance(optimizer, torch.optim.RMSprop):
        alpha = group["alpha"]
        out["square_avg"] = reveal_tensor(state["square_avg"]).double() * 2.0 ** (f - fv) * (1 - alpha ** t)
        if "momentum_buffer" in state:
            out["momentum_buffer"] = reveal_tensor(state["momentum_buffer"]).double()
    return out


