"""Run-time overflow guard: no silently wrong fixed-point products.

A fixed-point product is computed on the ring and truncated (arithmetic.truncate_additive), which is exact while the
product before truncation stays below 2^62, i.e. |x y| < 2^(62-2f) in real units (4.2e6 at f = 20). Beyond that the
result is garbage that looks like any other number. The guard samples every product's output and checks, before
anything is opened, that the samples lie inside half that range:

  watch(y, limit, what, party=...)   records a sample of y's elements (no communication; a no-op when the guard is off)
  check(party=...)                   compares all pending samples against their limits in ONE batched comparison and
                                     opens one count per watched `what`; raises FixedPointOverflowError on all parties
                                     if any sample is out of range

Why half the range: products use the limit 2^(62-2f-1). A product in [2^(62-2f-1), 2^(62-2f)) is still exact but
flagged; a product beyond 2^(62-2f) is either out of the truncation's range (then the truncation's output is
always at least 2^(62-2f) in magnitude: flagged for sure) or wrapped modulo 2^64 (its ring value is roughly uniform:
half the time out of the truncation's range, flagged; otherwise its truncation is roughly uniform in
(-2^(62-2f), 2^(62-2f)) and above the limit half the time). So each sampled wrong element is flagged with
probability >= 3/4, and a product of real magnitude in [2^(62-2f-1), 2^(63-2f)) always is.

Sampling: up to `samples` (default 64) positions per watched output, drawn from party.prg_common (public, common to
the three parties, independent of the data; all positions when the output is that small). A layer whose inputs are
out of range usually garbles many outputs, so 64 samples catch it with overwhelming probability; a single wrong
element among millions may escape the sample (the guard is a safety net against scale mistakes, not a proof).

Leakage: the only value opened is, per watched `what` (an op or layer name), the number of its samples that are
out of range (0 in a healthy run). It is opened through sharing.reveal_labelled and recorded in party.audit under
"guard/<what>". Nothing else about the samples is opened.

Layer names: `what` is prefixed with the secure nn layer being run ("layer 'encoder.0 (Linear)'"), set by forward
pre/post hooks that nn.swap installs and, for backward, by autograd pre-hooks on the layer's output (see
`layer_hooks`). Outside a layer it is the communication label path of the op.

State: party.guard is None (off; every function here returns at once, no cost) or a Guard holding the settings and
the pending samples. `enable(party)` / `disable(party)` switch it.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .. import ring
from ..encoding import FixedPointOverflowError
from .sharing import Additive, Shares

DEFAULT_SAMPLES = 64
# Product outputs at scale f are checked against half the exact range 2^(62-2f): see the module docstring.
PRODUCT_MARGIN_BITS = 1


@dataclass
class _Watch:
    what: str
    cur: torch.Tensor   # sampled shares, flat
    prev: torch.Tensor | None  # None: cur holds additive parts (a product not yet reshared; check reshares them)
    limit_raw: int      # |y| < limit_raw as a ring integer
    limit: float        # the same in real units (for messages)
    seen: int           # how many elements the watched output had


@dataclass
class Guard:
    """Settings and pending samples of the overflow guard (lives on party.guard)."""
    samples: int = DEFAULT_SAMPLES
    pending: list = field(default_factory=list)
    checks: int = 0        # check() calls that compared something
    sampled: int = 0       # samples compared in total


def enable(party, samples: int = DEFAULT_SAMPLES) -> Guard:
    """Switch the guard on for this party (every party must do the same). Returns party.guard."""
    if samples < 1:
        raise ValueError(f"guard samples must be >= 1, got {samples}")
    if getattr(party, "guard", None) is None:
        party.guard = Guard(samples=samples)
    else:
        party.guard.samples = samples
    return party.guard


def disable(party) -> None:
    """Switch the guard off; pending samples are dropped (call check first to keep them)."""
    party.guard = None


@contextmanager
def enabled(party, samples: int = DEFAULT_SAMPLES):
    """`with guard.enabled(party):` the guard on inside the block, its previous state (and samples) back after."""
    before = getattr(party, "guard", None)
    party.guard = Guard(samples=samples)
    try:
        yield party.guard
    finally:
        party.guard = before


def product_limit(party, extra_bits: int = 0) -> float:
    """The guard's limit (real units, scale f) for the output of a product truncated by f + extra_bits bits:
    2^(62 - 2f - extra_bits - 1)."""
    f = party.encoding.frac_bits
    return float(2.0 ** (62 - 2 * f - extra_bits - PRODUCT_MARGIN_BITS))


# Secure layers compare on 68 - f bits (+ deferred bits): 5 bits above the largest product output, 2^(62-f) raw.
COMPARISON_MARGIN_BITS = 5


def comparison_bits(party, extra_bits: int = 0) -> int:
    """Width l of the comparisons a secure layer (ReLU, max pooling) runs on values at scale f + extra_bits:
    min(64, 63 - f + extra_bits + 1 + COMPARISON_MARGIN_BITS), i.e. 48 at f = 20. An exact product's output is below
    2^(62-f+extra_bits) raw, 32 times inside the l-bit range; the input itself is watched (`watch_comparison`).
    With the guard off nothing would watch it, so the layer compares on all 64 bits (exact for every ring value)."""
    if getattr(party, "guard", None) is None:
        return 64
    f = party.encoding.frac_bits
    return min(64, 64 - f + extra_bits + COMPARISON_MARGIN_BITS - 1)


def watch_comparison(x: Shares, bits: int, op: str, *, party) -> None:
    """Overflow guard for an l-bit comparison's input: sample x for |x| < 2^(l-2) raw (differences of two such
    values, max pooling's, stay inside the l-bit range; a single value has a factor 2 to spare, as products do).
    Cost: 0 (local); a no-op when bits = 64 (exact for every ring value) or the guard is off."""
    if bits < 64 and getattr(party, "guard", None) is not None:
        watch(x, float(1 << (bits - 2)), describe(op, party), party=party, scale_bits=0)


# ---------------------------------------------------------------------------------------------------------------------
# Layer context (which secure nn layer is running); process-wide, one party per process

_LAYERS: list = []          # forward: names of the modules being run, innermost last
_BACKWARD: list = [None]    # backward: the layer whose gradient is being computed (set by autograd pre-hooks)


def current_layer() -> str | None:
    if _LAYERS:
        return _LAYERS[-1]
    if _BACKWARD[0] is not None:
        return f"{_BACKWARD[0]}, backward"
    return None


def describe(op: str, party) -> str:
    """The `what` of a watch: the running layer and the op, or the op's communication label path."""
    layer = current_layer()
    if layer is not None:
        return f"layer '{layer}' ({op})"
    path = party.comm.current_label
    return f"op '{op}'" if path == "unlabelled" else f"op '{path}/{op}'"


