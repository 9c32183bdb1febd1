"""Comparisons, ReLU, max/argmax and pooling against float64 torch, in three real processes.

Tolerances: comparisons, ReLU, max and the onehots are exact on the encoded values (the only error is the 0.5 ulp
input encoding, ulp = 2^-20); max pooling backward routes encoded gradients exactly; average pooling is off by at most
1 ulp of truncation + |window sum| * 2^-21 (rounding of the public 1/divisor) + 0.5 ulp input encoding.
Costs are asserted exactly (bytes and rounds per party, sender = P0). No protocol opens anything: party.audit is
checked to be empty before the test reveals its results.
"""
import math

import torch
import torch.nn.functional as F

from secure_lightning.protocols import compare as CMP
from secure_lightning.protocols import pooling as POOL
from secure_lightning.protocols.sharing import reveal, reveal_float, share

ULP = 2.0 ** -20


def _nb(bits):
    return (bits + 7) // 8


def T(n):
    return sum(_nb(b * n) for b in (63, 31, 15, 7, 3, 1))


def S(n):
    return 2 * (8 * n + _nb(63 * n))


def H(n):
    return _nb(63 * n)


def _enc(x):
    return torch.round(x * 2 ** 20).long()


def _vals(n, seed, scale=50.0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=g, dtype=torch.float64) * scale
    v[: n // 4] = torch.randint(-3, 4, (n // 4,), generator=g).double()  # many ties and zeros
    edge = torch.tensor([0.0, ULP, -ULP, 2 * ULP, -2 * ULP, 4e6, -4e6, 1e-9, -1e-9], dtype=torch.float64)
    return torch.cat([edge, v])


# ---------------------------------------------------------------------------------------------------------------------
# Comparisons

def _comparisons(party, x, y):
    a = share(x if party.rank == 0 else None, 0, party=party)
    b = share(y if party.rank == 1 else None, 1, party=party)
    with party.comm.cost() as c:
        lt = CMP.lt(a, b, party=party, sender=0)
    outs = [lt, CMP.gt(a, b, party=party), CMP.le(a, b, party=party), CMP.ge(a, b, party=party),
            CMP.eq(a, b, party=party),
            CMP.lt(a, 1.5, party=party), CMP.ge(a, y, party=party), CMP.eq(a, y, party=party),
            CMP.ltz(a, party=party)]
    with party.comm.cost() as ce:
        CMP.eq(a, b, party=party, sender=0)
    audit = len(party.audit)
    return [reveal(o, party=party) for o in outs], c.total, ce.total, audit


def test_comparisons_exact_with_costs(parties):
    x = _vals(400, 1)
    y = torch.cat([x[:150], _vals(400, 2)[150:]])  # first 150 equal
    y[150:200] = x[150:200] + ULP  # off by one ulp
    ex, ey = _enc(x), _enc(y)
    want = [ex < ey, ex > ey, ex <= ey, ex >= ey, ex == ey, ex < _enc(torch.tensor(1.5)), ex >= ey, ex == ey, ex < 0]
    n = x.numel()
    res = parties.run(_comparisons, x, y)
    for rank, (outs, c, ce, audit) in enumerate(res):
        assert audit == 0
        for o, w in zip(outs, want):
            assert torch.equal(o, w.long())
        if rank == 0:
            assert (c.rounds, c.bytes) == (8, S(n) + T(n) + 16 * n)
            assert (ce.rounds, ce.bytes) == (8, S(2 * n) + T(2 * n) + 32 * n)
        else:
            assert (c.rounds, c.bytes) == (8, H(n) + T(n) + 8 * n)
            assert (ce.rounds, ce.bytes) == (8, H(2 * n) + T(2 * n) + 16 * n)


def _mux(party, bits, a, b):
    sb = share(bits if party.rank == 0 else None, 0, party=party)
    # bits as ring 0/1 integers: share the fixed-point encoding then use the ge-bit of the value instead
    bit = CMP.ge(sb, 0.5, party=party)
    sa, sbb = share(a if party.rank == 1 else None, 1, party=party), share(b if party.rank == 2 else None, 2,
                                                                             party=party)
    with party.comm.cost() as c:
        m = CMP.mux(bit, sa, sbb, party=party)
    return reveal_float(m, party=party), c.total


def test_mux(parties):
    g = torch.Generator().manual_seed(3)
    bits = torch.randint(0, 2, (50,), generator=g).double()
    a, b = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    for out, c in parties.run(_mux, bits, a, b):
        assert torch.allclose(out, torch.where(bits > 0, a, b), atol=ULP)
        assert (c.rounds, c.bytes) == (1, 8 * 50)


# ---------------------------------------------------------------------------------------------------------------------
# ReLU

def _relu(party, x, g):
    a = share(x if party.rank == 0 else None, 0, party=party)
    sg = share(g if party.rank == 0 else None, 0, party=party)
    with party.comm.cost() as c:
        y, bit = CMP.relu(a, party=party, sender=0)
    with party.comm.cost() as cb:
        gx = CMP.relu_backward(sg, bit, party=party)
    audit = len(party.audit)
    return reveal(y, party=party), reveal(bit, party=party), reveal(gx, party=party), c.total, cb.total, audit


def test_relu_exact_and_cost(parties):
    x = _vals(991, 4).view(10, -1)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    n = x.numel()
    res = parties.run(_relu, x, g)
    ex = _enc(x)
    for rank, (y, bit, gx, c, cb, audit) in enumerate(res):
        assert audit == 0
        assert torch.equal(y, ex.clamp(min=0))                      # exact on the encoding
        assert (y.double() / 2 ** 20 - F.relu(x)).abs().max() <= 0.5 * ULP  # within encoding of float relu
        assert torch.equal(bit, (ex > 0).long())                    # torch's threshold_backward convention
        assert torch.equal(gx, _enc(g) * (ex > 0).long())
        sent = S(n) + T(n) + 32 * n if rank == 0 else H(n) + T(n) + 16 * n
        assert (c.rounds, c.bytes) == (8, sent)
        assert (cb.rounds, cb.bytes) == (1, 8 * n)


def _relu_balanced(party, x):
    a = share(x if party.rank == 0 else None, 0, party=party)
    with party.comm.cost() as c:
        y, bit = CMP.relu(a, party=party)  # default: sender role spread over the three parties
    with party.comm.cost() as cl:
        lt = CMP.lt(a, 0.25, party=party)
    return reveal(y, party=party), reveal(bit, party=party), reveal(lt, party=party), c.total, cl.total


def test_relu_and_lt_balanced_cost(parties):
    x = _vals(1008 - 9, 10).view(9, -1)  # n = 1008 = 3 m, m = 336 (chunks pack to whole bytes)
    n, m = x.numel(), x.numel() // 3
    ex = _enc(x)
    split = 2 * (8 * m + _nb(126 * m))  # per peer: own chunk's (u, a) + the helper word of another chunk
    for y, bit, lt, c, cl in parties.run(_relu_balanced, x):
        assert torch.equal(y, ex.clamp(min=0)) and torch.equal(bit, (ex > 0).long())
        assert torch.equal(lt, (ex < _enc(torch.tensor(0.25))).long())
        assert (c.rounds, c.bytes) == (8, split + T(n) + 8 * 8 * m)    # inject: 4m sent as sender, 4m as helper
        assert (cl.rounds, cl.bytes) == (8, split + T(n) + 8 * 4 * m)  # b2a: 2m as sender, 2m as helper


def test_relu_and_lt_relayed_balanced_cost(parties):
    """n >= convert.RELAY_FROM: the inject round is relayed (one more round; the sender sends to P_n only)."""
    from secure_lightning.protocols.convert import RELAY_FROM
    m = (RELAY_FROM // 3 + 8) // 8 * 8  # n = 3 m, m a multiple of 8 (chunks pack to whole bytes)
    x = _vals(3 * m - 9, 11).view(3, -1)
    n = x.numel()
    assert n == 3 * m and n >= RELAY_FROM
    ex = _enc(x)
    split = 2 * (8 * m + _nb(126 * m))
    for y, bit, lt, c, cl in parties.run(_relu_balanced, x):
        assert torch.equal(y, ex.clamp(min=0)) and torch.equal(bit, (ex > 0).long())
        assert torch.equal(lt, (ex < _enc(torch.tensor(0.25))).long())
        assert (c.rounds, c.bytes) == (9, split + T(n) + 8 * 6 * m)   # inject: 2m as sender, 2m per other role
        assert (cl.rounds, cl.bytes) == (9, split + T(n) + 8 * 3 * m)  # b2a: m per role


# ---------------------------------------------------------------------------------------------------------------------
# Max / argmax

def _max(party, x, dims):
    a = share(x if party.rank == 0 else None, 0, party=party)
    out = []
    for dim, keepdim in dims:
        with party.comm.cost() as c:
            v, oh = CMP.max(a, dim, keepdim, party=party, sender=0)
        am = CMP.argmax(a, dim, party=party)
        out.append((v, oh, am, c.total))
    audit = len(party.audit)
    return [(reveal(v, party=party), reveal(oh, party=party), reveal(am, party=party), c) for v, oh, am, c in out], audit


def _max_cost(R, n, rank):
    """Bytes of the max tree for R rows of n values (sender P0), following the docstring of compare.max."""
    owner, m, total, level = list(range(n)), n, 0, 0
    while m > 1:
        k = m // 2
        N = R * k
        q = sum(1 for o in owner if o < 2 * k)
        if rank == 0:
            total += S(N) + T(N) + (32 * N if level == 0 else 16 * (2 * N + R * q))
        else:
            total += H(N) + T(N) + (16 * N if level == 0 else 8 * (N + R * q))
        owner = [o // 2 if o < 2 * k else k for o in owner]
        m, level = k + m % 2, level + 1
    return total, level


def test_max_argmax_ties_and_cost(parties):
    g = torch.Generator().manual_seed(6)
    x = torch.randint(-3, 4, (4, 5, 6), generator=g).double() / 4  # many ties
    x[0, 0] = 7.0  # all equal along dim 1... set a row of ties
    x[1, :, 2] = -1.0
    dims = [(1, False), (-1, True), (0, False)]
    allres = parties.run(_max, x, dims)
    for rank, (outs, audit) in enumerate(allres):
        assert audit == 0
        for (dim, keepdim), (v, oh, am, c) in zip(dims, outs):
            wv, wi = torch.max(x, dim, keepdim=keepdim)
            assert torch.equal(v, _enc(wv))
            idx = torch.argmax(x, dim, keepdim=True)  # first maximum
            want_oh = torch.zeros_like(x, dtype=torch.long).scatter_(dim, idx, 1)
            assert torch.equal(oh, want_oh) and torch.equal(am, want_oh)
            n = x.shape[dim]
            sent, levels = _max_cost(x.numel() // n, n, rank)
            assert levels == math.ceil(math.log2(n))
            assert (c.rounds, c.bytes) == (8 * levels, sent)


def _max_sizes(party, xs):
    out = []
    for x in xs:
        a = share(x if party.rank == 0 else None, 0, party=party)
        v, oh = CMP.max(a, -1, party=party)
        out.append((reveal(v, party=party), reveal(oh, party=party)))
    return out


def test_max_many_lengths(parties):
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(3, n, generator=g, dtype=torch.float64) * 100 for n in (1, 2, 3, 7, 8, 9, 16)]
    for (v, oh), x in zip(parties.run(_max_sizes, xs)[0], xs):
        assert torch.equal(v, _enc(x).max(-1).values)
        assert torch.equal(oh, F.one_hot(_enc(x).argmax(-1), x.shape[-1]))


# ---------------------------------------------------------------------------------------------------------------------
# Pooling

MAXPOOL_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=(1, 2), ceil_mode=True),
]


def _maxpool(party, x, g_list):
    a = share(x if party.rank == 0 else None, 0, party=party)
    out = []
    for kw, gr in zip(MAXPOOL_CASES, g_list):
        with party.comm.cost() as c:
            y, saved = CMP.max_pool2d(a, **kw, party=party, sender=0)
        sg = share(gr if party.rank == 0 else None, 0, party=party)
        with party.comm.cost() as cb:
            gx = CMP.max_pool2d_backward(sg, saved, party=party)
        out.append((y, gx, c.total, cb.total))
    a3 = a.map(lambda t: t[0])  # unbatched (C, H, W)
    y3, _ = CMP.max_pool2d(a3, 2, party=party)
    audit = len(party.audit)
    return ([(reveal(y, party=party), reveal(gx, party=party), c, cb) for y, gx, c, cb in out],
            reveal(y3, party=party), audit)


def test_max_pool2d_forward_backward_and_cost(parties):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 7, 8, generator=gen, dtype=torch.float64) * 10
    gs = [torch.randn(F.max_pool2d(x, **kw).shape, generator=gen, dtype=torch.float64) for kw in MAXPOOL_CASES]
    res = parties.run(_maxpool, x, gs)
    for rank, (outs, y3, audit) in enumerate(res):
        assert audit == 0
        assert torch.equal(y3, _enc(F.max_pool2d(x[0], 2)))
        for kw, gr, (y, gx, c, cb) in zip(MAXPOOL_CASES, gs, outs):
            xr = x.clone().requires_grad_(True)
            want = F.max_pool2d(xr, **kw)
            want.backward(gr)
            assert torch.equal(y, _enc(want.detach()))  # max of encoded values is the encoded max
            assert (gx.double() / 2 ** 20 - xr.grad).abs().max() <= 0.5 * ULP * 4 + 1e-12
            kh, kw_ = (kw["kernel_size"],) * 2 if isinstance(kw["kernel_size"], int) else kw["kernel_size"]
            sent, levels = _max_cost(want.numel(), kh * kw_, rank)
            assert (c.rounds, c.bytes) == (8 * levels, sent)
            assert (cb.rounds, cb.bytes) == (1, 8 * want.numel() * kh * kw_)


