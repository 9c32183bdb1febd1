"""Local operations on replicated shares: everything that needs no message.

A map L that is linear over Z_2^64 and acts the same way on every share (a view, a permutation of elements, a sum,
zero padding, multiplication by a public integer) satisfies L(x) = L(x_0) + L(x_1) + L(x_2). Applying it to both
shares a party holds, (x_i, x_{i-1}) -> (L(x_i), L(x_{i-1})), therefore gives replicated shares of L(x).

Cost: 0 rounds, 0 bytes for every function here except `mean` (its 1/n is a fixed-point product, so it truncates).
Error: none: the result is the exact ring value of L applied to the encoded input (sums wrap modulo 2^64, so keep
|sum| below the fixed-point range, |x| < 2^(62 - f) as a real number). Adding a public real adds its encoding
error (<= 0.5 ulp, ulp = 2^-f).

Shape changes follow torch exactly (same argument conventions: `view(x, 2, 3)` or `view(x, (2, 3))`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .. import ring
from . import guard
from .arithmetic import truncate_additive
from .sharing import Shares
from .sharing import add_public as add_public_ring

MEAN_MAX_EXTRA_BITS = 8


def _sizes(args) -> tuple:
    """Accept both f(x, 2, 3) and f(x, (2, 3)) like torch."""
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        return tuple(args[0])
    return tuple(args)


# ---------------------------------------------------------------------------------------------------------------------
# Linear combinations (Cost: 0)

def neg(x: Shares) -> Shares:
    """-x. Cost: 0."""
    return -x


def add(x: Shares, y: Shares) -> Shares:
    """x + y with broadcasting. Cost: 0."""
    return x + y


def sub(x: Shares, y: Shares) -> Shares:
    """x - y with broadcasting. Cost: 0."""
    return x - y


def _encode_public(value, *, party) -> torch.Tensor:
    """A public real (number or float tensor) in fixed point; an int64 tensor is taken as already encoded."""
    if isinstance(value, torch.Tensor) and value.dtype == ring.DTYPE:
        return value.to(party.device)
    return party.encoding.encode(value, what="public constant").to(party.device)


def add_public(x: Shares, value, *, party) -> Shares:
    """x + c for a public real c (a number or float tensor, broadcast), fixed-point encoded here; an int64 tensor is
    taken as an already encoded ring value. Cost: 0. Error: the encoding of c, <= 0.5 ulp."""
    return add_public_ring(x, _encode_public(value, party=party), party=party)


def sub_public(x: Shares, value, *, party) -> Shares:
    """x - c for a public real c (see add_public). Cost: 0."""
    return add_public_ring(x, -_encode_public(value, party=party), party=party)


def rsub_public(value, x: Shares, *, party) -> Shares:
    """c - x for a public real c (see add_public). Cost: 0."""
    return add_public_ring(-x, _encode_public(value, party=party), party=party)


def mul_int(x: Shares, k) -> Shares:
    """x * k for a public integer k (a Python int or an int64 tensor, broadcast); exact, no truncation, so the
    result keeps x's fixed-point scale. For real-valued public factors use arithmetic.mul_public_real (it truncates).
    Cost: 0."""
    if isinstance(k, bool) or not isinstance(k, (int, torch.Tensor)) or \
            (isinstance(k, torch.Tensor) and k.dtype != ring.DTYPE):
        got = k.dtype if isinstance(k, torch.Tensor) else type(k).__name__
        raise TypeError(f"mul_int takes a public integer (int or torch.int64 tensor), got {got}; "
                        "for a real factor use arithmetic.mul_public_real (one truncation)")
    return Shares(x.cur * k, x.prev * k)


# ---------------------------------------------------------------------------------------------------------------------
# Reductions

def _reduced_dims(shape, dim) -> tuple:
    nd = len(shape)
    if dim is None or (isinstance(dim, Sequence) and len(dim) == 0):  # torch: () reduces everything too
        return tuple(range(nd))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(sorted({d % nd if nd else d for d in dims}))


def sum(x: Shares, dim=None, keepdim: bool = False) -> Shares:  # noqa: A001  (torch's name)
    """Sum over `dim` (an int, a tuple, or None for all). Cost: 0. Error: none (ring sum)."""
    def op(t):
        if dim is None:
            s = t.sum()
            return s.reshape((1,) * t.dim()) if keepdim else s
        return t.sum(dim=dim, keepdim=keepdim)
    return x.map(op)


def mean(x: Shares, dim=None, keepdim: bool = False, *, party, extra_bits: int | None = None) -> Shares:
    """Mean over `dim`: the local sum times the public 1/n, one truncation (not free).

    n a power of two (1, 2, 4, ...): the sum is truncated by log2(n) bits: the exact floor of sum/n, +1 ulp at most;
    any in-range sum works. n = 1 returns the input (Cost: 0).
    Otherwise: the sum is multiplied by c = round(2^(f+e) / n) and truncated by f + e bits, with e = extra_bits
    (default min(ceil(log2 n), 8)), so that c carries about f + 1 significant bits of 1/n.
    Cost: 3 rounds, 2 ring elements (16 bytes) per output element per party (arithmetic.truncate_additive).
    Error: the truncation's floor (+1 ulp at most), i.e. within (-1, 1] ulp, plus |c / 2^(f+e) - 1/n| * |sum| <= n * 2^-(f+e+1) * |mean| from
    rounding 1/n (<= 0.5 ulp * |mean| while n <= 2^e); inputs' own encoding errors are averaged.
    Range: the product must stay below 2^62: |mean| < 2^(62 - 2f - e) (16,384 for f = 20, e = 8; with n a power of
    two the range is that of the sum, |sum| < 2^(62 - f)).
    """
    dims = _reduced_dims(x.shape, dim)
    n = math.prod(x.shape[d] for d in dims) if dims else 1
    if n == 0:
        raise ValueError("mean over an empty dimension (n = 0) is undefined")
    s = sum(x, dim=dims if dim is not None else None, keepdim=keepdim)
    if n == 1:
        return s
    with party.label("mean"):
        if n & (n - 1) == 0:
            return truncate_additive(s.cur, n.bit_length() - 1, party=party)
        f = party.encoding.frac_bits
        e = min(math.ceil(math.log2(n)), MEAN_MAX_EXTRA_BITS) if extra_bits is None else int(extra_bits)
        if not 0 <= e <= 62 - 2 * f:
            raise ValueError(f"mean: extra_bits={e} leaves no range (need 0 <= e <= {62 - 2 * f})")
        c = round((1 << (f + e)) / n)
        y = truncate_additive(s.cur * c, f + e, party=party)
    if party.guard is not None:  # the product sum * c must stay in range: |mean| < 2^(62-2f-e) (protocols/guard.py)
        guard.watch(y, guard.product_limit(party, e), guard.describe("mean", party), party=party)
    return y


# ---------------------------------------------------------------------------------------------------------------------
# Shape and indexing (Cost: 0, exact)

def view(x: Shares, *shape) -> Shares:
    """torch.Tensor.view on both shares. Cost: 0."""
    shape = _sizes(shape)
    return x.map(lambda t: t.view(shape))


def reshape(x: Shares, *shape) -> Shares:
    """torch.reshape on both shares. Cost: 0."""
    shape = _sizes(shape)
    return x.map(lambda t: t.reshape(shape))


def flatten(x: Shares, start_dim: int = 0, end_dim: int = -1) -> Shares:
    """torch.flatten. Cost: 0."""
    return x.map(lambda t: torch.flatten(t, start_dim, end_dim))


def squeeze(x: Shares, dim=None) -> Shares:
    """torch.squeeze (all size-1 dims, or `dim`). Cost: 0."""
    return x.map(lambda t: t.squeeze() if dim is None else t.squeeze(dim))


def unsqueeze(x: Shares, dim: int) -> Shares:
    """torch.unsqueeze. Cost: 0."""
    return x.map(lambda t: t.unsqueeze(dim))


def permute(x: Shares, *dims) -> Shares:
    """torch.permute. Cost: 0."""
    dims = _sizes(dims)
    return x.map(lambda t: t.permute(dims))


def transpose(x: Shares, dim0: int, dim1: int) -> Shares:
    """torch.transpose. Cost: 0."""
    return x.map(lambda t: t.transpose(dim0, dim1))


def expand(x: Shares, *sizes) -> Shares:
    """torch.Tensor.expand (a broadcast view; clone before writing into it). Cost: 0."""
    sizes = _sizes(sizes)
    return x.map(lambda t: t.expand(sizes))


def flip(x: Shares, dims) -> Shares:
    """torch.flip. Cost: 0."""
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    return x.map(lambda t: t.flip(dims))


def _check_list(xs, op: str) -> list:
    xs = list(xs)
    if not xs:
        raise ValueError(f"{op} needs at least one Shares")
    for s in xs:
        if not isinstance(s, Shares):
            raise TypeError(f"{op} takes Shares only, got {type(s).__name__}; share public tensors first "
                            "(sharing.public_shares)")
    return xs


def cat(xs, dim: int = 0) -> Shares:
    """torch.cat of a sequence of Shares. Cost: 0."""
    xs = _check_list(xs, "cat")
    return Shares(torch.cat([s.cur for s in xs], dim), torch.cat([s.prev for s in xs], dim))


def stack(xs, dim: int = 0) -> Shares:
    """torch.stack of a sequence of Shares. Cost: 0."""
    xs = _check_list(xs, "stack")
    return Shares(torch.stack([s.cur for s in xs], dim), torch.stack([s.prev for s in xs], dim))


def index(x: Shares, idx) -> Shares:
    """x[idx] with any torch index (ints, slices, None, Ellipsis, public index or bool tensors). The index is
    public: every party must use the same one. Cost: 0."""
    return x.map(lambda t: t[idx])


def pad(x: Shares, padding: Sequence[int]) -> Shares:
    """Zero padding, F.pad(x, padding) with mode 'constant' and value 0 (negative pads crop). Padding with a
    non-zero public value c: pad, then add c on the border yourself. Cost: 0."""
    return x.map(lambda t: F.pad(t, tuple(padding), mode="constant", value=0))
