"""nn.Embedding / F.embedding on a shared table (V, D), by who knows the ids:

  public ids (a plain integer tensor:       the rows of the table's shares: free. Backward: index_add of the
    positions, torch.arange(L))             gradient into a zero table: free
  ids shared by their owner (share_tensor   the owner, who still holds its ids (SharedTensor.owner_integers), shares
    of integers: a batch's token ids)       the one-hot rows as ring 0/1 values (protocols.sharing.share_ring); the
                                            lookup one_hot @ table is then a ring product with no truncation.
                                            Forward: 3 rounds; the owner sends 2 x 80 header bytes + 16 n V bytes,
                                            and every party 8 n D bytes (the product's reshare). Backward:
                                            one_hot^T @ g, 1 round, 8 V D bytes per party.
  other secret ids (computed, or sliced     one-hot by compare.eq against the public 0..V-1 (on n V elements: 8
    from shared ids)                        rounds and ltz bytes of 2 n V elements), then as above: 9 rounds forward

(n = number of ids.) Error: none beyond the table's own values (a row is selected exactly: products with 0/1 ring
values need no truncation); scale_grad_by_freq (public ids only) adds one truncation, <= 1 ulp, to the gradient.
padding_idx: that row's gradient is 0, as in torch. max_norm (renormalising rows in place) and sparse gradients are
not supported on shares.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..protocols import arithmetic as A
from ..protocols import compare
from ..protocols import local as L
from ..protocols.sharing import Shares, share_ring
from .dispatch import UnsupportedOpError, as_shared, encode, implements_function, party_of, public_value, shares_of, wrap
from .shared import SharedTensor


def _check_ids(ids: torch.Tensor, num: int) -> None:
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num):
        raise IndexError(f"embedding: index out of range in self (ids must be in [0, {num}))")


def _zero_row(s: Shares, row: int | None) -> Shares:
    if row is None:
        return s
    keep = torch.ones(s.shape[0], 1, dtype=torch.int64, device=s.cur.device)
    keep[row] = 0
    return L.mul_int(s, keep)


class PublicIdsEmbeddingFn(torch.autograd.Function):
    """table[ids] for public ids; backward: index_add of the gradient rows (local). Cost: 0 (scale_grad_by_freq:
    one truncation of the V x D gradient)."""

    @staticmethod
    def forward(ctx, weight, ids, padding_idx, scale_grad_by_freq):
        ctx.ids, ctx.num, ctx.padding_idx, ctx.by_freq, ctx.party = ids, weight.shape[0], padding_idx, \
            scale_grad_by_freq, weight.party
        return wrap(weight.shares.map(lambda t: t[ids]), weight.party)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party, ids = ctx.party, ctx.ids.reshape(-1)
        gs = shares_of(g, party)
        D = gs.shape[-1]
        gw = gs.map(lambda t: torch.zeros(ctx.num, D, dtype=t.dtype, device=t.device).index_add_(0, ids,
                                                                                                t.reshape(-1, D)))
        gw = _zero_row(gw, ctx.padding_idx)
        if ctx.by_freq:
            count = torch.bincount(ids, minlength=ctx.num).clamp(min=1).to(torch.float64)
            gw = wrap(gw, party) * (1.0 / count).reshape(-1, 1)
            return gw, None, None, None
        return wrap(gw, party), None, None, None


class OneHotEmbeddingFn(torch.autograd.Function):
    """one_hot @ table with one_hot (n, V) ring 0/1 shares: no truncation (1 round, 8 n D bytes); backward
    one_hot^T @ g (1 round, 8 V D bytes)."""

    @staticmethod
    def forward(ctx, weight, one_hot, out_shape, padding_idx):
        party = weight.party
        ctx.one_hot, ctx.padding_idx, ctx.party = one_hot, padding_idx, party
        with party.label("embedding"):
            y = A.matmul(one_hot, weight.shares, party=party, fixed=False)
        return wrap(y.map(lambda t: t.reshape(out_shape)), party)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        party = ctx.party
        with party.label("embedding_backward"):
            gs = shares_of(g, party)
            gs = gs.map(lambda t: t.reshape(-1, t.shape[-1]))
            gw = A.matmul(ctx.one_hot.map(lambda t: t.t()), gs, party=party, fixed=False)
        return wrap(_zero_row(gw, ctx.padding_idx), party), None, None, None


def one_hot_rows(ids: SharedTensor, num: int) -> Shares:
    """Shares of the (n, num) one-hot rows of secret ids, as ring 0/1 values.

    The owner's own ids (ids.owner_integers set: a tensor made by share_tensor): the owner shares them
    (share_ring: 2 rounds, it sends 2 x 80 + 16 n num bytes; ids out of range raise ValueError on every party).
    Else compare.eq of every id with 0..num-1 (8 rounds; ltz bytes of 2 n num elements)."""
    party = ids.party
    n = ids.numel()
    owned = ids.owner_integers
    if owned is not None:
        owner, value = owned

        def rows(v):
            _check_ids(v, num)
            return F.one_hot(v.reshape(-1), num)
        return share_ring(value, owner, rows, party=party, label="embedding_ids")
    t = ids.shares.map(lambda s: s.reshape(n, 1).expand(n, num))
    classes = torch.arange(num, dtype=torch.float64, device=party.device).expand(n, num)
    with party.label("embedding_onehot"):
        return compare.eq(t, classes, party=party)


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
              sparse=False):
    """F.embedding with a shared table and public or secret ids (cost and error: the module docstring)."""
    party = party_of(input, weight)
    if max_norm is not None:
        raise UnsupportedOpError("embedding(max_norm=...) renormalises rows in place, which needs norms and "
                                 "comparisons of secret rows; it is not supported on shares (use max_norm=None)")
    if sparse:
        raise UnsupportedOpError("embedding(sparse=True): sparse gradients are not supported on shares")
    if isinstance(input, SharedTensor) and input.dtype not in (torch.int64,):
        raise TypeError(f"embedding: the indices must be integers, got a SharedTensor of {input.dtype}")
    if not isinstance(input, SharedTensor) and (input.is_floating_point() or input.is_complex()):
        raise TypeError(f"embedding: the indices must be integers, got {input.dtype}")
    num, dim = weight.shape
    if padding_idx is not None:
        if not -num <= padding_idx < num:
            raise AssertionError("Padding_idx must be within num_embeddings")
        padding_idx = padding_idx % num
    if not isinstance(input, SharedTensor):
        ids = input.to(device=party.device, dtype=torch.int64)
        _check_ids(ids, num)
        if not isinstance(weight, SharedTensor):
            raise TypeError("embedding: neither argument is shared")
        return PublicIdsEmbeddingFn.apply(weight, ids, padding_idx, bool(scale_grad_by_freq))
    if scale_grad_by_freq:
        raise UnsupportedOpError("embedding(scale_grad_by_freq=True) with secret ids would need secret counts; "
                                 "it is supported for public ids only")
    out_shape = (*input.shape, dim)
    one_hot = one_hot_rows(input, num)
    if not isinstance(weight, SharedTensor) or weight.public is not None:  # a public table: local
        table = encode(public_value(weight, party.device), party)
        y = A.matmul_public(one_hot, table, party=party, fixed=False)
        return wrap(y.map(lambda t: t.reshape(out_shape)), party)
    return OneHotEmbeddingFn.apply(as_shared(weight, party), one_hot, out_shape, padding_idx)


implements_function(F.embedding)(embedding)


@implements_function(torch.embedding)
def _torch_embedding(weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return embedding(indices, weight, None if padding_idx is None or padding_idx < 0 else padding_idx,
                     scale_grad_by_freq=scale_grad_by_freq, sparse=sparse)
