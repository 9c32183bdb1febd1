"""Exact int64 (mod 2^64) matmul and conv2d.

On the CPU torch's own int64 kernels are exact; large 2-D products also try the limb path below once per shape and
keep the faster (`_cpu_matmul`). On CUDA, where int64 GEMM/conv kernels do not exist, each operand is
split into four unsigned 16-bit limbs held in float64; only the 10 limb pairs (i, j) with i + j < 4 contribute
modulo 2^64. All 10 products run as one batched matmul (or one grouped conv), are cast back to int64, shifted by
16(i + j) and summed. A limb product is < 2^32, so a dot product is exact in float64's 53-bit mantissa while the
inner dimension (k, or C_in/groups * kh * kw) is below 2^21: larger ones raise.

`force_limbs=True` selects the limb path on any device, so its exactness is tested on the CPU.

Memory: torch's CPU int64 convolution unfolds its whole input (im2col: N x C/G kh kw x OH OW words) before one GEMM;
the gradient convolutions of a training step (zero-dilated, padded inputs) can make that buffer hundreds of MB.
conv2d therefore runs the CPU path on batch slices whose unfolded size is at most IM2COL_WORDS words (one sample at a
time when even one is larger, then input-channel slices summed, groups = 1). Slicing is exact (the ring sums are
the same) and local: no communication, no rounds.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

LIMB_BITS = 16
N_LIMBS = 4
MAX_INNER = 1 << 21
IM2COL_WORDS = 1 << 21  # at most this many int64 words (16 MiB) of unfolded input per CPU convolution call
_PAIRS = [(i, j) for i in range(N_LIMBS) for j in range(N_LIMBS) if i + j < N_LIMBS]  # 10 pairs


def _limbs(x: torch.Tensor) -> torch.Tensor:
    """(4, *x.shape) float64 unsigned 16-bit limbs, least significant first."""
    return torch.stack([((x >> (LIMB_BITS * i)) & 0xFFFF).to(torch.float64) for i in range(N_LIMBS)])


def _combine(prods: torch.Tensor) -> torch.Tensor:
    """prods: (10, ...) float64 limb-pair products in _PAIRS order -> int64 sum of prod << 16(i+j)."""
    out = None
    for p, (i, j) in enumerate(_PAIRS):
        term = torch.bitwise_left_shift(prods[p].to(torch.int64), LIMB_BITS * (i + j))
        out = term if out is None else out + term
    return out


def _check_inner(k: int, op: str):
    if k >= MAX_INNER:
        raise ValueError(f"{op}: inner dimension {k} >= 2^21, beyond what the 16-bit limb path computes exactly")


def use_limbs(*ts: torch.Tensor, force: bool = False) -> bool:
    return force or any(t.is_cuda for t in ts)


# CPU: torch's int64 GEMM is not a BLAS path, and on some CPUs (AVX2 without AVX-512) it runs at ~0.1-0.4 G
# multiply-adds per second, where the ten float64 limb products can be 1.5-3.5x faster; on others it wins. Which is
# faster depends on the CPU and the shape, so a 2-D product of at least AUTOTUNE_MIN_MACS multiply-adds is timed both
# ways the first time its shape and layout occur (that call returns the int64 result) and the faster path is kept
# for that key. Both paths are exact (the same ring value), so the choice changes no result and no byte.
AUTOTUNE_MIN_MACS = 1 << 22
AUTOTUNE_MAX_BYTES = 256 << 20  # the limb path's float64 buffers: 4 limbs per operand word, 10 products per output
_LIMBS_FASTER: dict = {}


def _cpu_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b on the CPU: torch's int64 GEMM, or for a large 2-D product the faster exact path for its shape."""
    if a.dim() != 2 or b.dim() != 2:
        return torch.matmul(a, b)
    (n, k), m = a.shape, b.shape[1]
    if n * k * m < AUTOTUNE_MIN_MACS or k >= MAX_INNER or \
            8 * (4 * (a.numel() + b.numel()) + 10 * n * m) > AUTOTUNE_MAX_BYTES:
        return torch.matmul(a, b)
    key = (n, k, m, a.stride(), b.stride())
    faster = _LIMBS_FASTER.get(key)
    if faster is None:
        t0 = time.perf_counter()
        out = torch.matmul(a, b)
        t1 = time.perf_counter()
        _limb_matmul(a, b)
        _LIMBS_FASTER[key] = time.perf_counter() - t1 < t1 - t0
        return out
    return _limb_matmul(a, b) if faster else torch.matmul(a, b)


