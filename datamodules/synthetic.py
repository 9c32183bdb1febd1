"""Random data of any shape and number of classes, generated on the fly (benchmarks, tests, ImageNet-sized runs)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from datamodules.base import ClassificationDataModule, image_hw


class SyntheticDataset(Dataset):
    """`length` samples of `shape`; sample i is a deterministic function of (seed, i), made on demand.

    Each class c has a fixed random prototype; x = prototype[c] * signal + N(0, 1) noise, so the task is learnable
    when `signal > 0` (signal=0: pure noise, labels uniform)."""

    def __init__(self, shape: Sequence[int], num_classes: int, length: int, seed: int, signal: float = 1.0):
        self.shape, self.num_classes, self.length = tuple(int(s) for s in shape), int(num_classes), int(length)
        self.seed, self.signal = int(seed), float(signal)

    def __len__(self) -> int:
        return self.length

    def prototype(self, label: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1_000_003 * (label + 1))  # same prototypes for every split and seed
        return torch.randn(self.shape, generator=g)

    def __getitem__(self, i: int):
        if not 0 <= i < self.length:
            raise IndexError(i)
        g = torch.Generator().manual_seed(self.seed * 1_000_000_007 + i)
        label = int(torch.randint(self.num_classes, (), generator=g))
        x = torch.randn(self.shape, generator=g)
        if self.signal:
            x = x + self.signal * self.prototype(label)
        return x, label


class SyntheticDataModule(ClassificationDataModule):
    """Synthetic classification data. Images are (channels, H, W) from `image_size`; `shape` (any list of ints)
    overrides that, e.g. `[64]` for vectors. Splits use different seeds (seed, seed+1, seed+2)."""

    def __init__(self, channels: int = 3, image_size=32, shape: Optional[Sequence[int]] = None, num_classes: int = 10,
                 train_size: int = 256, val_size: int = 64, test_size: int = 64, seed: int = 0, signal: float = 1.0,
                 data_dir: str = "data", batch_size: int = 32, eval_batch_size=None, num_workers: int = 0,
                 pin_memory: bool = False, shuffle: bool = True, drop_last: bool = False):
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, pin_memory, num_classes, channels,
                         image_size, shuffle, drop_last)
        self.shape = tuple(int(s) for s in shape) if shape else (int(channels), *image_hw(image_size))
        self.sizes = (int(train_size), int(val_size), int(test_size))
        self.seed, self.signal = int(seed), float(signal)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.shape

    def setup(self, stage=None) -> None:
        if self.train_set is not None:
            return
        self.train_set, self.val_set, self.test_set = (
            SyntheticDataset(self.shape, self.num_classes, n, self.seed + k, self.signal)
            for k, n in enumerate(self.sizes))
