"""train.py end to end with strategy=plain: the CLI writes metrics.json, the default settings reach >= 95% on
digits, checkpoints feed mode=test/predict, multirun sweeps, Lightning's subprocess launcher can re-run the script,
and a missing data set stops the run with instructions; a tiny private run (strategy=rss3pc) end to end. The full
private default run is `slow`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import train
from datamodules import DatasetNotFoundError

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def make_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *QUIET, *overrides])


def run_cli(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_cli_smoke_writes_metrics_json(tmp_path):
    r = run_cli("strategy=plain", "trainer.max_epochs=1", *QUIET, f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["mode"] == "fit"
    for key in ("train/loss", "val/acc", "test/acc", "test/loss", "time/fit_s", "time/test_s"):
        assert isinstance(metrics[key], float), key
    assert "test accuracy:" in r.stdout and "communication" in r.stdout
    assert (tmp_path / ".hydra" / "config.yaml").is_file() and (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_default_settings_reach_95_percent_in_plain_training(tmp_path):
    """The default run's settings (digits 8x8, SmallCNN, SGD 0.1/0.9, 10 epochs) with strategy=plain."""
    metrics = train.train(make_cfg(tmp_path, "strategy=plain", "callbacks=none", "logger=none"))
    assert metrics["test/acc"] >= 0.95, metrics
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]
    assert not any(k.startswith("comm/") for k in metrics)  # plain: nothing to report


def test_checkpoint_feeds_test_and_predict_modes(tmp_path):
    fit = train.train(make_cfg(tmp_path / "fit", "strategy=plain", "trainer.max_epochs=2", "logger=none"))
    ckpt = tmp_path / "fit" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    test = train.train(make_cfg(tmp_path / "test", "strategy=plain", "mode=test", f"ckpt_path={ckpt}"))
    assert test["test/acc"] == pytest.approx(fit["test/acc"]) and "time/fit_s" not in test
    pred = train.train(make_cfg(tmp_path / "pred", "strategy=plain", "mode=predict", f"ckpt_path={ckpt}"))
    assert pred["predict/num_samples"] == 360
    saved = torch.load(tmp_path / "pred" / "predictions.pt")
    assert saved["logits"].shape == (360, 10) and torch.equal(saved["labels"], saved["logits"].argmax(1))
    resumed = train.train(make_cfg(tmp_path / "resume", "strategy=plain", "trainer.max_epochs=3",
                                   f"ckpt_path={ckpt}", "logger=none", "test_after_fit=false"))
    assert "val/acc" in resumed and "test/acc" not in resumed


def test_unknown_mode_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="mode must be one of"):
        train.train(make_cfg(tmp_path, "strategy=plain", "mode=evaluate"))


