"""Every config group of conf/ composes with Hydra's compose API and its objects instantiate (models run a forward
pass on a tiny input of the data's shape). Plain strategy only; the rss3pc strategy config is composed, and
instantiated only once secure_lightning.strategy exists."""
import importlib.util
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def make_cfg(*overrides, tmp="/tmp/secure_lightning_test_out"):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp}", *overrides])


def test_groups_have_the_documented_options():
    assert {"lenet", "alexnet", "vgg16", "resnet18", "resnet50", "resnet101", "resnet152", "resnet18_tv",
            "resnet50_tv", "resnet101_tv", "resnet152_tv", "alexnet_tv", "vgg16_tv", "digits_cnn",
            "mlp", "vit_tiny", "text_encoder"} <= set(options("model"))
    assert {"digits", "mnist", "cifar10", "tiny_imagenet", "imagenet", "synthetic", "text_synth"} <= set(
        options("data"))
    assert {"rss3pc", "plain"} <= set(options("strategy"))
    assert {"cpu", "gpu"} <= set(options("trainer"))


def test_default_config_is_private_digits():
    cfg = make_cfg()
    assert cfg.strategy._target_ == "secure_lightning.strategy.RSS3PC"
    assert cfg.data._target_ == "datamodules.DigitsDataModule"
    assert cfg.model.net._target_ == "models.nets.SmallCNN"
    assert cfg.mode == "fit" and cfg.ckpt_path is None
    assert cfg.model.optimizer._partial_ is True
    assert cfg.trainer.max_epochs == 10 and cfg.trainer.accelerator == "cpu"


@pytest.mark.skipif(importlib.util.find_spec("secure_lightning.strategy") is None,
                    reason="secure_lightning.strategy not written yet")
def test_rss3pc_strategy_instantiates():
    strategy = instantiate(make_cfg().strategy)
    assert type(strategy).__name__ == "RSS3PC"


@pytest.mark.parametrize("name", options("data"))
def test_data_config_instantiates(name, tmp_path):
    cfg = make_cfg(f"data={name}", f"paths.data_dir={tmp_path}")
    dm = instantiate(cfg.data)
    assert dm.num_classes == cfg.data.num_classes
    if "channels" in cfg.data:  # images
        assert dm.channels == cfg.data.channels
    if name in ("digits", "synthetic", "text_synth"):  # generated/bundled: load one batch
        dm.setup("fit")
        x, y = next(iter(dm.train_dataloader()))
        assert tuple(x.shape[1:]) == dm.input_shape and x.shape[0] == cfg.data.batch_size
        assert x.dtype == dm.input_dtype
        assert int(y.max()) < dm.num_classes


# (model, data overrides giving a small valid input); _tv nets need 3 channels and >= 64 px (AlexNet)
_SMALL = ["data=synthetic", "data.channels=3", "data.image_size=64", "data.num_classes=10"]
MODEL_DATA = {
    "digits_cnn": ["data=digits"],
    "mlp": ["data=digits"],
    "vit_tiny": ["data=digits"],
    "text_encoder": [],  # selects data=text_synth itself
    "lenet": ["data=synthetic", "data.channels=1", "data.image_size=28", "data.num_classes=10"],
    "alexnet": ["data=synthetic", "data.channels=3", "data.image_size=32", "data.num_classes=10"],
    "vgg16": ["data=synthetic", "data.channels=3", "data.image_size=32", "data.num_classes=10"],
}


@pytest.mark.parametrize("name", options("model"))
def test_model_config_instantiates_and_runs(name):
    cfg = make_cfg("strategy=plain", f"model={name}", *MODEL_DATA.get(name, _SMALL))
    model = instantiate(cfg.model)
    dm = instantiate(cfg.data)
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, *dm.input_shape, dtype=dm.input_dtype))
    assert out.shape == (1, cfg.data.num_classes)
    opt = model.configure_optimizers()
    assert type(opt).__name__ == cfg.model.optimizer._target_.rsplit(".", 1)[1]
    assert opt.defaults["lr"] == cfg.model.optimizer.lr


