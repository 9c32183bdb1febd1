"""Piecewise-linear ops users reach for: clamp/clip, hardtanh/relu6, maximum/minimum, leaky_relu, abs, sign.

Each is an autograd Function registered for the torch-level calls (FUNCTION_HANDLERS), so the gradient comes from the
comparison bits of the forward pass instead of torch's decompositions (which need aten.logical_and / aten.sgn on
shares). Every forward is ONE compare.relu (or ltz) call, all comparisons of the op batched into its 8 rounds:

  op                                   forward                                  backward (grad of the input)
  clamp_min(x, lo) / clamp_max(x, hi)  lo + relu(x - lo) / hi - relu(hi - x)    g * bit: 1 round, 8 B
  maximum(a, b) / minimum(a, b)        clamp_min(a, b) / clamp_max(a, b)        a: g * bit, b: g - g * bit (1 round)
  clamp(x, lo, hi), clip, hardtanh,    lo + relu(x - lo) - relu(x - hi): relu   g * ([x > lo] - [x > hi]): 1 round,
    relu6 (= hardtanh(x, 0, 6))        on 2n elements, 8 rounds                 8 B
  abs                                  2 relu(x) - x: relu on n, 8 rounds       2 g [x > 0] - g: 1 round, 8 B
  sign                                 [x > 0] - [x < 0]: ltz on 2n, 8 rounds   0 (public zeros): free
  leaky_relu(x, s)                     relu(x) + s (x - relu(x)): relu on n     g b + s (g - g b): 1 round 8 B, then
                                       + one truncation (3 rounds, 16 B) when   one truncation as in forward
                                       s is not +-2^-k or an integer: 11 rounds

Bytes are per element per party and per comparison element: compare.relu (balanced) sends Sb + T + 64 m bytes per
3 m elements (~52.2 bytes each), ltz ~41.5 (protocols/compare.py's cost table). A tensor bound (public or shared)
broadcasts; its gradient (g (1 - [x > lo]) for lo, g [x > hi] for hi) comes from the same single round (with both
bounds 2n ring products instead of n: 16 B per element).

Values are exact (the encoded max/min), up to one truncation for leaky_relu. Gradients at the kinks follow the bits:
clamp passes the gradient on lo < x <= hi (torch: lo <= x <= hi), abs gives -1 at 0 (torch: 0); both differ from
torch only at exact ties. A secret lower bound must not exceed the upper one (a public one is fixed up as torch does:
the result is hi). In-place forms (x.clamp_(), F.hardtanh(x, inplace=True), ...) write x's shares in place and
record the op on x (autograd's mark_dirty), as torch does.
"""
from __future__ import annotations

import builtins

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..protocols import arithmetic as A
from ..protocols import compare
from ..protocols import local as L
from ..protocols.sharing import Shares
from .dispatch import (
    assign_inplace, aten, implements, implements_function, make_public, no_backward, party_of, public_value, raw_of,
    shares_of, wrap,
)
from .functional import MAX_DEFERRED_BITS, add, bits_to_fixed, broadcast, mul, pow2_scale_bits, sub
from .shared import SharedTensor


def _stack(parts: list[Shares]) -> Shares:
    return Shares(torch.stack([p.cur for p in parts]), torch.stack([p.prev for p in parts]))


def _ring_products(g: Shares, bits: list[Shares], *, party) -> list[Shares]:
    """[g * b for b in bits] as ring products (bits are 0/1 integers: no truncation), all in one round.
    Cost: 1 round, 8 bytes per product element per party."""
    if len(bits) == 1:
        return [A.mul(g, bits[0], party=party, fixed=False)]
    out = A.mul(_stack([g] * len(bits)), _stack(bits), party=party, fixed=False)
    return [out.map(lambda t, i=i: t[i]) for i in range(len(bits))]


def _finish(ctx, x, out: SharedTensor, inplace: bool):
    if not inplace:
        return out
    assign_inplace(x, out)
    ctx.mark_dirty(x)
    return x


# ---------------------------------------------------------------------------------------------------------------------
# clamp / clip / hardtanh / relu6