def _clear_backward():
    _BACKWARD[0] = None


def _forward_pre(name):
    def hook(module, args):
        if not _LAYERS:
            _BACKWARD[0] = None  # a new forward pass: the previous backward is over
        _LAYERS.append(name)
    return hook


def _backward_pre(name):
    def hook(grad_outputs):
        if _BACKWARD[0] is None:
            # first layer reached in this backward pass: forget the name when the pass ends
            torch.autograd.Variable._execution_engine.queue_callback(_clear_backward)
        _BACKWARD[0] = name
    return hook


def _forward_post(name):
    def hook(module, args, output):
        if _LAYERS and _LAYERS[-1] == name:
            _LAYERS.pop()
        if torch.is_grad_enabled():
            for t in _tensors(output):
                fn = t.grad_fn
                if fn is not None and fn not in _HOOKED:
                    _HOOKED[fn] = name  # innermost module first: containers returning the same tensor add nothing
                    fn.register_prehook(_backward_pre(name))
        if not _LAYERS:
            _HOOKED.clear()
    return hook


_HOOKED: dict = {}  # grad_fn nodes already hooked during the current forward pass


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.requires_grad else []
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def layer_hooks(model: torch.nn.Module) -> None:
    """Install the layer-context hooks on every submodule of `model` (named by its path from `model`), once."""
    for name, m in model.named_modules():
        if not name or "_guard_hooks" in m.__dict__:
            continue
        label = f"{name} ({type(m).__name__.removeprefix('Secure')})"
        m.__dict__["_guard_hooks"] = (m.register_forward_pre_hook(_forward_pre(label)),
                                      m.register_forward_hook(_forward_post(label), always_call=True))


