"""Sharing, opening, and the autograd Functions for calls that need their own protocol or gradient.

Gradient policy of share/reveal:
  share_tensor   the result is a leaf; gradients never flow back into the owner's plaintext. With
                 requires_grad=True the leaf accumulates a *shared* .grad.
  reveal_tensor  to all parties (to=None): the plaintext result keeps the graph (RevealFn); its gradient, a public
                 plaintext tensor known to all, re-enters as a public sharing. To one party: no gradient.

Functions (each registered for the torch-level calls in FUNCTION_HANDLERS, so plain model code reaches them):
  relu            compare.relu keeps the sign bit; backward = one product with that bit (no second comparison)
  max_pool2d      compare.max_pool2d; backward through its saved one-hot selection (no int64 indices exist)
  batch_norm      train: batch mean/var, approx.rsqrt; eval: running stats (shared buffers), approx.rsqrt, or the
                  precomputed per-channel scale (batch_norm_eval_scale, cached by SecureBatchNorm): one product
  log_softmax, softmax, cross_entropy ((softmax - onehot)/N), nll_loss
  dropout         a public mask from party.prg_common: all parties draw the same data-independent mask
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..encoding import FixedPointRangeError
from ..protocols import approx, compare
from ..protocols import arithmetic as A
from ..protocols import local as L
from ..protocols import sharing as S
from ..protocols.sharing import Shares
from .dispatch import (
    UnsupportedOpError, assign_inplace, encode, implements_function, is_integral, make_public, party_of,
    public_value, shares_of, wrap,
)
from . import batch_norm as BN
from ..protocols.arithmetic import mul_public_real
from .functional import bits_to_fixed, softmax_from_log_softmax
from .shared import SharedTensor, _generation

_HEADER_LEN = 11  # status, dtype code, ndim, up to 8 dims
_DTYPE_CODES = {torch.float32: 0, torch.int64: 1, torch.bool: 2}
_CODE_DTYPES = {v: k for k, v in _DTYPE_CODES.items()}
_STATUS_ERRORS = {1: FixedPointRangeError, 2: TypeError, 3: ValueError}


# ---------------------------------------------------------------------------------------------------------------------
# Sharing and opening

def _logical_dtype(x: torch.Tensor) -> torch.dtype:
    if x.dtype == torch.bool:
        return torch.bool
    if x.is_floating_point():
        return torch.float32
    if x.is_complex():
        raise TypeError("complex tensors cannot be shared")
    return torch.int64


def share_tensor(x, owner: int, party, requires_grad: bool = False, label: str = "input",
                 data: bool = True) -> SharedTensor:
    """Secret-share the owner's plaintext tensor (other parties pass None): float -> float32 SharedTensor, integer
    -> int64 SharedTensor (integer values, still fixed-point encoded), bool -> bool SharedTensor (0/1).

    Data (data=True, the default) must satisfy |x| < party.encoding.max_abs = 2^(62-2f), the range in which a first
    layer's product stays exact; other values (data=False: model parameters) only the encoding's hard limit 2^(62-f).

    Shape and logical dtype are public and travel in a header from the owner; a refused input (NaN/inf, out of the
    fixed-point range, too many dimensions) raises the same error type on every party.
    Cost: 2 rounds; the owner sends 2 x 88 header bytes and 2 ring elements (16 bytes) per element, others nothing.
    """
    if owner not in (0, 1, 2):
        raise ValueError(f"share_tensor: owner must be 0, 1 or 2, got {owner}")
    enc, err = None, None
    with party.label(f"share/{label}"):
        if party.rank == owner:
            try:
                if x is None:
                    raise ValueError("the owner must pass a tensor")
                if isinstance(x, SharedTensor):
                    raise TypeError("the value is already a SharedTensor")
                x = torch.as_tensor(x)
                if x.dim() > _HEADER_LEN - 3:
                    raise ValueError(f"at most {_HEADER_LEN - 3} dimensions can be shared, got {x.dim()}")
                dtype = _logical_dtype(x)
                enc = party.encoding.encode(x.detach().to(torch.float64), what=label,
                                             limit=party.encoding.max_abs if data else None).to(party.device)
            except Exception as e:  # refuse on all parties rather than leave the others waiting
                err = e
            status = 0 if err is None else (1 if isinstance(err, FixedPointRangeError) else
                                             2 if isinstance(err, TypeError) else 3)
            h = torch.zeros(_HEADER_LEN, dtype=torch.int64)
            h[0] = status
            if err is None:
                h[1], h[2] = _DTYPE_CODES[dtype], enc.dim()
                h[3:3 + enc.dim()] = torch.tensor(list(enc.shape), dtype=torch.int64)
            party.comm.round({party.next: h, party.prev: h})
            if err is not None:
                raise _STATUS_ERRORS[status](f"sharing '{label}' from party {owner}: {err}") from err
        else:
            h = party.comm.round({}, {owner: ((_HEADER_LEN,), torch.int64)})[owner]
            status = int(h[0])
            if status:
                raise _STATUS_ERRORS.get(status, ValueError)(f"party {owner} could not share '{label}' (the error on party {owner} has the details)")
        dtype = _CODE_DTYPES[int(h[1])]
        shape = tuple(int(s) for s in h[3:3 + int(h[2])])
        shares = S.share_encoded(enc, owner, shape, party=party)
    return SharedTensor(shares, party, dtype=dtype, requires_grad=requires_grad and dtype == torch.float32)


class RevealFn(torch.autograd.Function):
    """Open to all parties; the (public, common) plaintext gradient re-enters as a public sharing."""

    @staticmethod
    def forward(ctx, t, label):
        ctx.party = t.party
        v = S.reveal_float(t.shares, None, party=t.party, label=label)
        return v.to(torch.float32)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        return make_public(g.to(torch.float64), ctx.party), None


def reveal_tensor(t: SharedTensor, to: int | None = None, label: str = "reveal") -> torch.Tensor | None:
    """Open a SharedTensor: to all parties (to=None) or to party `to` (others get None). Every party must call it.
    Recorded in party.audit. Returns float32 (int64 / bool for integer / boolean SharedTensors).
    Cost: 1 round; to all: 8 bytes per element from each party; to one: 8 bytes per element from one party."""
    if not isinstance(t, SharedTensor):
        raise TypeError(f"reveal_tensor takes a SharedTensor, got {type(t).__name__}")
    if t.dtype == torch.float32 and to is None and t.requires_grad and torch.is_grad_enabled():
        return RevealFn.apply(t, label)
    v = S.reveal_float(t.shares, to, party=t.party, label=label)
    if v is None:
        return None
    if t.dtype == torch.int64:
        return torch.round(v).to(torch.int64)
    if t.dtype == torch.bool:
        return v > 0.5
    return v.to(torch.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Helpers

def _shared(x, party) -> SharedTensor:
    return x if isinstance(x, SharedTensor) else wrap(shares_of(x, party), party)


def _grad_shares(g, party) -> Shares:
    return shares_of(g, party)


# ---------------------------------------------------------------------------------------------------------------------
# ReLU

class ReLUFn(torch.autograd.Function):
    """y = relu(x) with compare.relu; the sign bit is kept for backward (one product, no new comparison)."""

    @staticmethod
    def forward(ctx, x):
        party = x.party
        with party.label("relu"):
            y, bit = compare.relu(x.shares, party=party)
        ctx.bit, ctx.party = bit, party
        return wrap(y, party)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party = ctx.party
        with party.label("relu_backward"):
            return wrap(compare.relu_backward(_grad_shares(g, party), ctx.bit, party=party), party)


def relu(x, inplace: bool = False):
    if not isinstance(x, SharedTensor):
        raise TypeError("secure relu takes a SharedTensor")
    if x.public is not None:
        return make_public(torch.relu(x.public), x.party)
    return ReLUFn.apply(x)


@implements_function(F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu_)
def _relu_function(input, inplace=False):
    return relu(input)  # in place or not, the result is a new SharedTensor (use the returned value)


# ---------------------------------------------------------------------------------------------------------------------
# Max pooling

class MaxPool2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode):
        party = x.party
        with party.label("max_pool2d"):
            y, saved = compare.max_pool2d(x.shares, kernel_size, stride, padding, dilation, ceil_mode,
                                             party=party)
        ctx.saved, ctx.party = saved, party
        return wrap(y, party)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party = ctx.party
        with party.label("max_pool2d_backward"):
            gi = compare.max_pool2d_backward(_grad_shares(g, party), ctx.saved, party=party)
        return wrap(gi, party), None, None, None, None, None


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if return_indices:
        raise UnsupportedOpError("max_pool2d(return_indices=True): indices of a secret maximum would have to be "
                                 "opened; use return_indices=False (the backward pass keeps a shared selection)")
    if not isinstance(input, SharedTensor):
        raise TypeError("secure max_pool2d takes a SharedTensor input")
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride = kernel_size
    return MaxPool2dFn.apply(input, kernel_size, stride, padding, dilation, ceil_mode)


@implements_function(F.max_pool2d, torch.max_pool2d)
def _max_pool2d_function(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                         return_indices=False):
    return max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


@implements_function(F.max_pool2d_with_indices)
def _max_pool2d_with_indices(*args, **kwargs):
    raise UnsupportedOpError("max_pool2d_with_indices: indices of a secret maximum would have to be opened; "
                             "call F.max_pool2d(..., return_indices=False)")


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
            gs = _grad_shares(g, party)
            gsum = L.sum(gs, dim=ctx.dim, keepdim=True)
            return wrap(gs - A.mul(sm, gsum, party=party), party), None


class SoftmaxFn(torch.autograd.Function):
    """forward: approx.softmax. backward: y * (g - sum(g * y))."""

    @staticmethod
    def forward(ctx, x, dim):
        party = x.party
        with party.label("softmax"):
            y = approx.softmax(x.shares, dim, party=party)
        ctx.y, ctx.dim, ctx.party = y, dim, party
        return wrap(y, party)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party, y = ctx.party, ctx.y
        with party.label("softmax_backward"):
            gs = _grad_shares(g, party)
            gy = L.sum(A.mul(gs, y, party=party), dim=ctx.dim, keepdim=True)
            return wrap(A.mul(y, gs - gy, party=party), party), None


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    dim = _softmax_dim(input.dim()) if dim is None else dim
    return LogSoftmaxFn.apply(_shared(input, party_of(input)), dim % max(input.dim(), 1))


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    dim = _softmax_dim(input.dim()) if dim is None else dim
    return SoftmaxFn.apply(_shared(input, party_of(input)), dim % max(input.dim(), 1))


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


def _scale_grad(diff: Shares, g, reduction: str, count: int, *, party) -> Shares:
    """diff * dloss/dper_row: g (scalar or per row) divided by count for 'mean'."""
    div = count if reduction == "mean" else 1
    pg = public_value(g, party.device)
    if pg is not None:
        c = (pg / div).reshape(-1, 1) if reduction == "none" else pg / div
        if is_integral(c):
            return L.mul_int(diff, c.to(torch.int64))
        return mul_public_real(diff, c, party=party)
    gs = shares_of(g, party)
    if div != 1:
        gs = mul_public_real(gs, 1.0 / div, party=party)
    gs = gs.map(lambda t: t.reshape(-1, 1)) if reduction == "none" else gs
    return A.mul(diff, gs, party=party)


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
        return wrap(gx, party), None, None, None, None


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
        return wrap(gx, party), None, None, None, None


def _loss_args(input, target, weight, size_average, reduce, reduction, name):
    if weight is not None:
        raise UnsupportedOpError(f"{name}(weight=...): class weights are not supported on shares")
    if size_average is not None or reduce is not None:
        from torch.nn import _reduction
        reduction = _reduction.legacy_get_string(size_average, reduce)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    party = party_of(input, target)
    x = _shared(input, party)
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


# ---------------------------------------------------------------------------------------------------------------------
# Batch normalization

class BatchNormFn(torch.autograd.Function):
    """y = (x - mean) * w / sqrt(var + eps) + b over channel dim 1 (n values per channel).

    train: mean and 64 var by batch_norm.train_stats (chunked sums of squares, pre-divided sums: exact for n up to
           2^24 and more, std up to ~100 at f = 20; 12 rounds); 1/sqrt(var + eps) by approx.rsqrt on 64 (var + eps);
           then ONE truncation for s = w inv and both running-statistics updates (unbiased variance).
    eval:  the running stats (shared buffers; public plain tensors are used directly). inv and s depend only on
           running_var, weight and eps: a caller that keeps them fixed passes them precomputed as `eval_scale`
           (batch_norm_eval_scale; SecureBatchNorm caches them) and the forward is the one product below.
    forward:  y = xc * s + b with s = w inv: one product on activations.
      Cost (train): 12 (statistics) + 23 (rsqrt) + 3 (s, running stats) + 3 (y) = 41 rounds; 16 bytes per element
      (the product) + 16 per chunk of 256 elements (0.0625 per element) + per-channel terms.
    backward (train): batch_norm.train_backward, 5 layers (15 rounds), 32 bytes per element + 16 per chunk:
        dx = s (g - mean(g) - x_hat mean(g x_hat));   dw = sum g x_hat = inv sum(g xc);   db = sum g
    backward (eval): dx = g s; dw = inv sum(g xc) (chunked); db = sum g.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps, eval_scale=None):
        party = x.party
        dims = [0] + list(range(2, x.dim()))
        n = math.prod(x.shape[d] for d in dims)
        stat_shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        with party.label("batch_norm"):
            if training:
                if n <= 1:
                    raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got "
                                     f"input of shape {tuple(x.shape)}")
                for buf in (running_mean, running_var):
                    _check_running(buf)
                mean, var_k, xc = BN.train_stats(x.shares, party=party)
                inv = _rsqrt_eps(var_k, eps, party, scale=BN.VAR_SCALE)
                # one truncation for s = w inv and both running-statistics updates
                f = party.encoding.frac_bits
                items, updates = [], []
                if weight is not None:
                    items.append((A.product_additive(inv, _stat(weight, stat_shape, party)), f))
                for buf, stat, factor in ((running_mean, mean, 1.0),
                                          (running_var, var_k, n / (n - 1) / BN.VAR_SCALE)):
                    if buf is not None:
                        items.append(_running_item(buf, stat, momentum, factor, party))
                        updates.append(buf)
                outs = BN.layer(items, party=party) if items else []
                s = outs.pop(0) if weight is not None else inv
                for buf, new in zip(updates, outs):
                    assign_inplace(buf, new)
            else:
                if running_mean is None or running_var is None:
                    raise ValueError("batch_norm in eval mode needs running_mean and running_var")
                xc = x.shares - _stat(running_mean, stat_shape, party)
                if eval_scale is None:
                    eval_scale = batch_norm_eval_scale(running_var, weight, eps, party=party)
                inv, s = (v.map(lambda t: t.reshape(stat_shape)) for v in eval_scale)
            y = A.mul(xc, s, party=party)
            if bias is not None:
                y = y + _stat(bias, stat_shape, party)
        ctx.save = (xc, inv, s, training, n, weight is not None, bias is not None)
        ctx.party = party
        return wrap(y, party)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party = ctx.party
        xc, inv, s, training, n, has_w, has_b = ctx.save
        with party.label("batch_norm_backward"):
            gs = _grad_shares(g, party)
            if training:
                dx, dw, db = BN.train_backward(gs, xc, inv, s, n, party=party)
            else:
                dx, dw, db = BN.eval_backward(gs, xc, inv, s, party=party, need_dw=has_w)
            dw = dw.map(lambda t: t.reshape(-1)) if has_w else None
            db = db if has_b else None
        return (wrap(dx, party), None if dw is None else wrap(dw, party),
                None if db is None else wrap(db, party), None, None, None, None, None, None)


