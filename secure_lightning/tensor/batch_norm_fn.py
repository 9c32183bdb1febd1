"""F.batch_norm on shares: the autograd Function around batch_norm.py's statistics and gradients.

  train  batch mean/var (batch_norm.train_stats), approx.rsqrt; one truncation for s = w inv and both running-statistics
         updates; backward batch_norm.train_backward
  eval   running stats (shared buffers), approx.rsqrt, or the precomputed per-channel scale (batch_norm_eval_scale,
         cached by SecureBatchNorm): one product
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..protocols import approx
from ..protocols import arithmetic as A
from ..protocols import local as L
from ..protocols import sharing as S
from ..protocols.sharing import Shares
from . import batch_norm as BN
from .dispatch import (
    UnsupportedOpError, as_shared, assign_inplace, encode, implements_function, make_public, party_of, public_value,
    shares_of, wrap,
)
from .shared import SharedTensor


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
            gs = shares_of(g, party)
            if training:
                dx, dw, db = BN.train_backward(gs, xc, inv, s, n, party=party)
            else:
                dx, dw, db = BN.eval_backward(gs, xc, inv, s, party=party, need_dw=has_w)
            dw = dw.map(lambda t: t.reshape(-1)) if has_w else None
            db = db if has_b else None
        return (wrap(dx, party), None if dw is None else wrap(dw, party),
                None if db is None else wrap(db, party), None, None, None, None, None, None)


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
    x = as_shared(input, party)
    if x.dim() < 2:
        raise ValueError(f"batch_norm needs (N, C, ...) input, got {tuple(x.shape)}")
    w = weight if weight is None or isinstance(weight, SharedTensor) else as_shared(weight, party)
    b = bias if bias is None or isinstance(bias, SharedTensor) else as_shared(bias, party)
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
