"""Max pooling on shares: compare.max_pool2d, backward through its saved one-hot selection (no int64 indices exist,
so return_indices=True and max_pool2d_with_indices are refused). Average pooling is linear: ops_nonlinear.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..protocols import compare, guard
from .dispatch import UnsupportedOpError, implements_function, shares_of, wrap
from .shared import SharedTensor


class MaxPool2dFn(torch.autograd.Function):
    """compare.max_pool2d on guard.comparison_bits(f) bits (48 at f = 20), the input handed to the overflow guard;
    the onehot selection is kept for backward unless no backward will run (need_onehot False: values only)."""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode, need_onehot):
        party = x.party
        xs = x.shares
        bits = guard.comparison_bits(party)
        with party.label("max_pool2d"):
            guard.watch_comparison(xs, bits, "max_pool2d", party=party)
            y, saved = compare.max_pool2d(xs, kernel_size, stride, padding, dilation, ceil_mode, party=party,
                                          bits=bits, need_onehot=need_onehot)
        ctx.saved, ctx.party = saved, party
        return wrap(y, party)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party = ctx.party
        if ctx.saved is None:
            raise RuntimeError("secure max_pool2d: backward through an output computed without gradient tracking")
        with party.label("max_pool2d_backward"):
            gi = compare.max_pool2d_backward(shares_of(g, party), ctx.saved, party=party)
        return wrap(gi, party), None, None, None, None, None, None


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if return_indices:
        raise UnsupportedOpError("max_pool2d(return_indices=True): indices of a secret maximum would have to be "
                                 "opened; use return_indices=False (the backward pass keeps a shared selection)")
    if not isinstance(input, SharedTensor):
        raise TypeError("secure max_pool2d takes a SharedTensor input")
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride = kernel_size
    need = torch.is_grad_enabled() and input.requires_grad
    return MaxPool2dFn.apply(input, kernel_size, stride, padding, dilation, ceil_mode, need)


@implements_function(F.max_pool2d, torch.max_pool2d)
def _max_pool2d_function(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                         return_indices=False):
    return max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


@implements_function(F.max_pool2d_with_indices)
def _max_pool2d_with_indices(*args, **kwargs):
    raise UnsupportedOpError("max_pool2d_with_indices: indices of a secret maximum would have to be opened; "
                             "call F.max_pool2d(..., return_indices=False)")
