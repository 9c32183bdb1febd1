"""Tensor-level functions on SharedTensor that several handler modules and autograd Functions compose.

The `ops_*.py` modules and the autograd Functions (activations.py, pooling.py, losses.py, batch_norm_fn.py) register
handlers built from these; they import this module and never each other. This module imports only dispatch.py,
shared.py and protocols/, so the import graph of tensor/ is one-way.

Costs per output element (per party), as in ops_pointwise.py:
  add, sub, neg, x + public, x * public integer     local, 0 bytes
  x * public real, x / public, x * y (both shared)  3 rounds, 16 bytes (one truncation)
  sum_ (local), mean (sum, then one truncation)     see ops_reduction.py
  exp, log, sqrt, rsqrt, sigmoid, tanh, reciprocal  protocols.approx (its docstrings give cost and error)
"""
from __future__ import annotations

import math

import torch
import torch.utils._pytree as pytree

from ..protocols import approx, compare
from ..protocols import arithmetic as A
from ..protocols import local as L
from ..protocols.arithmetic import mul_public_real
from ..protocols.sharing import Shares, add_public
from .dispatch import (
    UnsupportedOpError, assign_inplace, encode, is_integral, make_public, party_of, public_value, result_dtype,
    shares_of, wrap,
)
from .shared import OPEN_HINT, SharedTensor


# ---------------------------------------------------------------------------------------------------------------------
# Local ops on each share

def _map_shared(op, args, kwargs, get):
    return op(*pytree.tree_map_only(SharedTensor, get, args), **pytree.tree_map_only(SharedTensor, get, kwargs))


def apply_local(op, args, kwargs, *, dtype=None):
    """Run `op` on each share of the SharedTensor arguments and wrap the outputs (tensor, list or tuple).

    When every SharedTensor argument is public, the op runs on the public values and the outputs stay public."""
    shared = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, SharedTensor)]
    party = shared[0].party
    dtype = dtype or shared[0].dtype
    publics = [a.public for a in shared]
    cur = _map_shared(op, args, kwargs, lambda a: a.shares.cur)
    prev = _map_shared(op, args, kwargs, lambda a: a.shares.prev)
    cur_leaves, spec = pytree.tree_flatten(cur)
    prev_leaves = pytree.tree_leaves(prev)
    pub_leaves = [None] * len(cur_leaves)
    if all(p is not None for p in publics):  # the same op on the public values (shares still alias as views do)
        pub_leaves = pytree.tree_leaves(_map_shared(op, args, kwargs, lambda a: a.public))
    out = [SharedTensor(Shares(c, p), party, dtype=dtype, public=v) if isinstance(c, torch.Tensor) else c
           for c, p, v in zip(cur_leaves, prev_leaves, pub_leaves)]
    return pytree.tree_unflatten(out, spec)


def apply_local_scaled(op, x: SharedTensor, args, kwargs):
    """apply_local for a linear op whose only SharedTensor argument x carries a deferred scale (PendingBits): the op
    runs on the raw shares and every output keeps the scale (a view of x's base settles with it). Cost: 0."""
    shares, bits = x.raw_shares
    cur = _map_shared(op, args, kwargs, lambda a: shares.cur)
    prev = _map_shared(op, args, kwargs, lambda a: shares.prev)
    cur_leaves, spec = pytree.tree_flatten(cur)
    out = [SharedTensor(Shares(c, p), x.party, dtype=x.dtype).defer_scale(bits, same_base_as=x)
           if isinstance(c, torch.Tensor) else c for c, p in zip(cur_leaves, pytree.tree_leaves(prev))]
    return pytree.tree_unflatten(out, spec)


def clone(x: SharedTensor) -> SharedTensor:
    return SharedTensor(x.shares.map(torch.clone), x.party, x.dtype, public=x.public)


def copy_(self, src, non_blocking=False):
    """self.copy_(src) on shares (aten.copy_): a shared src is copied, a public one becomes a public sharing."""
    if not isinstance(self, SharedTensor):
        raise UnsupportedOpError("copying a secret into a plain tensor: " + OPEN_HINT)
    if isinstance(src, SharedTensor):
        return assign_inplace(self, src)
    return assign_inplace(self, make_public(public_value(src).expand(self.shape), self.party, self.dtype))


