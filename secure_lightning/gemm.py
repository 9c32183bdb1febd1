"""Exact int64 (mod 2^64) matmul and conv2d.

On the CPU torch's own int64 kernels are exact; a product with at most SMALL rows or columns runs as int64
matrix-vector products, and large 2-D products and convolutions also try an exact float64 path (signed 22-bit digits,
`_digit_product`) once per shape and keep the faster (`_autotuned`). On CUDA, where int64 GEMM/conv kernels do not
exist, each operand is split into four unsigned 16-bit limbs held in float64; only the 10 limb pairs (i, j) with
i + j < 4 contribute modulo 2^64. All 10 products run as one batched matmul (or one grouped conv), are cast back to
int64, shifted by 16(i + j) and summed. A limb product is < 2^32, so a dot product is exact in float64's 53-bit
mantissa while the inner dimension (k, or C_in/groups * kh * kw) is below 2^21: larger ones raise.

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


# CPU: torch's int64 GEMM and convolution are not BLAS paths, and on some CPUs (AVX2 without AVX-512) they run at
# ~0.1-1 G multiply-adds per second, where float64 products of 22-bit digits (`_digit_product`: 6 products) can be
# 1.5-3x faster; on others int64 wins. Which is faster depends on the CPU and the shape, so a 2-D product or a
# convolution of at least AUTOTUNE_MIN_MACS multiply-adds is timed both ways the first time its shape and layout occur
# (that call returns the int64 result) and the faster path is kept for that key. Both paths are exact (the same ring
# value), so the choice changes no result and no byte.
AUTOTUNE_MIN_MACS = 1 << 22
AUTOTUNE_MAX_BYTES = 256 << 20  # the float paths' buffers: a few float64 copies per operand word and output
SMALL = 16  # a matmul with at most this many rows (or columns) runs as matrix-vector products (int64 gemv)
_FLOAT_FASTER: dict = {}

# Signed 22-bit digits: x = d0 + d1 2^22 + d2 2^44 (mod 2^64) with |d0|, |d1| <= 2^21 and |d2| <= 2^19, so a digit
# product is at most 2^42 and a sum of up to 2^11 of them is an exact float64 integer (<= 2^53). Only the 6 digit
# pairs with i + j < 3 reach below bit 64.
DIGIT_BITS = 22
DIGIT_MAX_TERMS = 1 << 11


def _digits(x: torch.Tensor) -> list[torch.Tensor]:
    """The three signed 22-bit digits of int64 x as float64 (wrapping arithmetic: exact mod 2^64)."""
    half, mask = 1 << (DIGIT_BITS - 1), (1 << DIGIT_BITS) - 1
    out = []
    r = x
    for _ in range(2):  # d = ((r + half) & mask) - half; r = (r - d) >> 22 (exact: r - d is a multiple of 2^22)
        d = r + half
        d.bitwise_and_(mask).sub_(half)
        out.append(d.double())
        r = torch.bitwise_right_shift(r - d, DIGIT_BITS)
    return out + [r.double()]


def _digit_product(a: torch.Tensor, b: torch.Tensor, op, inner: int) -> torch.Tensor:
    """op(a, b) mod 2^64 for a bilinear op with `inner` terms per output (<= DIGIT_MAX_TERMS): sum over the digit
    pairs of float64 op(a_i, b_j) << 22 (i + j). The products of one shift are added in float64 while their terms
    stay within DIGIT_MAX_TERMS, else each is cast to int64 first."""
    if inner > DIGIT_MAX_TERMS:
        raise ValueError(f"digit product: {inner} terms per output > {DIGIT_MAX_TERMS}, not exact in float64")
    da, db = _digits(a), _digits(b)
    out = None
    for s in range(3):
        prods = [op(da[i], db[s - i]) for i in range(s + 1)]
        if (s + 1) * inner <= DIGIT_MAX_TERMS:
            term = sum(prods[1:], prods[0]).to(torch.int64)
        else:
            term = sum((p.to(torch.int64) for p in prods[1:]), prods[0].to(torch.int64))
        term = torch.bitwise_left_shift(term, DIGIT_BITS * s)
        out = term if out is None else out.add_(term)
    return out


def _float_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b mod 2^64 through float64 BLAS: 22-bit digits when the inner dimension allows, else 16-bit limbs."""
    if a.shape[-1] <= DIGIT_MAX_TERMS:
        return _digit_product(a, b, torch.matmul, a.shape[-1])
    return _limb_matmul(a, b)


