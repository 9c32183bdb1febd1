"""The ring Z_2^64, held in torch.int64 tensors.

torch's int64 add, sub and mul wrap modulo 2^64 (two's complement), which is exactly ring arithmetic. This module adds
what the ring needs beyond that: logical shifts, bit slices, and packing of single bits into bytes for sending.
"""
from __future__ import annotations

import numpy as np
import torch

BITS = 64
DTYPE = torch.int64
MASK_ALL = -1  # 0xFFFF_FFFF_FFFF_FFFF as int64


def check_ring(x: torch.Tensor, what: str = "share") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dtype != DTYPE:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{what} must be a torch.int64 tensor (ring Z_2^64), got {got}")
    return x


def lshift(x: torch.Tensor, k: int) -> torch.Tensor:
    """x * 2^k mod 2^64."""
    return torch.bitwise_left_shift(x, k) if k < BITS else torch.zeros_like(x)


def rshift_logical(x: torch.Tensor, k: int) -> torch.Tensor:
    """Unsigned right shift: floor(x_unsigned / 2^k)."""
    if k == 0:
        return x
    if k >= BITS:
        return torch.zeros_like(x)
    return torch.bitwise_right_shift(x, k) & ((1 << (BITS - k)) - 1)


def rshift_arith(x: torch.Tensor, k: int) -> torch.Tensor:
    """Signed right shift: floor(x_signed / 2^k)."""
    return torch.bitwise_right_shift(x, min(k, BITS - 1))


def low_bits(x: torch.Tensor, k: int) -> torch.Tensor:
    """x mod 2^k (k < 64)."""
    return x & ((1 << k) - 1)


def msb(x: torch.Tensor) -> torch.Tensor:
    """Bit 63 as 0/1 int64."""
    return rshift_logical(x, BITS - 1)


def bit(x: torch.Tensor, i: int) -> torch.Tensor:
    return torch.bitwise_right_shift(x, i) & 1


def pack_bits(b: torch.Tensor) -> torch.Tensor:
    """Pack a tensor of 0/1 values (any integer dtype) into uint8, 8 bits a byte (little-endian bit order)."""
    flat = b.reshape(-1).to(torch.uint8)
    if flat.device.type == "cpu":
        return torch.from_numpy(np.packbits(flat.numpy(), bitorder="little"))
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8) if flat.numel() else flat


def unpack_bits(packed: torch.Tensor, numel: int, dtype: torch.dtype = DTYPE) -> torch.Tensor:
    """Inverse of pack_bits: the first numel bits as a flat tensor of `dtype`."""
    if packed.device.type == "cpu":
        bits = torch.from_numpy(np.unpackbits(packed.contiguous().numpy(), count=numel, bitorder="little"))
        return bits if dtype == torch.uint8 else bits.to(dtype)
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.view(-1, 1) >> shifts) & 1
    return bits.reshape(-1)[:numel].to(dtype)


def packed_nbytes(numel: int) -> int:
    return (numel + 7) // 8