AVG_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), divisor_override=5),
]
ADAPTIVE = [(3, 4), 1, (None, 2), (7, 9)]


def _avgpool(party, x, gs, ags):
    a = share(x if party.rank == 0 else None, 0, party=party)
    out, aout = [], []
    for kw, gr in zip(AVG_CASES, gs):
        with party.comm.cost() as c:
            y = POOL.avg_pool2d(a, **kw, party=party)
        sg = share(gr if party.rank == 0 else None, 0, party=party)
        with party.comm.cost() as cb:
            gx = POOL.avg_pool2d_backward(sg, x.shape, **kw, party=party)
        out.append((y, gx, c.total, cb.total))
    for osz, gr in zip(ADAPTIVE, ags):
        with party.comm.cost() as c:
            y = POOL.adaptive_avg_pool2d(a, osz, party=party)
        sg = share(gr if party.rank == 0 else None, 0, party=party)
        gx = POOL.adaptive_avg_pool2d_backward(sg, x.shape, party=party)
        aout.append((y, gx, c.total))
    audit = len(party.audit)
    rf = lambda s: reveal_float(s, party=party)  # noqa: E731
    return ([(rf(y), rf(gx), c, cb) for y, gx, c, cb in out], [(rf(y), rf(gx), c) for y, gx, c in aout], audit)


