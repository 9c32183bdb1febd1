"""GELU (nn.GELU, F.gelu; approximate='none' or 'tanh') and SiLU (nn.SiLU, F.silu) on shares: autograd Functions
around protocols/approx_smooth.py.

  forward   approx_smooth.gelu / silu: one compare.relu on K n values (K = 4 GELU, 5 SiLU) and four truncation
            layers: 20 rounds; 112 bytes per element per party plus relu(K n) bytes. When a gradient will be needed
            the derivative comes out of the same layers (160 bytes instead of 112, same rounds) and is kept.
  backward  g * p'(x): one product (3 rounds, 16 bytes per element).
Error (f = 20, every input): GELU value <= 3e-6, derivative <= 5e-6; SiLU value <= 4e-6, derivative <= 8e-6
(approx_smooth.py); the gradient adds one truncation (1 ulp) and |g| times the derivative's error.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..protocols import approx_smooth
from ..protocols import arithmetic as A
from .dispatch import assign_inplace, aten, implements, implements_function, make_public, no_backward, shares_of, wrap


class SmoothFn(torch.autograd.Function):
    """y = fn(x) for fn in {gelu, gelu_tanh, silu}; the derivative is computed with y when x needs a gradient."""

    @staticmethod
    def forward(ctx, x, name, want):
        party = x.party
        if name == "silu":
            y, d = approx_smooth.silu(x.shares, party=party, derivative=want)
        else:
            y, d = approx_smooth.gelu(x.shares, party=party, derivative=want,
                                      approximate="tanh" if name == "gelu_tanh" else "none")
        ctx.d, ctx.party = d, party
        return wrap(y, party, x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party = ctx.party
        with party.label("smooth_backward"):
            return wrap(A.mul(shares_of(g, party), ctx.d, party=party), party), None, None


def _smooth(x, name: str):
    if x.public is not None:
        fn = {"gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu}[name]
        return make_public(fn(x.public), x.party, x.dtype)
    return SmoothFn.apply(x, name, torch.is_grad_enabled() and x.requires_grad)


@implements_function(F.gelu)
def gelu(input, approximate: str = "none"):
    """F.gelu / nn.GELU on shares (module docstring for cost and error)."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate argument must be either none or tanh, got {approximate!r}")
    return _smooth(input, "gelu" if approximate == "none" else "gelu_tanh")


@implements_function(F.silu)
def silu(input, inplace: bool = False):
    """F.silu / nn.SiLU on shares (module docstring); inplace=True writes the result into input's shares."""
    out = _smooth(input, "silu")
    if not inplace:
        return out
    if input.requires_grad:
        raise RuntimeError("F.silu(inplace=True) on a SharedTensor that requires grad: use inplace=False")
    return assign_inplace(input, out)


# ---- reached at the aten level (a decomposition, torch functions disabled): forward only --------------------------
@implements(aten.gelu.default)
def _aten_gelu(self, approximate: str = "none"):
    return gelu(self, approximate)


@implements(aten.silu.default)
def _aten_silu(self):
    return silu(self)


no_backward([aten.gelu.default, aten.silu.default],
            "call F.gelu / nn.GELU or F.silu / nn.SiLU on the SharedTensor itself (their autograd Function keeps the "
            "derivative for backward), or compute it under torch.no_grad()")
