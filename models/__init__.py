"""LightningModules and networks written as plain PyTorch (the secure strategy swaps layers itself)."""
from models.classifier import Classifier
from models.nets import (MLP, AlexNet, LeNet, ResNet, SmallCNN, VGG16, resnet18, resnet34, resnet50, resnet101,
                         resnet152)
from models.transformers import TextEncoder, ViT

__all__ = ["Classifier", "MLP", "SmallCNN", "LeNet", "AlexNet", "VGG16", "ResNet",
           "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "ViT", "TextEncoder"]
