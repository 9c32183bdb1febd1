"""Non-linear aten ops on SharedTensor, each a call into protocols.compare or protocols.approx (their docstrings give
cost and error), plus the linear pools (pooling.avg_pool2d / adaptive_avg_pool2d and their backward).

Comparisons return a bool SharedTensor holding 0.0/1.0 in fixed point (so `.float()` is free and it multiplies
like any value); indices from max/argmax are int64 SharedTensors (secret, fixed-point encoded integers).
ReLU reached at the aten level (not through F.relu, which keeps the sign bit) compares again in backward.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torch.return_types import max as max_result
from torch.return_types import topk as topk_result

from ..protocols import approx, compare, pooling
from ..protocols import arithmetic as A
from ..protocols import local as L
from ..protocols.sharing import Shares
from .dispatch import (
    UnsupportedOpError, advise, aten, implements, implements_function, make_public, party_of, public_value,
    raw_of, shares_of, wrap,
)
from .functional import (
    MAX_DEFERRED_BITS, add, bits_to_fixed, clamp_min, exp, log, mul, relu_values, rsqrt, sigmoid, softmax_from_log_softmax, sqrt,
    square, sub, sum_, tanh,
)
from .shared import OPEN_HINT, SharedTensor


implements(aten.exp.default)(exp)
implements(aten.log.default)(log)
implements(aten.sqrt.default)(sqrt)
implements(aten.rsqrt.default)(rsqrt)
implements(aten.sigmoid.default)(sigmoid)
implements(aten.tanh.default)(tanh)


@implements(aten.sigmoid_backward.default)
def sigmoid_backward(grad_output, output):
    return mul(grad_output, mul(output, sub(1.0, output)))


@implements(aten.tanh_backward.default)
def tanh_backward(grad_output, output):
    return mul(grad_output, sub(1.0, square(output) if isinstance(output, SharedTensor) else output * output))


# ---- comparisons -----------------------------------------------------------------------------------------------------
def _bits_tensor(bits: Shares, party) -> SharedTensor:
    return wrap(bits_to_fixed(bits, party=party), party, torch.bool)


def _cmp(name):
    def run(self, other):
        party = party_of(self, other)
        ps, po = public_value(self, party.device), public_value(other, party.device)
        if ps is not None and po is not None:
            return make_public(getattr(torch, name)(ps, po).to(torch.float64), party, torch.bool)
        if ps is not None:  # public op secret: flip the comparison
            flipped = {"gt": "lt", "lt": "gt", "ge": "le", "le": "ge", "eq": "eq", "ne": "ne"}[name]
            return run(other, self) if flipped == name else _cmp(flipped)(other, self)
        shape = torch.broadcast_shapes(self.shape, tuple(other.shape) if isinstance(other, torch.Tensor) else ())
        x = self.shares.map(lambda t: t.expand(shape))
        y = po.expand(shape) if po is not None else other.shares.map(lambda t: t.expand(shape))
        c = compare
        with party.label(name):
            if name == "ne":
                bits = c.eq(x, y, party=party)
                return wrap(L.rsub_public(bits_to_fixed(bits, party=party), 1.0, party=party), party, torch.bool)
            return _bits_tensor(getattr(c, name)(x, y, party=party), party)
    return run


for _name in ("gt", "lt", "ge", "le", "eq", "ne"):
    _packet = getattr(aten, _name)
    implements(_packet.Tensor, _packet.Scalar)(_cmp(_name))


# ---- ReLU family -----------------------------------------------------------------------------------------------------
@implements(aten.relu.default)
def relu(self):
    return relu_values(self)


@implements(aten.threshold_backward.default)
def threshold_backward(grad_output, self, threshold):
    if threshold != 0:
        raise UnsupportedOpError("threshold_backward with a non-zero threshold")
    party = party_of(grad_output, self)
    with party.label("threshold_backward"):
        bit = compare.gt(shares_of(self, party), 0.0, party=party)
        return wrap(A.mul(shares_of(grad_output, party), bit, party=party, fixed=False), party)


@implements(aten.abs.default)
def abs_(self):
    """|x| = 2 relu(x) - x: one ReLU."""
    return sub(mul(relu_values(self), 2), self)


@implements(aten.maximum.default)
def maximum(self, other):
    """max(a, b) = b + relu(a - b)."""
    return add(other, relu_values(sub(self, other)))


@implements(aten.minimum.default)
def minimum(self, other):
    """min(a, b) = a - relu(a - b)."""
    return sub(self, relu_values(sub(self, other)))


implements(aten.clamp_min.default)(clamp_min)


@implements(aten.clamp_max.default)
def clamp_max(self, max):
    return sub(max, relu_values(sub(max, self)))


@implements(aten.clamp.default)
def clamp(self, min=None, max=None):
    out = self
    if min is not None:
        out = clamp_min(out, min)
    if max is not None:
        out = clamp_max(out, max)
    return out


# ---- max / argmax ----------------------------------------------------------------------------------------------------
def _indices_from_onehot(onehot: Shares, dim: int, keepdim: bool, party) -> SharedTensor:
    n = onehot.shape[dim]
    shape = [1] * len(onehot.shape)
    shape[dim] = n
    idx = (torch.arange(n, dtype=torch.int64, device=party.device) * party.encoding.scale).reshape(shape)
    return wrap(L.sum(L.mul_int(onehot, idx), dim=dim, keepdim=keepdim), party, torch.int64)


class MaxDimFn(torch.autograd.Function):
    """values, indices = max over `dim` (compare.max); gradient flows through the shared one-hot selection."""

    @staticmethod
    def forward(ctx, x, dim, keepdim):
        party = x.party
        with party.label("max"):
            values, onehot = compare.max(x.shares, dim, keepdim, party=party)
        ctx.onehot, ctx.dim, ctx.keepdim, ctx.party = onehot, dim, keepdim, party
        indices = _indices_from_onehot(onehot, dim, keepdim, party)
        ctx.mark_non_differentiable(indices)
        return wrap(values, party), indices

    @staticmethod
    def backward(ctx, g, _gi):
        party = ctx.party
        gs = shares_of(g, party)
        if not ctx.keepdim:
            gs = gs.map(lambda t: t.unsqueeze(ctx.dim))
        gs = gs.map(lambda t: t.expand(ctx.onehot.shape))
        return wrap(A.mul(gs, ctx.onehot, party=party, fixed=False), party), None, None


def max_dim(x, dim, keepdim=False):
    if x.public is not None:
        v, i = torch.max(x.public, dim, keepdim)
        return make_public(v, x.party), make_public(i.to(torch.float64), x.party, torch.int64)
    return MaxDimFn.apply(x, dim % x.dim(), keepdim)


@implements_function(torch.max, torch.Tensor.max)
def _max_function(input, dim=None, keepdim=False, *, out=None):
    if isinstance(dim, torch.Tensor):  # torch.max(a, b): elementwise maximum, with its gradient
        return torch.maximum(input, dim)
    if dim is None:
        flat = input.reshape(-1)
        return max_dim(flat, 0)[0]
    values, indices = max_dim(input, dim, keepdim)
    return max_result((values, indices))


@implements_function(torch.amax, torch.Tensor.amax)
def _amax_function(input, dim=(), keepdim=False):
    dims = [dim] if isinstance(dim, int) else list(dim)
    if len(dims) > 1:
        raise UnsupportedOpError("amax over several dims: reduce one dim at a time")
    if not dims:
        return max_dim(input.reshape(-1), 0)[0]
    return max_dim(input, dims[0], keepdim)[0]


@implements_function(torch.argmax, torch.Tensor.argmax)
def argmax(input, dim=None, keepdim=False):
    party = input.party
    if dim is None:
        input, dim = input.reshape(-1), 0
    with party.label("argmax"):
        onehot = compare.argmax(input.shares, dim % input.dim(), keepdim, party=party)
    return _indices_from_onehot(onehot, dim % input.dim(), keepdim, party)


# ---- topk: k rounds of max, each masking the position it took -------------------------------------------------------
TOPK_MASK = 1 << 60  # subtracted (raw ring units) from a taken position: below every value with |x| < 2^59 raw


class TopKFn(torch.autograd.Function):
    """values, indices = topk along the last dim by k successive compare.max calls; after each, the one-hot of the
    taken position (ring bits) times 2^60 is subtracted (local), so the next max skips it. Ties take the lowest
    index first, as torch's sorted topk on distinct values. Gradient: sum_i g_i onehot_i (one ring-product round)."""

    @staticmethod
    def forward(ctx, x, k, largest):
        party = x.party
        xs = x.shares if largest else -x.shares
        values, onehots = [], []
        with party.label("topk"):
            for _ in range(k):
                v, oh = compare.max(xs, -1, keepdim=True, party=party)
                values.append(v if largest else -v)
                onehots.append(oh)
                xs = xs - L.mul_int(oh, TOPK_MASK)
        cat = lambda parts: Shares(torch.cat([p.cur for p in parts], -1), torch.cat([p.prev for p in parts], -1))
        onehot = Shares(torch.stack([o.cur for o in onehots], -2), torch.stack([o.prev for o in onehots], -2))
        ctx.onehot, ctx.party = onehot, party   # (..., k, n)
        indices = _indices_from_onehot(onehot, onehot.cur.dim() - 1, False, party)
        ctx.mark_non_differentiable(indices)
        return wrap(cat(values), party), indices

    @staticmethod
    @once_differentiable
    def backward(ctx, g, _gi):
        party = ctx.party
        gs = shares_of(g, party).map(lambda t: t.unsqueeze(-1).expand(ctx.onehot.shape))
        with party.label("topk_backward"):
            return wrap(L.sum(A.mul(gs, ctx.onehot, party=party, fixed=False), dim=-2), party), None, None


