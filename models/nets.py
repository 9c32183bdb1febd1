"""Plain PyTorch networks: the CryptGPU paper's variants and two small digits models.

Only layers that the secure stack supports are used (Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d,
BatchNorm2d, Dropout, Flatten), activations are never in place and residual sums are written `out + identity`.

The CryptGPU variants follow the paper's benchmark code (jeffreysijuntan/CryptGPU, scripts/network.py and
scripts/benchmark.py): average pooling wherever the original network max-pools, and small fully connected heads
whose size depends on the input resolution (32x32 CIFAR-10, 64x64 Tiny-ImageNet, 224x224 ImageNet). The torchvision
originals are used directly from `torchvision.models` (see conf/model/*_tv.yaml).
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = [
    "MLP", "SmallCNN", "LeNet", "AlexNet", "VGG16", "ResNet", "BasicBlock", "Bottleneck",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
]


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _out(n: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a conv/pool along one axis (floor mode)."""
    return (n + 2 * padding - kernel) // stride + 1


class MLP(nn.Module):
    """Flatten, then Linear-ReLU blocks and a Linear classifier. `in_features` defaults to in_channels * H * W."""

    def __init__(self, in_features: int | None = None, num_classes: int = 10, hidden: Sequence[int] = (128,),
                 in_channels: int = 1, image_size=8):
        super().__init__()
        if in_features is None:
            h, w = _pair(image_size)
            in_features = in_channels * h * w
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(in_features)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class SmallCNN(nn.Module):
    """Conv3x3-ReLU-AvgPool2 blocks, then one Linear layer: the default digits model (8x8 in, 2x2 after two blocks)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size=8, channels: Sequence[int] = (16, 32)):
        super().__init__()
        h, w = _pair(image_size)
        layers: list[nn.Module] = []
        c = in_channels
        for out_c in channels:
            layers += [nn.Conv2d(c, int(out_c), kernel_size=3, padding=1), nn.ReLU(), nn.AvgPool2d(2)]
            c, h, w = int(out_c), h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"SmallCNN: image_size {image_size} is too small for {len(channels)} pooling blocks")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class LeNet(nn.Module):
    """The paper's LeNet (MNIST, 1x28x28): two 5x5 conv + ReLU + 2x2 average pool blocks, FC 500, FC classes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size=28):
        super().__init__()
        h, w = _pair(image_size)
        for _ in range(2):
            h, w = _out(h, 5) // 2, _out(w, 5) // 2
        if h < 1 or w < 1:
            raise ValueError(f"LeNet needs images of at least 16x16, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, kernel_size=5), nn.ReLU(), nn.AvgPool2d(2, stride=2),
            nn.Conv2d(20, 50, kernel_size=5), nn.ReLU(), nn.AvgPool2d(2, stride=2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(50 * h * w, 500), nn.ReLU(), nn.Linear(500, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


# Paper heads by input size: (average pool before the head, hidden width). Other sizes: no pool, hidden 4096.
_ALEXNET_HEADS = {32: (1, 256), 64: (2, 1024), 224: (4, 4096)}
_VGG_HEADS = {32: (1, 256), 64: (2, 512), 224: (2, 4096)}


class AlexNet(nn.Module):
    """The paper's AlexNet: max pools replaced by average pools, head sized by input (CIFAR-10 32, Tiny-ImageNet 64,
    ImageNet 224). `head_pool`/`hidden` override the paper's choice."""

    def __init__(self, num_classes: int = 10, image_size=32, in_channels: int = 3,
                 head_pool: int | None = None, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        h, w = _pair(image_size)
        paper_pool, paper_hidden = _ALEXNET_HEADS.get(h if h == w else -1, (1, 4096))
        head_pool = paper_pool if head_pool is None else int(head_pool)
        hidden = paper_hidden if hidden is None else int(hidden)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=9), nn.ReLU(),
            nn.AvgPool2d(kernel_size=3, stride=2),
            nn.Conv2d(96, 256, kernel_size=5, padding=1), nn.ReLU(),
            nn.AvgPool2d(kernel_size=2, stride=1),
            nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        )
        for k, s, p in ((11, 4, 9), (3, 2, 0), (5, 1, 1), (2, 1, 0)):
            h, w = _out(h, k, s, p), _out(w, k, s, p)
        if h < 1 or w < 1:
            raise ValueError(f"AlexNet: image_size {image_size} is too small")
        head: list[nn.Module] = []
        if head_pool > 1:
            head.append(nn.AvgPool2d(kernel_size=head_pool))
            h, w = h // head_pool, w // head_pool
        head += [nn.Flatten(), nn.Linear(256 * h * w, hidden), nn.ReLU()]
        if dropout:
            head.append(nn.Dropout(dropout))
        head += [nn.Linear(hidden, hidden), nn.ReLU()]
        if dropout:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.features(x))


_VGG16_CFG = (64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P")


class VGG16(nn.Module):
    """The paper's VGG16: torchvision's feature layout (same indices, so torchvision weights load into `features`)
    with the five max pools replaced by 2x2 average pools, and a small head sized by input.

    Deviation: the paper's ImageNet head stacks three Linear layers without ReLU (scripts/network.py); ours has ReLUs.
    """

    def __init__(self, num_classes: int = 10, image_size=32, in_channels: int = 3,
                 head_pool: int | None = None, hidden: int | None = None, batch_norm: bool = False):
        super().__init__()
        h, w = _pair(image_size)
        paper_pool, paper_hidden = _VGG_HEADS.get(h if h == w else -1, (1, 4096))
        head_pool = paper_pool if head_pool is None else int(head_pool)
        hidden = paper_hidden if hidden is None else int(hidden)
        layers: list[nn.Module] = []
        c = in_channels
        for v in _VGG16_CFG:
            if v == "P":
                layers.append(nn.AvgPool2d(kernel_size=2, stride=2))
                h, w = h // 2, w // 2
            else:
                layers.append(nn.Conv2d(c, v, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(v))
                layers.append(nn.ReLU())
                c = v
        if h < 1 or w < 1:
            raise ValueError(f"VGG16 needs images of at least 32x32, got {image_size}")
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = []
        if head_pool > 1:
            head.append(nn.AvgPool2d(kernel_size=head_pool))
            h, w = h // head_pool, w // head_pool
        head += [nn.Flatten(), nn.Linear(512 * h * w, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                 nn.Linear(hidden, num_classes)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.features(x))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """Two 3x3 convs; module names match torchvision's BasicBlock so its state_dicts load."""
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = _conv_bn(cin, width, 3, stride)
        self.relu = nn.ReLU()
        self.conv2, self.bn2 = _conv_bn(width, cout, 3)
        self.downsample = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided, as torchvision v1.5), 1x1 convs; names match torchvision's Bottleneck."""
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = _conv_bn(cin, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, cout, 1)
        self.relu = nn.ReLU()
        self.downsample = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet as in torchvision (same parameter names, so torchvision checkpoints load with strict=True), with the
    paper's stem: the 3x3/2 max pool replaced by `nn.AvgPool2d(3, stride=2)` (CryptGPU scripts/benchmark.py sets
    `model.maxpool = nn.AvgPool2d(kernel_size=3, stride=2)`, i.e. without torchvision's padding=1).

    stem_pool: "avg" (paper), "max" (torchvision's MaxPool2d(3, 2, padding=1)) or "none" (small inputs).
    """

    def __init__(self, block: str, layers: Sequence[int], num_classes: int = 1000, in_channels: int = 3,
                 stem_pool: str = "avg"):
        super().__init__()
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        if stem_pool == "avg":
            self.maxpool = nn.AvgPool2d(kernel_size=3, stride=2)  # name kept for torchvision compatibility
        elif stem_pool == "max":
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        elif stem_pool == "none":
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"stem_pool must be 'avg', 'max' or 'none', got {stem_pool!r}")
        cin = 64
        for i, (n, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            blocks = []
            for j in range(n):
                blocks.append(block_cls(cin, width, stride=2 if (i > 0 and j == 0) else 1))
                cin = width * block_cls.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def resnet18(num_classes: int = 1000, in_channels: int = 3, stem_pool: str = "avg") -> ResNet:
    return ResNet("basic", (2, 2, 2, 2), num_classes, in_channels, stem_pool)


def resnet34(num_classes: int = 1000, in_channels: int = 3, stem_pool: str = "avg") -> ResNet:
    return ResNet("basic", (3, 4, 6, 3), num_classes, in_channels, stem_pool)


def resnet50(num_classes: int = 1000, in_channels: int = 3, stem_pool: str = "avg") -> ResNet:
    return ResNet("bottleneck", (3, 4, 6, 3), num_classes, in_channels, stem_pool)


def resnet101(num_classes: int = 1000, in_channels: int = 3, stem_pool: str = "avg") -> ResNet:
    return ResNet("bottleneck", (3, 4, 23, 3), num_classes, in_channels, stem_pool)


def resnet152(num_classes: int = 1000, in_channels: int = 3, stem_pool: str = "avg") -> ResNet:
    return ResNet("bottleneck", (3, 8, 36, 3), num_classes, in_channels, stem_pool)
