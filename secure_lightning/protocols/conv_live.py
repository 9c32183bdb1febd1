"""Ring (int64, mod 2^64) conv2d that skips the work padding makes redundant; exactly gemm.conv2d's result.

A kernel tap that only ever meets zero padding contributes nothing, and an output position whose window lies entirely
in the padding is zero. Small feature maps make this the common case: ResNet on 8x8 digits reaches 1x1 maps after
the stem, where a 3x3 convolution (padding 1) uses only its centre tap (1/9 of the products), and the weight gradient
of that convolution has 8 of its 9 taps at zero. `conv2d` crops the kernel to the taps that meet real input and the
output to the positions that see any (placing the result into zeros), and computes a 1x1 kernel as a matrix product
(gemm.matmul). Every sum is the same sum of the same products mod 2^64, so the result equals gemm.conv2d's exactly
(tests/test_conv_live.py); shapes, and hence communication, do not change.

Padding: an int, (ph, pw), or (left, right, top, bottom) in F.pad's order (negative values crop), which lets the
convolution gradients describe their zero-padded or cropped inputs without materialising them; 'same'/'valid' go to
gemm.conv2d unchanged.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from .. import gemm


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


@lru_cache(maxsize=4096)
def _live(n: int, k: int, s: int, d: int, lo: int, hi: int) -> tuple[int, int, int, int, int]:
    """One spatial dim of a conv on an input of size n padded by lo / hi: (out size, first and last live output,
    first and last live tap). Tap i at output o reads input index o*s - lo + i*d."""
    out = (n + lo + hi - d * (k - 1) - 1) // s + 1
    outs = [o for o in range(out) if any(0 <= o * s - lo + i * d < n for i in range(k))]
    if not outs:
        return out, 0, out - 1, 0, k - 1
    o0, o1 = outs[0], outs[-1]
    taps = [i for i in range(k) if any(0 <= o * s - lo + i * d < n for o in range(o0, o1 + 1))]
    return out, o0, o1, taps[0], taps[-1]


def _pointwise(x: torch.Tensor, w: torch.Tensor, force_limbs: bool) -> torch.Tensor:
    """conv2d with a 1x1 kernel, stride 1, no padding, one group: a (N H W, C) x (C, Cout) matrix product."""
    n, c, h, wd = x.shape
    cols = x.permute(0, 2, 3, 1).reshape(n * h * wd, c)
    y = gemm.matmul(cols, w.reshape(w.shape[0], c).t(), force_limbs=force_limbs)
    return y.reshape(n, h, wd, -1).permute(0, 3, 1, 2).contiguous()


def conv2d(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, dilation=1, groups: int = 1,
           force_limbs: bool = False) -> torch.Tensor:
    """gemm.conv2d(x, w, stride, padding, dilation, groups) for a 4-D x, computed on the live part only."""
    if isinstance(padding, str) or x.dim() != 4:
        return gemm.conv2d(x, w, stride, padding, dilation, groups, force_limbs)
    if isinstance(padding, int) or len(padding) == 2:
        ph, pw = _pair(padding)
        pads = (pw, pw, ph, ph)
    else:
        pads = tuple(int(p) for p in padding)
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    n, _, h, wd = x.shape
    kh, kw = w.shape[-2:]
    ho, oh0, oh1, ih0, ih1 = _live(h, kh, sh, dh, pads[2], pads[3])
    wo, ow0, ow1, iw0, iw1 = _live(wd, kw, sw, dw, pads[0], pads[1])
    if (ih1 - ih0 + 1, iw1 - iw0 + 1) != (kh, kw):
        w = w[..., ih0:ih1 + 1, iw0:iw1 + 1]
    # the input window the live outputs read, in unpadded coordinates: [start, start + length)
    top, left = oh0 * sh - pads[2] + ih0 * dh, ow0 * sw - pads[0] + iw0 * dw
    rows, cols = (oh1 - oh0) * sh + dh * (ih1 - ih0) + 1, (ow1 - ow0) * sw + dw * (iw1 - iw0) + 1
    window = (-left, left + cols - wd, -top, top + rows - h)
    if any(window):
        x = F.pad(x, window)
    if w.shape[-2:] == (1, 1) and groups == 1:
        y = _pointwise(x[..., ::sh, ::sw], w, force_limbs)
    else:
        y = gemm.conv2d(x, w, (sh, sw), 0, (dh, dw), groups, force_limbs)
    if y.shape[-2:] == (ho, wo):
        return y
    out = y.new_zeros(n, y.shape[1], ho, wo)
    out[..., oh0:oh1 + 1, ow0:ow1 + 1] = y
    return out
