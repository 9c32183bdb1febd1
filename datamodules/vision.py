"""Standard vision data sets read from disk with torchvision (never downloaded unless `download=true`).

Layout under `data_dir` (the config's `paths.data_dir`, default ./data or $SECURE_LIGHTNING_DATA):
    MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte         (torchvision.datasets.MNIST)
    cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}  (torchvision.datasets.CIFAR10)
    tiny-imagenet-200/{train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt, wnids.txt}
    imagenet/{train,val}/<wnid>/*.JPEG                               (ILSVRC2012, val sorted into class folders)
A missing data set raises DatasetNotFoundError saying where to put it and how to get it.
"""
from __future__ import annotations

import os
from typing import Optional

from torch.utils.data import Dataset
from torchvision import transforms as T

from datamodules.base import ClassificationDataModule, DatasetNotFoundError, holdout, image_hw

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _not_found(name: str, where: str, how: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{name} data set not found: expected {where}. {how} Set the location with data.data_dir=/path "
        f"(or paths.data_dir=..., or the SECURE_LIGHTNING_DATA environment variable). For an offline run use "
        f"data=digits (bundled with scikit-learn) or data=synthetic.")


def _has_images(folder: str) -> bool:
    if not os.path.isdir(folder):
        return False
    for _, _, files in os.walk(folder):
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            return True
    return False


class _TorchvisionModule(ClassificationDataModule):
    """MNIST/CIFAR-10 style: a train file set (split into train/val with a seeded permutation) and a test set."""

    dataset_cls_name: str = ""
    mean: tuple = ()
    std: tuple = ()
    native_size: int = 0

    def __init__(self, data_dir: str = "data", download: bool = False, val_size: int = 5000, split_seed: int = 0,
                 augment: bool = False, batch_size: int = 128, eval_batch_size=None, num_workers: int = 0,
                 pin_memory: bool = False, num_classes: int = 10, channels: int = 1, image_size=28,
                 shuffle: bool = True, drop_last: bool = False):
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, pin_memory, num_classes, channels,
                         image_size, shuffle, drop_last)
        self.download, self.val_size, self.split_seed = bool(download), int(val_size), int(split_seed)
        self.augment = bool(augment)

    def _dataset(self, train: bool, transform):
        import torchvision.datasets as D

        try:
            return getattr(D, self.dataset_cls_name)(self.data_dir, train=train, transform=transform,
                                                     download=self.download)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
            err = self.not_found_error()
            raise DatasetNotFoundError(f"{err} (torchvision: {e})") from e

    def _transform(self, train: bool):
        ops = []
        if image_hw(self.image_size) != (self.native_size, self.native_size):
            ops.append(T.Resize(image_hw(self.image_size)))
        if train and self.augment:
            ops += self._augmentations()
        ops += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(ops)

    def _augmentations(self) -> list:
        return []

    required_files: tuple = ()  # relative to data_dir

    def check_data(self) -> None:
        if self.download:
            self._dataset(True, None)  # downloads if needed (needs internet access)
            self._dataset(False, None)
        missing = [f for f in self.required_files if not os.path.isfile(os.path.join(self.data_dir, f))]
        if missing:
            raise self.not_found_error()

    def not_found_error(self) -> DatasetNotFoundError:
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        self.check_data()
        if stage in (None, "fit", "validate") and self.train_set is None:
            train_full = self._dataset(True, self._transform(train=True))
            eval_view = self._dataset(True, self._transform(train=False))
            self._check_num_classes(len(train_full.classes), self.dataset_cls_name)
            if self.val_size:
                self.train_set, self.val_set = holdout(train_full, eval_view, self.val_size, self.split_seed)
            else:
                self.train_set = train_full
        if self.test_set is None:
            self.test_set = self._dataset(False, self._transform(train=False))
        if self.val_set is None and stage in (None, "fit", "validate"):
            self.val_set = self.test_set


class MNISTDataModule(_TorchvisionModule):
    """MNIST (60k/10k 28x28 grey digits); 5,000 training images held out for validation by default."""
    dataset_cls_name, mean, std, native_size = "MNIST", MNIST_MEAN, MNIST_STD, 28
    required_files = tuple(os.path.join("MNIST", "raw", f) for f in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))

    def not_found_error(self):
        root = os.path.abspath(self.data_dir)
        return _not_found(
            "MNIST", f"{os.path.join(root, 'MNIST', 'raw')}/train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                     f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte",
            f"Get it on a machine with internet access with `python -c \"import torchvision; "
            f"torchvision.datasets.MNIST('{root}', download=True)\"` and copy the MNIST folder here, or run once with "
            f"data.download=true.")


class CIFAR10DataModule(_TorchvisionModule):
    """CIFAR-10 (50k/10k 32x32 RGB); `augment=true` adds random crop (padding 4) and horizontal flip."""
    dataset_cls_name, mean, std, native_size = "CIFAR10", CIFAR10_MEAN, CIFAR10_STD, 32
    required_files = tuple(os.path.join("cifar-10-batches-py", f) for f in (
        "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"))

    def __init__(self, channels: int = 3, image_size=32, **kw):
        super().__init__(channels=channels, image_size=image_size, **kw)

    def _augmentations(self):
        return [T.RandomCrop(image_hw(self.image_size), padding=4), T.RandomHorizontalFlip()]

    def not_found_error(self):
        root = os.path.abspath(self.data_dir)
        return _not_found(
            "CIFAR-10", f"{os.path.join(root, 'cifar-10-batches-py')}/ (data_batch_1..5, test_batch, batches.meta)",
            f"Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it with "
            f"`tar xzf cifar-10-python.tar.gz -C {root}`, or run once with data.download=true.")


