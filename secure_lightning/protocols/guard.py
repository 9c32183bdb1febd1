"""Run-time overflow guard: a minimal stand-in with the interface of the full guard (watch / check /
FixedPointOverflowError), so that protocols can declare their domain checks now. The full module replaces this file.

`watch(y, limit, what, party=...)` does nothing unless `party.guard` is enabled (`enable(party)`). Then it records a
public-random sample of y (indices from party.prg_common, the same in every party); `check(party)` compares all
recorded samples with their limits in ONE batched compare.ltz, opens only the number of samples out of range, and
raises FixedPointOverflowError naming the first offending `what` in every party.
"""
from __future__ import annotations

import torch

from .. import ring
from .sharing import Shares, add_public, reveal


class FixedPointOverflowError(ArithmeticError):
    """A value left the range in which fixed-point arithmetic (or an approximation) is correct."""


class _Guard:
    def __init__(self):
        self.pending: list = []   # (samples Shares, raw limit, what)

    def __bool__(self):
        return True


def enable(party) -> None:
    party.guard = _Guard()


def disable(party) -> None:
    party.guard = None


def watch(y: Shares, limit: float, what: str, *, party, scale_bits: int | None = None, samples: int = 64) -> None:
    """Record a public-random sample of y to be checked for |y| < limit (limit in real units, y at scale
    2^scale_bits, default frac_bits). Cost now: 0 (no communication); the check is batched in `check`."""
    g = getattr(party, "guard", None)
    if not g:
        return
    s = party.encoding.frac_bits if scale_bits is None else scale_bits
    lim = int(round(limit * 2.0 ** s))
    if lim <= 0:
        raise ValueError(f"guard.watch({what}): limit {limit} is below the resolution 2^-{s}")
    flat = y.map(lambda t: t.reshape(-1))
    n = flat.cur.numel()
    if n == 0:
        return
    if n > samples:
        r = party.prg_common.ring((samples,), party.device)
        idx = torch.remainder(r, n)
        flat = flat.map(lambda t: t[idx])
    g.pending.append((flat, lim, what))


def check(party) -> None:
    """Check everything watched since the last check (one compare.ltz, one opening of a count); raise
    FixedPointOverflowError in every party if any sample is out of range."""
    g = getattr(party, "guard", None)
    if not g or not g.pending:
        return
    from . import compare
    pending, g.pending = g.pending, []
    cur, prev, sizes = [], [], []
    for y, lim, _ in pending:
        c = torch.tensor(-lim, dtype=ring.DTYPE, device=party.device)
        a = add_public(y, c, party=party)            # y - lim < 0
        b = add_public(-y, c, party=party)           # -y - lim < 0
        cur += [a.cur, b.cur]
        prev += [a.prev, b.prev]
        sizes.append(y.cur.numel())
    bits = compare.ltz(Shares(torch.cat(cur), torch.cat(prev)), party=party)
    k, counts = 0, []
    for n in sizes:
        inside = bits.map(lambda t: t[k:k + n].sum() + t[k + n:k + 2 * n].sum())
        counts.append(inside)
        k += 2 * n
    opened = reveal(Shares(torch.stack([c.cur for c in counts]), torch.stack([c.prev for c in counts])),
                    party=party, label="guard")
    for (y, _, what), n, inside in zip(pending, sizes, opened.tolist()):
        if inside != 2 * n:
            raise FixedPointOverflowError(f"fixed-point overflow: {what}")