def test_avg_pools_forward_backward_and_cost(parties):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 7, 9, generator=gen, dtype=torch.float64) * 5
    gs = [torch.randn(F.avg_pool2d(x, **kw).shape, generator=gen, dtype=torch.float64) for kw in AVG_CASES]
    ags = [torch.randn(F.adaptive_avg_pool2d(x, o).shape, generator=gen, dtype=torch.float64) for o in ADAPTIVE]
    res = parties.run(_avgpool, x, gs, ags)
    xmax = x.abs().max().item()
    for outs, aouts, audit in res:
        assert audit == 0
        for kw, gr, (y, gx, c, cb) in zip(AVG_CASES, gs, outs):
            xr = x.clone().requires_grad_(True)
            want = F.avg_pool2d(xr, **kw)
            want.backward(gr)
            K = 6 if kw.get("divisor_override") else 9
            assert (y - want.detach()).abs().max() <= 2 * ULP + K * xmax * 2 ** -21
            assert (gx - xr.grad).abs().max() <= 4 * (2 * ULP + 4 * 2 ** -21)  # <= 4 windows overlap, |g| < 4
            assert (c.rounds, c.bytes) == (3, 16 * want.numel())
            assert (cb.rounds, cb.bytes) == (3, 16 * gr.numel())
        for osz, gr, (y, gx, c) in zip(ADAPTIVE, ags, aouts):
            xr = x.clone().requires_grad_(True)
            want = F.adaptive_avg_pool2d(xr, osz)
            want.backward(gr)
            assert (y - want.detach()).abs().max() <= 2 * ULP + 63 * xmax * 2 ** -21
            assert (gx - xr.grad).abs().max() <= 4 * (2 * ULP + 4 * 2 ** -21)
            assert (c.rounds, c.bytes) == (3, 16 * want.numel())


