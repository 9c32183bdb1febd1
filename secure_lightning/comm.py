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
import datetime
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


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
    """Messages between party `rank` and its two peers over a torch.distributed process group.

    Tensors travel on `transport_device` (CPU for gloo, the party's GPU for NCCL); results come back on the device the
    caller's tensors live on.
    """

    world_size = 3

    def __init__(self, rank: int, timeout: float = 120.0, group=None, transport_device: str | torch.device = "cpu"):
        if not 0 <= rank < 3:
            raise ValueError(f"rank must be 0, 1 or 2, got {rank}")
        self.rank = rank
        self.timeout = float(timeout)
        self.group = group
        self.transport_device = torch.device(transport_device)
        self.stats = CommStats()
        self._labels: list[str] = []
        self.record_received: list | None = None  # a list: round() appends (label, peer, received tensor copy)

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

    @property
    def current_label(self) -> str:
        return "/".join(self._labels) or "unlabelled"

    @contextlib.contextmanager
    def cost(self):
        meter = CostMeter()
        before = self.stats.snapshot()
        try:
            yield meter
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
        sends = sends or {}
        recv_specs = recv_specs or {}
        entry = self.stats.by_label[self.current_label]
        entry.rounds += 1
        works, out, out_device = [], {}, None
        for peer, t in sends.items():
            self._check_peer(peer)
            out_device = out_device or t.device
            buf = t.detach().to(self.transport_device).contiguous()
            entry.bytes += buf.numel() * buf.element_size()
            entry.messages += 1
            works.append(("send", peer, dist.isend(buf, dst=peer, group=self.group)))
        for peer, (shape, dtype) in recv_specs.items():
            self._check_peer(peer)
            buf = torch.empty(tuple(shape), dtype=dtype, device=self.transport_device)
            out[peer] = buf
            works.append(("recv", peer, dist.irecv(buf, src=peer, group=self.group)))
        tmo = datetime.timedelta(seconds=self.timeout)
        for kind, peer, w in works:
            try:
                ok = w.wait(tmo)
            except Exception as e:  # gloo raises on timeout or on a closed connection
                raise PartyTimeoutError(
                    f"party {self.rank}: {kind} with party {peer} failed during '{self.current_label}' "
                    f"(timeout {self.timeout:g}s): {e}") from e
            if ok is False:
                raise PartyTimeoutError(
                    f"party {self.rank}: party {peer} did not answer within {self.timeout:g}s "
                    f"during '{self.current_label}'")
        if self.record_received is not None:
            for peer, buf in out.items():
                self.record_received.append((self.current_label, peer, buf.clone()))
        return out

    def send_next_recv_prev(self, t: torch.Tensor) -> torch.Tensor:
        """The resharing pattern: send to P_{i+1}, receive the same shape from P_{i-1}. 1 round, t.numel() elems."""
        got = self.round({self.next: t}, {self.prev: (t.shape, t.dtype)})[self.prev]
        return got.to(t.device)

    def _check_peer(self, peer: int):
        if peer == self.rank or not 0 <= peer < 3:
            raise ValueError(f"party {self.rank} cannot exchange with {peer}")
