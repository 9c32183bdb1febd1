"""protocols/conv_live.conv2d equals gemm.conv2d exactly (int64, mod 2^64) on geometries where padding makes work
redundant (1x1 maps, strides, dilations, groups, asymmetric and cropping paddings) and where it does not."""
import random

import pytest
import torch
import torch.nn.functional as F

from secure_lightning import gemm
from secure_lightning.protocols import conv_live


def _ring(*shape, g):
    return torch.randint(-2 ** 62, 2 ** 62, shape, generator=g, dtype=torch.int64)


@pytest.mark.parametrize("h,w,k,stride,pad,dil,groups", [
    (1, 1, 3, 1, 1, 1, 1),    # ResNet 3x3 on a 1x1 map: centre tap only
    (1, 1, 3, 2, 1, 1, 1),    # its strided first block
    (1, 1, 1, 2, 0, 1, 1),    # strided 1x1 downsample
    (8, 8, 7, 2, 3, 1, 1),    # the stem: nothing to skip
    (2, 3, 3, 1, 2, 1, 2),    # padding wider than needed: dead output rows and taps
    (5, 4, 3, 2, 1, 2, 1),    # dilation
    (3, 3, 5, 1, 2, 1, 4),    # groups
    (4, 4, 1, 1, 0, 1, 1),    # pointwise on a 4x4 map
])
def test_equals_gemm_conv2d(h, w, k, stride, pad, dil, groups):
    g = torch.Generator().manual_seed(h * 100 + w * 10 + k)
    x, wt = _ring(2, 4, h, w, g=g), _ring(8, 4 // groups, k, k, g=g)
    want = gemm.conv2d(x, wt, stride, pad, dil, groups)
    assert torch.equal(conv_live.conv2d(x, wt, stride, pad, dil, groups), want)


def test_four_sided_padding_matches_explicit_pad():
    """(left, right, top, bottom), negative values cropping: as F.pad then an unpadded conv."""
    rnd, g = random.Random(0), torch.Generator().manual_seed(0)
    for _ in range(40):
        h, w, k = rnd.randint(1, 5), rnd.randint(1, 5), rnd.randint(1, 3)
        s, d = rnd.randint(1, 2), rnd.randint(1, 2)
        pads = tuple(rnd.randint(-1, 3) for _ in range(4))
        if h + pads[2] + pads[3] < d * (k - 1) + 1 or w + pads[0] + pads[1] < d * (k - 1) + 1:
            continue
        x, wt = _ring(2, 3, h, w, g=g), _ring(5, 3, k, k, g=g)
        want = gemm.conv2d(F.pad(x, pads), wt, s, 0, d, 1)
        assert torch.equal(conv_live.conv2d(x, wt, s, pads, d, 1), want), (h, w, k, s, d, pads)