def remove_layer_hooks(model: torch.nn.Module) -> None:
    for m in model.modules():
        for h in m.__dict__.pop("_guard_hooks", ()):
            h.remove()


# ---------------------------------------------------------------------------------------------------------------------
# watch / check

def watch(y: Shares | Additive, limit: float, what: str, *, party, scale_bits: int | None = None,
          samples: int | None = None) -> None:
    """Record a sample of y's elements, to be checked later (by `check`) for |y| < limit. Additive y (a product
    before its resharing): the sampled parts are kept, and `check` reshares them (the samples only).

    limit: real units at scale 2^scale_bits (default: party.encoding.frac_bits). samples: how many positions
    (default party.guard.samples, 64); every element when y has no more. Positions come from party.prg_common.
    Cost: 0 rounds, 0 bytes (local); a no-op when the guard is off (party.guard is None).
    """
    g = getattr(party, "guard", None)
    if g is None:
        return
    n = y.part.numel() if isinstance(y, Additive) else y.cur.numel()
    if n == 0:
        return
    k = g.samples if samples is None else int(samples)
    bits = party.encoding.frac_bits if scale_bits is None else int(scale_bits)
    limit_raw = int(math.floor(limit * 2.0 ** bits))
    if not 1 <= limit_raw < 1 << 62:
        raise ValueError(f"guard limit {limit} at scale 2^{bits} is outside (0, 2^62) as a ring integer")
    flat = [y.part.reshape(-1)] if isinstance(y, Additive) else [y.cur.reshape(-1), y.prev.reshape(-1)]
    if n <= k:
        flat = [t.clone() for t in flat]
    else:
        r = party.prg_common.ring((k,), "cpu")
        idx = (ring.low_bits(r, 62) % n).to(flat[0].device)
        flat = [t[idx] for t in flat]
    cur, prev = flat if len(flat) == 2 else (flat[0], None)
    g.pending.append(_Watch(what, cur, prev, limit_raw, float(limit), n))


def pending(party) -> int:
    """Number of samples waiting for `check` (0 when the guard is off)."""
    g = getattr(party, "guard", None)
    return 0 if g is None else sum(w.cur.numel() for w in g.pending)


def check(*, party, label: str = "guard") -> None:
    """Check every pending sample: |y| < limit. Raises FixedPointOverflowError on all parties if one is not.

    One batched comparison: compare.ltz on the stacked values [y - L, -y - L] of all n pending samples (2n
    elements), flag = 2 - [y - L < 0] - [-y - L < 0] (1 when |y| >= L), flags summed per watched `what` (locally)
    and the k counts opened to all in one reveal (recorded in party.audit as "guard/<what>").
    Cost: 9 rounds (ltz 8, 9 from convert.RELAY_FROM compared values on, + opening 1); per party ltz's balanced cost
    on 2n elements (about 83 bytes per sample) plus 8 bytes per distinct `what`; one more round, 8 bytes per sample,
    when samples of products not yet reshared are pending (they are reshared first). Exactly, with 2n = 3m:
    Sb(2n) + T(2n) + 32 m + 8 k (notation of protocols/compare.py; m rounded up per chunk by msb's balanced split).
    Nothing when nothing is pending.
    """
    g = getattr(party, "guard", None)
    if g is None or not g.pending:
        return
    from .sharing import reveal_labelled
    todo, g.pending = g.pending, []
    names = list(dict.fromkeys(w.what for w in todo))
    g.checks += 1
    g.sampled += sum(w.cur.numel() for w in todo)
    with party.label(label):
        flags = flag_bits(todo, party=party)
        dev = flags.cur.device
        group = torch.cat([torch.full((w.cur.numel(),), names.index(w.what), dtype=torch.long, device=dev)
                           for w in todo])

        def per_what(t):
            return torch.zeros(len(names), dtype=ring.DTYPE, device=dev).index_add_(0, group, t)
        counts = reveal_labelled(flags.map(per_what), [f"guard/{w}" for w in names], party=party)
    bad = [(w, int(c)) for w, c in zip(names, counts.tolist()) if c != 0]
    if bad:
        raise FixedPointOverflowError(_message(bad, todo, party))