class ClampFn(torch.autograd.Function):
    """clamp(x, lo, hi) from one batched compare.relu; the bits [x > lo], [x > hi] are kept for backward."""

    @staticmethod
    def forward(ctx, x, lo, hi, inplace):
        party = x.party
        shape = torch.broadcast_shapes(*[tuple(t.shape) for t in (x, lo, hi) if isinstance(t, torch.Tensor)])
        diffs = [] if lo is None else [sub(x, lo)]          # relu(x - lo): [x > lo]
        if hi is not None:
            diffs.append(sub(x, hi) if lo is not None else sub(hi, x))  # relu(x - hi) or relu(hi - x): [x < hi]
        with party.label("clamp"):
            y, bits = compare.relu(_stack([broadcast(d.shares, shape) for d in diffs]), party=party)
        r = [y.map(lambda t, i=i: t[i]) for i in range(len(diffs))]
        ctx.bits = [bits.map(lambda t, i=i: t[i]) for i in range(len(diffs))]
        ctx.party, ctx.has = party, (lo is not None, hi is not None)
        if lo is not None and hi is not None:
            out = add(wrap(r[0] - r[1], party), lo)
        elif lo is not None:
            out = add(wrap(r[0], party), lo)
        else:
            out = sub(hi, wrap(r[0], party))
        return _finish(ctx, x, wrap(out.shares, party, x.dtype), inplace)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party = ctx.party
        gs, e = raw_of(g, party)
        has_lo, has_hi = ctx.has
        want_lo = has_lo and ctx.needs_input_grad[1]
        want_hi = has_hi and ctx.needs_input_grad[2]
        with party.label("clamp_backward"):
            if has_lo and has_hi:
                if want_lo or want_hi:
                    g1, g2 = _ring_products(gs, ctx.bits, party=party)
                    gx = g1 - g2
                else:
                    gx = _ring_products(gs, [ctx.bits[0] - ctx.bits[1]], party=party)[0]
                    g1 = g2 = None
                glo = wrap(gs - g1, party).defer_scale(e) if want_lo else None
                ghi = wrap(g2, party).defer_scale(e) if want_hi else None
            else:
                gb = _ring_products(gs, ctx.bits, party=party)[0]
                gx = gb
                gbound = wrap(gs - gb, party).defer_scale(e) if (want_lo or want_hi) else None
                glo, ghi = (gbound, None) if has_lo else (None, gbound)
        return wrap(gx, party).defer_scale(e), glo, ghi, None


