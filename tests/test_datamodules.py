"""DataModules: digits (bundled), synthetic, and the real loading code of MNIST / Tiny-ImageNet / ImageNet on small
files written in the torchvision/ImageFolder layouts; a missing data set raises a clear error."""
import os
import struct

import numpy as np
import pytest
import torch

from datamodules import (CIFAR10DataModule, DatasetNotFoundError, DigitsDataModule, ImageNetDataModule,
                         MNISTDataModule, SyntheticDataModule, TinyImageNetDataModule)


# -- digits ------------------------------------------------------------------------------------------------------------
def test_digits_split_is_fixed_disjoint_and_standardised():
    a, b = DigitsDataModule(), DigitsDataModule()
    a.setup(), b.setup()
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (1257, 180, 360)
    for k in ("train", "val", "test"):
        assert torch.equal(a.indices[k], b.indices[k])  # same seed, same split
    all_idx = torch.cat([a.indices[k] for k in ("train", "val", "test")])
    assert torch.equal(all_idx.sort().values, torch.arange(1797))  # a partition
    x = a.train_set.tensors[0]
    assert x.shape == (1257, 1, 8, 8)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    c = DigitsDataModule(split_seed=1)
    c.setup()
    assert not torch.equal(a.indices["test"], c.indices["test"])


@pytest.mark.parametrize("size", [16, 28, [12, 10]])
def test_digits_resize(size):
    dm = DigitsDataModule(image_size=size, batch_size=7)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    hw = (size, size) if isinstance(size, int) else tuple(size)
    assert x.shape == (7, 1, *hw) and dm.input_shape == (1, *hw)
    raw, _ = dm.load_tensors()
    assert float(raw.min()) >= -1e-6 and float(raw.max()) <= 1 + 1e-6


def test_digits_flatten_and_loader_order():
    dm = DigitsDataModule(flatten=True, batch_size=32)
    dm.setup()
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (32, 64)
    torch.testing.assert_close(x, dm.test_set.tensors[0][:32])  # eval loaders are not shuffled


def test_digits_rejects_wrong_metadata():
    with pytest.raises(ValueError, match="10 classes"):
        DigitsDataModule(num_classes=5)


# -- synthetic ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [[5], [2, 3, 4], [1, 2, 3, 4]])
def test_synthetic_any_shape_deterministic(shape):
    dm = SyntheticDataModule(shape=shape, num_classes=4, train_size=10, val_size=3, test_size=2, batch_size=5)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (10, 3, 2)
    x0, y0 = dm.train_set[3]
    x1, y1 = dm.train_set[3]
    assert tuple(x0.shape) == tuple(shape) and torch.equal(x0, x1) and y0 == y1 and 0 <= y0 < 4
    assert not torch.equal(dm.train_set[0][0], dm.val_set[0][0])  # splits use different seeds
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (5, *shape) and y.dtype == torch.long
    with pytest.raises(IndexError):
        dm.train_set[10]


def test_synthetic_image_shape_from_channels_and_size():
    dm = SyntheticDataModule(channels=3, image_size=[6, 4], num_classes=1000)
    dm.setup()
    assert dm.input_shape == (3, 6, 4) and dm.train_set[0][0].shape == (3, 6, 4)


def test_synthetic_signal_makes_classes_separable():
    dm = SyntheticDataModule(shape=[32], num_classes=3, train_size=60, signal=3.0)
    dm.setup()
    xs, ys = zip(*(dm.train_set[i] for i in range(60)))
    x, y = torch.stack(xs), torch.tensor(ys)
    protos = torch.stack([dm.train_set.prototype(c) for c in range(3)])
    nearest = torch.cdist(x, 3.0 * protos).argmin(dim=1)
    assert (nearest == y).float().mean() > 0.9


# -- MNIST (idx files) -------------------------------------------------------------------------------------------------
def _write_idx(path, array: np.ndarray, magic: int):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for d in array.shape:
            f.write(struct.pack(">I", d))
        f.write(array.astype(np.uint8).tobytes())


def _fake_mnist(root, n_train=30, n_test=10):
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), rng.integers(0, 256, (n, 28, 28)), 2051)
        _write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), np.arange(n) % 10, 2049)


def test_mnist_reads_idx_files_and_holds_out_validation(tmp_path):
    _fake_mnist(tmp_path)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=6, batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (24, 6, 10)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and int(y.max()) <= 9
    train_idx = set(dm.train_set.indices)
    assert train_idx.isdisjoint(dm.val_set.indices) and len(train_idx) == 24
    dm16 = MNISTDataModule(data_dir=str(tmp_path), val_size=0, image_size=16, eval_batch_size=5)
    dm16.setup("test")
    assert next(iter(dm16.test_dataloader()))[0].shape == (5, 1, 16, 16)


# -- image folders -----------------------------------------------------------------------------------------------------
def _jpeg(path, size, seed):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(path, format="JPEG")


def _fake_tiny_imagenet(root):
    base = os.path.join(root, "tiny-imagenet-200")
    for c, wnid in enumerate(("n001", "n002")):
        for i in range(3):
            _jpeg(os.path.join(base, "train", wnid, "images", f"{wnid}_{i}.JPEG"), 64, 10 * c + i)
    lines = []
    for i, wnid in enumerate(("n002", "n001", "n002")):
        _jpeg(os.path.join(base, "val", "images", f"val_{i}.JPEG"), 64, 100 + i)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    with open(os.path.join(base, "val", "val_annotations.txt"), "w") as f:
        f.writelines(lines)


