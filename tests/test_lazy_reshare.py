"""A secret x secret matrix product's resharing waits for the result's first use (tensor/shared.py PendingReshare):
opened at once, the product is opened from its additive shares and the resharing never runs.

Three real party processes; values against float64 torch within one truncation (ATOL_LINEAR, as tests/test_tensor.py);
costs exact: the truncation without its resharing is 2 rounds, 8 bytes per element from each party (P1 and P2 send
their parts to the opener P0, which sends one correction to P2); the opening to one party 8 bytes per element from
each of the other two.
"""
import torch

from tests.test_tensor import ATOL_LINEAR, _gen, _share


def _lazy_costs(party, a, b):
    from secure_lightning.tensor import reveal_tensor
    x, w = _share(party, a), _share(party, b)
    out = {}
    with party.comm.cost() as c:
        v = reveal_tensor(x @ w, to=0)
    out["to0"] = (c.bytes, c.rounds, v)
    with party.comm.cost() as c:
        v = reveal_tensor(x @ w)
    out["all"] = (c.bytes, c.rounds, v)
    with party.comm.cost() as c:
        y = x @ w                       # the block's end reshares it: the product's whole cost
    out["alone"] = (c.bytes, c.rounds)
    with party.comm.cost() as c:
        v = reveal_tensor(y * 2.0 + (x @ w))  # used: a waiting product is reshared where it is read
    out["used"] = (c.bytes, c.rounds, v)
    y = x @ w
    with party.comm.cost() as c:        # a product left waiting before a block settles outside its count
        pass
    out["before"] = (c.bytes, c.rounds)
    return out


def test_product_opened_at_once_skips_its_resharing(parties):
    a = torch.randn(6, 5, generator=_gen(1)) * 2
    b = torch.randn(5, 4, generator=_gen(2))
    n = 6 * 4
    ref = a.double() @ b.double()
    res = parties.run(_lazy_costs, a, b)
    for rank, out in enumerate(res):
        assert out["to0"][:2] == ((8 if rank == 0 else 16) * n, 3)  # before: 16, 16, 24 bytes and 4 rounds
        assert out["all"][:2] == ((8 + 16) * n, 3)                   # before: 24 bytes and 4 rounds
        assert out["alone"] == (16 * n, 3)
        assert out["before"] == (0, 0)
    assert (res[0]["to0"][2].double() - ref).abs().max() <= ATOL_LINEAR
    assert res[1]["to0"][2] is None and res[2]["to0"][2] is None
    for r in res:
        assert (r["all"][2].double() - ref).abs().max() <= ATOL_LINEAR
        assert (r["used"][2].double() - 3 * ref).abs().max() <= 4 * ATOL_LINEAR


def _guarded(party, a, b):
    from secure_lightning.encoding import FixedPointOverflowError
    from secure_lightning.protocols import guard
    from secure_lightning.tensor import reveal_tensor
    x, w = _share(party, a), _share(party, b)
    with guard.enabled(party):
        with party.comm.cost() as c:
            y = x @ w
            guard.check(party=party)    # the samples of the waiting product are reshared alone (1 round)
            v = reveal_tensor(y, to=0)
        try:
            reveal_tensor(x @ (w * 4096.0), to=0)
            caught = None
        except FixedPointOverflowError as e:
            caught = str(e)
    return c.bytes, c.rounds, v, caught


def test_guard_checks_a_product_waiting_for_its_resharing(parties):
    """Guard on: the check before the opening reshares the product's samples only, and a product out of range is
    caught before anything is opened (|x w| ~ 1e7 > 2^21 at f = 20)."""
    a = torch.full((8, 8), 40.0)
    b = torch.full((8, 8), 30.0)
    res = parties.run(_guarded, a, b)
    for nbytes, rounds, v, caught in res:
        assert rounds == 2 + 1 + 9 + 1  # truncation, samples' resharing, check, opening
        assert caught is not None and "matmul" in caught
    assert torch.allclose(res[0][2].double(), a.double() @ b.double(), atol=ATOL_LINEAR)
