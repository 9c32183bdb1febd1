"""Pooling on replicated shares: the public window geometry every pool uses, and the linear pools (average,
adaptive average; their backward). Max pooling (a comparison tree) is in compare.py and uses the geometry here.

Cost notation as compare.py (bytes sent by ONE party, n elements):
  avg_pool2d, adaptive_avg_pool2d  3 rounds, 16 per output element (one truncation)
  their backward                   3 rounds, 16 per grad_out element
  sum_pool2d, sum_pool2d_backward  0 (2^e windows: the caller defers 1/2^e into the next product's truncation)
"""
from __future__ import annotations

import builtins
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import gemm, ring
from .arithmetic import mul_public_real
from .sharing import Shares

# ---------------------------------------------------------------------------------------------------------------------
# Pooling geometry (public)

def _pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(t) for t in v)
    if len(v) == 1:
        return (v[0], v[0])
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v}")
    return v


def _out_size(size, k, s, p, d, ceil_mode) -> int:
    """torch's pooling output size (aten pooling_output_shape)."""
    num = size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = num // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


@dataclass(frozen=True)
class PoolGeometry:
    """Public shape information of a 2-D pooling: windows as indices into the padded (Hp, Wp) plane."""
    in_shape: tuple      # input shape as given ((N, C, H, W) or (C, H, W))
    H: int
    W: int
    OH: int
    OW: int
    pad_top: int
    pad_left: int
    Hp: int
    Wp: int
    index: torch.Tensor  # (OH, OW, K) long: flat index into the padded plane for each window element

    @property
    def K(self) -> int:
        return self.index.shape[-1]


def pool_geometry(in_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                  op: str = "pool2d") -> PoolGeometry:
    if len(in_shape) not in (3, 4):
        raise ValueError(f"{op}: expected a 3-D (C, H, W) or 4-D (N, C, H, W) input, got shape {tuple(in_shape)}")
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride if stride is not None and stride != [] and stride != () else (kh, kw), "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    if min(kh, kw, sh, sw, dh, dw) <= 0 or min(ph, pw) < 0:
        raise ValueError(f"{op}: kernel, stride and dilation must be positive and padding non-negative")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{op}: padding {(ph, pw)} must be at most half the kernel size {(kh, kw)} (as in torch)")
    H, W = int(in_shape[-2]), int(in_shape[-1])
    OH, OW = _out_size(H, kh, sh, ph, dh, ceil_mode), _out_size(W, kw, sw, pw, dw, ceil_mode)
    if OH <= 0 or OW <= 0:
        raise ValueError(f"{op}: output size {(OH, OW)} is too small for input {(H, W)}")
    need_h, need_w = (OH - 1) * sh + dh * (kh - 1) + 1, (OW - 1) * sw + dw * (kw - 1) + 1
    Hp, Wp = builtins.max(H + 2 * ph, need_h), builtins.max(W + 2 * pw, need_w)
    oy = torch.arange(OH).view(OH, 1, 1, 1) * sh + torch.arange(kh).view(1, 1, kh, 1) * dh
    ox = torch.arange(OW).view(1, OW, 1, 1) * sw + torch.arange(kw).view(1, 1, 1, kw) * dw
    index = (oy * Wp + ox).reshape(OH, OW, kh * kw)
    return PoolGeometry(tuple(in_shape), H, W, OH, OW, ph, pw, Hp, Wp, index)


def batched(x: Shares) -> Shares:
    return x if x.cur.dim() == 4 else x.map(lambda t: t.unsqueeze(0))


def windows(x: Shares, geo: PoolGeometry, pad_value: int, *, party) -> Shares:
    """(N, C, OH, OW, K) shares of every window element; padding holds the public pad_value. Cost: 0."""
    x4 = batched(x)
    N, C = x4.shape[0], x4.shape[1]

    def one(t, fill):
        p = torch.full((N, C, geo.Hp, geo.Wp), fill, dtype=ring.DTYPE, device=t.device)
        p[:, :, geo.pad_top:geo.pad_top + geo.H, geo.pad_left:geo.pad_left + geo.W] = t
        return p.reshape(N, C, geo.Hp * geo.Wp)[..., geo.index.to(t.device)]

    return Shares(one(x4.cur, pad_value if party.rank == 0 else 0), one(x4.prev, pad_value if party.rank == 1 else 0))


