"""A party's view does not depend on the secret: statistical tests on real transcripts.

Party 0 shares a secret x (every element equal to A = 0 in one run, B = 1000 in the other); party 2 shares a fixed
y. The parties compute mul(x, y) (fixed point: exact truncation), mul(x, y, fixed=False) (reshare) and square(x),
then reveal the first product to party 0 only. `comm.record_received` captures every tensor each party receives.

A party's view is its own shares of x, y and the three results plus every message it received. Share headers
(shape and status, public by design) must be identical in both runs; the reveal to party 0 opens its value by
design, so it is excluded from party 0's view (parties 1 and 2 receive nothing in it). For each party and each
secret we test, over N = 4096 elements:
  * the transcript's structure (labels, senders, shapes, dtypes) is the same for A and B;
  * every message stream is uniform on Z_2^64 (chi-square on its bytes) and the A and B streams have the same
    distribution (two-sample Kolmogorov-Smirnov on the top 32 bits), p > 1e-6 each;
  * every combination of up to three view components with coefficients +-1 (a party could add or subtract what
    it holds) is either the same constant in both runs or looks uniform in both: its top 16 bits take at least
    N - 240 distinct values (uniform: 3970 +- 11) and bits 0, 1, 2, 8, 20, 31, 40, 62, 63 are balanced within
    7 standard deviations. Any of these failing by chance has probability < 1e-6 for the whole file.
A negative control puts the reveal back into party 0's view: the same checks must then flag x * y.
"""
import itertools

import torch
from scipy import stats

from secure_lightning.protocols import arithmetic as A
from secure_lightning.protocols.sharing import reveal, share

N = 4096
SECRET_A, SECRET_B = 0.0, 1000.0
HEADER_SHAPE = (10,)
BITS = (0, 1, 2, 8, 20, 31, 40, 62, 63)
P_MIN = 1e-6


def _view(party, secret, y):
    party.comm.record_received = []
    try:
        x = share(torch.full((N,), secret) if party.rank == 0 else None, 0, party=party, label="x")
        yy = share(y if party.rank == 2 else None, 2, party=party, label="y")
        z = A.mul(x, yy, party=party)
        w = A.mul(x, yy, party=party, fixed=False)
        s = A.square(x, party=party)
        reveal(z, 0, party=party, label="z")
        received = [(label, peer, t) for label, peer, t in party.comm.record_received]
    finally:
        party.comm.record_received = None
    shares = {f"{n}.{k}": getattr(v, k) for n, v in dict(x=x, y=yy, z=z, w=w, s=s).items() for k in ("cur", "prev")}
    return shares, received


def _split(view, include_reveal):
    """(public headers, named message streams, named components of the view)."""
    shares, received = view
    headers, streams = [], {}
    for k, (label, peer, t) in enumerate(received):
        if label.startswith("share/") and tuple(t.shape) == HEADER_SHAPE:
            headers.append(t)
        elif include_reveal or not label.startswith("reveal/"):
            streams[f"recv#{k} {label} <- P{peer}"] = t
    return headers, streams, {**shares, **streams}


def _dedupe(named):
    """Drop components equal to an earlier one (a received share that is also held): (names kept, stacked)."""
    keep = []
    for name, t in named.items():
        if not any(torch.equal(t, named[k]) for k in keep):
            keep.append(name)
    return keep, torch.stack([named[k] for k in keep])


def _coefficients(c: int) -> torch.Tensor:
    """All +-1 combinations of 1..3 of c components, one sign per pair (v and -v look alike)."""
    rows = []
    for size in (1, 2, 3):
        for idx in itertools.combinations(range(c), size):
            for signs in itertools.product((1, -1), repeat=size - 1):
                row = [0] * c
                row[idx[0]] = 1
                for i, s in zip(idx[1:], signs):
                    row[i] = s
                rows.append(row)
    return torch.tensor(rows, dtype=torch.int64)


def _looks_uniform(v: torch.Tensor) -> torch.Tensor:
    """Per row of ring values: top 16 bits nearly collision-free and the tested bits balanced."""
    top = torch.sort(torch.bitwise_right_shift(v, 48) & 0xFFFF, dim=1).values
    distinct = 1 + (top[:, 1:] != top[:, :-1]).sum(1)
    ok = distinct >= v.shape[1] - 240
    sd = (v.shape[1] / 4) ** 0.5
    for b in BITS:
        ones = (torch.bitwise_right_shift(v, b) & 1).sum(1)
        ok &= (ones - v.shape[1] / 2).abs() <= 7 * sd
    return ok