@implements_function(torch.topk, torch.Tensor.topk)
def topk(input, k, dim=-1, largest=True, sorted=True, *, out=None):
    """torch.topk on shares: k successive maxima (8 ceil(log2 n) rounds each, k times: n = 10, k = 3: 96 rounds);
    values sorted, indices an int64 SharedTensor (secret). Backward: 1 round, 8 bytes per (k x n) element."""
    if out is not None:
        raise UnsupportedOpError("torch.topk(out=...) on shares: use the returned values and indices")
    if not isinstance(input, SharedTensor):
        raise TypeError("secure topk takes a SharedTensor")
    n = input.shape[dim] if input.dim() else 1
    if not 0 <= k <= n:
        raise RuntimeError(f"selected index k out of range: k={k}, size {n}")
    if input.public is not None:
        v, i = torch.topk(input.public, k, dim, largest, True)
        return topk_result((make_public(v, input.party), make_public(i.to(torch.float64), input.party, torch.int64)))
    d = dim % max(input.dim(), 1)
    x = input.movedim(d, -1) if d != input.dim() - 1 else input
    v, i = TopKFn.apply(x, int(k), bool(largest))
    if d != input.dim() - 1:
        v, i = v.movedim(-1, d), i.movedim(-1, d)
    return topk_result((v, i))


