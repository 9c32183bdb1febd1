"""Reductions: sums are local on shares (cost 0); a mean is the sum times the public 1/n (3 rounds, 16 bytes per
output element per party; error <= 1 ulp + the sum's error / n). Comparison-based reductions (max, argmax) live in
ops_nonlinear.py."""
from __future__ import annotations

from .dispatch import aten, implements
from .functional import apply_local, mean, sum_


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
