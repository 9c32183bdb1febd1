"""Common LightningDataModule plumbing for (image, label) classification data sets."""
from __future__ import annotations

from typing import Optional, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not on disk. The message says where it was looked for and how to get it."""


def image_hw(image_size) -> tuple[int, int]:
    """`image_size` (int or [H, W]) as a pair."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def split_indices(n: int, sizes: Sequence[int], seed: int) -> list[torch.Tensor]:
    """A fixed random partition of range(n): one index tensor per size, the remainder last (seeded, reproducible)."""
    if sum(sizes) >= n:
        raise ValueError(f"split sizes {list(sizes)} leave no training samples out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = [], 0
    for s in sizes:
        out.append(perm[start:start + s])
        start += s
    out.append(perm[start:])
    return out


class ClassificationDataModule(pl.LightningDataModule):
    """Base: holds `train_set`, `val_set`, `test_set` (test also serves predict) and builds the loaders.

    `num_classes`, `channels` and `image_size` describe the tensors the module yields; model configs interpolate them
    (`${data.num_classes}` ...). Subclasses implement `check_data()` (raise DatasetNotFoundError with instructions)
    and `setup(stage)`. `input_dtype` is the dtype of the inputs (float32 images; int64 token ids for text).
    """

    input_dtype = torch.float32

    def __init__(self, data_dir: str = "data", batch_size: int = 64, eval_batch_size: Optional[int] = None,
                 num_workers: int = 0, pin_memory: bool = False, num_classes: int = 10, channels: int = 1,
                 image_size=28, shuffle: bool = True, drop_last: bool = False):
        super().__init__()
        self.data_dir = str(data_dir)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.image_size = image_size if isinstance(image_size, int) else list(image_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    # -- data presence ---------------------------------------------------------------------------------------------
    def check_data(self) -> None:
        """Raise DatasetNotFoundError if the data set is not on disk (no-op for generated data)."""

    def prepare_data(self) -> None:
        self.check_data()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.channels, *image_hw(self.image_size))

    def _check_num_classes(self, found: int, what: str) -> None:
        if found != self.num_classes:
            raise ValueError(f"{type(self).__name__}: {what} has {found} classes but num_classes={self.num_classes}; "
                             f"set data.num_classes={found}")

    # -- loaders ---------------------------------------------------------------------------------------------------
    def _loader(self, dataset: Optional[Dataset], train: bool, stage: str) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: no {stage} set; call setup() first")
        return DataLoader(
            dataset, batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=self.shuffle and train, drop_last=self.drop_last and train, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        return self._loader(self.train_set, True, "train")

    def val_dataloader(self):
        return self._loader(self.val_set, False, "validation")

    def test_dataloader(self):
        return self._loader(self.test_set, False, "test")

    def predict_dataloader(self):
        return self._loader(self.test_set, False, "predict")


def holdout(train_full: Dataset, eval_view: Dataset, val_size: int, seed: int) -> tuple[Dataset, Dataset]:
    """Split a training set into (train, val) by a seeded permutation; val reads `eval_view` (same samples, eval
    transforms) so that augmentation never touches validation."""
    val_idx, train_idx = split_indices(len(train_full), [val_size], seed)
    return Subset(train_full, train_idx.tolist()), Subset(eval_view, val_idx.tolist())
