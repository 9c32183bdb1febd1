"""Autograd Functions for layers applied elementwise: ReLU (keeping its sign bit) and dropout (a public mask).

Each is registered for the torch-level calls in FUNCTION_HANDLERS, so plain model code reaches it:
  relu     compare.relu keeps the sign bit; backward = one product with that bit (no second comparison)
  dropout  a public mask from party.prg_common: all parties draw the same data-independent mask
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..protocols import compare
from .dispatch import implements_function, make_public, party_of, shares_of, wrap
from .shared import SharedTensor


# ---------------------------------------------------------------------------------------------------------------------
# ReLU

class ReLUFn(torch.autograd.Function):
    """y = relu(x) with compare.relu; the sign bit is kept for backward (one product, no new comparison)."""

    @staticmethod
    def forward(ctx, x):
        party = x.party
        xs, e = x.raw_shares  # relu(x / 2^e) = relu(x) / 2^e: a deferred scale passes through
        with party.label("relu"):
            y, bit = compare.relu(xs, party=party)
        ctx.bit, ctx.party = bit, party
        return wrap(y, party).defer_scale(e)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party = ctx.party
        gs, e = g.raw_shares if isinstance(g, SharedTensor) else (shares_of(g, party), 0)
        with party.label("relu_backward"):
            return wrap(compare.relu_backward(gs, ctx.bit, party=party), party).defer_scale(e)


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
