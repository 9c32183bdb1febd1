"""Elementwise arithmetic on SharedTensor: + - * / with shares and public values, and the optimizer ops built on them.

Costs per output element (per party):
  x + y, x - y, -x, x + public                      local, 0 bytes
  x * public integer (Python int, integral tensor)  local, 0 bytes (no truncation)
  x * public real, x / public                       3 rounds, 16 bytes (fixed-point product, then truncation)
  x * y (both shared)                               3 rounds, 16 bytes (arithmetic.mul, fixed=True)
  x / y (y shared)                                  approx.div (see protocols/approx.py)
Fixed-point error: each truncation adds at most 1 ulp (2^-frac_bits); a public real c is encoded with extra
fractional bits when |c| < 1 (mul_public_real), so 1/n, learning rates and momenta keep ~2^-21 relative precision.
Public operands that are all integers (Python ints, integral tensors, e.g. a dropout scale of 2) cost nothing.
The functions themselves (add, mul, div, addcdiv, ...) are in functional.py; this module registers them.
"""
from __future__ import annotations

import torch

from .dispatch import UnsupportedOpError, advise, aten, assign_inplace, implements, make_public, public_value
from .functional import (
    add, addcdiv, addcmul, div, lerp, mean, mul, neg, pow_int, reciprocal, rsqrt, sqrt, square, sub, sum_,
)
from .shared import OPEN_HINT, SharedTensor



# ---- addition ----------------------------------------------------------------------------------------------------------
@implements(aten.add.Tensor, aten.add.Scalar)
def add_op(self, other, alpha=1):
    return add(self, other, alpha)


@implements(aten.sub.Tensor, aten.sub.Scalar)
def sub_op(self, other, alpha=1):
    return add(self, other, -alpha)


@implements(aten.rsub.Tensor, aten.rsub.Scalar)
def rsub_op(self, other, alpha=1):
    return add(other, self, -alpha)


@implements(aten.neg.default)
def neg_op(self):
    return neg(self)


@implements(aten.add_.Tensor, aten.add_.Scalar)
def add_(self, other, alpha=1):
    return assign_inplace(self, add(self, other, alpha))


@implements(aten.sub_.Tensor, aten.sub_.Scalar)
def sub_(self, other, alpha=1):
    return assign_inplace(self, add(self, other, -alpha))


@implements(aten.neg_.default)
def neg_(self):
    return assign_inplace(self, neg(self))


# ---- multiplication ------------------------------------------------------------------------------------------------
@implements(aten.mul.Tensor, aten.mul.Scalar)
def mul_op(self, other):
    return mul(self, other)


@implements(aten.mul_.Tensor, aten.mul_.Scalar)
def mul_(self, other):
    return assign_inplace(self, mul(self, other))


# ---- division ------------------------------------------------------------------------------------------------------
@implements(aten.div.Tensor, aten.div.Scalar)
def div_op(self, other):
    return div(self, other)


@implements(aten.div_.Tensor, aten.div_.Scalar)
def div_(self, other):
    return assign_inplace(self, div(self, other))


@implements(aten.div.Tensor_mode, aten.div.Scalar_mode)
def div_mode(self, other, rounding_mode=None):
    if rounding_mode is None:
        return div(self, other)
    raise UnsupportedOpError(f"division with rounding_mode={rounding_mode!r} (floor/trunc on shares) is not "
                             "supported; use true division")


@implements(aten.reciprocal.default)
def reciprocal_op(self):
    return reciprocal(self)


# ---- powers ----------------------------------------------------------------------------------------------------------
@implements(aten.pow.Tensor_Scalar)
def pow_op(self, exponent):
    e = float(exponent)
    if self.public is not None:
        return make_public(self.public ** e, self.party)
    if e == int(e) and 0 <= e <= 64:
        return pow_int(self, int(e))
    if e == 0.5:
        return sqrt(self)
    if e == -0.5:
        return rsqrt(self)
    if e == int(e) and -64 <= e < 0:
        return reciprocal(pow_int(self, int(-e)))
    raise UnsupportedOpError(f"x ** {exponent}: only integer powers, 0.5 and -0.5 are supported on shares")


# ---- fused optimizer ops (functional.addcmul, addcdiv, lerp) ---------------------------------------------------------
implements(aten.addcmul.default)(addcmul)
implements(aten.addcdiv.default)(addcdiv)
implements(aten.lerp.Scalar, aten.lerp.Tensor)(lerp)


@implements(aten.addcmul_.default)
def addcmul_(self, tensor1, tensor2, value=1):
    return assign_inplace(self, addcmul(self, tensor1, tensor2, value))


@implements(aten.addcdiv_.default)
def addcdiv_(self, tensor1, tensor2, value=1):
    return assign_inplace(self, addcdiv(self, tensor1, tensor2, value))


@implements(aten.lerp_.Scalar, aten.lerp_.Tensor)
def lerp_(self, end, weight):
    return assign_inplace(self, lerp(self, end, weight))


@implements(aten.zero_.default)
def zero_(self):
    return assign_inplace(self, make_public(torch.zeros(self.shape, dtype=torch.float64), self.party, self.dtype))


@implements(aten.fill_.Scalar, aten.fill_.Tensor)
def fill_(self, value):
    v = public_value(value)
    if v is None:
        raise UnsupportedOpError("fill_ with a secret value: use x.copy_(value.expand_as(x))")
    return assign_inplace(self, make_public(v.expand(self.shape), self.party, self.dtype))


@implements(aten.mse_loss.default)
def mse_loss(self, target, reduction=1):
    """reduction: 0 none, 1 mean, 2 sum (aten's Reduction enum)."""
    d = sub(self, target)
    sq = square(d) if isinstance(d, SharedTensor) else d * d
    return _reduce(sq, reduction)


@implements(aten.mse_loss_backward.default)
def mse_loss_backward(grad_output, self, target, reduction=1):
    d = sub(self, target)
    scale = 2.0 / d.numel() if reduction == 1 else 2.0
    g = public_value(grad_output, d.device)
    return mul(d, g * scale) if g is not None else mul(mul(d, grad_output), scale)


def _reduce(x, reduction):
    if reduction == 0:
        return x
    return mean(x) if reduction == 1 else sum_(x)


advise([aten.floor, aten.ceil, aten.round, aten.trunc, aten.frac, aten.remainder, aten.fmod, aten.bitwise_and,
        aten.bitwise_or, aten.bitwise_xor],
       "rounding and bit operations on fixed-point shares are not implemented")
advise([aten._local_scalar_dense, aten.is_nonzero, aten.equal, aten.allclose],
       "a SharedTensor has no public value: " + OPEN_HINT + ", and use the plain result")