class _AnnotatedImages(Dataset):
    """Images listed with their class index: [(path, index)]."""

    def __init__(self, samples: list[tuple[str, int]], transform=None):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[i]
        img = default_loader(path)
        return (self.transform(img) if self.transform else img), label


class _ImageFolderModule(ClassificationDataModule):
    """ImageNet-style folders: `train/<class>/...` read with torchvision ImageFolder."""

    folder_name = ""
    native_size = 224

    def __init__(self, data_dir: str = "data", val_size: int = 0, split_seed: int = 0, augment: bool = False,
                 batch_size: int = 128, eval_batch_size=None, num_workers: int = 0, pin_memory: bool = False,
                 num_classes: int = 1000, channels: int = 3, image_size=224, shuffle: bool = True,
                 drop_last: bool = False):
        super().__init__(data_dir, batch_size, eval_batch_size, num_workers, pin_memory, num_classes, channels,
                         image_size, shuffle, drop_last)
        self.val_size, self.split_seed, self.augment = int(val_size), int(split_seed), bool(augment)

    @property
    def root(self) -> str:
        return os.path.join(self.data_dir, self.folder_name)

    def _transform(self, train: bool):
        size = image_hw(self.image_size)
        native = (self.native_size, self.native_size)
        if train and self.augment:
            ops = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        elif native == (224, 224):  # ImageNet protocol: resize the short side to 256/224 of the crop, center crop
            ops = [T.Resize(round(size[0] * 256 / 224)), T.CenterCrop(size)]
        elif size != native:
            ops = [T.Resize(size)]
        else:
            ops = []
        return T.Compose(ops + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def _test_dataset(self, transform) -> Dataset:
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        from torchvision.datasets import ImageFolder

        self.check_data()
        if stage in (None, "fit", "validate") and self.train_set is None:
            train_full = ImageFolder(os.path.join(self.root, "train"), transform=self._transform(True))
            self._check_num_classes(len(train_full.classes), os.path.join(self.root, "train"))
            if self.val_size:
                eval_view = ImageFolder(os.path.join(self.root, "train"), transform=self._transform(False))
                self.train_set, self.val_set = holdout(train_full, eval_view, self.val_size, self.split_seed)
            else:
                self.train_set = train_full
        if self.test_set is None:
            self.test_set = self._test_dataset(self._transform(False))
        if self.val_set is None and stage in (None, "fit", "validate"):
            self.val_set = self.test_set


class TinyImageNetDataModule(_ImageFolderModule):
    """Tiny-ImageNet-200 (100k train / 10k val, 64x64 RGB, 200 classes). The official val split (labels in
    val/val_annotations.txt) is the test set; validation is the test set unless `val_size` > 0 holds out training
    images."""
    folder_name, native_size = "tiny-imagenet-200", 64

    def __init__(self, num_classes: int = 200, image_size=64, batch_size: int = 128, **kw):
        super().__init__(num_classes=num_classes, image_size=image_size, batch_size=batch_size, **kw)

    def check_data(self) -> None:
        root = os.path.abspath(self.root)
        ann = os.path.join(root, "val", "val_annotations.txt")
        if not (_has_images(os.path.join(root, "train")) and os.path.isfile(ann)):
            raise _not_found(
                "Tiny-ImageNet", f"{root}/train/<wnid>/images/*.JPEG and {ann}",
                f"Download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into "
                f"{os.path.abspath(self.data_dir)}.")

    def _test_dataset(self, transform):
        root = self.root
        classes = sorted(d.name for d in os.scandir(os.path.join(root, "train")) if d.is_dir())
        index = {c: i for i, c in enumerate(classes)}
        samples = []
        with open(os.path.join(root, "val", "val_annotations.txt")) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 2 and parts[1] in index:
                    samples.append((os.path.join(root, "val", "images", parts[0]), index[parts[1]]))
        return _AnnotatedImages(samples, transform)


class ImageNetDataModule(_ImageFolderModule):
    """ILSVRC2012 from image folders (`imagenet/train/<wnid>/`, `imagenet/val/<wnid>/`). The val folder is the test
    set (and the validation set unless `val_size` > 0). Eval transform: resize 256, center crop 224."""
    folder_name, native_size = "imagenet", 224

    def check_data(self) -> None:
        root = os.path.abspath(self.root)
        if not _has_images(os.path.join(root, "val")):
            raise _not_found(
                "ImageNet", f"{root}/val/<wnid>/*.JPEG (and {root}/train/<wnid>/*.JPEG for training)",
                "Download ILSVRC2012 (train and validation images) from https://image-net.org/download.php "
                "(free registration), extract train/ and val/ there and sort val/ into one folder per class "
                "(e.g. with the widely used valprep.sh script).")

    def setup(self, stage: Optional[str] = None) -> None:
        self.check_data()
        if stage in (None, "fit") and not _has_images(os.path.join(self.root, "train")):
            raise _not_found("ImageNet training", f"{os.path.abspath(self.root)}/train/<wnid>/*.JPEG",
                             "Download ILSVRC2012_img_train.tar from https://image-net.org/download.php and extract "
                             "it there (one folder per class), or run mode=test / mode=predict, which need only "
                             "val/.")
        super().setup(stage)

    def _test_dataset(self, transform):
        from torchvision.datasets import ImageFolder

        ds = ImageFolder(os.path.join(self.root, "val"), transform=transform)
        self._check_num_classes(len(ds.classes), os.path.join(self.root, "val"))
        return ds