def test_tiny_imagenet_folders_and_val_annotations(tmp_path):
    _fake_tiny_imagenet(tmp_path)
    dm = TinyImageNetDataModule(data_dir=str(tmp_path), num_classes=2, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == 6 and dm.val_set is dm.test_set
    assert [label for _, label in dm.test_set.samples] == [1, 0, 1]
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (3, 3, 64, 64) and y.tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="num_classes=2"):
        TinyImageNetDataModule(data_dir=str(tmp_path)).setup("fit")  # 200 expected, 2 found


def test_imagenet_image_folders(tmp_path):
    for split, n in (("train", 2), ("val", 2)):
        for c, wnid in enumerate(("n01", "n02")):
            for i in range(n):
                _jpeg(os.path.join(tmp_path, "imagenet", split, wnid, f"{i}.JPEG"), 48, 7 * c + i)
    dm = ImageNetDataModule(data_dir=str(tmp_path), num_classes=2, image_size=32, batch_size=2, eval_batch_size=4,
                            num_workers=0)
    dm.setup("test")  # test needs only val/
    assert dm.train_set is None
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 3, 32, 32) and sorted(y.tolist()) == [0, 0, 1, 1]
    dm.setup("fit")
    assert len(dm.train_set) == 4


# -- missing data ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, expect", [
    (MNISTDataModule, ["MNIST", "raw", "train-images-idx3-ubyte", "download=True"]),
    (CIFAR10DataModule, ["CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz"]),
    (TinyImageNetDataModule, ["Tiny-ImageNet", "tiny-imagenet-200", "tiny-imagenet-200.zip"]),
    (ImageNetDataModule, ["ImageNet", "imagenet", "image-net.org"]),
])
def test_missing_data_set_says_where_and_how(cls, expect, tmp_path):
    dm = cls(data_dir=str(tmp_path))
    for call in (dm.prepare_data, lambda: dm.setup("fit")):
        with pytest.raises(DatasetNotFoundError) as e:
            call()
        msg = str(e.value)
        assert str(tmp_path) in msg and "data_dir" in msg and "data=digits" in msg
        for word in expect:
            assert word in msg


def test_corrupt_cifar10_is_reported_as_missing(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta"):
        (folder / name).write_bytes(b"not a pickle")
    dm = CIFAR10DataModule(data_dir=str(tmp_path))
    dm.prepare_data()  # files are there
    with pytest.raises(DatasetNotFoundError, match="corrupted"):
        dm.setup("fit")


def test_imagenet_training_folder_missing(tmp_path):
    _jpeg(os.path.join(tmp_path, "imagenet", "val", "n01", "0.JPEG"), 32, 0)
    dm = ImageNetDataModule(data_dir=str(tmp_path), num_classes=1)
    dm.setup("test")
    with pytest.raises(DatasetNotFoundError, match="ILSVRC2012_img_train.tar"):
        ImageNetDataModule(data_dir=str(tmp_path), num_classes=1).setup("fit")


# -- generated text ----------------------------------------------------------------------------------------------------
def test_text_synth_is_deterministic_int64_and_balanced():
    from datamodules import TextSynthDataModule
    a, b = TextSynthDataModule(), TextSynthDataModule()
    a.setup(), b.setup()
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (1024, 256, 512)
    x, y = a.train_set.tensors
    assert x.shape == (1024, 16) and x.dtype == torch.int64 and y.dtype == torch.int64
    assert a.input_shape == (16,) and a.input_dtype == torch.int64
    assert int(x.min()) >= 1 and int(x.max()) < 32  # id 0 is reserved
    assert torch.equal(x, b.train_set.tensors[0]) and torch.equal(y, b.train_set.tensors[1])  # same seed, same data
    assert not torch.equal(x[:256], a.val_set.tensors[0])  # splits use different seeds
    assert not torch.equal(x, TextSynthDataModule(seed=1).make_split(0).tensors[0])
    assert 0.4 < float(y.float().mean()) < 0.6
    xb, yb = next(iter(a.train_dataloader()))
    assert xb.shape == (64, 16) and xb.dtype == torch.int64


def _first(seq, token):
    return seq.index(token) if token in seq else len(seq)


@pytest.mark.parametrize("task", ["order", "majority"])
def test_text_synth_labels_follow_the_markers(task):
    from datamodules.text import MARK_A, MARK_B, make_task
    tokens, labels = make_task(task, 300, 24, 12, 3, seed=5)
    assert tokens.shape == (300, 12)
    for seq, label in zip(tokens.tolist(), labels.tolist()):
        n_a, n_b = seq.count(MARK_A), seq.count(MARK_B)
        assert n_a != n_b and n_a <= 3 and n_b <= 3
        want = _first(seq, MARK_A) < _first(seq, MARK_B) if task == "order" else n_a > n_b
        assert label == int(want), (seq, label)


def test_text_synth_rejects_bad_settings():
    from datamodules import TextSynthDataModule
    from datamodules.text import make_task
    with pytest.raises(ValueError, match="task must be one of"):
        TextSynthDataModule(task="parity")
    with pytest.raises(ValueError, match="2 classes"):
        TextSynthDataModule(num_classes=3)
    with pytest.raises(ValueError, match="max_marks"):
        make_task("order", 4, 32, 8, 5, seed=0)
    with pytest.raises(ValueError, match="vocab_size"):
        make_task("order", 4, 3, 8, 2, seed=0)