# ---------------------------------------------------------------------------------------------------------------------
# Reductions

def sum_(x, dim=None, keepdim=False):
    """Local sum (Cost: 0). A deferred scale stays deferred on the (smaller) sum: a bias gradient of a pooled layer
    settles it at the bias's size, not the activation's."""
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        op = (lambda t: t.sum()) if not keepdim else (lambda t: t.sum(dim=tuple(range(t.dim())), keepdim=True))
    else:
        op = lambda t: t.sum(dim=dim, keepdim=keepdim)  # noqa: E731
    if isinstance(x, SharedTensor) and x.raw_shares[1]:
        return apply_local_scaled(op, x, (x,), {})
    return apply_local(op, (x,), {})


def mean(x, dim=None, keepdim=False):
    """Mean over dim: protocols.local.mean (sum, then one truncation; exact shift when n is a power of two)."""
    if dim is not None and isinstance(dim, (list, tuple)) and len(dim) == 0:
        dim = None
    if x.public is not None:
        return make_public(x.public.mean(dim=dim, keepdim=keepdim) if dim is not None else
                           (x.public.mean().reshape((1,) * x.dim()) if keepdim else x.public.mean()), x.party)
    if not isinstance(x, SharedTensor):
        raise TypeError("mean of a non-shared value")
    return wrap(L.mean(x.shares, dim, keepdim, party=x.party), x.party)


# ---------------------------------------------------------------------------------------------------------------------
# Arithmetic

def broadcast(shares: Shares, shape) -> Shares:
    shape = torch.broadcast_shapes(shares.cur.shape, tuple(shape))
    return shares if tuple(shares.cur.shape) == tuple(shape) else shares.map(lambda t: t.expand(shape))


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


# At most this many deferred bits: the product that folds them in is exact only for outputs 2^e times smaller
# (|y| < 2^(62-2f-e)), so e stays small (a 2x2 or 4x4 average pool, x / 2, x / 16); larger factors truncate at once.
MAX_DEFERRED_BITS = 4


def pow2_scale_bits(c) -> int | None:
    """k when the public c is one number equal to +-2^-k (k >= 1): a product with it can defer its scale. Else None."""
    if not isinstance(c, torch.Tensor) or c.numel() != 1:
        return None
    v = abs(float(c))
    if not 0.0 < v < 1.0:
        return None
    k = -math.frexp(v)[1] + 1
    return k if v == 2.0 ** -k and k <= 30 else None


def mul_public(x: SharedTensor, c: torch.Tensor, dtype=None) -> SharedTensor:
    """x * c for a public float64 tensor c: integers multiply the shares (free); +-2^-k with k <= MAX_DEFERRED_BITS
    defers k fractional bits (free: the next product or settle truncates them, see shared.PendingBits); other reals
    are encoded and truncated (3 rounds, 16 bytes per element), x's own deferred bits with them."""
    party = x.party
    dtype = dtype or x.dtype
    k = pow2_scale_bits(c) if x.dtype == torch.float32 else None
    if k is not None and k <= MAX_DEFERRED_BITS:
        shares, e = x.raw_shares
        if e + k > MAX_DEFERRED_BITS:
            shares, e = x.shares, 0
        sign = -1 if float(c) < 0 else 1
        return wrap(shares.map(lambda t: t * sign), party, torch.float32).defer_scale(e + k)  # new storage
    if is_integral(c):
        ci = c.to(torch.int64)
        return wrap(L.mul_int(x.shares, ci), party, dtype)
    shares, e = x.raw_shares  # a deferred scale folds into the product's truncation
    return wrap(mul_public_real(shares, c, party=party, extra_bits=e), party, torch.float32)


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
    return wrap(approx.div(broadcast(a.shares, shape), broadcast(b.shares, shape), party=party), party)


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