def state_token(t) -> tuple | None:
    """A value that changes whenever the content of t (a SharedTensor, a plain tensor or None) may have changed, for
    caches of values derived from module state (SecureBatchNorm's eval scale): the identities of t and of its share
    tensors (replaced shares), the write generations of their storages (every in-place write on shares goes through
    dispatch.assign_inplace, which notes it) and t's autograd version counter. Ids are only meaningful while the
    objects live: a cache keeps references to the tensors it keyed. Local: every party computes the same token
    after the same operations, so every party reuses or recomputes a cached value together."""
    if t is None:
        return None
    if isinstance(t, SharedTensor):
        return (id(t), id(t.shares.cur), id(t.shares.prev), *_generation(t.shares), t._version)
    return (id(t), t._version)


def batch_norm_eval_scale(running_var, weight, eps: float, *, party) -> tuple[Shares, Shares]:
    """The per-channel factors of eval-mode batch norm, (inv, scale) with inv = 1/sqrt(running_var + eps) and
    scale = weight * inv (inv itself when weight is None), each of shape (C,).

    They depend only on running_var, weight and eps, so a module whose state does not change between forwards
    computes them once (SecureBatchNorm caches them) and each eval forward is then one product on the activations.
    Cost: approx.rsqrt on C values (nothing for a public running_var) + one product with the weight (3 rounds,
    16 bytes per channel). Error: approx.rsqrt's (2e-6 + 2^-18 relative) + 1 ulp.
    """
    c = running_var.shape[0]
    pv = running_var.public if isinstance(running_var, SharedTensor) else public_value(running_var, party.device)
    if pv is not None:
        inv = S.public_shares(encode((pv + eps).rsqrt().reshape(c), party), party=party)
    else:
        inv = _rsqrt_eps(_stat(running_var, (c,), party), eps, party)
    if weight is None:
        return inv, inv
    return inv, A.mul(inv, _stat(weight, (c,), party), party=party)


