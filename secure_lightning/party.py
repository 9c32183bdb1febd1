"""One party of the three: its rank, communicator, PRG streams, fixed-point encoding and opening audit.

A `Party` is passed explicitly to every protocol (no globals). `Party.connect(comm)` runs the key agreement:
one round in which each party sends its X25519 public key and a 16-byte contribution to the common key to both peers
(48 bytes to each peer).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import prg as prg_mod
from .comm import Communicator
from .encoding import FixedPoint


@dataclass
class Opening:
    label: str
    shape: tuple
    to: str  # "all" or "party <r>"


@dataclass
class OpeningAudit:
    """Every value this party helped open: label, shape, recipient. Protocol-internal masked values are not openings
    (they are uniformly random to the receiver); only `reveal` records here.

    `gate` (None: every opening is allowed) is called with (label, shape, to) before an opening is recorded, which
    is before any of its bytes are sent: a gate that raises stops the opening. The RSS3PC strategy installs one that
    enforces its reveal policy (secure_lightning.ledger)."""
    records: list = field(default_factory=list)
    gate: Optional[Callable[[str, tuple, str], None]] = None

    def allow(self, label: str, shape, to: str) -> None:
        """Ask the gate (raises when the opening is refused). Cost: 0, nothing is sent."""
        if self.gate is not None:
            self.gate(label, tuple(shape), to)

    def record(self, label: str, shape, to: str):
        self.allow(label, shape, to)
        self.records.append(Opening(label, tuple(shape), to))

    def clear(self):
        self.records.clear()

    def __len__(self):
        return len(self.records)

    def report(self) -> str:
        if not self.records:
            return "no openings"
        return "\n".join(f"{i:4d}  {o.label:40s} {str(o.shape):20s} -> {o.to}" for i, o in enumerate(self.records))


class Party:
    def __init__(self, comm: Communicator, prg_next, prg_prev, prg_common, prg_own,
                 encoding: FixedPoint = FixedPoint(), device="cpu", insecure_prg: bool = False):
        self.comm = comm
        self.rank = comm.rank
        self.prg_next = prg_next      # shared with P_{i+1}
        self.prg_prev = prg_prev      # shared with P_{i-1}
        self.prg_common = prg_common  # shared by all three: public randomness only
        self.prg_own = prg_own        # this party alone
        self.encoding = encoding
        self.device = torch.device(device)
        self.insecure_prg = insecure_prg
        self.audit = OpeningAudit()
        self.guard = None  # the overflow guard (protocols/guard.py): None = off, else its settings + pending samples
        self.unsettled_product = None  # a product waiting for its resharing (tensor/shared.py PendingReshare)

    @property
    def next(self) -> int:
        return self.comm.next

    @property
    def prev(self) -> int:
        return self.comm.prev

    def label(self, name: str):
        return self.comm.label(name)

    def __repr__(self):
        flag = ", INSECURE PRG" if self.insecure_prg else ""
        return f"Party(rank={self.rank}, frac_bits={self.encoding.frac_bits}, device={self.device}{flag})"

    @classmethod
    def connect(cls, comm: Communicator, encoding: FixedPoint = FixedPoint(), device="cpu",
                insecure_fast_prg: bool = False) -> "Party":
        """Agree on pairwise AES keys with both peers (X25519 + HKDF-SHA256). Cost: 1 round, 96 bytes sent."""
        ka = prg_mod.KeyAgreement()
        contribution = os.urandom(16)
        msg = torch.frombuffer(bytearray(ka.public_bytes() + contribution), dtype=torch.uint8)
        with comm.label("setup/key_agreement"):
            got = comm.round({comm.next: msg, comm.prev: msg},
                             {comm.next: (msg.shape, torch.uint8), comm.prev: (msg.shape, torch.uint8)})
        pk = {p: bytes(got[p][:32].tolist()) for p in got}
        contrib = {comm.rank: contribution, **{p: bytes(got[p][32:].tolist()) for p in got}}
        k_next = ka.shared_key(pk[comm.next], prg_mod.pair_info(comm.rank, comm.next))
        k_prev = ka.shared_key(pk[comm.prev], prg_mod.pair_info(comm.rank, comm.prev))
        k_common = prg_mod.derive_key(b"".join(contrib[r] for r in range(3)), b"secure_lightning/prg/common")
        if insecure_fast_prg:
            from .insecure_prg import InsecureTorchPRG as make
        else:
            make = prg_mod.AesCtrPRG
        return cls(comm, make(k_next), make(k_prev), make(k_common),
                   make(os.urandom(prg_mod.KEY_BYTES)), encoding, device, insecure_fast_prg)