def _by_vectors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b (2-D, at most SMALL rows or columns) as int64 matrix-vector products: torch's int64 GEMM pays a fixed
    cost per call that a handful of gemv calls do not (1 x 800 x 500: ~6 ms against ~0.3 ms)."""
    if a.shape[0] <= b.shape[1]:
        bt = b.t()
        return torch.stack([torch.mv(bt, row) for row in a])
    return torch.stack([torch.mv(a, col) for col in b.t()], dim=1)


def _autotuned(key, macs: int, nbytes: int, int64_path, float_path) -> torch.Tensor:
    """The faster exact path for `key` (timed both ways on its first call, which returns the int64 result; the float
    path is kept only if it was faster and gave the same ring value); int64 for products too small (macs) or too
    large (nbytes of float buffers) to be worth timing."""
    if macs < AUTOTUNE_MIN_MACS or nbytes > AUTOTUNE_MAX_BYTES:
        return int64_path()
    faster = _FLOAT_FASTER.get(key)
    if faster is None:
        t0 = time.perf_counter()
        out = int64_path()
        t1 = time.perf_counter()
        alt = float_path()
        # kept only if it also agrees with the int64 result here (a float kernel that is not exact never serves)
        _FLOAT_FASTER[key] = time.perf_counter() - t1 < t1 - t0 and torch.equal(alt, out)
        return out
    return float_path() if faster else int64_path()


def _cpu_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b on the CPU: gemv for a few rows or columns, else torch's int64 GEMM or, for a large 2-D product, the
    faster exact path for its shape."""
    if a.dim() != 2 or b.dim() != 2:
        return torch.matmul(a, b)
    (n, k), m = a.shape, b.shape[1]
    if 0 < min(n, m) <= SMALL:
        return _by_vectors(a, b)
    if k >= MAX_INNER:
        return torch.matmul(a, b)
    return _autotuned(("matmul", n, k, m, a.stride(), b.stride()), n * k * m,
                      8 * (4 * (a.numel() + b.numel()) + 10 * n * m),
                      lambda: torch.matmul(a, b), lambda: _float_matmul(a, b))


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


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _out_hw(x, w, stride, padding, dilation) -> tuple[int, int]:
    """Output height and width of a 4-D conv2d with int or pair stride, padding and dilation."""
    kh, kw = w.shape[-2:]
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    return (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def _conv2d_cpu_sliced(x, w, stride, padding, dilation, groups):
    """F.conv2d in batch slices (or input-channel slices, summed) of at most IM2COL_WORDS unfolded words."""
    def conv(a, b):
        return F.conv2d(a, b, None, stride, padding, dilation, groups)
    if x.dim() != 4 or isinstance(padding, str):
        return conv(x, w)
    n = x.shape[0]
    kh, kw = w.shape[-2:]
    oh, ow = _out_hw(x, w, stride, padding, dilation)
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


def _cpu_conv2d(x, w, stride, padding, dilation, groups):
    """F.conv2d over Z_2^64 on the CPU: torch's int64 convolution (in slices) or, for a large one with few enough
    terms per output, the digit product when it was faster for this shape."""
    inner = w.shape[1] * w.shape[2] * w.shape[3]

    def int64_path():
        return _conv2d_cpu_sliced(x, w, stride, padding, dilation, groups)
    if x.dim() != 4 or isinstance(padding, str) or inner > DIGIT_MAX_TERMS:
        return int64_path()
    oh, ow = _out_hw(x, w, stride, padding, dilation)
    n_out = x.shape[0] * w.shape[0] * oh * ow
    key = ("conv2d", tuple(x.shape), tuple(w.shape)) + tuple(  # hashable: a list argument becomes a tuple
        v if isinstance(v, int) else tuple(v) for v in (stride, padding, dilation)) + (groups,)
    return _autotuned(key, n_out * inner,
                      8 * (3 * (x.numel() + w.numel()) + 3 * n_out),
                      int64_path, lambda: _digit_product(x, w, lambda a, b: F.conv2d(
                          a, b, None, stride, padding, dilation, groups), inner))


def conv2d(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0, dilation=1, groups: int = 1,
           force_limbs: bool = False) -> torch.Tensor:
    """F.conv2d over Z_2^64 (no bias). On the limb path the 10 pairs run as one grouped convolution."""
    if not use_limbs(x, w, force=force_limbs):
        return _cpu_conv2d(x, w, stride, padding, dilation, groups)
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