def matmul(a: torch.Tensor, b: torch.Tensor, force_limbs: bool = False) -> torch.Tensor:
    """a @ b over Z_2^64 with torch.matmul broadcasting (1-D operands included)."""
    return _limb_matmul(a, b) if use_limbs(a, b, force=force_limbs) else _cpu_matmul(a, b)


def _limb_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    _check_inner(a.shape[-1], "matmul")
    ia = torch.tensor([i for i, _ in _PAIRS], device=a.device)
    jb = torch.tensor([j for _, j in _PAIRS], device=b.device)
    la, lb = _limbs(a)[ia], _limbs(b)[jb]
    if a.dim() == 1:
        la = la.unsqueeze(-2)
    if b.dim() == 1:
        lb = lb.unsqueeze(-1)
    nd = max(la.dim(), lb.dim())  # align batch dims behind the pair dim
    la = la.reshape(la.shape[:1] + (1,) * (nd - la.dim()) + la.shape[1:])
    lb = lb.reshape(lb.shape[:1] + (1,) * (nd - lb.dim()) + lb.shape[1:])
    prods = torch.matmul(la, lb)
    if a.dim() == 1:
        prods = prods.squeeze(-2)
    if b.dim() == 1:
        prods = prods.squeeze(-1)
    return _combine(prods)


def _conv2d_cpu_sliced(x, w, stride, padding, dilation, groups):
    """F.conv2d in batch slices (or input-channel slices, summed) of at most IM2COL_WORDS unfolded words."""
    def conv(a, b):
        return F.conv2d(a, b, None, stride, padding, dilation, groups)
    if x.dim() != 4 or isinstance(padding, str):
        return conv(x, w)
    n = x.shape[0]
    kh, kw = w.shape[-2:]
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    oh = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    per_channel = max(kh * kw * oh * ow, 1)
    per_sample = per_channel * (x.shape[1] // groups)
    if n * per_sample <= IM2COL_WORDS:
        return conv(x, w)
    if per_sample <= IM2COL_WORDS or groups != 1:
        step = max(1, IM2COL_WORDS // per_sample)
        return torch.cat([conv(x[i:i + step], w) for i in range(0, n, step)])
    step = max(1, IM2COL_WORDS // per_channel)
    out = None
    for c in range(0, x.shape[1], step):
        y = torch.cat([conv(x[i:i + 1, c:c + step], w[:, c:c + step]) for i in range(n)])
        out = y if out is None else out.add_(y)
    return out


def conv2d(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, dilation=1, groups: int = 1,
           force_limbs: bool = False) -> torch.Tensor:
    """F.conv2d over Z_2^64 (no bias). On the limb path the 10 pairs run as one grouped convolution."""
    if not use_limbs(x, w, force=force_limbs):
        return _conv2d_cpu_sliced(x, w, stride, padding, dilation, groups)
    _check_inner(w.shape[1] * w.shape[2] * w.shape[3], "conv2d")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    n, c, h, wd = x.shape
    lx, lw = _limbs(x), _limbs(w)
    xs = torch.stack([lx[i] for i, _ in _PAIRS], dim=1).reshape(n, len(_PAIRS) * c, h, wd)
    ws = torch.cat([lw[j] for _, j in _PAIRS], dim=0)
    y = F.conv2d(xs, ws, None, stride, padding, dilation, groups * len(_PAIRS))
    y = y.reshape(n, len(_PAIRS), w.shape[0], *y.shape[-2:]).transpose(0, 1)
    out = _combine(y)
    return out.squeeze(0) if unbatched else out
