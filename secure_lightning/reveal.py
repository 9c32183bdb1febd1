"""Reveal policy: which secret-shared values the RSS3PC strategy may open, and to whom.

Nothing secret-shared is ever opened by the strategy unless the policy names it. A policy maps *what* to a
*recipient*:

- what: a category, or the exact name of a logged value (an exact name wins over its category):
    "loss"         values logged with self.log / self.log_dict whose name contains "loss"
    "metrics"      every other logged value, and the values of torchmetrics metrics
    "predictions"  outputs of predict_step, and the inputs of torchmetrics metrics (predictions and targets)
    "weights"      the trained parameters and buffers (end of fit, plaintext export)
- recipient: "all" (every party learns it), a party number 0/1/2 (only that party learns it),
  "data_owner" / "model_owner" (resolved by the strategy), or None (never opened: asking for it is an error).

The default opens loss and logged metrics to all parties (progress bar, loggers and callbacks such as ModelCheckpoint
run on every party and must see equal values), predictions to the data owner and weights to the model owner:

>>> RevealPolicy.default(data_owner=0, model_owner=0).recipient("metrics", "val_acc")
'all'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Union

ALL = "all"
CATEGORIES = ("loss", "metrics", "predictions", "weights")
Recipient = Union[str, int, None]


class RevealPolicyError(RuntimeError):
    """A value was to be opened that the reveal policy does not allow (raised identically on every party)."""


def category_of_logged(name: str) -> str:
    """The category of a value logged under `name`: "loss" if the name contains "loss", else "metrics"."""
    return "loss" if "loss" in name.lower() else "metrics"


def describe_recipient(to: Recipient) -> str:
    if to is None:
        return "nobody"
    return "all parties" if to == ALL else f"party {to}"


@dataclass(frozen=True)
class OpeningRecord:
    """One opening made by the strategy: what (category), name, shape, recipient, Lightning stage and global step."""
    what: str
    name: str
    shape: tuple
    to: str
    stage: str = ""
    step: int = -1
    kind: str = "reveal"  # "reveal": shares opened by the protocol; "publish": a party that already held the
    #                       plaintext (e.g. the data owner's torchmetrics result) sent it to the others


class RevealPolicy:
    """What may be opened and to whom. See the module docstring for the keys and recipients."""

    def __init__(self, rules: Optional[Mapping[str, Recipient]] = None, *, data_owner: int = 0, model_owner: int = 0):
        self.data_owner = int(data_owner)
        self.model_owner = int(model_owner)
        self.rules: dict[str, Recipient] = {}
        for what, to in dict(rules or {}).items():
            if not isinstance(what, str) or not what:
                raise ValueError(f"reveal policy keys are category names {CATEGORIES} or logged names, got {what!r}")
            self.rules[what] = self._resolve(what, to)

    @classmethod
    def default(cls, data_owner: int = 0, model_owner: int = 0, reveal_weights: bool = True) -> "RevealPolicy":
        return cls({"loss": ALL, "metrics": ALL, "predictions": "data_owner",
                    "weights": "model_owner" if reveal_weights else None},
                   data_owner=data_owner, model_owner=model_owner)

    @classmethod
    def build(cls, reveal=None, *, data_owner: int = 0, model_owner: int = 0,
              reveal_weights: bool = True) -> "RevealPolicy":
        """The strategy's policy: `reveal` (a dict or RevealPolicy) updates the default; reveal_weights=False forbids
        opening the weights whatever `reveal` says."""
        if isinstance(reveal, RevealPolicy):
            policy = cls(reveal.rules, data_owner=data_owner, model_owner=model_owner)
        else:
            policy = cls.default(data_owner, model_owner, reveal_weights)
            if reveal is not None:
                if not isinstance(reveal, Mapping):
                    raise TypeError(f"RSS3PC(reveal=...) takes a dict {{what: recipient}} or a RevealPolicy, got "
                                    f"{type(reveal).__name__}")
                policy.rules.update(cls(reveal, data_owner=data_owner, model_owner=model_owner).rules)
        if not reveal_weights:
            policy.rules["weights"] = None
        return policy

    def _resolve(self, what: str, to: Recipient) -> Recipient:
        if to is None or to == ALL:
            return to
        if to == "data_owner":
            return self.data_owner
        if to == "model_owner":
            return self.model_owner
        if isinstance(to, int) and not isinstance(to, bool) and to in (0, 1, 2):
            return to
        raise ValueError(f"reveal policy: recipient for {what!r} must be 'all', 0, 1, 2, 'data_owner', "
                         f"'model_owner' or None, got {to!r}")

    def recipient(self, what: str, name: Optional[str] = None) -> Recipient:
        """Who may learn `name` of category `what` (an exact-name rule wins); None if nobody."""
        if name is not None and name in self.rules and name not in CATEGORIES:
            return self.rules[name]
        return self.rules.get(what)

    def check(self, what: str, name: Optional[str] = None, *, need_all: bool = False) -> Recipient:
        """The recipient for (what, name), or RevealPolicyError if the policy forbids opening it (or, with
        need_all, forbids opening it to every party)."""
        to = self.recipient(what, name)
        label = f"{what} {name!r}" if name else what
        if to is None:
            raise RevealPolicyError(
                f"the RSS3PC reveal policy does not allow opening {label}. Allowed: {self.describe()}. "
                f"To open it, pass e.g. RSS3PC(reveal={{{(name or what)!r}: 'all'}}) (or a party number).")
        if need_all and to != ALL:
            raise RevealPolicyError(
                f"logging {label} needs it opened to all parties (Lightning's loggers and callbacks run on every "
                f"party and must see the same value), but the reveal policy gives it to {describe_recipient(to)} "
                f"only. Open it to all with RSS3PC(reveal={{{(name or what)!r}: 'all'}}), or call "
                f"trainer.strategy.reveal(value, what={what!r}, name=...) to open it to {describe_recipient(to)}.")
        return to

    def describe(self) -> str:
        items = [f"{k} -> {describe_recipient(v)}" for k, v in self.rules.items()]
        return "; ".join(items) if items else "nothing"

    def __repr__(self):
        return f"RevealPolicy({self.rules!r}, data_owner={self.data_owner}, model_owner={self.model_owner})"

    def __eq__(self, o):
        return isinstance(o, RevealPolicy) and (self.rules, self.data_owner, self.model_owner) == (
            o.rules, o.data_owner, o.model_owner)


def report(records, unaccounted=()) -> str:
    """A table of openings grouped by (what, name, shape, recipient, kind) with counts, first/last global step."""
    groups: dict = {}
    for r in records:
        key = (r.what, r.name, tuple(r.shape), r.to, r.kind)
        g = groups.setdefault(key, [0, r.step, r.step, set()])
        g[0] += 1
        g[1] = min(g[1], r.step)
        g[2] = max(g[2], r.step)
        if r.stage:
            g[3].add(r.stage)
    lines = [f"{'what':12s} {'name':28s} {'shape':16s} {'to':10s} {'kind':8s} {'count':>6s}  stages (steps)"]
    for (what, name, shape, to, kind), (n, lo, hi, stages) in groups.items():
        lines.append(f"{what:12s} {name[:28]:28s} {str(shape)[:16]:16s} {to:10s} {kind:8s} {n:6d}  "
                     f"{','.join(sorted(stages))} ({lo}..{hi})")
    if not groups:
        lines.append("(no openings)")
    for u in unaccounted:
        lines.append(f"OUTSIDE THE POLICY: {u.label} {tuple(u.shape)} -> {u.to} (opened while no policy was "
                     f"enforced; under RSS3PC such an opening is refused before anything is sent)")
    return "\n".join(lines)
