"""Deferred power-of-two scales (tensor/shared.py PendingBits): an average pool with a 2^e window hands the next
product its window sums with e extra fractional bits, and the product truncates once by f + e.

Checked against float64 torch in three real party processes (tolerances as tests/test_tensor.py: a product adds
<= 1 ulp of truncation plus the inputs' rounding; ulp = 2^-20), with exact costs: pool + conv costs one truncation
(3 rounds) instead of two, and every way out of the deferred state (an op that does not fold the scale, an in-place
write, a view read after its base settled) gives the same values as plain torch.
"""
import torch
import torch.nn.functional as F

from tests.test_tensor import ATOL_LINEAR, _gen, _share, check


def _pool_conv(x, w):
    return F.conv2d(F.relu(F.avg_pool2d(x, 2)), w)


def test_pool_then_conv_and_linear_match_plain(parties):
    x = torch.randn(2, 3, 8, 8, generator=_gen(1)) * 3
    w = torch.randn(4, 3, 3, 3, generator=_gen(2)) * 0.5
    check(parties, _pool_conv, [x, w])
    lw = torch.randn(5, 3 * 4 * 4, generator=_gen(3)) * 0.2
    check(parties, lambda x, lw: F.linear(F.avg_pool2d(x, 2).flatten(1), lw), [x, lw])


def test_ops_that_do_not_fold_the_scale_settle_it_first(parties):
    x = torch.randn(2, 3, 8, 8, generator=_gen(4)) * 3
    check(parties, lambda x: torch.sigmoid(F.avg_pool2d(x, 2)) + F.avg_pool2d(x, 4).sum(), [x], atol=1e-4)
    check(parties, lambda x: F.avg_pool2d(x, 2) * 3.0 - F.avg_pool2d(x, 2, stride=1)[..., ::2, ::2], [x])
    check(parties, lambda x: F.avg_pool2d(x, 3), [x])  # divisor 9: the pool truncates itself


def _cost_of_pool_conv(party, x, w):
    from secure_lightning.tensor import reveal_tensor
    xs, ws = _share(party, x), _share(party, w)
    with torch.no_grad():
        with party.comm.cost() as c_pool:
            p = F.avg_pool2d(xs, 2)
        with party.comm.cost() as c_conv:
            y = F.conv2d(p, ws)
    return c_pool.total, c_conv.total, reveal_tensor(y)


def test_pool_costs_nothing_and_the_conv_one_truncation(parties):
    x = torch.randn(1, 2, 6, 6, generator=_gen(5))
    w = torch.randn(3, 2, 3, 3, generator=_gen(6))
    res = parties.run(_cost_of_pool_conv, x, w)
    for rank, (pool, conv, y) in enumerate(res):
        assert pool.rounds == 0 and pool.bytes == 0
        assert conv.rounds == 3 and conv.bytes == 16 * 3 * 1 * 1  # one truncation of the (1, 3, 1, 1) output
    want = F.conv2d(F.avg_pool2d(x.double(), 2), w.double())
    assert (res[0][2].double() - want).abs().max() <= ATOL_LINEAR


def _aliasing(party, x):
    from secure_lightning.tensor import reveal_tensor
    p = F.avg_pool2d(_share(party, x), 2)   # deferred
    v = p.view(-1)                          # a view of the same base: settles with it
    a = p * 2.0                             # settles p (and v's base) in place
    p.add_(1.0)                             # an in-place write after settling: the view sees it
    return reveal_tensor(a), reveal_tensor(v), reveal_tensor(p)


def test_views_settle_with_their_base_and_see_in_place_writes(parties):
    x = torch.randn(1, 1, 4, 4, generator=_gen(7)) * 5
    a, v, p = parties.run(_aliasing, x)[0]
    want = F.avg_pool2d(x.double(), 2)
    assert (a.double() - 2 * want).abs().max() <= 4 * 2.0 ** -20
    assert (p.double() - (want + 1)).abs().max() <= 2 * 2.0 ** -20
    assert torch.equal(v, p.reshape(-1))


def _pool_block(x, w, b, lw):
    return F.linear(F.avg_pool2d(F.relu(F.conv2d(x, w, b)), 2).flatten(1), lw)


def test_pool_backward_defers_its_scale_into_the_gradients_products(parties):
    """Backward of a 2x2 average pool spreads the gradient without dividing it: ReLU's backward passes the 2 extra
    bits on, the convolution's weight and input gradients fold them into their truncations, the bias gradient sums
    them at its own size. Gradients within the products' tolerance of float64 torch; the pool's backward sends no
    byte (before: one truncation of its pooled gradient, 16 bytes per element per party)."""
    x = torch.randn(2, 2, 6, 6, generator=_gen(7))
    w = torch.randn(3, 2, 3, 3, generator=_gen(8)) * 0.5
    b = torch.randn(3, generator=_gen(9))
    lw = torch.randn(4, 3 * 2 * 2, generator=_gen(10)) * 0.5
    check(parties, _pool_block, [x, w, b, lw], grad_atol=4 * ATOL_LINEAR)
    res = parties.run(_pool_backward_cost, torch.randn(2, 3, 4, 4, generator=_gen(11)))
    for c, g, want in res:
        assert (c.rounds, c.bytes) == (0, 0)
        assert (g.double() - want).abs().max() <= ATOL_LINEAR  # one settle: a single truncation's ulp


def _pool_backward_cost(party, x):
    from secure_lightning.tensor import reveal_tensor
    xs = _share(party, x, requires_grad=True)
    y = F.avg_pool2d(xs, 2)
    gy_plain = torch.arange(y.numel(), dtype=torch.float64).view(y.shape) / 7
    gy = _share(party, gy_plain)
    with party.comm.cost() as c:
        (g,) = torch.autograd.grad(y, xs, gy)
    return c.total, reveal_tensor(g), F.interpolate(gy_plain, scale_factor=2) / 4