def _reshare_additive_samples(todo: list, *, party) -> None:
    """Replicated shares, in place, for the watches holding additive parts: one reshare of all their samples.
    Cost: 1 round, 8 bytes per such sample (none when there are none)."""
    from .sharing import reshare
    parts = [w for w in todo if w.prev is None]
    if not parts:
        return
    both = reshare(torch.cat([w.cur for w in parts]), party=party)
    off = 0
    for w in parts:
        k = w.cur.numel()
        w.cur, w.prev = both.cur[off:off + k], both.prev[off:off + k]
        off += k


def flag_bits(todo: list, *, party) -> Shares:
    """Arithmetic shares of one flag per sample of the watches `todo` (in order): 1 when |y| >= limit (2 when y is
    within a limit of -2^63), else 0. Nothing is opened. Cost: compare.ltz on 2n elements (8 rounds)."""
    from . import compare
    from .sharing import add_public
    _reshare_additive_samples(todo, party=party)
    dev = todo[0].cur.device
    y = Shares(torch.cat([w.cur for w in todo]), torch.cat([w.prev for w in todo]))
    lim = torch.cat([torch.full((w.cur.numel(),), w.limit_raw, dtype=ring.DTYPE, device=dev) for w in todo])
    n = y.cur.numel()
    both = add_public(Shares(torch.cat([y.cur, -y.cur]), torch.cat([y.prev, -y.prev])), -torch.cat([lim, lim]),
                      party=party)
    inside = compare.ltz(both, party=party)  # [y - L < 0], [-y - L < 0]
    outside = add_public(-inside, torch.ones((), dtype=ring.DTYPE, device=dev), party=party)  # 1 - bit
    return Shares(outside.cur[:n] + outside.cur[n:], outside.prev[:n] + outside.prev[n:])


def _num(v: float) -> str:
    """2.1e6 rather than 2.1e+06; small values as they are."""
    t = f"{v:.2g}"
    if "e" in t:
        m, e = t.split("e")
        t = f"{m}e{int(e)}"
    return t


def _message(bad, todo, party) -> str:
    f = party.encoding.frac_bits
    parts = []
    for what, count in bad:
        ws = [w for w in todo if w.what == what]
        lim = min(w.limit for w in ws)
        sampled = sum(w.cur.numel() for w in ws)
        parts.append(f"{what}: |value| >= {_num(lim)} (the supported bound there) seen in {min(count, sampled)} of "
                     f"{sampled} sampled values")
    head = "; ".join(parts[:4]) + (f"; and {len(parts) - 4} more" if len(parts) > 4 else "")
    return (f"FixedPointOverflowError in {head}; fixed point with frac_bits={f} supports |x| < "
            f"{_num(2.0 ** (62 - 2 * f - PRODUCT_MARGIN_BITS))} after each product (exact below 2^{62 - 2 * f} = "
            f"{_num(2.0 ** (62 - 2 * f))}); normalise the inputs, lower the learning rate, or use fewer frac_bits")
