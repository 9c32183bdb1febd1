"""Shape, indexing and copy ops: local on shares (the same op on each of the party's two shares). Cost: 0.

Each op is linear and acts elementwise on positions, so op(x_i) for every share x_i is a sharing of op(x). Index
arguments (index, gather, index_put, ...) must be public plain tensors; a SharedTensor index raises.
"""
from __future__ import annotations

import torch
import torch.utils._pytree as pytree

from .dispatch import (
    UnsupportedOpError, aten, as_shared, assign_inplace, implements, implements_generic, party_of, public_value,
)
from .functional import add, apply_local, apply_local_scaled, copy_, mul, where_shared
from .shared import SharedTensor


def _no_shared_index(what, *indices):
    for leaf in pytree.tree_leaves(indices):
        if isinstance(leaf, SharedTensor):
            raise UnsupportedOpError(f"{what} with a secret-shared index is not supported: indices must be public "
                                     "plain tensors (use a one-hot product, e.g. protocols.compare.argmax, instead)")


# ---- views and reshapes (one SharedTensor in, no other tensors) ------------------------------------------------------
_VIEW_OPS = [
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten._reshape_alias.default,
    aten.permute.default, aten.transpose.int, aten.t.default, aten.expand.default,
    aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default,
    aten.select.int, aten.slice.Tensor, aten.narrow.default, aten.unbind.int, aten.split.Tensor,
    aten.split_with_sizes.default, aten.unfold.default, aten.diagonal.default, aten.movedim.int,
    aten.alias.default, aten.detach.default, aten.clone.default, aten.contiguous.default,
    aten.flip.default, aten.roll.default, aten.repeat.default, aten.tril.default, aten.triu.default,
    aten.select_backward.default, aten.slice_backward.default, aten.unsqueeze_copy.default,
    aten.expand_copy.default, aten.view_copy.default, aten.permute_copy.default, aten.t_copy.default,
    aten.transpose_copy.int, aten.squeeze_copy.dim, aten.diagonal_backward.default, aten.cumsum.default,
]


@implements_generic(*_VIEW_OPS)
def local_view(op, *args, **kwargs):
    if op in (aten.view.default, aten._unsafe_view.default, aten.view_copy.default):
        op = aten.reshape.default  # inner shares may be non-contiguous (the outer tensor always looks contiguous)
    if op is aten.cumsum.default and kwargs.get("dtype", None) is not None:
        kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
    if isinstance(args[0], SharedTensor) and args[0].raw_shares[1]:
        return apply_local_scaled(op, args[0], args, kwargs)  # linear: a deferred scale passes through
    return apply_local(op, args, kwargs)


# ---- indexing with public indices ------------------------------------------------------------------------------------
@implements_generic(aten.index.Tensor, aten.index_select.default, aten.gather.default, aten.take.default,
                    aten.masked_select.default)
def local_index(op, self, *rest, **kwargs):
    _no_shared_index(str(op), rest, kwargs)
    return apply_local(op, (self, *rest), kwargs)


def _data_as_shared(party, *xs, dtype=torch.float32):
    return [as_shared(x, party, dtype) for x in xs]


@implements_generic(aten.index_put.default, aten._index_put_impl.default)
def index_put(op, self, indices, values, accumulate=False, *rest):
    _no_shared_index(str(op), indices)
    party = party_of(self, values)
    self_, values_ = _data_as_shared(party, self, values)
    return apply_local(op, (self_, indices, values_, accumulate, *rest), {})


@implements(aten.index_put_.default, aten._index_put_impl_.default)
def index_put_(self, indices, values, accumulate=False, unsafe=False):
    _no_shared_index("index_put_", indices)
    party = party_of(self, values)
    self_, values_ = _data_as_shared(party, self, values)
    new = apply_local(aten.index_put.default, (self_, indices, values_, accumulate), {})
    return assign_inplace(self, new)


@implements_generic(aten.index_add.default, aten.scatter_add.default, aten.scatter.src, aten.index_copy.default,
                    aten.slice_scatter.default, aten.select_scatter.default)
def index_combine(op, self, dim, index_or_src, src=None, *rest, **kwargs):
    party = party_of(self, index_or_src, src)
    if op in (aten.slice_scatter.default, aten.select_scatter.default):  # (self, src, dim, ...)
        self_, src_ = _data_as_shared(party, self, dim)
        return apply_local(op, (self_, src_, index_or_src, src, *rest), kwargs)
    _no_shared_index(str(op), index_or_src)
    self_, src_ = _data_as_shared(party, self, src)
    return apply_local(op, (self_, dim, index_or_src, src_, *rest), kwargs)


@implements_generic(aten.cat.default, aten.stack.default)
def cat(op, tensors, dim=0):
    party = party_of(tensors)
    dtype = torch.float32 if any(t.dtype == torch.float32 for t in tensors if isinstance(t, SharedTensor)) \
        else torch.int64
    return apply_local(op, (_data_as_shared(party, *tensors, dtype=dtype), dim), {}, dtype=dtype)


@implements(aten.constant_pad_nd.default)
def constant_pad_nd(self, pad, value=0):
    out = apply_local(aten.constant_pad_nd.default, (self, pad, 0), {})
    if value != 0:  # add `value` on the padded positions (a public constant)
        mask = aten.constant_pad_nd.default(torch.zeros(self.shape, dtype=torch.float64, device=self.device), pad, 1.0)
        out = add(out, mask * float(value))
    return out


