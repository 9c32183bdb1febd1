"""Point-to-point transport between the three parties, with exact cost accounting.

Every protocol step is one call of `Communicator.round(sends, recv_specs)`, made by all three parties at the same point
of the protocol (a party with nothing to send or receive passes empty dicts). That makes `rounds` the latency of a
protocol in sequential message exchanges, the same number on every party. Bytes are counted from what is actually
sent (packed bits as uint8 count one byte per 8 bits).

Costs are grouped by a label path (`with comm.label("relu"): ...` nests as "relu/a2b"), and `with comm.cost() as c:`
reports the cost of the code inside it.

For privacy tests, `comm.record_received = []` makes every later `round` append `(label, peer, tensor)` for each tensor
this party receives (a copy, on the transport device); `None` (the default) records nothing.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .transport import DistTransport, SocketMesh, TransportError


class PartyTimeoutError(RuntimeError):
    """A peer did not answer within the configured timeout: it died, hung, or the parties diverged."""


@dataclass
class Cost:
    """Communication of one party: bytes sent, messages sent, rounds (sequential exchange steps)."""
    bytes: int = 0
    messages: int = 0
    rounds: int = 0

    def __add__(self, o: "Cost") -> "Cost":
        return Cost(self.bytes + o.bytes, self.messages + o.messages, self.rounds + o.rounds)

    def __sub__(self, o: "Cost") -> "Cost":
        return Cost(self.bytes - o.bytes, self.messages - o.messages, self.rounds - o.rounds)


@dataclass
class CommStats:
    by_label: dict = field(default_factory=lambda: defaultdict(Cost))

    def total(self) -> Cost:
        t = Cost()
        for c in self.by_label.values():
            t = t + c
        return t

    def grouped(self, depth: int = 1) -> dict:
        """Costs summed by the first `depth` components of the label path."""
        out = defaultdict(Cost)
        for k, c in self.by_label.items():
            out["/".join(k.split("/")[:depth])] += c
        return dict(out)

    def reset(self):
        self.by_label.clear()

    def snapshot(self) -> dict:
        return {k: Cost(c.bytes, c.messages, c.rounds) for k, c in self.by_label.items()}


class CostMeter:
    """Result of `Communicator.cost()`: the cost of the code inside the `with` block (filled in on exit)."""

    def __init__(self):
        self.total = Cost()
        self.by_label: dict = {}

    @property
    def bytes(self):
        return self.total.bytes

    @property
    def rounds(self):
        return self.total.rounds

    @property
    def messages(self):
        return self.total.messages

    def __repr__(self):
        return f"CostMeter(bytes={self.bytes}, messages={self.messages}, rounds={self.rounds})"


class Communicator:
    """Messages between party `rank` and its two peers.

    `transport` moves the bytes: a `SocketMesh` (direct TCP connections, what `init_party` opens for CPU parties) or
    a `DistTransport` (isend/irecv on the torch.distributed `group`, the default here and the path for NCCL).
    Tensors travel on `transport_device` (CPU, or the party's GPU for NCCL); results come back on the transport
    device. Either way a round sends exactly the tensors' bytes: the transport changes no byte or round count.
    """

    world_size = 3

    def __init__(self, rank: int, timeout: float = 120.0, group=None, transport_device: str | torch.device = "cpu",
                 transport: SocketMesh | DistTransport | None = None):
        if not 0 <= rank < 3:
            raise ValueError(f"rank must be 0, 1 or 2, got {rank}")
        self.rank = rank
        self.timeout = float(timeout)
        self.group = group
        self.transport = transport if transport is not None else DistTransport(group)
        self.transport_device = torch.device(transport_device)
        self.stats = CommStats()
        self._labels: list[str] = []
        self.record_received: list | None = None  # a list: round() appends (label, peer, received tensor copy)
        self.settle_pending: Callable[[], object] | None = None  # run when a cost() block ends normally

    @property
    def next(self) -> int:
        return (self.rank + 1) % 3

    @property
    def prev(self) -> int:
        return (self.rank - 1) % 3

    # ---- labels and costs -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def label(self, name: str):
        self._labels.append(name)
        try:
            yield
        finally:
            self._labels.pop()

    @contextlib.contextmanager
    def at_labels(self, labels: list):
        """Run the block under the label path `labels` (where a deferred step was issued), then restore."""
        saved, self._labels = self._labels, list(labels)
        try:
            yield
        finally:
            self._labels = saved

    @property
    def current_label(self) -> str:
        return "/".join(self._labels) or "unlabelled"

    @contextlib.contextmanager
    def cost(self):
        """`with comm.cost() as c:` c holds the bytes, rounds and messages of the block (by label on c.by_label). A
        step deferred inside the block (a product's resharing, tensor/shared.py PendingReshare) runs at its normal
        end, so the block's cost includes it; one deferred before the block runs first, outside the count."""
        meter = CostMeter()
        if self.settle_pending is not None:
            self.settle_pending()
        before = self.stats.snapshot()
        try:
            yield meter
            if self.settle_pending is not None:
                self.settle_pending()
        finally:
            after = self.stats.snapshot()
            diff = {}
            for k, c in after.items():
                d = c - before.get(k, Cost())
                if d.bytes or d.messages or d.rounds:
                    diff[k] = d
            meter.by_label = diff
            for d in diff.values():
                meter.total = meter.total + d

    # ---- transport --------------------------------------------------------------------------------------------
    def round(self, sends: dict | None = None, recv_specs: dict | None = None) -> dict:
        """One communication round: send `sends[peer]` tensors and receive `recv_specs[peer] = (shape, dtype)`.

        All three parties must call it at the same protocol step. Returns {peer: received tensor}.
        """
        entry = self.stats.by_label[self.current_label]
        entry.rounds += 1
        out, bufs, out_device = {}, {}, None
        tdev = self.transport_device
        if sends:
            for peer, t in sends.items():
                self._check_peer(peer)
                out_device = out_device or t.device
                buf = t.detach().to(tdev).contiguous()
                entry.bytes += buf.numel() * buf.element_size()
                entry.messages += 1
                bufs[peer] = buf
        if recv_specs:
            for peer, (shape, dtype) in recv_specs.items():
                self._check_peer(peer)
                out[peer] = torch.empty(tuple(shape), dtype=dtype, device=tdev)
        try:
            if isinstance(self.transport, SocketMesh):
                self.transport.exchange({p: _bytes_of(b) for p, b in bufs.items()},
                                        {p: _bytes_of(b) for p, b in out.items()}, self.timeout)
            else:
                self.transport.exchange_tensors(bufs, out, self.timeout)
        except TransportError as e:
            raise PartyTimeoutError(
                f"party {self.rank}: {e.kind} with party {e.peer} failed during '{self.current_label}' "
                f"(timeout {self.timeout:g}s): {e}") from e
        if self.record_received is not None:
            for peer, buf in out.items():
                self.record_received.append((self.current_label, peer, buf.clone()))
        return out

    def close(self):
        """Close the socket connections (the torch.distributed group is the caller's)."""
        if isinstance(self.transport, SocketMesh):
            self.transport.close()

    def send_next_recv_prev(self, t: torch.Tensor) -> torch.Tensor:
        """The resharing pattern: send to P_{i+1}, receive the same shape from P_{i-1}. 1 round, t.numel() elems."""
        got = self.round({self.next: t}, {self.prev: (t.shape, t.dtype)})[self.prev]
        return got.to(t.device)

    def _check_peer(self, peer: int):
        if peer == self.rank or not 0 <= peer < 3:
            raise ValueError(f"party {self.rank} cannot exchange with {peer}")


def _bytes_of(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, as a writable memoryview sharing its storage."""
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())
