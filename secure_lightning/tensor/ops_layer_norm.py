"""F.layer_norm / nn.LayerNorm and F.rms_norm / nn.RMSNorm on shares: autograd Functions around
protocols/row_norm.py, over the last dims given by normalized_shape (flattened to rows of D values).

  forward   x_hat = (x - mean) r (LayerNorm) or x r (RMSNorm), r = 1 / sqrt(var + eps) (or mean(x^2) + eps);
            y = x_hat w + b. LayerNorm: 35 rounds (32 when D is a power of two), RMSNorm 29; +3 with a weight
            (one product). Bytes per element per party: 16, +16 with a secret weight (a public weight or bias: free
            for integers, else one truncation); per-row terms (the mean, the sum of squares, rsqrt on R values) add
            ~(16 * 9 + ltz(~30)) / D bytes per element.
  backward  row_norm.backward: 12 rounds; 32 bytes per element with a weight, 16 without; dw = sum g x_hat,
            db = sum g (local).
Range and error: protocols/row_norm.py (f = 20: |mean| < 2048, D var < 4.2e6; x_hat within 3e-6 + 2e-6 |x_hat| of
torch for variances 1e-6 ... 1e3 with eps 1e-5; dx within ~4e-6 + 1e-6 r |g|).
eps=None for rms_norm means torch's torch.finfo(float32).eps, as in torch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..protocols import arithmetic as A
from ..protocols import row_norm
from .dispatch import UnsupportedOpError, implements_function, make_public, party_of, shares_of, wrap
from .shared import SharedTensor


class RowNormFn(torch.autograd.Function):
    """y = x_hat w + b over rows of the last D values (center: LayerNorm, else RMSNorm)."""

    @staticmethod
    def forward(ctx, x, weight, bias, wshape, eps, center):
        party = x.party
        shape, D = x.shape, math.prod(wshape)
        with party.label("layer_norm" if center else "rms_norm"):
            xs = x.shares.map(lambda t: t.reshape(-1, D))
            x_hat, saved = row_norm.forward(xs, eps, party=party, center=center)
            y = x_hat
            w = None if weight is None else shares_of(weight, party).map(lambda t: t.reshape(1, D))
            if w is not None:
                y = A.mul(x_hat, w, party=party)
            xw = y
            if bias is not None:
                y = y + shares_of(bias, party).map(lambda t: t.reshape(1, D))
        ctx.save = (saved, w, xw if w is not None else None, shape, wshape, center, weight is not None,
                    bias is not None)
        ctx.party = party
        return wrap(y.map(lambda t: t.reshape(shape)), party, x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party = ctx.party
        saved, w, xw, shape, wshape, center, has_w, has_b = ctx.save
        D = math.prod(wshape)
        with party.label("layer_norm_backward" if center else "rms_norm_backward"):
            gs = shares_of(g, party).map(lambda t: t.reshape(-1, D))
            dx, dw = row_norm.backward(gs, saved, w, xw, party=party, center=center,
                                       need_dw=has_w and ctx.needs_input_grad[1])
            db = gs.map(lambda t: t.sum(0)) if has_b and ctx.needs_input_grad[2] else None
        out = lambda s: None if s is None else wrap(s.map(lambda t: t.reshape(wshape)), party)  # noqa: E731
        return (wrap(dx.map(lambda t: t.reshape(shape)), party), out(dw), out(db), None, None, None)


def _row_norm(input, normalized_shape, weight, bias, eps, center: bool):
    party = party_of(input, weight, bias)
    name = "layer_norm" if center else "rms_norm"
    if not isinstance(input, SharedTensor):
        raise UnsupportedOpError(f"F.{name} with a shared weight on a plain input: share the input first")
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(input.shape[input.dim() - len(shape):]) != shape:
        raise RuntimeError(f"{name}: normalized_shape {list(shape)} does not match the input's last dims "
                           f"{list(input.shape)}")
    if input.public is not None and not any(isinstance(t, SharedTensor) and t.public is None for t in (weight, bias)):
        fn = F.layer_norm if center else F.rms_norm
        pub = lambda t: None if t is None else (t.public if isinstance(t, SharedTensor) else t)  # noqa: E731
        return make_public(fn(input.public, shape, pub(weight), pub(bias), eps), party)
    return RowNormFn.apply(input, weight, bias, shape, float(eps), center)


@implements_function(F.layer_norm)
def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """F.layer_norm / nn.LayerNorm on shares (module docstring for cost, range and error)."""
    return _row_norm(input, normalized_shape, weight, bias, eps, center=True)


@implements_function(F.rms_norm)
def rms_norm(input, normalized_shape, weight=None, eps=None):
    """F.rms_norm / nn.RMSNorm on shares; eps=None is torch.finfo(torch.float32).eps, as in torch."""
    eps = torch.finfo(torch.float32).eps if eps is None else eps
    return _row_norm(input, normalized_shape, weight, None, eps, center=False)