def _global_avgpool(party, x, g):
    a = share(x if party.rank == 0 else None, 0, party=party)
    sg = share(g if party.rank == 0 else None, 0, party=party)
    with party.comm.cost() as c:
        y = POOL.avg_pool2d(a, 7, party=party)
    ya = POOL.adaptive_avg_pool2d(a, 1, party=party)
    gx = POOL.avg_pool2d_backward(sg, x.shape, 7, party=party)
    gxa = POOL.adaptive_avg_pool2d_backward(sg, x.shape, party=party)
    return [reveal_float(v, party=party) for v in (y, ya, gx, gxa)] + [c.total]


def test_avg_pool_7x7_divides_with_extra_precision(parties):
    """1/49 is encoded with f + 5 fractional bits (5 = floor(log2 49)): error <= 1 ulp + |sum| 2^-26 (< 2^-20
    relative), where a plain 20-bit 1/49 would be off by 2.3e-5 relative (1.4e-4 on these means ~6)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.rand(2, 4, 7, 7, generator=gen, dtype=torch.float64) * 8 + 2
    g = torch.rand(2, 4, 1, 1, generator=gen, dtype=torch.float64) * 8 + 2
    want = F.avg_pool2d(x, 7)
    want_g = (g / 49).expand(x.shape)
    for y, ya, gx, gxa, c in parties.run(_global_avgpool, x, g):
        assert (c.rounds, c.bytes) == (3, 16 * want.numel())
        for out in (y, ya):
            assert ((out - want).abs() <= 2 * ULP + 49 * want * 2.0 ** -26).all()
        for out in (gx, gxa):
            assert ((out - want_g).abs() <= 2 * ULP + g * 2.0 ** -26).all()


# ---------------------------------------------------------------------------------------------------------------------
# Privacy: what a party receives looks uniform, whatever the secret

def _received_bits(party, x, fn_name):
    a = share(x if party.rank == 0 else None, 0, party=party)
    rounds = []
    real_round = party.comm.round

    def recording_round(sends=None, recv_specs=None):  # the real round; only keeps a copy of what arrives
        got = real_round(sends, recv_specs)
        rounds.append(torch.cat([t.reshape(-1).view(torch.uint8) for t in got.values()]) if got else None)
        return got

    party.comm.round = recording_round
    try:
        getattr(CMP, fn_name)(a, party=party)
    finally:
        del party.comm.round
    return [r for r in rounds if r is not None]


def test_received_messages_uniform_for_different_secrets(parties):
    n = 4800
    for fn in ("relu", "ltz"):
        for x in (torch.zeros(n, dtype=torch.float64), torch.full((n,), 3.0, dtype=torch.float64),
                  torch.linspace(-5, 5, n, dtype=torch.float64)):
            for rank, rounds in enumerate(parties.run(_received_bits, x, fn)):
                assert len(rounds) >= 7
                for buf in rounds:
                    bits = ((buf.view(-1, 1) >> torch.arange(8, dtype=torch.uint8)) & 1).double()
                    k = bits.numel()
                    # each of the 8 bit positions of the received bytes is a fair coin (5 sigma), pad bits aside
                    tol = 5 * 0.5 / math.sqrt(k / 8) + 8 / k
                    assert (bits.mean(0) - 0.5).abs().max() <= tol, (fn, rank, k)