@implements(aten.where.self)
def where(condition, self, other):
    if isinstance(condition, SharedTensor):
        return where_shared(condition, self, other)
    cond = condition.to(torch.float64)
    return add(mul(self, cond), mul(other, 1.0 - cond))  # public 0/1 weights: integer products, no truncation


@implements(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def masked_fill(self, mask, value):
    if isinstance(mask, SharedTensor):
        raise UnsupportedOpError("masked_fill with a secret mask: use torch.where(mask, value, x) instead")
    return where(mask, value if isinstance(value, SharedTensor) else public_value(value), self)


@implements(aten.masked_fill_.Scalar, aten.masked_fill_.Tensor)
def masked_fill_(self, mask, value):
    return assign_inplace(self, masked_fill(self, mask, value))


# ---- copies and dtype/device moves -------------------------------------------------------------------------------------
@implements(aten._to_copy.default)
def to_copy(self, dtype=None, layout=None, device=None, pin_memory=None, non_blocking=False, memory_format=None):
    if not isinstance(self, SharedTensor):
        raise UnsupportedOpError("copying a secret into a plain tensor: use reveal_tensor(t)")
    target = dtype or self.dtype
    if target == torch.float64:
        target = torch.float32  # fixed point has one precision; float64 requests get the float32 logical type
    if target not in (torch.float32, torch.int64, torch.bool):
        raise UnsupportedOpError(f"a SharedTensor's logical dtype is float32 (or int64/bool for integers), "
                                 f"not {dtype}")
    if target in (torch.int64, torch.bool) and self.dtype == torch.float32:
        raise UnsupportedOpError("converting a secret float to an integer needs a floor on shares, which is not "
                                 "implemented; keep the value as float32 (or share integers as int64 from the start)")
    dev = torch.device(device) if device is not None else self.device
    if dev != self.device and dev != torch.device(self.party.device):
        raise UnsupportedOpError(f"a SharedTensor lives on its party's device {self.party.device}, not {dev}")
    out = apply_local(lambda t: t.to(dev, copy=True), (self,), {}, dtype=target)
    return out


implements(aten.copy_.default)(copy_)


@implements(aten.lift_fresh.default)
def lift_fresh(self):
    return self


@implements(aten.is_same_size.default)
def is_same_size(self, other):
    return tuple(self.shape) == tuple(other.shape)


_INPLACE_OF = {
    aten.index_add_.default: aten.index_add.default, aten.scatter_add_.default: aten.scatter_add.default,
    aten.scatter_.src: aten.scatter.src, aten.index_copy_.default: aten.index_copy.default,
}


@implements_generic(*_INPLACE_OF)
def index_combine_(op, self, *args, **kwargs):
    return assign_inplace(self, index_combine(_INPLACE_OF[op], self, *args, **kwargs))


# ---- nearest upsampling (F.interpolate(mode="nearest"), nn.Upsample): a public gather, cost 0 ------------------------
def _nearest_index(n_in: int, n_out: int, scale, device) -> torch.Tensor:
    """torch's source index for nearest upsampling: min(floor(dst * s), n_in - 1), s = 1 / scale_factor when given,
    else n_in / n_out (computed in float32 as aten does)."""
    s = (1.0 / scale) if scale is not None and scale > 0 else n_in / n_out
    dst = torch.arange(n_out, dtype=torch.float32, device=device)
    return torch.clamp(torch.floor(dst * torch.tensor(s, dtype=torch.float32)).to(torch.int64), max=n_in - 1)


def _upsample_indices(in_size, output_size, scales, device):
    return [_nearest_index(int(i), int(o), s, device) for i, o, s in zip(in_size, output_size, scales)]


def _upsample_nearest(self, output_size, *scales):
    """Nearest upsampling: index_select along each spatial dim with public indices. Cost: 0 (local)."""
    spatial = len(output_size)
    scales = list(scales) + [None] * (spatial - len(scales))
    idx = _upsample_indices(self.shape[-spatial:], output_size, scales, "cpu")

    def op(t):
        for k, ix in enumerate(idx):
            t = t.index_select(t.dim() - spatial + k, ix.to(t.device))
        return t
    if self.raw_shares[1]:
        return apply_local_scaled(op, self, (self,), {})
    return apply_local(op, (self,), {})


def _upsample_nearest_backward(grad_output, output_size, input_size, *scales):
    """Adjoint of the gather: each input position sums the gradients of the outputs copied from it. Cost: 0."""
    spatial = len(output_size)
    scales = list(scales) + [None] * (spatial - len(scales))
    idx = _upsample_indices(input_size[-spatial:], output_size, scales, "cpu")

    def op(t):
        for k, ix in enumerate(idx):
            d = t.dim() - spatial + k
            shape = list(t.shape)
            shape[d] = int(input_size[-spatial + k])
            t = torch.zeros(shape, dtype=t.dtype, device=t.device).index_add_(d, ix.to(t.device), t)
        return t
    if not isinstance(grad_output, SharedTensor):
        raise UnsupportedOpError("upsample backward of a public gradient")
    if grad_output.raw_shares[1]:
        return apply_local_scaled(op, grad_output, (grad_output,), {})
    return apply_local(op, (grad_output,), {})


implements(aten.upsample_nearest1d.default, aten.upsample_nearest2d.default,
           aten.upsample_nearest3d.default)(_upsample_nearest)
implements(aten.upsample_nearest1d_backward.default, aten.upsample_nearest2d_backward.default,
           aten.upsample_nearest3d_backward.default)(_upsample_nearest_backward)