def clamp(x, min=None, max=None, inplace: bool = False):
    """torch.clamp on shares (see the module docstring for cost). A bound may be a number, a plain tensor or a
    SharedTensor; public bounds with min > max give max everywhere, as torch."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of 'min' or 'max' must not be None")
    party = party_of(x, min, max)
    plo = public_value(min, party.device) if min is not None else None
    phi = public_value(max, party.device) if max is not None else None
    if isinstance(x, SharedTensor) and x.public is not None and (min is None or plo is not None) \
            and (max is None or phi is not None):
        out = make_public(torch.clamp(x.public, plo, phi), party, x.dtype)
        return assign_inplace(x, out) if inplace else out
    if plo is not None and phi is not None and bool((plo > phi).any()):
        min = torch.minimum(plo, phi) if isinstance(min, torch.Tensor) or isinstance(max, torch.Tensor) \
            else builtins.min(float(min), float(max))
    return ClampFn.apply(x, min, max, inplace)


@implements_function(torch.clamp, torch.Tensor.clamp, torch.clip, torch.Tensor.clip)
def _clamp_function(input, min=None, max=None, *, out=None):
    return clamp(input, min, max)


@implements_function(torch.clamp_, torch.Tensor.clamp_, torch.clip_, torch.Tensor.clip_)
def _clamp_inplace_function(input, min=None, max=None):
    return clamp(input, min, max, inplace=True)


@implements_function(torch.maximum, torch.Tensor.maximum)
def maximum(input, other, *, out=None):
    """max(a, b) = b + relu(a - b) (clamp with a tensor lower bound): one ReLU; gradients [a > b] and 1 - [a > b]."""
    if not isinstance(input, SharedTensor):
        input, other = other, input
    return clamp(input, other, None)


@implements_function(torch.minimum, torch.Tensor.minimum)
def minimum(input, other, *, out=None):
    """min(a, b) = b - relu(b - a): one ReLU; gradients [a < b] and 1 - [a < b]."""
    if not isinstance(input, SharedTensor):
        input, other = other, input
    return clamp(input, None, other)


@implements_function(torch.clamp_min, torch.Tensor.clamp_min)
def _clamp_min_function(input, min):
    return clamp(input, min, None)


@implements_function(torch.clamp_max, torch.Tensor.clamp_max)
def _clamp_max_function(input, max):
    return clamp(input, None, max)


@implements_function(torch.clamp_min_, torch.Tensor.clamp_min_)
def _clamp_min_inplace_function(input, min):
    return clamp(input, min, None, inplace=True)


@implements_function(torch.clamp_max_, torch.Tensor.clamp_max_)
def _clamp_max_inplace_function(input, max):
    return clamp(input, None, max, inplace=True)


@implements_function(F.hardtanh)
def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    """F.hardtanh / nn.Hardtanh / nn.ReLU6: clamp(x, min_val, max_val)."""
    if min_val > max_val:
        raise ValueError("min_val cannot be greater than max_val")
    return clamp(input, min_val, max_val, inplace=inplace)


@implements_function(F.hardtanh_)
def _hardtanh_inplace(input, min_val=-1.0, max_val=1.0):
    return hardtanh(input, min_val, max_val, inplace=True)


@implements_function(F.relu6)
def relu6(input, inplace=False):
    """F.relu6 = clamp(x, 0, 6): relu(x) - relu(x - 6), one ReLU on 2n elements."""
    return clamp(input, 0.0, 6.0, inplace=inplace)


# ---------------------------------------------------------------------------------------------------------------------
# abs, sign

class AbsFn(torch.autograd.Function):
    """|x| = 2 relu(x) - x (exact); gradient g (2 [x > 0] - 1). A deferred scale passes through."""

    @staticmethod
    def forward(ctx, x, inplace):
        party = x.party
        xs, e = x.raw_shares
        with party.label("abs"):
            y, bit = compare.relu(xs, party=party)
        ctx.bit, ctx.party = bit, party
        out = wrap(y + y - xs, party, x.dtype).defer_scale(e)
        return _finish(ctx, x, out, inplace)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party = ctx.party
        gs, e = raw_of(g, party)
        with party.label("abs_backward"):
            gb = _ring_products(gs, [ctx.bit], party=party)[0]
        return wrap(gb + gb - gs, party).defer_scale(e), None


def abs_(x, inplace: bool = False):
    """torch.abs on shares: one compare.relu (8 rounds); backward one ring product (1 round, 8 bytes)."""
    if x.public is not None:
        out = make_public(torch.abs(x.public), x.party, x.dtype)
        return assign_inplace(x, out) if inplace else out
    if inplace:
        _ = x.shares  # settle a deferred scale first: the result is written into x's shares at scale 2^f
    return AbsFn.apply(x, inplace)


@implements_function(torch.abs, torch.Tensor.abs, torch.absolute, torch.Tensor.absolute, torch.Tensor.__abs__)
def _abs_function(input, *, out=None):
    return abs_(input)


@implements_function(torch.abs_, torch.Tensor.abs_, torch.Tensor.absolute_)
def _abs_inplace_function(input):
    return abs_(input, inplace=True)


class SignFn(torch.autograd.Function):
    """sign(x) = [-x < 0] - [x < 0] from one ltz on 2n elements (exact, sign(0) = 0); gradient 0."""

    @staticmethod
    def forward(ctx, x):
        party = x.party
        xs, _ = x.raw_shares  # the sign does not depend on the scale
        with party.label("sign"):
            bits = compare.ltz(_stack([xs, -xs]), party=party)
        ctx.party, ctx.shape = party, tuple(x.shape)
        s = bits.map(lambda t: t[1]) - bits.map(lambda t: t[0])
        return wrap(bits_to_fixed(s, party=party), party, x.dtype)

    @staticmethod
    def backward(ctx, g):
        return make_public(torch.zeros(ctx.shape, dtype=torch.float64), ctx.party)


def sign(x):
    """torch.sign / torch.sgn on shares: ltz on 2n elements (8 rounds); gradient 0 (free)."""
    if x.public is not None:
        return make_public(torch.sign(x.public), x.party, x.dtype)
    return SignFn.apply(x)


@implements_function(torch.sign, torch.Tensor.sign, torch.sgn, torch.Tensor.sgn)
def _sign_function(input, *, out=None):
    return sign(input)


# ---------------------------------------------------------------------------------------------------------------------
# leaky_relu

class LeakyReLUFn(torch.autograd.Function):
    """leaky_relu(x, s) = relu(x) + s (x - relu(x)); gradient g b + s (g - g b) with b = [x > 0] kept from forward."""

    @staticmethod
    def forward(ctx, x, slope, inplace):
        party = x.party
        with party.label("leaky_relu"):
            xs = x.shares
            y, bit = compare.relu(xs, party=party)
            out = _mix(y, xs, slope, party)
        ctx.bit, ctx.slope, ctx.party = bit, slope, party
        return _finish(ctx, x, out, inplace)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party = ctx.party
        gs = shares_of(g, party)
        with party.label("leaky_relu_backward"):
            gb = _ring_products(gs, [ctx.bit], party=party)[0]
            return _mix(gb, gs, ctx.slope, party), None, None


def _mix(a: Shares, b: Shares, s: float, party) -> SharedTensor:
    """a + s (b - a) for a public scalar s. s = +-2^-k: a 2^k +- (b - a) with k fractional bits deferred (free, see
    shared.PendingBits); an integer s: free; any other s: one truncation (3 rounds, 16 bytes per element)."""
    k = pow2_scale_bits(torch.tensor(float(s), dtype=torch.float64))
    if k is not None and k <= MAX_DEFERRED_BITS:
        d = b - a
        return wrap(L.mul_int(a, 1 << k) + (d if s > 0 else -d), party).defer_scale(k)
    return add(wrap(a, party), mul(wrap(b - a, party), s))


@implements_function(F.leaky_relu)
def leaky_relu(input, negative_slope=0.01, inplace=False):
    """F.leaky_relu / nn.LeakyReLU: one compare.relu (8 rounds) plus one truncation (3 rounds, 16 bytes) unless the
    slope is an integer or +-2^-k (then free); backward 1 round (8 bytes) plus the same truncation."""
    if input.public is not None:
        out = make_public(F.leaky_relu(input.public, negative_slope), input.party, input.dtype)
        return assign_inplace(input, out) if inplace else out
    return LeakyReLUFn.apply(input, float(negative_slope), inplace)


@implements_function(F.leaky_relu_)
def _leaky_relu_inplace(input, negative_slope=0.01):
    return leaky_relu(input, negative_slope, inplace=True)


# ---- reached at the aten level (no torch-function call to intercept): forward by the same formulas -------------------
@implements(aten.hardtanh.default)
def _aten_hardtanh(self, min_val=-1.0, max_val=1.0):
    return clamp(self, min_val, max_val)


@implements(aten.leaky_relu.default)
def _aten_leaky_relu(self, negative_slope=0.01):
    return leaky_relu(self, negative_slope)


@implements(aten.sign.default, aten.sgn.default)
def _aten_sign(self):
    return sign(self)


for _op, _call in ((aten.clamp.default, "torch.clamp / x.clamp"), (aten.hardtanh.default, "F.hardtanh / nn.Hardtanh"),
                   (aten.leaky_relu.default, "F.leaky_relu / nn.LeakyReLU"),
                   (aten.maximum.default, "torch.maximum / torch.max(a, b)"),
                   (aten.minimum.default, "torch.minimum")):
    no_backward([_op], f"call {_call} on the SharedTensor itself (its autograd Function keeps the comparison bits for "
                       "backward), or compute it under torch.no_grad()",
                (lambda self, min=None, max=None: min is not None and max is not None)  # one bound: torch's
                if _op is aten.clamp.default else None)                                   # backward works
