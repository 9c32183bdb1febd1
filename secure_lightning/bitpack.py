"""Packing the live bits of int64 words position-major, 8 a byte: the layout of binary messages (protocols/binary.py).

For n words and live positions j_1 < ... < j_k the packed stream is: bit j_1 of word 0, 1, ..., n-1, then bit j_2 of
every word, ...; stream bit s goes to byte s // 8, bit s % 8 (little-endian). When n is a multiple of 8, position j
of words 8m..8m+7 is exactly one byte, and all 64 of them come from 8x8 bit-matrix transposes: `pack_words` gathers
byte b of the 8 words of a group into one 64-bit "plane", transposes the 8x8 bit block of every plane with three
masked shift-and-XOR steps (Hacker's Delight, transpose8), and keeps the bytes of the live positions. That touches
every word a fixed number of times whatever k is, where unpacking all 64 bits to bytes costs 64 bytes a word and
extracting one position at a time k passes (still the better choice for a few positions). `unpack_words` is the
inverse (the transpose is its own inverse). CPU tensors (numpy, in place).

Local only: 0 rounds, 0 bytes; the bytes are the same as bit-by-bit packing (tests/test_bitpack.py).
"""
from __future__ import annotations

import numpy as np
import torch

_STEPS = tuple((np.uint64(s), np.uint64(m)) for s, m in
               ((7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC), (28, 0x00000000F0F0F0F0)))


def transpose8_(x: np.ndarray) -> np.ndarray:
    """Transpose, in place, the 8x8 bit matrix in each uint64 of x (row r = byte r, column c = bit c)."""
    t = np.empty_like(x)
    for shift, mask in _STEPS:
        np.right_shift(x, shift, out=t)
        np.bitwise_xor(t, x, out=t)
        np.bitwise_and(t, mask, out=t)
        np.bitwise_xor(x, t, out=x)
        np.left_shift(t, shift, out=t)
        np.bitwise_xor(x, t, out=x)
    return x


def pack_words(flat: torch.Tensor, pos: list[int]) -> torch.Tensor:
    """uint8 [len(pos) * n / 8]: the bits at positions `pos` (ascending) of the n int64 words `flat` (CPU,
    n % 8 == 0), position-major, 8 a byte."""
    m = flat.numel() // 8
    words = flat.contiguous().numpy().view(np.uint8).reshape(m, 8, 8)  # [group, word, byte]
    planes = np.ascontiguousarray(words.transpose(0, 2, 1)).view(np.uint64)  # [group, byte]: byte k from word k
    cols = transpose8_(planes.reshape(-1)).view(np.uint8).reshape(m, 64)  # [group, position]: bit k <- word k
    sel = cols if len(pos) == 64 else cols[:, pos]
    return torch.from_numpy(np.ascontiguousarray(sel.T).reshape(-1))


def unpack_words(packed: torch.Tensor, n: int, pos: list[int]) -> torch.Tensor:
    """Inverse of pack_words: n int64 words, zero outside `pos`."""
    m = n // 8
    src = packed.contiguous().numpy().reshape(len(pos), m)
    cols = np.zeros((m, 64), dtype=np.uint8)
    if len(pos) == 64:
        cols[:] = src.T
    else:
        cols[:, pos] = src.T
    planes = transpose8_(cols.view(np.uint64).reshape(-1))
    words = np.ascontiguousarray(planes.view(np.uint8).reshape(m, 8, 8).transpose(0, 2, 1))
    return torch.from_numpy(words.view(np.int64).reshape(n))
