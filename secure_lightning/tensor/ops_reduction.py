"""Reductions: sums are local on shares (cost 0); a mean is the sum times the public 1/n (3 rounds, 16 bytes per
output element per party; error <= 1 ulp + the sum's error / n). Comparison-based reductions (max, argmax) live in
ops_nonlinear.py."""
from __future__ import annotations

from ..protocols import local as L
from .dispatch import aten, implements, make_public, wrap
from .ops_shape import apply_local
from .shared import SharedTensor


def sum_(x, dim=None, keepdim=False):
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return apply_local(lambda t: t.sum(), (x,), {}) if not keepdim else \
            apply_local(lambda t: t.sum(dim=tuple(range(t.dim())), keepdim=True), (x,), {})
    return apply_local(lambda t: t.sum(dim=dim, keepdim=keepdim), (x,), {})


def mean(x, dim=None, keepdim=False):
    """Mean over dim: protocols.local.mean (sum, then one truncation; exact shift when n is a power of two)."""
    if dim is not None and isinstance(dim, (list, tuple)) and len(dim) == 0:
        dim = None
    if x.public is not None:
        return make_public(x.public.mean(dim=dim, keepdim=keepdim) if dim is not None else
                           (x.public.mean().reshape((1,) * x.dim()) if keepdim else x.public.mean()), x.party)
    if not isinstance(x, SharedTensor):
        raise TypeError("mean of a non-shared value")
    return wrap(L.mean(x.shares, dim, keepdim, party=x.party), x.party)


@implements(aten.sum.default)
def sum_default(self, dtype=None):
    return sum_(self)


@implements(aten.sum.dim_IntList)
def sum_dim(self, dim, keepdim=False, dtype=None):
    return sum_(self, dim, keepdim)


@implements(aten.mean.default)
def mean_default(self, dtype=None):
    return mean(self)


@implements(aten.mean.dim)
def mean_dim(self, dim, keepdim=False, dtype=None):
    return mean(self, dim, keepdim)


@implements(aten.sum_to_size.default)
def sum_to_size(self, size):
    size = tuple(size)
    lead = self.dim() - len(size)
    dims = list(range(lead)) + [lead + i for i, s in enumerate(size) if s == 1 and self.shape[lead + i] != 1]
    out = sum_(self, dims, keepdim=True) if dims else self
    return apply_local(lambda t: t.reshape(size), (out,), {})
