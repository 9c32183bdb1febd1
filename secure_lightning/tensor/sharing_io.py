"""Sharing and opening a SharedTensor, with their gradient policy.

  share_tensor   the result is a leaf; gradients never flow back into the owner's plaintext. With
                 requires_grad=True the leaf accumulates a *shared* .grad.
  reveal_tensor  to all parties (to=None): the plaintext result keeps the graph (RevealFn); its gradient, a public
                 plaintext tensor known to all, re-enters as a public sharing. To one party: no gradient.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..protocols import sharing as S
from .dispatch import make_public
from .shared import PendingReshare, SharedTensor

# The tag of the share header (protocols.sharing.share_tagged): the logical dtype, public like the shape.
_DTYPE_CODES = {torch.float32: 0, torch.int64: 1, torch.bool: 2}
_CODE_DTYPES = {v: k for k, v in _DTYPE_CODES.items()}


def _logical_dtype(x: torch.Tensor) -> torch.dtype:
    if x.dtype == torch.bool:
        return torch.bool
    if x.is_floating_point():
        return torch.float32
    if x.is_complex():
        raise TypeError("complex tensors cannot be shared")
    return torch.int64


def _prepare(x) -> tuple[torch.Tensor, int]:
    """The owner's value as float64 (what the encoding takes) and the code of its logical dtype."""
    if isinstance(x, SharedTensor):
        raise TypeError("the value is already a SharedTensor")
    x = torch.as_tensor(x)
    code = _DTYPE_CODES[_logical_dtype(x)]
    return x.detach().to(torch.float64), code


def share_tensor(x, owner: int, party, requires_grad: bool = False, label: str = "input",
                 data: bool = True) -> SharedTensor:
    """Secret-share the owner's plaintext tensor (other parties pass None): float -> float32 SharedTensor, integer
    -> int64 SharedTensor (integer values, still fixed-point encoded), bool -> bool SharedTensor (0/1).

    Data (data=True, the default) must satisfy |x| < party.encoding.max_abs = 2^(62-2f), the range in which a first
    layer's product stays exact; other values (data=False: model parameters) only the encoding's hard limit 2^(62-f).

    An integer result records (owner, the owner's plaintext on the owner only) as `owner_integers`.

    Shape and logical dtype are public and travel in a header from the owner (protocols.sharing.share_tagged); a
    refused input (NaN/inf, out of the fixed-point range, too many dimensions) raises the same error type on every
    party.
    Cost: 2 rounds; the owner sends 2 x 88 header bytes and 2 ring elements (16 bytes) per element, others nothing.
    """
    if owner not in (0, 1, 2):
        raise ValueError(f"share_tensor: owner must be 0, 1 or 2, got {owner}")
    shares, code = S.share_tagged(x, owner, _prepare, party=party, label=label, data=data)
    dtype = _CODE_DTYPES[code]
    out = SharedTensor(shares, party, dtype=dtype, requires_grad=requires_grad and dtype == torch.float32)
    if dtype == torch.int64:  # the owner keeps its own integers (token ids) to share derived data from them
        out.owner_integers = (owner, torch.as_tensor(x).detach().to(torch.int64) if party.rank == owner else None)
    return out


class RevealFn(torch.autograd.Function):
    """Open to all parties; the (public, common) plaintext gradient re-enters as a public sharing."""

    @staticmethod
    def forward(ctx, t, label):
        ctx.party = t.party
        v = S.reveal_float(t.shares, None, party=t.party, label=label)
        return v.to(torch.float32)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        return make_public(g.to(torch.float64), ctx.party), None


def reveal_tensor(t: SharedTensor, to: int | None = None, label: str = "reveal") -> torch.Tensor | None:
    """Open a SharedTensor: to all parties (to=None) or to party `to` (others get None). Every party must call it.
    Recorded in party.audit. Returns float32 (int64 / bool for integer / boolean SharedTensors).
    Cost: 1 round; to all: 8 bytes per element from each party; to one: 8 bytes per element from one party. A
    product not yet reshared (shared.PendingReshare) opens from its additive shares and skips its resharing (8 bytes
    per element from every party): 1 round; to one: 8 bytes per element from each of the two others; to all: 16
    from each."""
    if not isinstance(t, SharedTensor):
        raise TypeError(f"reveal_tensor takes a SharedTensor, got {type(t).__name__}")
    if t.dtype == torch.float32 and to is None and t.requires_grad and torch.is_grad_enabled():
        return RevealFn.apply(t, label)
    pending = t.__dict__.get("_pending")
    additive = pending.open_additive() if isinstance(pending, PendingReshare) else None
    v = S.reveal_float(t.shares if additive is None else additive, to, party=t.party, label=label)
    if v is None:
        return None
    if t.dtype == torch.int64:
        return torch.round(v).to(torch.int64)
    if t.dtype == torch.bool:
        return v > 0.5
    return v.to(torch.float32)
