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
"""
from __future__ import annotations

import torch

from ..protocols import approx
from ..protocols import arithmetic as A
from ..protocols.arithmetic import mul_public_real
from ..protocols.local import mul_int
from ..protocols.sharing import Shares, add_public
from .dispatch import (
    UnsupportedOpError, advise, aten, assign_inplace, encode, implements, is_integral, make_public, party_of,
    public_value, result_dtype, shares_of, wrap,
)
from .shared import SharedTensor


def _broadcast(shares: Shares, shape) -> Shares:
    shape = torch.broadcast_shapes(shares.cur.shape, tuple(shape))
    return shares if tuple(shares.cur.shape) == tuple(shape) else shares.map(lambda t: t.expand(shape))


# ---- addition ----------------------------------------------------------------------------------------------------------
def add(a, b, alpha=1):
    """a + alpha * b for any mix of SharedTensor and public operands."""
    party = party_of(a, b)
    dtype = result_dtype(a, b, alpha)
    pa, pb = public_value(a, party.device), public_value(b, party.device)
    if alpha != 1:
        if pb is not None:
            pb = pb * float(alpha)
        else:
            b = mul(b, alpha)
            pb = b.public
    if pa is not None and pb is not None:
        return make_public(pa + pb, party, dtype)
    if pb is not None:
        return wrap(add_public(a.shares, encode(pb, party), party=party), party, dtype)
    if pa is not None:
        return wrap(add_public(b.shares, encode(pa, party), party=party), party, dtype)
    return wrap(a.shares + b.shares, party, dtype)


def neg(a):
    party = party_of(a)
    if a.public is not None:
        return make_public(-a.public, party, a.dtype)
    return wrap(-a.shares, party, a.dtype)


def sub(a, b, alpha=1):
    return add(a, b, alpha=-alpha)


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
def mul_public(x: SharedTensor, c: torch.Tensor, dtype=None) -> SharedTensor:
    """x * c for a public float64 tensor c: integers multiply the shares (free); reals are encoded and truncated."""
    party = x.party
    dtype = dtype or x.dtype
    if is_integral(c):
        ci = c.to(torch.int64)
        return wrap(mul_int(x.shares, ci), party, dtype)
    return wrap(mul_public_real(x.shares, c, party=party), party, torch.float32)


def mul(a, b):
    """a * b for any mix of SharedTensor and public operands (broadcasting)."""
    party = party_of(a, b)
    dtype = result_dtype(a, b)
    pa, pb = public_value(a, party.device), public_value(b, party.device)
    if pa is not None and pb is not None:
        return make_public(pa * pb, party, dtype)
    if pb is not None:
        return mul_public(a, pb, dtype)
    if pa is not None:
        return mul_public(b, pa, dtype)
    return wrap(A.mul(a.shares, b.shares, party=party), party, dtype)


@implements(aten.mul.Tensor, aten.mul.Scalar)
def mul_op(self, other):
    return mul(self, other)


@implements(aten.mul_.Tensor, aten.mul_.Scalar)
def mul_(self, other):
    return assign_inplace(self, mul(self, other))


# ---- division ------------------------------------------------------------------------------------------------------
def reciprocal(x: SharedTensor) -> SharedTensor:
    if x.public is not None:
        return make_public(1.0 / x.public, x.party)
    return wrap(approx.reciprocal(x.shares, party=x.party), x.party)


def div(a, b):
    """a / b. A public divisor: product with its encoded reciprocal. A secret divisor: approx.div (a secret) or a
    public numerator times approx.reciprocal(b)."""
    party = party_of(a, b)
    pa, pb = public_value(a, party.device), public_value(b, party.device)
    if pb is not None:
        if bool((pb == 0).any()):
            raise ZeroDivisionError("SharedTensor division by a public zero")
        if pa is not None:
            return make_public(pa / pb, party)
        return mul_public(a, 1.0 / pb, torch.float32)
    if pa is not None:
        return mul(reciprocal(b), pa)
    shape = torch.broadcast_shapes(a.shape, b.shape)
    return wrap(approx.div(_broadcast(a.shares, shape), _broadcast(b.shares, shape), party=party), party)


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
def square(x: SharedTensor) -> SharedTensor:
    if x.public is not None:
        return make_public(x.public * x.public, x.party, x.dtype)
    return wrap(A.square(x.shares, party=x.party), x.party, x.dtype)


def pow_int(x: SharedTensor, n: int) -> SharedTensor:
    """x ** n for a public integer n >= 0 by square-and-multiply: about 2 log2(n) products."""
    if n == 0:
        return make_public(torch.ones(x.shape, dtype=torch.float64), x.party, x.dtype)
    result, base = None, x
    while True:
        if n & 1:
            result = base if result is None else mul(result, base)
        n >>= 1
        if not n:
            return result if result is not x else clone(x)
        base = square(base)


def clone(x: SharedTensor) -> SharedTensor:
    return SharedTensor(x.shares.map(torch.clone), x.party, x.dtype, public=x.public)


@implements(aten.pow.Tensor_Scalar)
def pow_op(self, exponent):
    e = float(exponent)
    if self.public is not None:
        return make_public(self.public ** e, self.party)
    if e == int(e) and 0 <= e <= 64:
        return pow_int(self, int(e))
    if e == 0.5:
        from .ops_nonlinear import sqrt
        return sqrt(self)
    if e == -0.5:
        from .ops_nonlinear import rsqrt
        return rsqrt(self)
    if e == int(e) and -64 <= e < 0:
        return reciprocal(pow_int(self, int(-e)))
    raise UnsupportedOpError(f"x ** {exponent}: only integer powers, 0.5 and -0.5 are supported on shares")


# ---- fused optimizer ops --------------------------------------------------------------------------------------------
@implements(aten.addcmul.default)
def addcmul(self, tensor1, tensor2, value=1):
    """self + value * tensor1 * tensor2 (Adam's second moment)."""
    return add(self, mul(mul(tensor1, tensor2), value))


@implements(aten.addcmul_.default)
def addcmul_(self, tensor1, tensor2, value=1):
    return assign_inplace(self, addcmul(self, tensor1, tensor2, value))


# A secret divisor in addcdiv (Adam's sqrt(v) + eps) is clamped to at least ADDCDIV_MIN_DIVISOR before the division:
# with eps = 1e-8 below the fixed-point resolution, a parameter whose gradient is always 0 would otherwise divide 0 by
# 0 outside approx.div's range.
ADDCDIV_MIN_DIVISOR = 2.0 ** -16


@implements(aten.addcdiv.default)
def addcdiv(self, tensor1, tensor2, value=1):
    """self + value * tensor1 / tensor2 (Adam's update). The public `value` is folded into tensor1 (one truncation);
    a secret tensor2 is clamped to >= 2^-16 (one ReLU) and divided with approx.div on [2^-16, 2^16]."""
    num = mul(tensor1, value)
    if isinstance(tensor2, SharedTensor) and tensor2.public is None:
        from .ops_nonlinear import clamp_min
        den = clamp_min(tensor2, ADDCDIV_MIN_DIVISOR)
        party = den.party
        shape = torch.broadcast_shapes(num.shape, den.shape)
        q = approx.div(_broadcast(shares_of(num, party), shape), _broadcast(den.shares, shape), party=party,
                          lo=ADDCDIV_MIN_DIVISOR, hi=2.0 ** 16)
        return add(self, wrap(q, party))
    return add(self, div(num, tensor2))


@implements(aten.addcdiv_.default)
def addcdiv_(self, tensor1, tensor2, value=1):
    return assign_inplace(self, addcdiv(self, tensor1, tensor2, value))


@implements(aten.lerp.Scalar, aten.lerp.Tensor)
def lerp(self, end, weight):
    """self + weight * (end - self)."""
    return add(self, mul(sub(end, self), weight))


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
    from .ops_reduction import mean, sum_
    if reduction == 0:
        return x
    return mean(x) if reduction == 1 else sum_(x)


advise([aten.floor, aten.ceil, aten.round, aten.trunc, aten.frac, aten.remainder, aten.fmod, aten.bitwise_and,
        aten.bitwise_or, aten.bitwise_xor],
       "rounding and bit operations on fixed-point shares are not implemented")
advise([aten._local_scalar_dense, aten.is_nonzero, aten.equal, aten.allclose],
       "a SharedTensor has no public value: open it with secure_lightning.tensor.reveal_tensor(t) "
       "(every party must call it) and use the plain result")