# ---- fused optimizer arithmetic --------------------------------------------------------------------------------------
def addcmul(self, tensor1, tensor2, value=1):
    """self + value * tensor1 * tensor2 (Adam's second moment)."""
    return add(self, mul(mul(tensor1, tensor2), value))


# A secret divisor in addcdiv (Adam's sqrt(v) + eps) is clamped to at least ADDCDIV_MIN_DIVISOR before the division:
# with eps = 1e-8 below the fixed-point resolution, a parameter whose gradient is always 0 would otherwise divide 0 by
# 0 outside approx.div's range.
ADDCDIV_MIN_DIVISOR = 2.0 ** -16


def addcdiv(self, tensor1, tensor2, value=1):
    """self + value * tensor1 / tensor2 (Adam's update). The public `value` is folded into tensor1 (one truncation);
    a secret tensor2 is clamped to >= 2^-16 (one ReLU) and divided with approx.div on [2^-16, 2^16]."""
    num = mul(tensor1, value)
    if isinstance(tensor2, SharedTensor) and tensor2.public is None:
        den = clamp_min(tensor2, ADDCDIV_MIN_DIVISOR)
        party = den.party
        shape = torch.broadcast_shapes(num.shape, den.shape)
        q = approx.div(broadcast(shares_of(num, party), shape), broadcast(den.shares, shape), party=party,
                       lo=ADDCDIV_MIN_DIVISOR, hi=2.0 ** 16)
        return add(self, wrap(q, party))
    return add(self, div(num, tensor2))


def lerp(self, end, weight):
    """self + weight * (end - self)."""
    return add(self, mul(sub(end, self), weight))


# ---------------------------------------------------------------------------------------------------------------------
# Approximations and comparisons

def _public_or(x, fn_public, fn_secret):
    if x.public is not None:
        return make_public(fn_public(x.public), x.party)
    return fn_secret(x)


def _approx_unary(name):
    def run(x):
        return _public_or(x, getattr(torch, name), lambda s: wrap(getattr(approx, name)(s.shares, party=s.party),
                                                                  s.party))
    return run


exp = _approx_unary("exp")
log = _approx_unary("log")
sqrt = _approx_unary("sqrt")
rsqrt = _approx_unary("rsqrt")
sigmoid = _approx_unary("sigmoid")
tanh = _approx_unary("tanh")


def relu_values(x: SharedTensor) -> SharedTensor:
    """relu(x) without keeping the sign bit (the aten-level ReLU family; F.relu goes to activations.ReLUFn)."""
    if x.public is not None:
        return make_public(torch.relu(x.public), x.party)
    y, _ = compare.relu(x.shares, party=x.party, need_bit=False)
    return wrap(y, x.party)


def clamp_min(self, min):
    return add(relu_values(sub(self, min)), min)


def where_shared(condition: SharedTensor, self, other):
    """condition ? self : other for a secret condition (0/1 in fixed point): other + cond * (self - other)."""
    return add(other, mul(condition, sub(self, other)))


# ---------------------------------------------------------------------------------------------------------------------
# On Shares, used by handlers and Functions alike

def bits_to_fixed(bits: Shares, *, party) -> Shares:
    """0/1 ring bits -> fixed-point 0.0/1.0 (times 2^f, a public integer). Cost: 0."""
    return L.mul_int(bits, party.encoding.scale)


LOGP_FLOOR = 32.0  # softmax in backward: exp(max(logp, -32)); e^-32 ~ 1.3e-14 stands for anything smaller


def softmax_from_log_softmax(logp: Shares, *, party) -> Shares:
    """softmax = exp(log_softmax), reusing the forward's log-probabilities instead of a second max tree.

    Cost: relu (8 rounds) + exp with 4 squarings on [-32, 0] (21 rounds). Error: exp's 2e-6 plus e^logp times the
    error of logp (2.5e-6); probabilities below e^-32 come out as ~e^-32.
    """
    floor = L.add_public(compare.relu(L.add_public(logp, LOGP_FLOOR, party=party), party=party)[0],
                         -LOGP_FLOOR, party=party)
    return approx.exp(floor, party=party, squarings=4, upper=0.0, clamp=False)   # floor is in [-32, ~0] already