def fold_windows(win: Shares, geo: PoolGeometry) -> Shares:
    """Adjoint of windows: sum (N, C, OH, OW, K) window values into the input positions (padding dropped). Cost: 0."""
    def one(t):
        N, C = t.shape[0], t.shape[1]
        flat = torch.zeros(N, C, geo.Hp * geo.Wp, dtype=t.dtype, device=t.device)
        flat.index_add_(2, geo.index.reshape(-1).to(t.device), t.reshape(N, C, -1))
        out = flat.view(N, C, geo.Hp, geo.Wp)[:, :, geo.pad_top:geo.pad_top + geo.H,
                                              geo.pad_left:geo.pad_left + geo.W]
        return out.reshape(geo.in_shape)
    return win.map(one)


def unbatch(y: Shares, geo: PoolGeometry) -> Shares:
    return y if len(geo.in_shape) == 4 else y.map(lambda t: t.squeeze(0))



# ---------------------------------------------------------------------------------------------------------------------
# Average pooling

def _divide_public(x: Shares, div: torch.Tensor, *, party) -> Shares:
    """x / div for public non-zero integer divisors (window sizes, divisor_override): arithmetic.mul_public_real,
    1/div encoded with e = floor(log2 min |div|) extra fractional bits, so 1/div is off by at most 2^-(f+e+1), i.e.
    < 2^-f relative (plain f-bit encoding: up to |div| 2^-(f+1) relative, 2.3e-5 for a 7x7 window at f = 20).
    Cost: 3 rounds, 16 bytes per element. Range: |x / div| < 2^(62-2f-e). Error: <= 1 ulp + |x| 2^-(f+e+1)."""
    return mul_public_real(x, 1.0 / div.to(torch.float64), party=party)


def _avg_divisor(geo: PoolGeometry, kernel_size, stride, padding, ceil_mode, count_include_pad,
                 divisor_override) -> torch.Tensor:
    """torch's divisor per output position (OH, OW), from torch's own avg_pool2d on a ones plane."""
    if divisor_override is not None:
        if int(divisor_override) == 0:
            raise ValueError("avg_pool2d: divisor_override must be non-zero")
        return torch.full((geo.OH, geo.OW), float(divisor_override), dtype=torch.float64)
    ones = torch.ones(1, 1, geo.H, geo.W, dtype=torch.float64)
    args = (kernel_size, stride, padding, ceil_mode)
    valid = F.avg_pool2d(ones, *args, count_include_pad=True, divisor_override=1)
    avg = F.avg_pool2d(ones, *args, count_include_pad=count_include_pad)
    return torch.round(valid / avg)[0, 0]