def test_text_encoder_takes_vocabulary_and_length_from_the_data():
    cfg = make_cfg("strategy=plain", "model=text_encoder", "data.vocab_size=48", "data.seq_len=12")
    assert cfg.data._target_ == "datamodules.TextSynthDataModule"
    net = instantiate(cfg.model).net
    assert net.embed.num_embeddings == 48 and net.pos_embed.shape[1] == 12
    assert make_cfg("model=text_encoder", "data=synthetic").data._target_ == "datamodules.SyntheticDataModule"


def test_scheduler_partial_is_wired():
    cfg = make_cfg("strategy=plain", "+model.scheduler._target_=torch.optim.lr_scheduler.StepLR",
                   "+model.scheduler._partial_=true", "+model.scheduler.step_size=3")
    conf = instantiate(cfg.model).configure_optimizers()
    assert isinstance(conf["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert conf["lr_scheduler"]["monitor"] == "val/loss"


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_config(name, tmp_path):
    import train

    cfg = make_cfg("strategy=plain", f"trainer={name}", tmp=str(tmp_path))
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer" and cfg.trainer.inference_mode is False
    if name == "gpu" and not torch.cuda.is_available():
        assert cfg.trainer.accelerator == "gpu"
        return
    trainer = instantiate(cfg.trainer, strategy=train.build_strategy(cfg.strategy),
                          callbacks=train.build_all(cfg.callbacks), logger=train.build_all(cfg.logger))
    assert trainer.max_epochs == cfg.trainer.max_epochs
    assert any(type(c).__name__ == "ModelCheckpoint" for c in trainer.callbacks)


PAPER_TRAIN = {  # CryptGPU's training settings: (model, data, batch size)
    "train_lenet_mnist": ("lenet", "mnist", 128),
    "train_alexnet_cifar10": ("alexnet", "cifar10", 128),
    "train_vgg16_cifar10": ("vgg16", "cifar10", 32),
    "train_alexnet_tiny_imagenet": ("alexnet", "tiny_imagenet", 128),
    "train_vgg16_tiny_imagenet": ("vgg16", "tiny_imagenet", 8),
}


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_config(name):
    cfg = make_cfg(f"experiment={name}")
    assert cfg.strategy._target_ == "secure_lightning.strategy.RSS3PC"  # experiments run privately by default
    if name in PAPER_TRAIN:
        model, data, batch = PAPER_TRAIN[name]
        assert cfg.mode == "fit" and cfg.data.batch_size == batch and cfg.model.optimizer.lr == 0.1
    else:
        assert name.startswith("infer_") and cfg.mode == "test" and cfg.data.eval_batch_size == 1
        model, data = name[len("infer_"):].split("_", 1)
    assert cfg.model.net._target_.lower().endswith(model)
    assert cfg.data._target_.lower().endswith(data.replace("_", "") + "datamodule")
    net = instantiate(cfg.model.net)
    if cfg.data.image_size <= 64:  # forward at the paper's input size (224 px nets: construction only, for speed)
        with torch.no_grad():
            out = net.eval()(torch.zeros(1, cfg.data.channels, cfg.data.image_size, cfg.data.image_size))
        assert out.shape == (1, cfg.data.num_classes)


def test_experiment_with_synthetic_data_override():
    cfg = make_cfg("experiment=infer_resnet50_imagenet", "data=synthetic", "data.image_size=224",
                   "data.num_classes=1000", "data.test_size=2")
    assert cfg.data._target_ == "datamodules.SyntheticDataModule" and cfg.data.eval_batch_size == 1
    assert cfg.model.net.num_classes == 1000


def test_debug_configs_compose():
    assert make_cfg("debug=fdr").trainer.fast_dev_run is True
    assert make_cfg("debug=limit").trainer.limit_train_batches == 5