BN_RSQRT_HI = 2.0 ** 22


def _rsqrt_eps(v_k: Shares, eps: float, party, scale: int = 1) -> Shares:
    """1/sqrt(var + eps) from v_k = scale * var (scale a power of 4): sqrt(scale) / sqrt(v_k + scale eps), the
    factor an integer (free). approx.rsqrt runs on [2^floor(log2(scale eps)), 2^22].

    Range: batch statistics come with scale = 64, so var < 2^16 (std 256): the training statistics guarantee
    var < 2^14 for f = 20 (batch_norm.train_stats), running variances up to 2^16 are fine.
    Error (f = 20, scale 64, measured over var = 0 ... 6.5e4 in tests/test_batch_norm_range.py): relative
    <= 2e-6 + 2^-20 (16..24 std + 1 / (128 (var + eps))): rsqrt's ~2 ulp on 1 / (8 std), times 8, and the input's
    resolution (64 (var + eps) at scale f); e.g. 6e-5 at std 10, 1e-7 at std 0.1, 7e-5 for var = 0 (eps = 1e-5).
    """
    k_eps = scale * eps
    lo = 2.0 ** math.floor(math.log2(k_eps)) if k_eps > 0 else 2.0 ** -16
    r = approx.rsqrt(L.add_public(v_k, k_eps, party=party), party=party, lo=min(lo, 2.0 ** -16),
                        hi=BN_RSQRT_HI)
    root = math.isqrt(scale)
    if root * root != scale:
        raise ValueError("scale must be a perfect square")
    return r if root == 1 else L.mul_int(r, root)


