"""The networks and the Classifier LightningModule in plain PyTorch: paper architectures, torchvision
compatibility, only layers the secure stack supports, and a short plain training run."""
import functools

import pytest
import pytorch_lightning as pl
import torch
import torchvision
from torch import nn

from datamodules import DigitsDataModule, SyntheticDataModule
from models import Classifier
from models import nets as N

SECURE_LAYERS = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm2d,
                 nn.Dropout, nn.Flatten, nn.Identity)


def leaf_modules(net):
    return [m for m in net.modules() if not list(m.children())]


def linear_in_features(net):
    return [m.in_features for m in net.modules() if isinstance(m, nn.Linear)]


PAPER_NETS = {
    "lenet": (lambda: N.LeNet(), (1, 28, 28)),
    "alexnet32": (lambda: N.AlexNet(10, 32), (3, 32, 32)),
    "alexnet64": (lambda: N.AlexNet(200, 64), (3, 64, 64)),
    "vgg16_32": (lambda: N.VGG16(10, 32), (3, 32, 32)),
    "vgg16_64": (lambda: N.VGG16(200, 64), (3, 64, 64)),
    "resnet18": (lambda: N.resnet18(10), (3, 64, 64)),
    "resnet50": (lambda: N.resnet50(10), (3, 64, 64)),
    "digits_cnn": (lambda: N.SmallCNN(), (1, 8, 8)),
    "mlp": (lambda: N.MLP(None, 10, (32,), in_channels=1, image_size=8), (1, 8, 8)),
}


@pytest.mark.parametrize("name", PAPER_NETS)
def test_nets_use_only_secure_layers_and_average_pooling(name):
    make, shape = PAPER_NETS[name]
    net = make()
    for m in leaf_modules(net):
        assert isinstance(m, SECURE_LAYERS), f"{name}: unsupported layer {type(m).__name__}"
        assert not isinstance(m, nn.MaxPool2d), f"{name}: paper variants average-pool"
        assert not getattr(m, "inplace", False), f"{name}: in-place {type(m).__name__}"
    out = net(torch.randn(2, *shape))
    out.sum().backward()  # the plain graph trains
    assert out.shape[0] == 2


def test_paper_head_sizes():
    assert linear_in_features(N.LeNet()) == [800, 500]
    assert linear_in_features(N.AlexNet(10, 32)) == [256, 256, 256]
    assert linear_in_features(N.AlexNet(200, 64)) == [1024, 1024, 1024]
    assert linear_in_features(N.AlexNet(1000, 224)) == [9216, 4096, 4096]
    assert linear_in_features(N.VGG16(10, 32)) == [512, 256, 256]
    assert linear_in_features(N.VGG16(200, 64)) == [512, 512, 512]
    assert linear_in_features(N.VGG16(1000, 224)) == [4608, 4096, 4096]
    assert N.LeNet(image_size=28)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_resnet_depths_and_stem():
    for make, blocks in ((N.resnet18, 8), (N.resnet50, 16), (N.resnet101, 33), (N.resnet152, 50)):
        net = make(num_classes=7)
        n = sum(isinstance(m, (N.BasicBlock, N.Bottleneck)) for m in net.modules())
        assert n == blocks and net.fc.out_features == 7
        assert isinstance(net.maxpool, nn.AvgPool2d) and net.maxpool.padding == 0  # CryptGPU's stem
    with pytest.raises(ValueError, match="stem_pool"):
        N.resnet18(stem_pool="median")


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_with_max_stem_equals_torchvision(depth):
    ours = getattr(N, f"resnet{depth}")(num_classes=10, stem_pool="max").eval()
    tv = getattr(torchvision.models, f"resnet{depth}")(num_classes=10).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)  # same parameter names and shapes
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-4, atol=1e-5)


def test_vgg16_features_match_torchvision_layout():
    ours = N.VGG16(10, 32)
    with torch.device("meta"):  # shapes only, no 138M-parameter initialisation
        tv = torchvision.models.vgg16()
    want = {k: v.shape for k, v in tv.features.state_dict().items()}
    assert {k: v.shape for k, v in ours.features.state_dict().items()} == want


def test_too_small_inputs_are_rejected():
    with pytest.raises(ValueError, match="LeNet"):
        N.LeNet(image_size=8)
    with pytest.raises(ValueError, match="VGG16"):
        N.VGG16(10, 16)


def _plain_trainer(tmp_path, **kw):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kw)


def test_classifier_trains_on_digits_and_logs_metrics(tmp_path):
    pl.seed_everything(0, verbose=False)
    dm = DigitsDataModule(batch_size=64)
    model = Classifier(N.SmallCNN(), functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9), num_classes=10)
    trainer = _plain_trainer(tmp_path, max_epochs=3)
    trainer.fit(model, datamodule=dm)
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(trainer.callback_metrics)
    (res,) = trainer.test(model, datamodule=dm, verbose=False)
    assert set(res) == {"test/loss", "test/acc"} and res["test/acc"] > 0.8
    preds = trainer.predict(model, datamodule=dm)
    assert torch.cat(preds).shape == (360, 10)


def test_classifier_with_scheduler_and_synthetic_vectors(tmp_path):
    dm = SyntheticDataModule(shape=[16], num_classes=3, train_size=64, val_size=16, test_size=16, batch_size=16)
    model = Classifier(N.MLP(16, 3, (8,)), functools.partial(torch.optim.SGD, lr=0.1),
                       scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
                       num_classes=3)
    trainer = _plain_trainer(tmp_path, max_epochs=2)
    trainer.fit(model, datamodule=dm)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.025)