def _combination_failures(names, comps_a, comps_b):
    coef = _coefficients(len(names))
    va, vb = coef @ comps_a, coef @ comps_b  # int64: wraps like the ring
    const_a, const_b = (va == va[:, :1]).all(1), (vb == vb[:, :1]).all(1)
    same_constant = const_a & const_b & (va[:, 0] == vb[:, 0])
    bad = ~same_constant & ~(_looks_uniform(va) & _looks_uniform(vb))
    out = []
    for row in coef[bad][:5]:
        out.append(" ".join(f"{'+' if c > 0 else '-'}{names[i]}" for i, c in enumerate(row.tolist()) if c))
    return out


def _stream_failures(stream_a, stream_b):
    out = []
    for tag, t in (("A", stream_a), ("B", stream_b)):
        counts = torch.bincount(t.contiguous().view(torch.uint8).reshape(-1).long(), minlength=256)
        p = stats.chisquare(counts.numpy()).pvalue
        if p < P_MIN:
            out.append(f"bytes not uniform under secret {tag} (chi-square p={p:.2g})")
    p = stats.ks_2samp(torch.bitwise_right_shift(stream_a, 32).numpy(),
                       torch.bitwise_right_shift(stream_b, 32).numpy()).pvalue
    if p < P_MIN:
        out.append(f"A and B distributions differ (KS p={p:.2g})")
    return out


def _view_failures(view_a, view_b, include_reveal=False):
    failures = []
    ha, sa, ca = _split(view_a, include_reveal)
    hb, sb, cb = _split(view_b, include_reveal)
    if [(k, t.shape, t.dtype) for k, t in ca.items()] != [(k, t.shape, t.dtype) for k, t in cb.items()]:
        return ["transcript structure differs between the secrets"]
    if len(ha) != len(hb) or not all(torch.equal(a, b) for a, b in zip(ha, hb)):
        failures.append("share headers differ between the secrets")
    for name in sa:
        failures += [f"{name}: {f}" for f in _stream_failures(sa[name], sb[name])]
    names_a, comps_a = _dedupe(ca)
    names_b, comps_b = _dedupe(cb)
    if names_a != names_b:
        return failures + [f"equal components differ: {sorted(set(names_a) ^ set(names_b))}"]
    failures += _combination_failures(names_a, comps_a, comps_b)
    return failures


def test_views_do_not_depend_on_the_secret(parties):
    y = torch.randn(N, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 3
    views_a = parties.run(_view, SECRET_A, y)
    views_b = parties.run(_view, SECRET_B, y)
    for r in range(3):
        _, streams, comps = _split(views_a[r], include_reveal=False)
        assert len(streams) >= 3 and len(comps) >= 13  # the tests below did look at messages
        failures = _view_failures(views_a[r], views_b[r])
        assert not failures, f"party {r}'s view depends on the secret:\n" + "\n".join(failures)
    # parties 1 and 2 receive nothing when z is revealed to party 0 only
    for r in (1, 2):
        assert not [label for label, _, _ in views_a[r][1] if label.startswith("reveal/")]
    # negative control: party 0's view with the opened z must fail the same checks
    control = _view_failures(views_a[0], views_b[0], include_reveal=True)
    assert any("reveal/z" in f for f in control), control


def test_checks_flag_a_masking_mistake():
    """The combination test catches a message that is a share plus the secret (a missing mask)."""
    g = torch.Generator().manual_seed(6)
    held = torch.randint(-(2 ** 63), 2 ** 63 - 1, (N,), generator=g)
    other = torch.randint(-(2 ** 63), 2 ** 63 - 1, (N,), generator=g)
    names = ["held", "other", "leak"]
    secret_b = torch.full((N,), 1000 << 20)
    comps_a = torch.stack([held, other, held + 0])
    comps_b = torch.stack([held, other, held + secret_b])
    assert _combination_failures(names, comps_a, comps_b)
    assert not _combination_failures(names[:2], comps_a[:2], comps_b[:2])
