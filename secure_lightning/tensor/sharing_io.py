"""Sharing and opening a SharedTensor, with their gradient policy.

  share_tensor   the result is a leaf; gradients never flow back into the owner's plaintext. With
                 requires_grad=True the leaf accumulates a *shared* .grad.
  reveal_tensor  to all parties (to=None): the plaintext result keeps the graph (RevealFn); its gradient, a public
                 plaintext tensor known to all, re-enters as a public sharing. To one party: no gradient.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..encoding import FixedPointRangeError
from ..protocols import sharing as S
from .dispatch import make_public
from .shared import SharedTensor

_HEADER_LEN = 11  # status, dtype code, ndim, up to 8 dims
_DTYPE_CODES = {torch.float32: 0, torch.int64: 1, torch.bool: 2}
_CODE_DTYPES = {v: k for k, v in _DTYPE_CODES.items()}
_STATUS_ERRORS = {1: FixedPointRangeError, 2: TypeError, 3: ValueError}


def _logical_dtype(x: torch.Tensor) -> torch.dtype:
    if x.dtype == torch.bool:
        return torch.bool
    if x.is_floating_point():
        return torch.float32
    if x.is_complex():
        raise TypeError("complex tensors cannot be shared")
    return torch.int64


def share_tensor(x, owner: int, party, requires_grad: bool = False, label: str = "input",
                 data: bool = True) -> SharedTensor:
    """Secret-share the owner's plaintext tensor (other parties pass None): float -> float32 SharedTensor, integer
    -> int64 SharedTensor (integer values, still fixed-point encoded), bool -> bool SharedTensor (0/1).

    Data (data=True, the default) must satisfy |x| < party.encoding.max_abs = 2^(62-2f), the range in which a first
    layer's product stays exact; other values (data=False: model parameters) only the encoding's hard limit 2^(62-f).

    Shape and logical dtype are public and travel in a header from the owner; a refused input (NaN/inf, out of the
    fixed-point range, too many dimensions) raises the same error type on every party.
    Cost: 2 rounds; the owner sends 2 x 88 header bytes and 2 ring elements (16 bytes) per element, others nothing.
    """
    if owner not in (0, 1, 2):
        raise ValueError(f"share_tensor: owner must be 0, 1 or 2, got {owner}")
    enc, err = None, None
    with party.label(f"share/{label}"):
        if party.rank == owner:
            try:
                if x is None:
                    raise ValueError("the owner must pass a tensor")
                if isinstance(x, SharedTensor):
                    raise TypeError("the value is already a SharedTensor")
                x = torch.as_tensor(x)
                if x.dim() > _HEADER_LEN - 3:
                    raise ValueError(f"at most {_HEADER_LEN - 3} dimensions can be shared, got {x.dim()}")
                dtype = _logical_dtype(x)
                enc = party.encoding.encode(x.detach().to(torch.float64), what=label,
                                             limit=party.encoding.max_abs if data else None).to(party.device)
            except Exception as e:  # refuse on all parties rather than leave the others waiting
                err = e
            status = 0 if err is None else (1 if isinstance(err, FixedPointRangeError) else
                                             2 if isinstance(err, TypeError) else 3)
            h = torch.zeros(_HEADER_LEN, dtype=torch.int64)
            h[0] = status
            if err is None:
                h[1], h[2] = _DTYPE_CODES[dtype], enc.dim()
                h[3:3 + enc.dim()] = torch.tensor(list(enc.shape), dtype=torch.int64)
            party.comm.round({party.next: h, party.prev: h})
            if err is not None:
                raise _STATUS_ERRORS[status](f"sharing '{label}' from party {owner}: {err}") from err
        else:
            h = party.comm.round({}, {owner: ((_HEADER_LEN,), torch.int64)})[owner]
            status = int(h[0])
            if status:
                raise _STATUS_ERRORS.get(status, ValueError)(f"party {owner} could not share '{label}' (the error on party {owner} has the details)")
        dtype = _CODE_DTYPES[int(h[1])]
        shape = tuple(int(s) for s in h[3:3 + int(h[2])])
        shares = S.share_encoded(enc, owner, shape, party=party)
    return SharedTensor(shares, party, dtype=dtype, requires_grad=requires_grad and dtype == torch.float32)


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
    Cost: 1 round; to all: 8 bytes per element from each party; to one: 8 bytes per element from one party."""
    if not isinstance(t, SharedTensor):
        raise TypeError(f"reveal_tensor takes a SharedTensor, got {type(t).__name__}")
    if t.dtype == torch.float32 and to is None and t.requires_grad and torch.is_grad_enabled():
        return RevealFn.apply(t, label)
    v = S.reveal_float(t.shares, to, party=t.party, label=label)
    if v is None:
        return None
    if t.dtype == torch.int64:
        return torch.round(v).to(torch.int64)
    if t.dtype == torch.bool:
        return v > 0.5
    return v.to(torch.float32)
