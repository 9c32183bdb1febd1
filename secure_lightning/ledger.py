"""The opening ledger: every opening a party takes part in is checked against the reveal policy before any byte moves.

The RSS3PC strategy attaches a ledger to its party (`attach`), which installs a gate on `party.audit`. Every opening
of shares (protocols.sharing.reveal, reveal_labelled, and everything built on them: reveal_tensor,
nn.reveal_state_dict) records itself in the audit *before* it sends anything, so the gate sees it first. The gate lets
an opening through only

- inside `ledger.opening(what, name, to)`, which the strategy enters after `RevealPolicy.check(what, name)` allowed
  the recipient `to` (self.log / log_dict, torchmetrics inputs, predict_step outputs, strategy.reveal, the trained
  weights), and only to that recipient; or
- when it is the overflow guard's opening of its out-of-range counts (one public count per checked op, to all).

Anything else (a direct `reveal_tensor` in a training_step, say) raises `RevealPolicyError` in the gate. Every party
runs the same code, so every party raises at the same point and nothing is sent. The ledger also keeps the
`OpeningRecord`s the strategy reports (`strategy.openings`, `strategy.opening_report()`).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

from .reveal import ALL, OpeningRecord, RevealPolicy, RevealPolicyError, report

_GUARD_LABEL = "reveal/guard"  # the communication label of the guard's count opening (protocols/guard.py)


def _to_str(to) -> str:
    return "all" if to == ALL else f"party {to}"


class OpeningLedger:
    """Enforces the reveal policy on every opening of this party and records what was opened (module docstring)."""

    def __init__(self, policy: RevealPolicy):
        self.policy = policy
        self.records: list = []          # OpeningRecord, in order
        self.party = None
        self._allowed: list = []         # stack of recipients ("all" / "party r") of the openings being made
        self._accounted: list = []       # (start, end) ranges of party.audit made through the ledger
        self._where: Optional[Callable[[], tuple]] = None

    # ---- lifecycle -------------------------------------------------------------------------------------------------
    def attach(self, party, where: Optional[Callable[[], tuple]] = None) -> None:
        """Start enforcing on `party` (its audit's gate); `where()` gives (stage, global step) for the records."""
        self.party = party
        self.records, self._accounted, self._allowed = [], [], []
        if where is not None:
            self._where = where
        party.audit.gate = self._gate

    def detach(self) -> None:
        if self.party is not None and self.party.audit.gate == self._gate:
            self.party.audit.gate = None

    # ---- the gate --------------------------------------------------------------------------------------------------
    def _is_guard_opening(self, label: str, shape: tuple, to: str) -> bool:
        return (label.startswith("guard/") and shape == () and to == "all"
                and self.party.comm.current_label.endswith(_GUARD_LABEL))

    def _gate(self, label: str, shape: tuple, to: str) -> None:
        if self._is_guard_opening(label, shape, to):
            return
        if self._allowed and self._allowed[-1] == to:
            return
        rank = self.party.rank if self.party is not None else "?"
        if self._allowed:
            raise RevealPolicyError(
                f"party {rank}: opening {label!r} {tuple(shape)} to {to} inside an opening the reveal policy allowed "
                f"to {self._allowed[-1]} only; nothing was sent")
        raise RevealPolicyError(
            f"party {rank}: refused to open {label!r} (shape {tuple(shape)}) to {to}: it was not requested through "
            f"the reveal policy, so nothing was sent. Under RSS3PC values are opened only by self.log / "
            f"self.log_dict, torchmetrics metrics, predict_step outputs and trainer.strategy.reveal(value, what=..., "
            f"name=...), each checked against RSS3PC(reveal=...) first (allowed: {self.policy.describe()}). Replace "
            f"the direct reveal_tensor / reveal call by one of these.")

    # ---- openings made through the policy -------------------------------------------------------------------------
    @contextmanager
    def opening(self, what: str, name: Optional[str], to, kind: str = "reveal"):
        """Let openings to `to` (already allowed by policy.check for (what, name)) through, and record them: one
        OpeningRecord per audit entry, named `name` (or the entry's own label when name is None)."""
        party = self.party
        n0 = len(party.audit)
        self._allowed.append(_to_str(to))
        try:
            yield
        finally:
            self._allowed.pop()
            n1 = len(party.audit)
            self._accounted.append((n0, n1))
            for rec in party.audit.records[n0:n1]:
                if rec.label.startswith("guard/"):
                    self.record("guard", rec.label, rec.shape, ALL, kind="guard")
                else:
                    self.record(what, name if name is not None else rec.label, rec.shape, to, kind)

    @contextmanager
    def guard_openings(self):
        """Record the overflow guard's count openings made inside (their gate rule lets them through)."""
        party = self.party
        n0 = len(party.audit)
        try:
            yield
        finally:
            n1 = len(party.audit)
            self._accounted.append((n0, n1))
            for rec in party.audit.records[n0:n1]:
                self.record("guard", rec.label, rec.shape, ALL, kind="guard")

    def record(self, what: str, name: str, shape, to, kind: str = "reveal") -> None:
        stage, step = self._where() if self._where is not None else ("", -1)
        self.records.append(OpeningRecord(what, str(name), tuple(shape), _to_str(to), stage, step, kind))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # the party and its callbacks stay in the process that made them
        state.update(party=None, _where=None, _allowed=[])
        return state

    # ---- reports ---------------------------------------------------------------------------------------------------
    def unaccounted(self) -> list:
        """Audit entries not made through the ledger (none while it is attached: the gate refuses them)."""
        if self.party is None:
            return []
        covered = set()
        for a, b in self._accounted:
            covered.update(range(a, b))
        return [o for i, o in enumerate(self.party.audit.records) if i not in covered]

    def report(self, unaccounted=None) -> str:
        return report(self.records, self.unaccounted() if unaccounted is None else unaccounted)
