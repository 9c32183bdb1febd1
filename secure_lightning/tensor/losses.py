"""Softmax, log-softmax and the losses built on them, as autograd Functions registered for the torch-level calls.

  log_softmax, softmax  approx.log_softmax / approx.softmax; backward from the saved input or output
  cross_entropy         loss = -sum_c T log_softmax(x); gradient (softmax - T) / N, softmax = exp(the forward's
                        log_softmax) (functional.softmax_from_log_softmax)
  nll_loss              loss = -sum_c T input; gradient -T / N
The target becomes per-class weights T (class_weights): a public or secret one-hot, or class probabilities.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.nn import _reduction

from ..protocols import approx, compare
from ..protocols import arithmetic as A
from ..protocols import local as L
from ..protocols import sharing as S
from ..protocols.arithmetic import mul_public_real
from ..protocols.sharing import Shares
from .dispatch import (
    UnsupportedOpError, as_shared, encode, implements_function, is_integral, party_of, public_value, shares_of, wrap,
)
from .functional import bits_to_fixed, mul_public, softmax_from_log_softmax
from .shared import SharedTensor


# ---------------------------------------------------------------------------------------------------------------------
# Softmax family

def _softmax_dim(ndim: int) -> int:
    return 0 if ndim in (0, 1, 3) else 1


class LogSoftmaxFn(torch.autograd.Function):
    """forward: approx.log_softmax. backward: g - softmax(x) * sum(g), softmax recomputed from the saved input."""

    @staticmethod
    def forward(ctx, x, dim):
        party = x.party
        ctx.x, ctx.dim, ctx.party = x.shares, dim, party
        with party.label("log_softmax"):
            return wrap(approx.log_softmax(x.shares, dim, party=party), party)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party = ctx.party
        with party.label("log_softmax_backward"):
            sm = approx.softmax(ctx.x, ctx.dim, party=party)
            gs = shares_of(g, party)
            gsum = L.sum(gs, dim=ctx.dim, keepdim=True)
            return wrap(gs - A.mul(sm, gsum, party=party), party), None


class SoftmaxFn(torch.autograd.Function):
    """y = approx.softmax(x) along dim, over the entries a public boolean `keep` marks (None: all; a mask needs the
    last dim): F.softmax and attention's masked softmax.

    backward: dx = y (g - sum(g y)); the sums are one batched dot product per row (one truncation per row), then one
    product over every entry: 6 rounds, 16 (N + R) bytes per party (N entries, R rows); masked entries get 0."""

    @staticmethod
    def forward(ctx, x, dim, keep=None, label="softmax"):
        party = x.party
        with party.label(label):
            y = approx.softmax(x.shares, dim, party=party, keep=keep)
        ctx.y, ctx.dim, ctx.party, ctx.label = y, dim, party, label
        return wrap(y, party)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party, dim = ctx.party, ctx.dim
        with party.label(f"{ctx.label}_backward"):
            gs = shares_of(g, party).map(lambda t: t.movedim(dim, -1))
            y = ctx.y.map(lambda t: t.movedim(dim, -1))
            gy = A.matmul(gs.map(lambda t: t.unsqueeze(-2)), y.map(lambda t: t.unsqueeze(-1)), party=party)
            gy = gy.map(lambda t: t.squeeze(-1))     # (..., 1): the row sums of g y
            dx = A.mul(y, gs - gy, party=party).map(lambda t: t.movedim(-1, dim))
            return wrap(dx, party), None, None, None


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    dim = _softmax_dim(input.dim()) if dim is None else dim
    return LogSoftmaxFn.apply(as_shared(input, party_of(input)), dim % max(input.dim(), 1))


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    dim = _softmax_dim(input.dim()) if dim is None else dim
    return SoftmaxFn.apply(as_shared(input, party_of(input)), dim % max(input.dim(), 1))


@implements_function(F.log_softmax, torch.log_softmax, torch.Tensor.log_softmax)
def _log_softmax_function(input, dim=None, _stacklevel=3, dtype=None):
    return log_softmax(input, dim)


@implements_function(F.softmax, torch.softmax, torch.Tensor.softmax)
def _softmax_function(input, dim=None, _stacklevel=3, dtype=None):
    return softmax(input, dim)


# ---------------------------------------------------------------------------------------------------------------------
# Losses

def class_weights(target, num_classes: int, party, *, ignore_index: int = -100, label_smoothing: float = 0.0):
    """The target as per-class weights T (N, C): (Shares, is_bits, count).

    is_bits: T holds ring integers 0/1 (a one-hot), so products with it need no truncation; else T is fixed point.
    count: the number of rows that count for a mean (public targets drop rows equal to ignore_index).
      public int64 class indices    -> public one-hot
      int64 SharedTensor (labels)   -> one-hot by compare.eq against the public class indices 0..C-1 (secret)
      float tensor / SharedTensor   -> class probabilities, used as given (rows should sum to 1)
    """
    if isinstance(target, SharedTensor) and target.dtype in (torch.int64, torch.bool):
        n = target.shape[0] if target.dim() else 1
        t = target.shares.map(lambda s: s.reshape(n, 1).expand(n, num_classes))
        classes = torch.arange(num_classes, dtype=torch.float64, device=party.device).expand(n, num_classes)
        with party.label("onehot"):
            T, is_bits, count = compare.eq(t, classes, party=party), True, n
    elif isinstance(target, SharedTensor):
        T, is_bits, count = target.shares, False, target.shape[0] if target.dim() > 1 else 1
        if target.dim() == 1:
            T = T.map(lambda s: s.unsqueeze(0))
    elif isinstance(target, torch.Tensor) and not target.is_floating_point():
        t = target.reshape(-1).to(party.device)
        keep = t != ignore_index
        onehot = F.one_hot(t.clamp(0, num_classes - 1), num_classes) * keep.unsqueeze(1)
        T, is_bits, count = S.public_shares(onehot.to(torch.int64), party=party), True, int(keep.sum())
    else:
        v = public_value(target, party.device)
        v = v.unsqueeze(0) if v.dim() == 1 else v
        T, is_bits, count = S.public_shares(encode(v, party), party=party), False, v.shape[0]
    if label_smoothing:
        if is_bits:
            T, is_bits = L.mul_int(T, round((1.0 - label_smoothing) * party.encoding.scale)), False
        else:
            T = mul_public_real(T, 1.0 - label_smoothing, party=party)
        T = L.add_public(T, label_smoothing / num_classes, party=party)
    return T, is_bits, count


def _weighted_sum(T: Shares, is_bits: bool, v: Shares, *, party) -> Shares:
    """sum_c T * v per row: a product with 0/1 ring bits needs no truncation (reshare only)."""
    return L.sum(A.mul(T, v, party=party, fixed=not is_bits), dim=1)


def _reduce(per_row: Shares, reduction: str, count: int, *, party) -> Shares:
    if reduction == "none":
        return per_row
    total = L.sum(per_row)
    if reduction == "sum" or count == 1:
        return total
    return mul_public_real(total, 1.0 / max(count, 1), party=party)


def _scale_grad(diff: Shares, g, reduction: str, count: int, *, party) -> SharedTensor:
    """diff * dloss/dper_row: g (scalar or per row) divided by count for 'mean'. A public factor +-2^-k with k <= 4 (a batch of
    up to 16, loss.backward()'s seed 1) is deferred into the next product (tensor/shared.py PendingBits): free."""
    div = count if reduction == "mean" else 1
    pg = public_value(g, party.device)
    if pg is not None:
        c = (pg / div).reshape(-1, 1) if reduction == "none" else pg / div
        if is_integral(c):
            return wrap(L.mul_int(diff, c.to(torch.int64)), party)
        return mul_public(wrap(diff, party), c)
    gs = shares_of(g, party)
    if div != 1:
        gs = mul_public_real(gs, 1.0 / div, party=party)
    gs = gs.map(lambda t: t.reshape(-1, 1)) if reduction == "none" else gs
    return wrap(A.mul(diff, gs, party=party), party)


class CrossEntropyFn(torch.autograd.Function):
    """loss = -sum_c T log_softmax(x); gradient (softmax(x) - T) * g / N, softmax = exp(the forward's log_softmax)."""

    @staticmethod
    def forward(ctx, x, T, is_bits, count, reduction):
        party = x.party
        with party.label("cross_entropy"):
            logp = approx.log_softmax(x.shares, 1, party=party)
            loss = _reduce(-_weighted_sum(T, is_bits, logp, party=party), reduction, count, party=party)
        ctx.logp, ctx.T, ctx.is_bits, ctx.count, ctx.reduction, ctx.party = logp, T, is_bits, count, reduction, party
        return wrap(loss, party)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party = ctx.party
        with party.label("cross_entropy_backward"):
            sm = softmax_from_log_softmax(ctx.logp, party=party)
            T = bits_to_fixed(ctx.T, party=party) if ctx.is_bits else ctx.T
            gx = _scale_grad(sm - T, g, ctx.reduction, ctx.count, party=party)
        return gx, None, None, None, None


class NLLLossFn(torch.autograd.Function):
    """loss = -sum_c T * input (input: log-probabilities); gradient -T * g / N."""

    @staticmethod
    def forward(ctx, x, T, is_bits, count, reduction):
        party = x.party
        with party.label("nll_loss"):
            loss = _reduce(-_weighted_sum(T, is_bits, x.shares, party=party), reduction, count, party=party)
        ctx.T, ctx.is_bits, ctx.count, ctx.reduction, ctx.party = T, is_bits, count, reduction, party
        return wrap(loss, party)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party = ctx.party
        T = bits_to_fixed(ctx.T, party=party) if ctx.is_bits else ctx.T
        with party.label("nll_loss_backward"):
            gx = _scale_grad(-T, g, ctx.reduction, ctx.count, party=party)
        return gx, None, None, None, None


def _loss_args(input, target, weight, size_average, reduce, reduction, name):
    if weight is not None:
        raise UnsupportedOpError(f"{name}(weight=...): class weights are not supported on shares")
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    party = party_of(input, target)
    x = as_shared(input, party)
    if x.dim() == 1:
        x = wrap(x.shares.map(lambda t: t.unsqueeze(0)), party) if not x.requires_grad else x.unsqueeze(0)
    if x.dim() != 2:
        raise UnsupportedOpError(f"{name} on shares takes (N, C) or (C,) inputs, got {tuple(input.shape)}; "
                                 "flatten extra dimensions into the batch first")
    return x, reduction, party


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    x, reduction, party = _loss_args(input, target, weight, size_average, reduce, reduction, "cross_entropy")
    T, is_bits, count = class_weights(target, x.shape[1], party, ignore_index=ignore_index,
                                      label_smoothing=label_smoothing)
    return CrossEntropyFn.apply(x, T, is_bits, count, reduction)


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    x, reduction, party = _loss_args(input, target, weight, size_average, reduce, reduction, "nll_loss")
    T, is_bits, count = class_weights(target, x.shape[1], party, ignore_index=ignore_index)
    return NLLLossFn.apply(x, T, is_bits, count, reduction)


implements_function(F.cross_entropy)(cross_entropy)
implements_function(F.nll_loss)(nll_loss)
