"""Autograd Functions for layers applied elementwise: ReLU (keeping its sign bit) and dropout (a public mask).

Each is registered for the torch-level calls in FUNCTION_HANDLERS, so plain model code reaches it:
  relu     compare.relu keeps the sign bit; backward = one product with that bit (no second comparison)
  dropout  a public mask from party.prg_common: all parties draw the same data-independent mask
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..protocols import compare, guard
from .dispatch import implements_function, make_public, party_of, shares_of, wrap
from .shared import SharedTensor


# ---------------------------------------------------------------------------------------------------------------------
# ReLU

class ReLUFn(torch.autograd.Function):
    """y = relu(x) with compare.relu on guard.comparison_bits(f + e) bits (48 at f = 20), the input handed to the
    overflow guard; the sign bit is kept for backward (one product, no new comparison) unless no backward will run
    (need_bit False: the inject round then carries y alone)."""

    @staticmethod
    def forward(ctx, x, need_bit):
        party = x.party
        xs, e = x.raw_shares  # relu(x / 2^e) = relu(x) / 2^e: a deferred scale passes through
        bits = guard.comparison_bits(party, e)
        with party.label("relu"):
            guard.watch_comparison(xs, bits, "relu", party=party)
            y, bit = compare.relu(xs, party=party, bits=bits, need_bit=need_bit)
        ctx.bit, ctx.party = bit, party
        return wrap(y, party).defer_scale(e)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party = ctx.party
        if ctx.bit is None:
            raise RuntimeError("secure relu: backward through an output computed without gradient tracking")
        gs, e = g.raw_shares if isinstance(g, SharedTensor) else (shares_of(g, party), 0)
        with party.label("relu_backward"):
            return wrap(compare.relu_backward(gs, ctx.bit, party=party), party).defer_scale(e), None


def relu(x, inplace: bool = False):
    if not isinstance(x, SharedTensor):
        raise TypeError("secure relu takes a SharedTensor")
    if x.public is not None:
        return make_public(torch.relu(x.public), x.party)
    return ReLUFn.apply(x, torch.is_grad_enabled() and x.requires_grad)


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