def _stat(t, shape, party) -> Shares:
    return shares_of(t, party).map(lambda v: v.reshape(shape))


def _check_running(buf):
    if buf is not None and not isinstance(buf, SharedTensor):
        raise UnsupportedOpError("batch_norm training with plain running statistics would write secret batch "
                                 "statistics into a plain buffer; secure the module first (secure_module shares "
                                 "its buffers) or set track_running_stats=False")


RUNNING_EXTRA_BITS = 6  # momentum * n / (n - 1) / 64 is encoded with up to 6 more bits than f (s = w inv < 2^16)


def _running_item(buf, stat: Shares, momentum: float, factor: float, party) -> tuple[torch.Tensor, int]:
    """(z, d): additive shares z of (1 - m) buf + m * factor * stat at scale f + d, to be truncated by d bits. The
    factor m * factor (0.1 / 64 for the variance) gets e = min(6, floor(-log2(m factor))) extra bits, so that it is
    encoded with ~f significant bits (1 / (0.1/64 * 2^20) = 6e-4 relative error otherwise)."""
    _check_running(buf)
    f = party.encoding.frac_bits
    c = momentum * factor
    e = 0 if c <= 0 else min(RUNNING_EXTRA_BITS, max(0, math.floor(-math.log2(c))))
    c_old = encode(torch.tensor((1.0 - momentum) * 2.0 ** e), party)
    c_new = encode(torch.tensor(c * 2.0 ** e), party)
    return buf.shares.cur * c_old + stat.cur.reshape(buf.shape) * c_new, f + e


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               *, eval_scale=None):
    """F.batch_norm on shares. `eval_scale`: (inv, scale) from batch_norm_eval_scale for these running_var, weight
    and eps, to skip recomputing them in eval mode (ignored when training)."""
    party = party_of(input, running_mean, running_var, weight, bias)
    eval_scale = None if training else eval_scale
    x = _shared(input, party)
    if x.dim() < 2:
        raise ValueError(f"batch_norm needs (N, C, ...) input, got {tuple(x.shape)}")
    w = weight if weight is None or isinstance(weight, SharedTensor) else _shared(weight, party)
    b = bias if bias is None or isinstance(bias, SharedTensor) else _shared(bias, party)
    if w is None and b is not None:
        w = make_public(torch.ones(x.shape[1], dtype=torch.float64), party)
    if w is not None and b is None:
        b = make_public(torch.zeros(x.shape[1], dtype=torch.float64), party)
    if w is None:
        return BatchNormFn.apply(x, None, None, running_mean, running_var, training, momentum, eps, eval_scale)
    return BatchNormFn.apply(x, w, b, running_mean, running_var, training, momentum, eps, eval_scale)


