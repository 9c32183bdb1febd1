"""LightningDataModules for the app (train.py): digits (offline default), synthetic, generated text (text_synth),
MNIST, CIFAR-10, Tiny-ImageNet and ImageNet."""
from datamodules.base import ClassificationDataModule, DatasetNotFoundError
from datamodules.digits import DigitsDataModule
from datamodules.synthetic import SyntheticDataModule, SyntheticDataset
from datamodules.text import TextSynthDataModule
from datamodules.vision import CIFAR10DataModule, ImageNetDataModule, MNISTDataModule, TinyImageNetDataModule

__all__ = ["ClassificationDataModule", "DatasetNotFoundError", "DigitsDataModule", "SyntheticDataModule",
           "SyntheticDataset", "TextSynthDataModule", "MNISTDataModule", "CIFAR10DataModule", "TinyImageNetDataModule",
           "ImageNetDataModule"]