# ---- pooling (linear) ------------------------------------------------------------------------------------------------
@implements(aten.avg_pool2d.default)
def avg_pool2d(self, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    """A power-of-two window (2x2, 4x4): window sums with the 1/2^e deferred (free; the next product folds it into
    its truncation, see shared.PendingBits). Any other divisor: one truncation (pooling.avg_pool2d)."""
    party = self.party
    x, e = self.raw_shares
    args = (kernel_size, stride or None, padding, ceil_mode, count_include_pad, divisor_override)
    summed = pooling.sum_pool2d(x, *args, party=party, max_bits=MAX_DEFERRED_BITS - e)
    if summed is not None:
        return wrap(summed[0], party).defer_scale(e + summed[1])
    with party.label("avg_pool2d"):
        return wrap(pooling.avg_pool2d(self.shares, *args, party=party), party)


@implements(aten.avg_pool2d_backward.default)
def avg_pool2d_backward(grad_output, self, kernel_size, stride, padding, ceil_mode, count_include_pad,
                        divisor_override):
    """A power-of-two window: the gradient spread over each window with the 1/2^e deferred (free: ReLU's backward
    passes it on, the convolution's or linear layer's gradients fold it into their truncations and a bias gradient
    sums it at its own small size, see shared.PendingBits). Any other divisor: one truncation at the pooled size."""
    party = party_of(grad_output, self)
    g, eg = raw_of(grad_output, party)
    args = (kernel_size, stride or None, padding, ceil_mode, count_include_pad, divisor_override)
    spread = pooling.sum_pool2d_backward(g, tuple(self.shape), *args, party=party, max_bits=MAX_DEFERRED_BITS - eg)
    if spread is not None:
        return wrap(spread[0], party).defer_scale(eg + spread[1])
    with party.label("avg_pool2d_backward"):
        g = pooling.avg_pool2d_backward(shares_of(grad_output, party), tuple(self.shape), kernel_size,
                                           stride or None, padding, ceil_mode, count_include_pad, divisor_override,
                                           party=party)
    return wrap(g, party)


@implements(aten._adaptive_avg_pool2d.default)
def adaptive_avg_pool2d(self, output_size):
    party = self.party
    with party.label("adaptive_avg_pool2d"):
        return wrap(pooling.adaptive_avg_pool2d(self.shares, output_size, party=party), party)


@implements(aten._adaptive_avg_pool2d_backward.default)
def adaptive_avg_pool2d_backward(grad_output, self):
    party = party_of(grad_output, self)
    with party.label("adaptive_avg_pool2d_backward"):
        return wrap(pooling.adaptive_avg_pool2d_backward(shares_of(grad_output, party), tuple(self.shape),
                                                            party=party), party)


# ---- softmax reached at the aten level ------------------------------------------------------------------------------
@implements(aten._softmax.default)
def _softmax(self, dim, half_to_float=False):
    return wrap(approx.softmax(self.shares, dim, party=self.party), self.party)


@implements(aten._log_softmax.default)
def _log_softmax(self, dim, half_to_float=False):
    return wrap(approx.log_softmax(self.shares, dim, party=self.party), self.party)


@implements(aten._softmax_backward_data.default)
def _softmax_backward_data(grad_output, output, dim, input_dtype):
    gy = mul(grad_output, output)
    return sub(gy, mul(output, sum_(gy, [dim], keepdim=True)))


@implements(aten._log_softmax_backward_data.default)
def _log_softmax_backward_data(grad_output, output, dim, input_dtype):
    party = party_of(grad_output, output)
    if output.public is not None:
        sm = make_public(torch.exp(output.public), party)
    else:   # softmax = exp(max(logp, -32)): logp <= 0 needs no upper clamp (cheaper than the general exp)
        sm = wrap(softmax_from_log_softmax(output.shares, party=party), party)
    return sub(grad_output, mul(sm, sum_(grad_output, [dim], keepdim=True)))


advise([aten.max_pool2d_with_indices, aten.max_pool2d_with_indices_backward],
       "call F.max_pool2d (return_indices=False) on the SharedTensor, or use nn.MaxPool2d after secure_module: "
       "the secure max pool keeps a shared selection instead of int64 indices")
advise([aten.native_batch_norm, aten._native_batch_norm_legit, aten._native_batch_norm_legit_no_training,
        aten.cudnn_batch_norm, aten.native_batch_norm_backward],
       "call F.batch_norm / nn.BatchNorm2d on the SharedTensor (intercepted before aten, with approx.rsqrt)")
advise([aten.native_dropout, aten.bernoulli, aten.native_dropout_backward],
       "call F.dropout / nn.Dropout on the SharedTensor (the mask comes from party.prg_common)")
advise([aten.elu, aten.softplus, aten.log_sigmoid],
       "this activation has no secure implementation; use ReLU (F.relu), GELU / SiLU, or sigmoid/tanh "
       "(approximations) instead")
advise([aten.native_layer_norm, aten.native_layer_norm_backward, aten._fused_rms_norm],
       "call F.layer_norm / nn.LayerNorm or F.rms_norm / nn.RMSNorm on the SharedTensor itself")
advise([aten.embedding, aten.embedding_dense_backward],
       "embeddings are not supported on shares: one-hot encode the (public or shared) indices and use F.linear")


@implements(aten.one_hot.default)
def one_hot(self, num_classes=-1):
    """F.one_hot of secret integer labels: compare.eq against the public classes 0..C-1 (int64 SharedTensor 0/1)."""
    if num_classes is None or num_classes < 0:
        raise UnsupportedOpError("F.one_hot of a SharedTensor needs num_classes (the maximum label is secret)")
    if self.dtype == torch.float32:
        raise UnsupportedOpError("F.one_hot takes integer labels (an int64 SharedTensor)")
    party = self.party
    shape = tuple(self.shape) + (num_classes,)
    x = self.shares.map(lambda t: t.unsqueeze(-1).expand(shape))
    classes = torch.arange(num_classes, dtype=torch.float64, device=party.device).expand(shape)
    with party.label("one_hot"):
        bits = compare.eq(x, classes, party=party)
    return wrap(bits_to_fixed(bits, party=party), party, torch.int64)


advise([aten.linalg_vector_norm, aten.norm, aten._foreach_norm, aten.frobenius_norm],
       "this norm was reached below the torch-level calls that compute it on shares (torch.norm, Tensor.norm, "
       "torch.linalg.vector_norm, F.normalize with p=2 or 1); gradient clipping by norm (clip_grad_norm_) is not "
       "supported: clip by value (clamp), or compute x.pow(2).sum() and " + OPEN_HINT)
