"""Replicated arithmetic sharing over Z_2^64: the share type, input sharing, opening, zero-sharing and resharing.

A secret x = x_0 + x_1 + x_2. Party P_i holds Shares(cur=x_i, prev=x_{i-1}); every share is held by two parties, so
any two parties can reconstruct and any single party sees only uniformly random values.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .. import ring
from ..encoding import FixedPointRangeError


class Shares(NamedTuple):
    cur: torch.Tensor   # x_i
    prev: torch.Tensor  # x_{i-1}

    @property
    def shape(self):
        return self.cur.shape

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Shares":
        """Apply a local linear map (view, permute, indexing, sum, ...) to both shares."""
        return Shares(fn(self.cur), fn(self.prev))

    def __add__(self, o: "Shares") -> "Shares":
        return Shares(self.cur + o.cur, self.prev + o.prev)

    def __sub__(self, o: "Shares") -> "Shares":
        return Shares(self.cur - o.cur, self.prev - o.prev)

    def __neg__(self) -> "Shares":
        return Shares(-self.cur, -self.prev)


class Additive(NamedTuple):
    """3-out-of-3 additive shares: P_i holds part = z_i, x = z_0 + z_1 + z_2 (a product before its resharing)."""
    part: torch.Tensor

    @property
    def shape(self):
        return self.part.shape


# ---------------------------------------------------------------------------------------------------------------------
# Correlated randomness (no communication)

def zero_share(shape, *, party) -> torch.Tensor:
    """alpha_i = PRG_{i,i+1} - PRG_{i-1,i}: three additive shares of zero. Cost: 0 rounds, 0 bytes."""
    return party.prg_next.ring(shape, party.device) - party.prg_prev.ring(shape, party.device)


def random_shares(shape, *, party) -> Shares:
    """Replicated shares of a uniform r nobody knows: r_i = PRG_{i,i+1}. Cost: 0 rounds, 0 bytes."""
    return Shares(party.prg_next.ring(shape, party.device), party.prg_prev.ring(shape, party.device))


def public_shares(value: torch.Tensor, *, party) -> Shares:
    """Shares of a public ring value c: x_0 = c, x_1 = x_2 = 0. Cost: 0."""
    return Shares(value * int(party.rank == 0), value * int(party.rank == 1))


def add_public(x: Shares, c: torch.Tensor, *, party) -> Shares:
    """x + c for a public ring value c (added to x_0, which P0 holds as cur and P1 as prev). Cost: 0."""
    if isinstance(c, float) or (isinstance(c, torch.Tensor) and c.dtype != ring.DTYPE):
        raise TypeError(f"add_public takes a ring value (int or torch.int64, already fixed-point encoded), got "
                        f"{c.dtype if isinstance(c, torch.Tensor) else 'float'}; for real numbers use "
                        "protocols.local.add_public")
    return Shares(x.cur + c * int(party.rank == 0), x.prev + c * int(party.rank == 1))


# ---------------------------------------------------------------------------------------------------------------------
# Communication

def reshare(z: torch.Tensor, *, party) -> Shares:
    """3-out-of-3 additive shares z_i -> replicated Shares, re-randomised with a fresh zero-sharing.

    Cost: 1 round; 1 ring element (8 bytes) per element sent per party.
    """
    with party.label("reshare"):
        z = z + zero_share(z.shape, party=party)
        return Shares(z, party.comm.send_next_recv_prev(z))


_STATUS_OK = 0
# Non-zero header status: the owner's input was refused; every party raises the same error type.
_STATUS_ERRORS = {1: FixedPointRangeError, 2: TypeError, 3: ValueError}
MAX_SHARE_DIMS = 8


def _status_of(err: Exception) -> int:
    if isinstance(err, FixedPointRangeError):
        return 1
    return 2 if isinstance(err, TypeError) else 3


def _header_len(tagged: bool) -> int:
    """int64 entries of a share header: status, [tag], ndim, MAX_SHARE_DIMS dims (10, or 11 with a tag)."""
    return 2 + int(tagged) + MAX_SHARE_DIMS


def _header(status: int, shape=(), tag: int | None = None) -> torch.Tensor:
    """The owner's share header: [status, ndim, dims..., 0...] (80 bytes) or, with a tag, [status, tag, ndim, dims...,
    0...] (88 bytes)."""
    h = torch.zeros(_header_len(tag is not None), dtype=torch.int64)
    off = 1 if tag is None else 2
    h[0] = status
    if tag is not None:
        h[1] = tag
    h[off] = len(shape)
    h[off + 1:off + 1 + len(shape)] = torch.tensor(list(shape), dtype=torch.int64)
    return h


def _parse_header(h: torch.Tensor, tagged: bool) -> tuple[int, int | None, tuple]:
    """(status, tag or None, shape) from a header built by _header."""
    off = 2 if tagged else 1
    shape = tuple(int(s) for s in h[off + 1:off + 1 + int(h[off])])
    return int(h[0]), (int(h[1]) if tagged else None), shape


def share(x, owner: int, *, party, label: str = "input", data: bool = True) -> Shares:
    """Secret-share the owner's float tensor `x` (other parties pass None). Shapes are public.

    The owner encodes x in fixed point (refusing NaN/inf and out-of-range values, unsupported dtypes and more than 8
    dimensions: every party then raises the same error type, FixedPointRangeError, TypeError or ValueError, instead
    of waiting; data=True, the default, accepts |x| < encoding.max_abs = 2^(62-2f), the range a first layer's
    product can take; data=False only the encoding's hard limit 2^(62-f)), draws x_o from PRG_{o,o+1} and x_{o-1} from PRG_{o-1,o}, and sends x_{o+1} = x - x_o - x_{o-1} to
    both other parties. Cost: 2 rounds (header with status and shape, then shares); owner sends 2 x 80 header bytes
    and 2 ring elements per element, the others send nothing. A refused input costs the header round only.
    """
    return _share(x, owner, None, party=party, label=label, data=data)[0]


def share_tagged(x, owner: int, prepare, *, party, label: str = "input", data: bool = True) -> tuple[Shares, int]:
    """share() for a caller that sends one more public integer with the shape (the tensor level: the logical dtype).

    The owner first runs `prepare(x) -> (value, tag)`, which may refuse x by raising (every party then raises the same
    error type, as for share's own checks); `value` is shared as by share(), and every party returns the owner's tag.
    Cost: as share(), with an 88-byte header: 2 rounds; the owner sends 2 x 88 header bytes and 2 ring elements per
    element, the others send nothing.
    """
    return _share(x, owner, prepare, party=party, label=label, data=data)


def share_ring(x, owner: int, prepare, *, party, label: str = "input") -> Shares:
    """Share ring integers that are not fixed-point encoded (0/1 one-hot rows, bits): the owner runs
    `prepare(x) -> int64 tensor`, which may refuse x by raising (every party then raises the same error type, as in
    share()); the result is shared as it is, so a product with it needs no truncation.
    Cost: as share(): 2 rounds; the owner sends 2 x 80 header bytes and 2 ring elements per element, others nothing.
    """
    return _share(x, owner, None, party=party, label=label, data=True, ring_values=prepare)[0]


def _share(x, owner: int, prepare, *, party, label: str, data: bool,
           ring_values=None) -> tuple[Shares, int | None]:
    """share(), share_tagged() and share_ring(): header round (status, [tag], shape) from the owner, then
    share_encoded. ring_values: share_ring's prepare (the value is taken as ring integers, not encoded)."""
    tagged = prepare is not None
    enc, tag = None, (0 if tagged else None)
    if owner not in (0, 1, 2):
        raise ValueError(f"share: owner must be 0, 1 or 2, got {owner}")
    with party.label(f"share/{label}"):
        if party.rank == owner:
            err = None
            try:
                if x is None:
                    raise ValueError("the owner must pass a tensor")
                if tagged:
                    x, tag = prepare(x)
                if ring_values is not None:
                    x = ring_values(x)
                if not isinstance(x, torch.Tensor):
                    x = torch.as_tensor(x)
                if x.dim() > MAX_SHARE_DIMS:
                    raise ValueError(f"at most {MAX_SHARE_DIMS} dimensions can be shared, got {x.dim()}")
                if ring_values is not None:
                    enc = x.to(device=party.device, dtype=ring.DTYPE)
                else:
                    enc = party.encoding.encode(x, what=label,
                                                limit=party.encoding.max_abs if data else None).to(party.device)
            except Exception as e:  # refuse on all parties rather than leave the others waiting
                err, enc, tag = e, None, (0 if tagged else None)
            h = _header(_STATUS_OK if err is None else _status_of(err), enc.shape if enc is not None else (), tag)
            party.comm.round({party.next: h, party.prev: h})
            if err is not None:
                raise _STATUS_ERRORS[_status_of(err)](f"sharing '{label}' from party {owner}: {err}") from err
        else:
            h = party.comm.round({}, {owner: ((_header_len(tagged),), torch.int64)})[owner]
            status = int(h[0])
            if status != _STATUS_OK:
                kind = _STATUS_ERRORS.get(status, ValueError)
                why = {FixedPointRangeError: "NaN/inf or outside the fixed-point range",
                       TypeError: "of an unsupported type"}.get(kind, "invalid")
                exc = kind(f"party {owner} could not share '{label}': its input is {why} "
                           f"(the error on party {owner} has the details)")
                exc.failed_party = owner  # a consequence of another party's error: report that one first
                raise exc
        _, tag, shape = _parse_header(h, tagged)
        return share_encoded(enc, owner, shape, party=party), tag


def share_encoded(enc, owner: int, shape, *, party) -> Shares:
    """Share the owner's ring tensor `enc` of public `shape` (others pass None). Cost: 1 round, owner sends 2
    elements per element."""
    rank = party.rank
    if rank == owner:
        if tuple(enc.shape) != tuple(shape):
            raise ValueError(f"shape {tuple(enc.shape)} differs from the public shape {tuple(shape)}")
        cur = party.prg_next.ring(shape, party.device)    # x_o: known to P_o and P_{o+1}
        prev = party.prg_prev.ring(shape, party.device)   # x_{o-1}: known to P_{o-1} and P_o
        third = enc - cur - prev                          # x_{o+1}: held by P_{o+1} and P_{o-1}
        party.comm.round({party.next: third, party.prev: third})
        return Shares(cur, prev)
    got = party.comm.round({}, {owner: (shape, ring.DTYPE)})[owner].to(party.device)
    if rank == (owner + 1) % 3:  # holds x_{o+1} (cur) and x_o (prev, from PRG with the owner)
        return Shares(got, party.prg_prev.ring(shape, party.device))
    return Shares(party.prg_next.ring(shape, party.device), got)  # P_{o-1}: x_{o-1} (cur), x_{o+1} (prev)


def reveal(x: Shares | Additive, to: int | None = None, *, party, label: str = "reveal") -> torch.Tensor | None:
    """Open the ring value to all parties (to=None) or to party `to` only; recorded in the party's audit.

    Cost: 1 round. To all: 1 ring element per element sent by each party. To one party: 1 element per element, sent
    by P_{to-1} only. Returns the ring tensor (None on parties that receive nothing).
    Additive shares (a product not yet reshared) open without their resharing, in 1 round: to one party, each other
    party sends its part masked by a value of their pair PRG (8 bytes per element each); to all, every party sends
    its part plus a fresh zero-sharing to both peers (16 bytes per element each). A receiver learns the sum only.
    With the overflow guard on and samples pending, guard.check runs first (and raises FixedPointOverflowError
    instead of opening a value computed from an overflowed product): see protocols/guard.py for its cost.
    """
    if to is not None and to not in (0, 1, 2):
        raise ValueError(f"reveal: to must be None (all parties) or 0, 1, 2, got {to}")
    to_name = "all" if to is None else f"party {to}"
    party.audit.allow(label, x.shape, to_name)  # a refused opening moves nothing, not even the guard's check
    if getattr(party, "guard", None) is not None and party.guard.pending:
        from .guard import check  # nothing is opened while a product may have overflowed unnoticed
        check(party=party)
    with party.label(f"reveal/{label}"):
        party.audit.record(label, x.shape, to_name)
        return _open(x, to, party=party)


def reveal_labelled(x: Shares, labels: list, *, party) -> torch.Tensor:
    """Open a 1-D x of len(labels) values to all parties, recording one audit entry per value (label, shape ()).
    Used by the overflow guard (protocols/guard.py) for its per-op counts. Cost: 1 round, 8 bytes per element."""
    if tuple(x.shape) != (len(labels),):
        raise ValueError(f"reveal_labelled: {len(labels)} labels for shape {tuple(x.shape)}")
    with party.label("reveal/guard"):
        for lab in labels:
            party.audit.record(lab, (), "all")
        return _open(x, None, party=party)


def _open(x: Shares | Additive, to: int | None, *, party) -> torch.Tensor | None:
    if isinstance(x, Additive):
        return _open_additive(x.part, to, party=party)
    if to is None:
        missing = party.comm.round({party.next: x.prev}, {party.prev: (x.shape, ring.DTYPE)})[party.prev]
        return x.cur + x.prev + missing.to(x.cur.device)
    if party.rank == to:
        missing = party.comm.round({}, {party.prev: (x.shape, ring.DTYPE)})[party.prev]
        return x.cur + x.prev + missing.to(x.cur.device)
    party.comm.round({to: x.prev} if party.next == to else {})
    return None


def _open_additive(z: torch.Tensor, to: int | None, *, party) -> torch.Tensor | None:
    comm, spec = party.comm, (z.shape, ring.DTYPE)
    if to is None:
        m = z + zero_share(z.shape, party=party)
        got = comm.round({comm.next: m, comm.prev: m}, {comm.next: spec, comm.prev: spec})
        return m + got[comm.next].to(z.device) + got[comm.prev].to(z.device)
    if party.rank == to:
        got = comm.round({}, {comm.next: spec, comm.prev: spec})
        return z + got[comm.next].to(z.device) + got[comm.prev].to(z.device)
    if party.rank == (to + 1) % 3:  # P_{to+1} and P_{to+2} mask with their pair's stream
        comm.round({to: z + party.prg_next.ring(z.shape, z.device)})
    else:
        comm.round({to: z - party.prg_prev.ring(z.shape, z.device)})
    return None


def reveal_float(x: Shares, to: int | None = None, *, party, label: str = "reveal", dtype=torch.float64):
    v = reveal(x, to, party=party, label=label)
    return None if v is None else party.encoding.decode(v, dtype)


def check_same_shape(x: Shares, *, party, what: str = "shares") -> None:
    """All three parties agree on x's shape (guards against parties calling a protocol on different shapes).
    Cost: 1 round, 80 bytes to each peer."""
    h = _header(0, x.shape)
    with party.label("check_shape"):
        got = party.comm.round({party.next: h, party.prev: h},
                               {party.next: (h.shape, h.dtype), party.prev: (h.shape, h.dtype)})
    for p, g in got.items():
        if not torch.equal(g, h):
            other = _parse_header(g, tagged=False)[2]
            raise ValueError(f"{what}: party {party.rank} has shape {tuple(x.shape)}, party {p} has {other}")
