"""Sharing, opening, resharing and the local (communication-free) ops, in three real processes.

Values: sharing then revealing returns the fixed-point encoding of the input, so |revealed - x| <= 0.5 ulp
(ulp = 2^-20) elementwise. Local ops are exact on the ring: the revealed result equals the same torch op in float64
applied to the encoded input (torch.equal), and is within n * 0.5 ulp of the op on the raw input (n = number of
summed terms). `mean` truncates once: within 1 ulp + 0.5 ulp * |mean| of the float64 mean of the encoded input.
Costs are asserted exactly.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from secure_lightning.encoding import FixedPoint, FixedPointRangeError
from secure_lightning.protocols import local as L
from secure_lightning.protocols.sharing import (
    Shares, add_public, check_same_shape, public_shares, random_shares, reshare, reveal, reveal_float, share,
    zero_share)

ULP = 2.0 ** -20
FP = FixedPoint()


def _quantize(x):
    return FP.decode(FP.encode(x))


def _catch(fn, *args, **kw):
    """Run fn in a party and return (error type name, message) or ('ok', result): raising would end the worker."""
    try:
        return "ok", fn(*args, **kw)
    except Exception as e:  # noqa: BLE001 - the test inspects the type
        return type(e).__name__, str(e)


# ---------------------------------------------------------------------------------------------------------------------
# share / reveal round trip

SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (2, 3, 4), (1, 1, 1, 1, 1, 1, 1, 2), (65,)]


def _round_trip(party, xs, owner):
    out = []
    for x in xs:
        s = share(x if party.rank == owner else None, owner, party=party, data=False)  # up to the hard limit
        assert isinstance(s, Shares) and s.cur.dtype == torch.int64 and s.prev.shape == x.shape
        out.append(reveal_float(s, party=party))
    return out


def test_share_reveal_round_trip_shapes_and_owners(parties):
    g = torch.Generator().manual_seed(10)
    xs = [torch.randn(s, generator=g, dtype=torch.float64) * 10 ** (i % 4) for i, s in enumerate(SHAPES)]
    xs.append(torch.tensor([0.0, -0.0, ULP, -ULP, 1e6, -1e6, FP.hard_limit * 0.99, -FP.hard_limit * 0.99]))
    xs.append(torch.arange(6, dtype=torch.int32).view(2, 3))  # integer dtypes are read as reals
    for owner in range(3):
        for res in parties.run(_round_trip, xs, owner):
            for x, got in zip(xs, res):
                assert got.shape == x.shape and got.dtype == torch.float64
                assert torch.equal(got, _quantize(x))
                assert (got - x.double()).abs().max().item() <= ULP / 2 if x.numel() else True


# ---------------------------------------------------------------------------------------------------------------------
# costs (exact, per party)

def _costs(party, n):
    x = torch.arange(n, dtype=torch.float64)
    costs = {}
    with party.comm.cost() as c:
        s = share(x if party.rank == 1 else None, 1, party=party)
    costs["share"] = c.total
    with party.comm.cost() as c:
        reveal(s, party=party)
    costs["reveal_all"] = c.total
    for to in range(3):
        with party.comm.cost() as c:
            reveal(s, to, party=party)
        costs[f"reveal_to_{to}"] = c.total
    with party.comm.cost() as c:
        reshare(s.cur, party=party)
    costs["reshare"] = c.total
    with party.comm.cost() as c:
        zero_share((n,), party=party)
        random_shares((n,), party=party)
    costs["correlated_randomness"] = c.total
    with party.comm.cost() as c:
        check_same_shape(s, party=party)
    costs["check_same_shape"] = c.total
    return {k: (v.rounds, v.bytes, v.messages) for k, v in costs.items()}


def test_share_reveal_reshare_costs_exact(parties):
    n = 37
    res = parties.run(_costs, n)
    for r, c in enumerate(res):
        owner = r == 1
        assert c["share"] == (2, (2 * 80 + 2 * 8 * n) if owner else 0, 4 if owner else 0)
        assert c["reveal_all"] == (1, 8 * n, 1)
        for to in range(3):  # only P_{to-1} sends (its prev share x_{to-2} is the one `to` lacks)
            sends = r == (to - 1) % 3
            assert c[f"reveal_to_{to}"] == (1, 8 * n if sends else 0, 1 if sends else 0)
        assert c["reshare"] == (1, 8 * n, 1)
        assert c["correlated_randomness"] == (0, 0, 0)
        assert c["check_same_shape"] == (1, 160, 2)


# ---------------------------------------------------------------------------------------------------------------------
# reveal to one party, audit

def _reveal_to(party, x, to):
    s = share(x if party.rank == 0 else None, 0, party=party)
    v = reveal_float(s, to, party=party, label="logits")
    return v, [(o.label, o.shape, o.to) for o in party.audit.records]


def test_reveal_to_one_party_only_and_audit(parties):
    x = torch.randn(3, 4, dtype=torch.float64)
    for to in range(3):
        res = parties.run(_reveal_to, x, to)
        for r, (v, audit) in enumerate(res):
            if r == to:
                assert torch.equal(v, _quantize(x))
            else:
                assert v is None
            assert audit == [("logits", (3, 4), f"party {to}")]  # every party records what it helped open


def _reveal_bad_to(party):
    s = public_shares(torch.zeros(2, dtype=torch.int64), party=party)
    return _catch(reveal, s, 3, party=party)


def test_reveal_rejects_bad_recipient(parties):
    for kind, msg in parties.run(_reveal_bad_to):
        assert kind == "ValueError" and "to must be" in msg


# ---------------------------------------------------------------------------------------------------------------------
# errors: refused on all parties, no hang, streams stay in step

def _share_bad_then_good(party, bad, owner):
    got = _catch(share, bad if party.rank == owner else None, owner, party=party, label="bad_input")
    x = torch.tensor([1.5, -2.25])
    ok = reveal_float(share(x if party.rank == owner else None, owner, party=party), party=party)
    return got, ok


@pytest.mark.parametrize("bad,kind,words", [
    (torch.tensor([1.0, float("nan")]), "FixedPointRangeError", "NaN/inf"),
    (torch.tensor([float("inf")]), "FixedPointRangeError", "NaN/inf"),
    (torch.tensor([-float("inf"), 0.0]), "FixedPointRangeError", "NaN/inf"),
    (torch.tensor([2.0 ** 42]), "FixedPointRangeError", "range"),
    (torch.tensor([0.5, -(2.0 ** 22)]), "FixedPointRangeError", "normalise the data"),  # data: |x| < 2^(62-2f)
    (torch.tensor([1, 2], dtype=torch.int64), "TypeError", "int64"),
    (torch.tensor([1 + 2j]), "TypeError", "complex"),
    (torch.zeros((1,) * 9), "ValueError", "dimensions"),
    (None, "ValueError", "must pass a tensor"),
])
def test_share_refuses_bad_input_on_all_parties(parties, bad, kind, words):
    owner = 2
    for r, ((got_kind, msg), ok) in enumerate(parties.run(_share_bad_then_good, bad, owner)):
        assert got_kind == kind, msg
        assert "bad_input" in msg
        if r == owner:
            assert words in msg  # the owner names the cause; the others say who refused and why in general
        else:
            assert f"party {owner} could not share" in msg
        assert torch.equal(ok, torch.tensor([1.5, -2.25], dtype=torch.float64))  # nothing out of step


def test_encode_errors_name_the_problem():
    with pytest.raises(TypeError, match="already int64"):
        FP.encode(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="complex"):
        FP.encode(torch.tensor([1j]))
    with pytest.raises(FixedPointRangeError, match="NaN/inf"):
        FP.encode(torch.tensor([float("nan")]))
    with pytest.raises(FixedPointRangeError, match="outside the fixed-point range"):
        FP.encode(torch.tensor([-(2.0 ** 42)]))
    assert FP.encode(torch.tensor([2.0 ** 41])).item() == 2 ** 61


def _mismatch(party):
    shape = (4, 3) if party.rank == 1 else (3, 4)
    s = public_shares(torch.zeros(shape, dtype=torch.int64), party=party)
    bad = _catch(check_same_shape, s, party=party, what="weights")
    good = _catch(check_same_shape, public_shares(torch.zeros(5, dtype=torch.int64), party=party), party=party)
    return bad, good


def test_check_same_shape_raises_on_all_parties(parties):
    for r, ((kind, msg), good) in enumerate(parties.run(_mismatch)):
        assert kind == "ValueError" and msg.startswith("weights:") and "(4, 3)" in msg and "(3, 4)" in msg, msg
        assert good == ("ok", None)


def _add_public_float(party):
    s = public_shares(torch.zeros(2, dtype=torch.int64), party=party)
    return _catch(add_public, s, torch.ones(2), party=party)


def test_ring_add_public_rejects_floats(parties):
    for kind, msg in parties.run(_add_public_float):
        assert kind == "TypeError" and "local.add_public" in msg


# ---------------------------------------------------------------------------------------------------------------------
# local ops (protocols/local.py): Cost 0, exact against float64 torch on the encoded input

def _local_ops(party, x, y, v):
    sx = share(x if party.rank == 0 else None, 0, party=party)
    sy = share(y if party.rank == 1 else None, 1, party=party)
    sv = share(v if party.rank == 2 else None, 2, party=party)
    before = (sx.cur.clone(), sx.prev.clone())
    with party.comm.cost() as c:
        ops = {
            "neg": L.neg(sx),
            "add": L.add(sx, sy),
            "sub": L.sub(sx, sy),
            "add_bcast": L.add(sx, sv),
            "add_public": L.add_public(sx, 2.5, party=party),
            "add_public_tensor": L.add_public(sx, torch.tensor([1.0, -1.0, 0.5, 0.25]), party=party),
            "sub_public": L.sub_public(sx, 0.75, party=party),
            "rsub_public": L.rsub_public(1.0, sx, party=party),
            "mul_int": L.mul_int(sx, -3),
            "mul_int_tensor": L.mul_int(sx, torch.tensor([1, 2, 3, -4])),
            "sum_all": L.sum(sx),
            "sum_all_keep": L.sum(sx, keepdim=True),
            "sum_1": L.sum(sx, 1),
            "sum_02_keep": L.sum(sx, (0, 2), keepdim=True),
            "sum_neg": L.sum(sx, -1),
            "view": L.view(sx, 6, 4),
            "view_tuple": L.view(sx, (3, 8)),
            "reshape": L.reshape(L.permute(sx, 2, 0, 1), -1, 2),
            "flatten": L.flatten(sx, 1),
            "squeeze_unsqueeze": L.squeeze(L.unsqueeze(sx, 1), 1),
            "permute": L.permute(sx, (1, 2, 0)),
            "transpose": L.transpose(sx, 0, 2),
            "expand": L.expand(L.index(sx, (slice(None), slice(0, 1))), 2, 5, 4),
            "cat": L.cat([sx, sy], dim=1),
            "stack": L.stack([sx, sy], dim=-1),
            "index_int": L.index(sx, 1),
            "index_slices": L.index(sx, (Ellipsis, slice(1, None, 2))),
            "index_tensor": L.index(sx, torch.tensor([1, 0, 1])),
            "index_mask": L.index(sx, x > 0),
            "index_none": L.index(sx, (None, 0)),
            "pad": L.pad(sx, (1, 2, 0, 1)),
            "pad_crop": L.pad(sx, (-1, 0)),
            "flip": L.flip(sx, (0, 2)),
        }
    unchanged = torch.equal(before[0], sx.cur) and torch.equal(before[1], sx.prev)
    with party.comm.cost() as cm:
        means = {"mean_all": L.mean(sx, party=party), "mean_1": L.mean(sx, 1, party=party),
                 "mean_02_keep": L.mean(sx, (0, 2), keepdim=True, party=party),
                 "mean_2_pow2": L.mean(sx, 2, party=party), "mean_single": L.mean(sv, 0, party=party)}
    out = {k: reveal_float(s, party=party) for k, s in {**ops, **means}.items()}
    return out, (c.total.rounds, c.total.bytes), (cm.total.rounds, cm.total.bytes), unchanged


def _plain_ops(x, y, v):
    return {
        "neg": -x, "add": x + y, "sub": x - y, "add_bcast": x + v,
        "add_public": x + 2.5, "add_public_tensor": x + torch.tensor([1.0, -1.0, 0.5, 0.25], dtype=torch.float64),
        "sub_public": x - 0.75, "rsub_public": 1.0 - x, "mul_int": x * -3,
        "mul_int_tensor": x * torch.tensor([1, 2, 3, -4], dtype=torch.float64),
        "sum_all": x.sum(), "sum_all_keep": x.sum().reshape(1, 1, 1), "sum_1": x.sum(1),
        "sum_02_keep": x.sum((0, 2), keepdim=True), "sum_neg": x.sum(-1),
        "view": x.view(6, 4), "view_tuple": x.view(3, 8), "reshape": x.permute(2, 0, 1).reshape(-1, 2),
        "flatten": x.flatten(1), "squeeze_unsqueeze": x, "permute": x.permute(1, 2, 0), "transpose": x.transpose(0, 2),
        "expand": x[:, 0:1].expand(2, 5, 4), "cat": torch.cat([x, y], 1), "stack": torch.stack([x, y], -1),
        "index_int": x[1], "index_slices": x[..., 1::2], "index_tensor": x[torch.tensor([1, 0, 1])],
        "index_mask": x[x > 0], "index_none": x[None, 0], "pad": F.pad(x, (1, 2, 0, 1)), "pad_crop": F.pad(x, (-1, 0)),
        "flip": x.flip((0, 2)),
    }


def test_local_ops_cost_zero_and_exact(parties):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64) * 100
    y = torch.randn(2, 3, 4, generator=g, dtype=torch.float64) * 100
    v = torch.randn(4, generator=g, dtype=torch.float64)
    want = _plain_ops(_quantize(x), _quantize(y), _quantize(v))
    want_raw = _plain_ops(x, y, v)
    res = parties.run(_local_ops, x, y, v)
    for out, cost, mean_cost, unchanged in res:
        assert cost == (0, 0), "local ops must not communicate"
        assert unchanged, "inputs must not be mutated"
        for k, w in want.items():
            assert out[k].shape == w.shape, k
            assert torch.equal(out[k], w), k  # exact on the ring
            # vs the raw float64 input: 0.5 ulp encoding error per input term (24 terms at most, factor 4 at most)
            tol = 12 * ULP if k.startswith("sum") else 2 * ULP
            assert (out[k] - want_raw[k]).abs().max().item() <= tol if out[k].numel() else True, k
        # mean: mean_all (n = 24), mean_1 (n = 3), mean_02_keep (n = 8), mean_2_pow2 (n = 4), mean_single (n = 4)
        xq, vq = _quantize(x), _quantize(v)
        for k, w in {"mean_all": xq.mean(), "mean_1": xq.mean(1), "mean_02_keep": xq.mean((0, 2), keepdim=True),
                     "mean_2_pow2": xq.mean(2), "mean_single": vq.mean(0)}.items():
            assert out[k].shape == w.shape, k
            assert (out[k] - w).abs().max().item() <= ULP * (1 + 0.5 * w.abs().max().item()) + 1e-12, k
        # five truncations (3 rounds each), 16 bytes per output element: outputs 1 + 8 + 3 + 6 + 1
        assert mean_cost == (5 * 3, 16 * 19)


def _mean_power_of_two_exact(party, x):
    s = share(x if party.rank == 0 else None, 0, party=party)
    return reveal(L.mean(s, 0, party=party), party=party), reveal(L.sum(s, 0), party=party)


def test_mean_power_of_two_is_a_floor(parties):
    x = torch.randn(8, 50, dtype=torch.float64) * 1000
    mean_ring, sum_ring = parties.run(_mean_power_of_two_exact, x)[0]
    err = mean_ring - torch.div(sum_ring, 8, rounding_mode="floor")
    assert ((err == 0) | (err == 1)).all()


def test_mean_precision_of_one_over_n():
    # the constant c = round(2^(f+e)/n) approximates 1/n to n * 2^-(f+e+1): <= 0.5 ulp relative for n <= 2^e
    f = FP.frac_bits
    for n in (3, 5, 7, 100, 255):
        e = min(math.ceil(math.log2(n)), L.MEAN_MAX_EXTRA_BITS)
        c = round(2 ** (f + e) / n)
        assert abs(c / 2 ** (f + e) - 1 / n) * n <= 2.0 ** -(f + 1)


def test_local_type_errors():
    s = Shares(torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(TypeError, match="mul_public"):
        L.mul_int(s, 0.5)
    with pytest.raises(TypeError, match="Shares only"):
        L.cat([s, torch.zeros(2)])
    with pytest.raises(ValueError, match="at least one"):
        L.stack([])
