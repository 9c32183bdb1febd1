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
`OpeningRecord`s the strategy reports (`strategy.openings`, `strategy.opening_report()`), and makes the openings
themselves: `reveal` (strategy.reveal), `open_weights`, the overflow guard's `guard_check`, the self.log /
self.log_dict wrappers, and the torchmetrics wrappers (inputs opened to the data owner, which alone updates; only
scalars the policy opens to all are published, through the channel).
"""
from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Callable, Optional

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor

from .protocols import guard
from .reveal import ALL, OpeningRecord, RevealPolicy, RevealPolicyError, category_of_logged, report
from .tensor import SharedTensor, reveal_tensor

_GUARD_LABEL = "reveal/guard"  # the communication label of the guard's count opening (protocols/guard.py)


def _contains_shared(obj) -> bool:
    found = []
    apply_to_collection(obj, SharedTensor, lambda t: found.append(1))
    return bool(found)


class OwnerHeld:
    """What a party other than the holder gets from a torchmetrics forward() whose value stays with the data owner
    (it is published only when logged: self.log(name, value))."""

    def __init__(self, metric: str, holder: int):
        self.metric, self.holder = metric, holder

    def __repr__(self):
        return f"OwnerHeld(metric={self.metric!r}, held by party {self.holder})"


def _as_scalar(value) -> Optional[Tensor]:
    """A metric value as a 0-d CPU tensor if it is one number (a number or a one-element tensor), else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return torch.tensor(value)
    if isinstance(value, Tensor) and value.numel() == 1 and value.dim() <= 1:
        return value.detach().cpu().reshape(())
    return None


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
        self.channel = None              # the public channel (secure_lightning.channel), for metric values
        self._metrics: list = []         # the torchmetrics Metrics wrapped in this party

    # ---- lifecycle -------------------------------------------------------------------------------------------------
    def attach(self, party, channel=None, where: Optional[Callable[[], tuple]] = None) -> None:
        """Start enforcing on `party` (its audit's gate); `channel` publishes metric values; `where()` gives
        (stage, global step) for the records."""
        self.party = party
        self.channel = channel
        self.records, self._accounted, self._allowed = [], [], []
        if where is not None:
            self._where = where
        party.audit.gate = self._gate

    def detach(self) -> None:
        self._metrics = []
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
        state.update(party=None, _where=None, _allowed=[], channel=None, _metrics=[])
        return state

    # ---- opening through the policy ----------------------------------------------------------------------------
    def reveal(self, value, what: str = "metrics", name: Optional[str] = None, *, need_all: bool = False):
        """Open every SharedTensor in `value` (a tensor or a collection) as the reveal policy allows for (what, name).

        Collective: all three parties must call it at the same point. Returns plaintext on the recipients and None
        (per tensor) elsewhere. Raises RevealPolicyError (on every party, before anything is sent) when the policy
        forbids it. This and the hooks built on it (self.log, metrics, predict_step) are the only ways to open a
        value while the strategy runs: the ledger refuses any other opening (secure_lightning.ledger).
        """
        to = self.policy.check(what, name, need_all=need_all)
        self.guard_check()

        def open_one(t):
            with self.opening(what, name or what, to):
                out = reveal_tensor(t.detach(), to=None if to == ALL else to, label=f"policy/{what}/{name or ''}")
            if out is not None and t.dtype != out.dtype:
                out = out.round().to(t.dtype) if not t.dtype.is_floating_point else out.to(t.dtype)
            return out

        return apply_to_collection(value, SharedTensor, open_one)

    def guard_check(self) -> None:
        """Run the overflow guard's pending checks (all parties together; protocols/guard.check) and record its
        openings (one count per checked op, kind "guard"). Raises FixedPointOverflowError on every party."""
        if self.party is None or not guard.pending(self.party):
            return
        with self.guard_openings():
            guard.check(party=self.party)

    def open_weights(self, module) -> Optional[dict]:
        """Open the weights of `module` to the recipient of "weights" (the model owner by default); returns them
        there (on the CPU), None elsewhere. Cost: one reveal of every shared entry (nn.reveal_state_dict)."""
        from . import nn as secure_nn
        to = self.policy.check("weights")
        with self.opening("weights", None, to):
            sd = secure_nn.reveal_state_dict(module, self.party, to=None if to == ALL else to)
        if sd is None:
            return None
        return {k: v.detach().cpu() for k, v in sd.items()}

    # ---- logging (self.log / self.log_dict wrappers) ------------------------------------------------------------------------------------------------
    def _open_logged(self, name: str, value):
        """What Lightning logs under `name` on this party: shared values opened to all (policy first), a metric's
        per-batch value published by the data owner (scalars the policy opens to all only)."""
        metric = self._metric_of_logged(value)
        if metric is not None:
            return self._publish_logged_metric(name, value, metric)
        if isinstance(value, Mapping) or not _contains_shared(value):
            return value
        return self.reveal(value, category_of_logged(name), name, need_all=True)

    def wrap_log(self, orig: Callable) -> Callable:
        def log(name: str, value, *args, **kwargs):
            return orig(name, self._open_logged(name, value), *args, **kwargs)
        log.__wrapped__ = orig
        return log

    def wrap_log_dict(self, orig: Callable) -> Callable:
        def log_dict(dictionary, *args, **kwargs):
            if isinstance(dictionary, Mapping):
                dictionary = {k: self._open_logged(k, v) for k, v in dictionary.items()}
            return orig(dictionary, *args, **kwargs)
        log_dict.__wrapped__ = orig
        return log_dict

    # ---- torchmetrics: the recipient of "predictions" updates and computes; scalars may be published ----------
    def wrap_metrics(self, lm, patch: Callable) -> None:
        """Wrap every torchmetrics Metric of `lm`; `patch(obj, name, value)` sets (and later undoes) an attribute."""
        try:
            from torchmetrics import Metric
        except ImportError:  # pragma: no cover
            return
        self._metrics = []
        for name, m in lm.named_modules():
            if isinstance(m, Metric) and not getattr(m, "_rss3pc_wrapped", False):
                self._wrap_metric(name, m, patch)
                self._metrics.append(m)

    def _metric_of_logged(self, value):
        """The wrapped metric a logged value belongs to: the Metric itself, or its last forward() value (the data
        owner's plaintext, or the OwnerHeld placeholder on the other parties); else None."""
        for m in self._metrics:
            if value is m or (value is not None and value is m._rss3pc_state["last"]):
                return m
        return None

    def _publish_logged_metric(self, name: str, value, m):
        """Logging a metric or its forward() value: it must be a scalar the policy opens to all under `name` (else
        RevealPolicyError / ValueError on every party). A pending forward() value is published now (and becomes the
        metric's _forward_cache on every party, which Lightning reads for on_step logging)."""
        self.policy.check(category_of_logged(name), name, need_all=True)
        st = m._rss3pc_state
        if value is m and not st["pending"]:
            return value  # compute() publishes at epoch end
        if not st["pending"]:
            raise ValueError(f"RSS3PC: the value logged as {name!r} was already published")
        out = self._publish_metric(m._forward_cache, st["holder"], category_of_logged(name), name, required=True)
        st["pending"], st["last"] = False, None
        m._forward_cache = out
        return value if value is m else out

    def _wrap_metric(self, name: str, m, patch: Callable) -> None:
        """Wrap a torchmetrics Metric: shared inputs are opened to the recipient of "predictions" (the data owner),
        which alone updates the metric on plaintext. compute() publishes its value to all parties only if it is a
        scalar the policy opens to all under the metric's name ("metrics"); any other result (vectors, curves,
        matrices, CatMetric's concatenations) stays with the data owner and the others get None. A per-batch
        forward() value stays with the data owner (the others get an OwnerHeld placeholder) unless it is logged,
        which publishes it (scalars only). Torchmetrics' own process-group sync is switched off."""
        ledger = self
        m.sync_on_compute = False
        m.dist_sync_on_step = False
        m._to_sync = False  # torchmetrics copied sync_on_compute at construction: its compute would all_gather
        orig_update, orig_compute = m.update, m.compute
        orig_forward = type(m).forward.__get__(m)
        inside = [False]  # Metric.forward calls update/compute itself: those run locally, not collectively
        state = {"pending": False, "last": None, "holder": None}

        def holder_and_plain(args, kwargs):
            to = ledger.policy.check("predictions", f"metric/{name}")
            args, kwargs = ledger.reveal((args, kwargs), "predictions", f"metric/{name}")
            return to, args, kwargs

        def holds(to) -> bool:
            return to == ALL or to == ledger.party.rank

        def update(*args, **kwargs):
            if inside[0] or not _contains_shared((args, kwargs)):
                return orig_update(*args, **kwargs)
            to, args, kwargs = holder_and_plain(args, kwargs)
            if holds(to):
                orig_update(*args, **kwargs)

        def forward(*args, **kwargs):
            if inside[0] or not _contains_shared((args, kwargs)):
                return orig_forward(*args, **kwargs)
            to, args, kwargs = holder_and_plain(args, kwargs)
            out = None
            if holds(to):
                inside[0] = True
                try:
                    out = orig_forward(*args, **kwargs)
                finally:
                    inside[0] = False
            m._forward_cache = out
            if to == ALL:
                return out
            if not holds(to):
                out = OwnerHeld(name, to)
            state.update(pending=True, last=out, holder=to)
            return out

        def compute():
            if inside[0]:
                return orig_compute()
            to = ledger.policy.check("predictions", f"metric/{name}")
            if to == ALL:
                return orig_compute()
            out = orig_compute() if ledger.party.rank == to else None
            return ledger._publish_metric(out, to, "metrics", name, required=False)

        for attr, fn in (("update", update), ("forward", forward), ("compute", compute)):
            patch(m, attr, fn)
        patch(m, "_rss3pc_state", state)
        patch(m, "_rss3pc_wrapped", True)

    def _publish_metric(self, value, src: int, what: str, name: str, *, required: bool):
        """Party `src` holds a metric value in plaintext. If the policy opens (what, name) to all and the value is a
        scalar, src publishes it and every party returns it; otherwise it stays with src (the others return None),
        or, with `required` (the value is being logged), every party raises. Cost: 2 rounds, src sends about 100
        bytes to each peer (nothing when the policy keeps the value with src)."""
        rank = self.party.rank
        if self.policy.recipient(what, name) != ALL:
            if required:
                self.policy.check(what, name, need_all=True)
            return value if rank == src else None
        msg = None
        if rank == src:
            msg = {"value": _as_scalar(value)}
        msg = self.channel.publish("metric", msg, src, label=f"publish/{what}")
        out = msg["value"]
        if out is None:
            if required:
                raise ValueError(f"RSS3PC: {name!r} is logged, but the metric's value on the data owner is not a "
                                 f"scalar: only scalars are published to all parties. Log a scalar, or use the value "
                                 f"on the data owner (trainer.ledger.party.rank == {src}) only.")
            return value if rank == src else None
        self.record(what, name, tuple(out.shape), ALL, kind="publish")
        if rank == src:
            return value
        return out.to(self.party.device)

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
