"""Factories that take a SharedTensor for shape/device (ones_like, zeros_like, new_zeros, ...): they make public
constants, held as a public sharing (x_0 = value, x_1 = x_2 = 0) and marked `public`. Cost: 0.

`loss.backward()` seeds the backward pass with ones_like(loss): a public 1, so the first products of the backward
pass are products with a public value."""
from __future__ import annotations

import torch

from .dispatch import UnsupportedOpError, advise, aten, implements, make_public, public_value


def _logical(dtype, like):
    if dtype is None:
        return like.dtype
    if dtype.is_floating_point:
        return torch.float32
    if dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        return torch.int64
    if dtype == torch.bool:
        return torch.bool
    raise UnsupportedOpError(f"a SharedTensor constant of dtype {dtype}")


def _const(like, shape, value, dtype):
    v = public_value(value)
    if v is None:
        raise UnsupportedOpError("fill value must be public")
    return make_public(torch.full(tuple(shape), float(v), dtype=torch.float64), like.party, _logical(dtype, like))


@implements(aten.ones_like.default)
def ones_like(self, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return _const(self, self.shape, 1.0, dtype)


@implements(aten.zeros_like.default, aten.empty_like.default)
def zeros_like(self, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return _const(self, self.shape, 0.0, dtype)


@implements(aten.full_like.default)
def full_like(self, fill_value, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return _const(self, self.shape, fill_value, dtype)


@implements(aten.new_zeros.default, aten.new_empty.default)
def new_zeros(self, size, dtype=None, layout=None, device=None, pin_memory=None):
    return _const(self, size, 0.0, dtype)


@implements(aten.new_empty_strided.default)
def new_empty_strided(self, size, stride, dtype=None, layout=None, device=None, pin_memory=None):
    return _const(self, size, 0.0, dtype)


@implements(aten.new_ones.default)
def new_ones(self, size, dtype=None, layout=None, device=None, pin_memory=None):
    return _const(self, size, 1.0, dtype)


@implements(aten.new_full.default)
def new_full(self, size, fill_value, dtype=None, layout=None, device=None, pin_memory=None):
    return _const(self, size, fill_value, dtype)


advise([aten.rand_like, aten.randn_like, aten.randint_like, aten.bernoulli, aten.bernoulli_, aten.uniform_,
        aten.normal_],
       "random tensors must come from the parties' PRGs (party.prg_common for public randomness such as dropout "
       "masks; F.dropout on a SharedTensor does this); torch's generator is not used on shares")
