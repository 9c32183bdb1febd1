"""scikit-learn's bundled handwritten digits (1,797 8x8 grey images, 10 classes): offline, small, the default."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from datamodules.base import ClassificationDataModule, image_hw, split_indices

N_DIGITS = 1797


class DigitsDataModule(ClassificationDataModule):
    """Digits from `sklearn.datasets.load_digits`, scaled to [0, 1], optionally resized (bilinear) to `image_size`,
    then standardised with the training split's mean and std.

    Fixed split from a seeded torch Generator (`split_seed`): `test_size` test, `val_size` validation, the rest
    (1,257 by default) training. `flatten=True` yields vectors of C*H*W features instead of 1xHxW images.
    """

    def __init__(self, image_size=8, val_size: int = 180, test_size: int = 360, split_seed: int = 0,
                 flatten: bool = False, data_dir: str = "data", batch_size: int = 64, eval_batch_size=None,
                 num_workers: int = 0, pin_memory: bool = False, num_classes: int = 10, channels: int = 1,
                 shuffle: bool = True, drop_last: bool = False):
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, pin_memory, num_classes, channels,
                         image_size, shuffle, drop_last)
        if num_classes != 10 or channels != 1:
            raise ValueError("digits has 10 classes and 1 channel; leave data.num_classes/data.channels alone")
        self.val_size, self.test_size, self.split_seed = int(val_size), int(test_size), int(split_seed)
        self.flatten = bool(flatten)
        self.indices: dict = {}

    def check_data(self) -> None:
        pass  # bundled with scikit-learn

    def load_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All 1,797 images as float32 (N, 1, H, W) in [0, 1] (before standardisation) and int64 labels."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.as_tensor(digits.target, dtype=torch.long)
        size = image_hw(self.image_size)
        if size != (8, 8):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x, y

    def setup(self, stage=None) -> None:
        if self.train_set is not None:
            return
        x, y = self.load_tensors()
        test_idx, val_idx, train_idx = split_indices(len(y), [self.test_size, self.val_size], self.split_seed)
        self.indices = {"train": train_idx, "val": val_idx, "test": test_idx}  # into load_digits() order
        mean, std = x[train_idx].mean(), x[train_idx].std()
        x = (x - mean) / std
        if self.flatten:
            x = x.flatten(1)
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx]) if self.val_size else TensorDataset(x[test_idx],
                                                                                                  y[test_idx])
        self.test_set = TensorDataset(x[test_idx], y[test_idx])