@implements_function(F.batch_norm)
def _batch_norm_function(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                         eps=1e-5):
    return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


# ---------------------------------------------------------------------------------------------------------------------
# Dropout

def public_uniform(shape, party) -> torch.Tensor:
    """Uniform [0, 1) doubles from party.prg_common: the same public values on every party (data-independent)."""
    r = party.prg_common.ring(tuple(shape), party.device)
    return (r & ((1 << 53) - 1)).to(torch.float64) * 2.0 ** -53


def dropout(input, p: float = 0.5, training: bool = True, inplace: bool = False, *, feature: bool = False):
    """x * mask / (1 - p) with a public mask from party.prg_common (all parties draw the same mask; it does not
    depend on the data, so making it public reveals nothing). Cost: 0 for p = 0.5 (the factor 2 is an integer),
    else one truncation (3 rounds, 16 bytes per element)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    party = party_of(input)
    shape = tuple(input.shape)
    if feature:  # one draw per (sample, channel)
        shape = shape[:2] + (1,) * (len(shape) - 2) if input.dim() > 3 else shape[:1] + (1,) * (len(shape) - 1)
    keep = (public_uniform(shape, party) >= p).to(torch.float64)
    scale = keep * (1.0 / (1.0 - p)) if p < 1.0 else keep
    return input * scale


@implements_function(F.dropout, torch.dropout, torch.dropout_)
def _dropout_function(input, p=0.5, training=True, inplace=False, train=None):
    return dropout(input, p, training if train is None else train)


@implements_function(F.dropout1d, F.dropout2d, F.dropout3d, torch.feature_dropout)
def _feature_dropout_function(input, p=0.5, training=True, inplace=False, train=None):
    return dropout(input, p, training if train is None else train, feature=True)
