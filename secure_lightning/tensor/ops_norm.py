"""Vector norms on shares: torch.norm, Tensor.norm, torch.linalg.vector_norm (p = 2 and p = 1), F.normalize (p = 2).

  norm, p = 2:  s = sum x^2 (one truncated square: 3 rounds, 16 B per element), ||x|| = approx.sqrt(s) (23 rounds,
                96 B + ltz on 42 per output): 26 rounds. Backward: r = approx.rsqrt(s + 2^-f) (23 rounds), then
                g r x (two products, 6 rounds): 29 rounds.
  normalize:    y = x r with r = approx.rsqrt(s + 2^-f): 3 + 23 + 3 = 29 rounds. Backward r (g - y sum(g y)) from the
                saved r and y: three products, 9 rounds.
  norm, p = 1:  sum |x| (abs: one ReLU, 8 rounds; ops_piecewise.py), gradient through abs (1 round).

Range: sqrt and rsqrt take s <= 2^(62-2f) (f = 20: 2^22, i.e. ||x|| <= 2048); a larger s goes to the overflow guard
(approx._watch_domain), never a silent error. The 2^-f added under rsqrt (the smallest positive fixed-point value)
keeps a zero vector in range, where torch divides by eps = 1e-12 (below the fixed-point resolution): a zero vector
normalizes to 0 as in torch; for ||x|| >> 2^-10 the change is a relative 2^-(f+1) ||x||^-2, and shorter vectors come
out shorter than unit (x / sqrt(||x||^2 + 2^-f)).
Error (f = 20): norm: sqrt's 2e-6 + 1e-7 ||x||. normalize: rsqrt's 2e-6 + 1e-7 r times |x| plus one ulp, i.e. about
2e-6 ||x|| on a unit vector (2e-5 at ||x|| = 10): fine for O(1)..O(100) norms; rescale larger inputs first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .dispatch import UnsupportedOpError, implements_function, make_public
from .functional import add, mul, rsqrt, sqrt, square, sub, sum_
from .ops_piecewise import abs_
from .shared import SharedTensor


def _sum_sq_rsqrt(x, dim):
    s = sum_(square(x), dim, keepdim=True)
    return s, rsqrt(add(s, 2.0 ** -x.party.encoding.frac_bits))  # rsqrt's range starts at 2^-f: a zero vector fits


class Norm2Fn(torch.autograd.Function):
    """||x||_2 along dims = approx.sqrt(s) (exact 0 for a zero vector); gradient g x rsqrt(s + 2^-f) (x / ||x||, 0 for
    a zero vector), the rsqrt computed in backward only."""

    @staticmethod
    def forward(ctx, x, dim, keepdim):
        with x.party.label("norm"):
            s = sum_(square(x), dim, keepdim=True)
            n = sqrt(s)
        ctx.save_for_backward(x)
        ctx.s, ctx.dim, ctx.keepdim = s, dim, keepdim
        return n if keepdim else _squeeze(n, dim)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if not ctx.keepdim:
            g = _unsqueeze(g, ctx.dim)
        with x.party.label("norm_backward"):
            r = rsqrt(add(ctx.s, 2.0 ** -x.party.encoding.frac_bits))
            return mul(mul(g, r), x), None, None


class NormalizeFn(torch.autograd.Function):
    """x / ||x||_2 along dim = x rsqrt(s + 2^-f); gradient r (g - y sum(g y))."""

    @staticmethod
    def forward(ctx, x, dim):
        with x.party.label("normalize"):
            _, r = _sum_sq_rsqrt(x, [dim])
            y = mul(x, r)
        ctx.r, ctx.dim = r, dim
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        with y.party.label("normalize_backward"):
            gy = sum_(mul(g, y), [ctx.dim], keepdim=True)
            return mul(ctx.r, sub(g, mul(y, gy))), None


def _dims(x, dim) -> list[int]:
    if dim is None:
        return list(range(x.dim()))
    dims = [dim] if isinstance(dim, int) else list(dim)
    return sorted(d % x.dim() for d in dims)


def _squeeze(t, dims):
    for d in sorted(dims, reverse=True):
        t = t.squeeze(d)
    return t


def _unsqueeze(t, dims):
    for d in sorted(dims):
        t = t.unsqueeze(d)
    return t


def vector_norm(x, ord=2, dim=None, keepdim=False):
    """||x||_ord along dim (all elements when None) for ord 2 or 1; see the module docstring for cost."""
    if not isinstance(x, SharedTensor):
        raise TypeError("secure vector_norm takes a SharedTensor")
    if x.public is not None:
        return make_public(torch.linalg.vector_norm(x.public, ord, dim, keepdim), x.party)
    dims = _dims(x, dim)
    if ord in (2, 2.0, "fro", None):
        return Norm2Fn.apply(x, dims, keepdim)
    if ord in (1, 1.0):
        return abs_(x).sum(dims, keepdim=keepdim)
    raise UnsupportedOpError(
        f"norm with p={ord!r} on shares: only p=2 (sum of squares and approx.rsqrt) and p=1 (sum of abs) are "
        "computed; for the max-norm use torch.amax(x.abs(), dim)")


@implements_function(torch.norm, torch.Tensor.norm)
def _norm_function(input, p="fro", dim=None, keepdim=False, out=None, dtype=None):
    return vector_norm(input, p, dim, keepdim)


@implements_function(torch.linalg.vector_norm)
def _vector_norm_function(x, ord=2, dim=None, keepdim=False, *, dtype=None, out=None):
    return vector_norm(x, ord, dim, keepdim)


@implements_function(torch.linalg.norm)
def _linalg_norm_function(A, ord=None, dim=None, keepdim=False, *, out=None, dtype=None):
    if ord is not None and (dim is None and A.dim() == 2 or isinstance(dim, (list, tuple)) and len(dim) == 2):
        raise UnsupportedOpError("matrix norms on shares are not supported; use torch.linalg.vector_norm (p=2 or 1)")
    return vector_norm(A, 2 if ord is None else ord, dim, keepdim)


@implements_function(F.normalize)
def normalize(input, p=2.0, dim=1, eps=1e-12, out=None):
    """F.normalize on shares (p = 2): x rsqrt(sum x^2 + 2^-f), 29 rounds; backward 9 rounds (module docstring)."""
    if out is not None:
        raise UnsupportedOpError("F.normalize(out=...) on shares: use the returned value")
    if p not in (2, 2.0):
        raise UnsupportedOpError(f"F.normalize with p={p!r} on shares: only p=2 is computed (x * rsqrt(sum x^2))")
    if input.public is not None:
        return make_public(F.normalize(input.public, p, dim, eps), input.party)
    return NormalizeFn.apply(input, dim % input.dim())