def test_missing_data_set_stops_before_training(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="MNIST data set not found"):
        train.train(make_cfg(tmp_path, "strategy=plain", "data=mnist", "model=lenet", f"paths.data_dir={tmp_path}"))
    with pytest.raises(DatasetNotFoundError, match="cifar-10-python.tar.gz"):
        train.train(make_cfg(tmp_path, "strategy=plain", "data=cifar10", "model=alexnet", f"paths.data_dir={tmp_path}"))
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow  # ~15 s: two plain Lightning runs through Hydra's sweeper
def test_multirun_sweep_writes_metrics_per_run(tmp_path):
    r = run_cli("-m", "strategy=plain", "trainer.max_epochs=1", "callbacks=none", "logger=none",
                "model.optimizer.lr=0.05,0.2", *QUIET, f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    runs = [json.loads((tmp_path / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert all("test/acc" in m for m in runs)
    overrides = [(tmp_path / str(i) / ".hydra" / "overrides.yaml").read_text() for i in range(2)]
    assert "model.optimizer.lr=0.05" in overrides[0] and "model.optimizer.lr=0.2" in overrides[1]


def test_reentrant_under_lightning_subprocess_launcher(tmp_path):
    """strategy.name=ddp with 2 CPU devices: Lightning re-runs train.py for rank 1 (same argv plus Hydra run-dir
    overrides); only rank 0 writes metrics.json."""
    r = run_cli("strategy=plain", "strategy.name=ddp", "trainer.devices=2", "trainer.max_epochs=1",
                "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
                "callbacks=none", "logger=none", *QUIET, f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "test/acc" in metrics
    assert r.stdout.count("metrics: ") == 1  # rank 1 ran the same script but wrote and printed nothing


def test_summary_lines_report_communication_when_available():
    lines = train.summary_lines({"test/acc": 0.9, "test/loss": 0.3, "comm/fit/bytes": 3 * 2 ** 20,
                                 "comm/fit/rounds": 1234, "comm/test/bytes": 2048, "time/fit_s": 12.0})
    text = "\n".join(lines)
    assert "test accuracy: 90.00%" in text
    assert "communication (fit, party 0 sent): 3.0 MiB in 1234 rounds" in text
    assert "communication (test, party 0 sent): 2.0 KiB" in text and "fit time: 12.0 s" in text
    flat = {}
    train._flatten("comm/fit", {"bytes": 10, "by_label": {"relu": {"bytes": 4}}}, flat)
    assert flat == {"comm/fit/bytes": 10, "comm/fit/by_label/relu/bytes": 4}


def test_private_smoke_rss3pc(tmp_path):
    """train.py end to end under strategy=rss3pc on a tiny config (1 epoch of 2 batches): fit, test, metrics.json with
    the communication of each stage."""
    r = run_cli("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                "trainer.limit_test_batches=1", *QUIET, f"hydra.run.dir={tmp_path}", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert isinstance(metrics["test/acc"], float) and 0.0 <= metrics["test/acc"] <= 1.0
    assert metrics["comm/fit/bytes"] > 0 and metrics["comm/fit/rounds"] > 0 and metrics["comm/test/bytes"] > 0
    assert "communication (fit, party 0 sent)" in r.stdout
    assert "s per training step" in r.stdout  # the time estimate, printed by party 0 (models/callbacks.py)
    import csv  # the training and validation curve survive the test call on the same Trainer
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for col in ("train/loss_epoch", "val/loss", "test/acc"):
        assert sum(1 for row in rows if row[col]) == 1, col


@pytest.mark.slow
def test_default_private_run(tmp_path):
    """`python train.py` as shipped: private training on digits, test accuracy >= 90%, communication reported."""
    r = run_cli(f"hydra.run.dir={tmp_path}", timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test/acc"] >= 0.90
    assert metrics["comm/fit/bytes"] > 0 and "communication (fit" in r.stdout


def write_mnist_files(raw: Path, train: int, test: int) -> None:
    """Small random MNIST files in the IDX format torchvision reads (MNIST/raw/*-idx?-ubyte)."""
    import struct
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", train), ("t10k", test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28)
                                                          + images.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.numpy().tobytes())


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_three_hosts_in_namespaces_with_the_data_only_on_the_owner(tmp_path):
    """`python train.py trainer.num_nodes=3` on three 'hosts' (network namespaces on a shaped bridge). Only party 0's
    host has a data set: the others are started with `data=mnist` pointing at an empty folder, which fails the moment
    anything instantiates or checks it. All three fit and test; party 0 writes metrics.json."""
    from benchmarks import netns
    from secure_lightning.runtime import free_port
    if not netns.availability()[0]:
        pytest.skip(netns.availability()[1])
    owner_data, empty = tmp_path / "data", tmp_path / "no_data"
    write_mnist_files(owner_data / "MNIST" / "raw", train=96, test=32)
    empty.mkdir()
    common = ["trainer.num_nodes=3", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
              "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "logger=none", "callbacks=none",
              "data=mnist", "data.val_size=16", "data.batch_size=16", *QUIET]
    per_host = {0: [f"paths.data_dir={owner_data}"], 1: [f"paths.data_dir={empty}"], 2: [f"paths.data_dir={empty}"]}
    with netns.PartyNetwork("lan") as net:
        port = str(free_port())
        procs = []
        for r in range(3):
            env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
            env.update({k: v for k, v in net.env(r).items() if k not in ("RANK", "WORLD_SIZE")})
            env.update(NODE_RANK=str(r), MASTER_PORT=port, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
            cmd = net.exec_prefix(r) + [sys.executable, "train.py", *common, *per_host[r],
                                        f"hydra.run.dir={tmp_path / f'host{r}'}"]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
        outs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n\n".join(o[-3000:] for o in outs)
    metrics = json.loads((tmp_path / "host0" / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["comm/fit/bytes"] > 0
    for r in (1, 2):
        assert not (tmp_path / f"host{r}" / "metrics.json").exists()
        assert "DatasetNotFound" not in outs[r] and "MNIST" not in outs[r]
    assert not any(empty.iterdir())


def _secure_public_part(tmp_path, model):
    """The public part of a share checkpoint of `model`, as party 0 writes it (shares replaced by random blobs)."""
    from secure_lightning.checkpoint_io import ShareCheckpointIO, to_blobs
    from secure_lightning.protocols.sharing import Shares
    io = ShareCheckpointIO()
    io.bind(0, 20)
    sd = {k: Shares(torch.zeros_like(v, dtype=torch.int64), torch.zeros_like(v, dtype=torch.int64))
          for k, v in model.state_dict().items()}
    ckpt = {"epoch": 1, "global_step": 2, "pytorch-lightning_version": "2.0.0", "hyper_parameters": {},
            "state_dict": {k: {"__rss3pc_shares__": True, "cur": s.cur, "prev": s.prev, "dtype": "float32"}
                           for k, s in sd.items()}, "optimizer_states": [], "lr_schedulers": []}
    path = tmp_path / "secure.ckpt"
    io.save_checkpoint(to_blobs(ckpt), path)
    return path


def test_plain_lightning_refuses_a_secure_checkpoint_with_an_explanation(tmp_path):
    """Model.load_from_checkpoint(<share checkpoint>) raises (strict or not) saying what the file is and where a
    plaintext comes from; train.py with a plain strategy does the same, or uses the model owner's `.plain` export."""
    from models import Classifier
    from models.nets import SmallCNN
    net = lambda: SmallCNN(in_channels=1, num_classes=10, image_size=8, channels=[16, 32])  # noqa: E731
    model = Classifier(net=net(), optimizer=torch.optim.SGD, num_classes=10)
    path = _secure_public_part(tmp_path, model)
    for strict in (True, False):
        with pytest.raises(RuntimeError, match="secure_lightning SHARE CHECKPOINT") if strict else \
                pytest.raises(RuntimeError, match="size mismatch"):
            Classifier.load_from_checkpoint(path, net=net(), optimizer=torch.optim.SGD, strict=strict)
    with pytest.raises(ValueError, match=r"SHARE CHECKPOINT.*secure\.ckpt\.plain"):
        train.train(make_cfg(tmp_path / "t", "strategy=plain", "mode=test", f"ckpt_path={path}", "logger=none"))
    plain = train.train(make_cfg(tmp_path / "p", "strategy=plain", "trainer.max_epochs=1", "logger=none",
                                 "test_after_fit=false"))
    torch.save(torch.load(tmp_path / "p" / "checkpoints" / "last.ckpt", weights_only=False), f"{path}.plain")
    test = train.train(make_cfg(tmp_path / "t2", "strategy=plain", "mode=test", f"ckpt_path={path}", "logger=none"))
    direct = train.train(make_cfg(tmp_path / "t3", "strategy=plain", "mode=test", f"ckpt_path={path}.plain",
                                  "logger=none"))
    assert plain["val/acc"] > 0.2 and test["test/acc"] == direct["test/acc"]