def avg_pool2d(x: Shares, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, *, party) -> Shares:
    """F.avg_pool2d on shares (all torch arguments): local sum-pool, then times the public 1/divisor (encoded with
    e = floor(log2 min divisor) extra fractional bits, _divide_public), truncated once.

    Cost: 3 rounds (one truncation); 16 bytes per output element per party.
    Error: |out - mean| <= 1 ulp (truncation) + |window sum| * 2^-(f+e+1) (< |mean| 2^-f; rounding of 1/divisor),
    ulp = 2^-f. Range: |mean| < 2^(62-2f-e) (2^17 for a 7x7 window at f = 20).
    """
    geo = pool_geometry(tuple(x.shape), kernel_size, stride, padding, 1, ceil_mode, op="avg_pool2d")
    div = _avg_divisor(geo, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    with party.label("avg_pool2d"):
        s = windows(x, geo, 0, party=party).map(lambda t: t.sum(-1))
        return unbatch(_divide_public(s, div, party=party), geo)


def _pow2_bits(div: torch.Tensor) -> int | None:
    """e when every divisor equals 2^e (e >= 1), else None."""
    d = float(div.reshape(-1)[0]) if div.numel() else 0.0
    if d < 2 or not bool(torch.all(div == d)):
        return None
    e = int(round(math.log2(d)))
    return e if 2 ** e == d else None


def sum_pool2d(x: Shares, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, *, party, max_bits: int = 62) -> tuple[Shares, int] | None:
    """avg_pool2d as (window sums, e) when torch's divisor is 2^e for every window, e <= max_bits (2x2, 4x4 pools
    without count_include_pad surprises): the average is sums / 2^e, and the caller defers that scale into the next
    product's truncation. None for any other divisor (use avg_pool2d); nothing is computed then.
    Cost: 0 (local). Range: the sums are the averages at 2^(f+e), so a product that consumes them is exact for
    |output| < 2^(62-2f-e) (checked by the overflow guard like every product)."""
    geo = pool_geometry(tuple(x.shape), kernel_size, stride, padding, 1, ceil_mode, op="avg_pool2d")
    e = _pow2_bits(_avg_divisor(geo, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override))
    if e is None or e > max_bits:
        return None
    with party.label("avg_pool2d"):
        return unbatch(windows(x, geo, 0, party=party).map(lambda t: t.sum(-1)), geo), e


def sum_pool2d_backward(grad_out: Shares, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None, *, party,
                        max_bits: int = 62) -> tuple[Shares, int] | None:
    """avg_pool2d_backward as (grad spread over each window, e) when torch's divisor is 2^e for every window,
    e <= max_bits: the gradient is that spread / 2^e, and the caller defers the scale into the next product's
    truncation. None for any other divisor (use avg_pool2d_backward); nothing is computed then.
    Cost: 0 (local)."""
    geo = pool_geometry(tuple(input_shape), kernel_size, stride, padding, 1, ceil_mode, op="avg_pool2d_backward")
    e = _pow2_bits(_avg_divisor(geo, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override))
    if e is None or e > max_bits:
        return None
    with party.label("avg_pool2d_backward"):
        return fold_windows(batched(grad_out).map(lambda t: t.unsqueeze(-1).expand(*t.shape, geo.K)), geo), e


def avg_pool2d_backward(grad_out: Shares, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None, *, party) -> Shares:
    """Gradient of avg_pool2d: grad / divisor (public multiply + one truncation), spread over each window (col2im).

    Cost: 3 rounds; 16 bytes per output element per party.
    Error: per input position, at most (number of windows covering it) x (1 ulp + |grad| * 2^-(f+e+1)).
    """
    geo = pool_geometry(tuple(input_shape), kernel_size, stride, padding, 1, ceil_mode, op="avg_pool2d_backward")
    div = _avg_divisor(geo, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    with party.label("avg_pool2d_backward"):
        g = _divide_public(batched(grad_out), div, party=party)
        return fold_windows(g.map(lambda t: t.unsqueeze(-1).expand(*t.shape, geo.K)), geo)


def _adaptive_matrix(size: int, out: int) -> torch.Tensor:
    """(out, size) 0/1 window membership of adaptive pooling: window i = [floor(i size/out), ceil((i+1) size/out))."""
    m = torch.zeros(out, size, dtype=ring.DTYPE)
    for i in range(out):
        lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, lo:hi] = 1
    return m


def _adaptive_setup(in_shape, output_size, op):
    if len(in_shape) not in (3, 4):
        raise ValueError(f"{op}: expected a 3-D or 4-D input, got shape {tuple(in_shape)}")
    H, W = int(in_shape[-2]), int(in_shape[-1])
    oh, ow = (output_size, output_size) if isinstance(output_size, int) or output_size is None else output_size
    oh, ow = H if oh is None else int(oh), W if ow is None else int(ow)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"{op}: output_size must be positive, got {(oh, ow)}")
    ah, aw = _adaptive_matrix(H, oh), _adaptive_matrix(W, ow)
    div = ah.sum(1).view(-1, 1).to(torch.float64) * aw.sum(1).view(1, -1).to(torch.float64)
    return ah, aw, div


def adaptive_avg_pool2d(x: Shares, output_size, *, party) -> Shares:
    """F.adaptive_avg_pool2d on shares: window sums A_h x A_w^T (local, exact int64 products with public 0/1
    matrices; non-uniform windows as torch), times the public 1/window size with extra fractional bits
    (_divide_public), truncated.

    Cost: 3 rounds; 16 bytes per output element per party. Error: as avg_pool2d.
    """
    ah, aw, div = _adaptive_setup(tuple(x.shape), output_size, "adaptive_avg_pool2d")
    dev = x.cur.device
    ah, aw = ah.to(dev), aw.to(dev)
    with party.label("adaptive_avg_pool2d"):
        s = x.map(lambda t: gemm.matmul(gemm.matmul(ah, t), aw.t().contiguous()))
        return _divide_public(s, div, party=party)


def adaptive_avg_pool2d_backward(grad_out: Shares, input_shape, *, party) -> Shares:
    """Gradient of adaptive_avg_pool2d: A_h^T (grad / window size) A_w. Cost: 3 rounds; 16 bytes per output element
    per party. Error: per input position, (number of windows covering it) x (1 ulp + |grad| 2^-(f+e+1))."""
    ah, aw, div = _adaptive_setup(tuple(input_shape), tuple(grad_out.shape[-2:]), "adaptive_avg_pool2d_backward")
    dev = grad_out.cur.device
    ah, aw = ah.to(dev), aw.to(dev)
    with party.label("adaptive_avg_pool2d_backward"):
        g = _divide_public(grad_out, div, party=party)
        return g.map(lambda t: gemm.matmul(gemm.matmul(ah.t().contiguous(), t), aw))
