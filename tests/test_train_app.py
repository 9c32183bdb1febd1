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


@pytest.mark.slow
def test_default_private_run(tmp_path):
    """`python train.py` as shipped: private training on digits, test accuracy >= 90%, communication reported."""
    r = run_cli(f"hydra.run.dir={tmp_path}", timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test/acc"] >= 0.90
    assert metrics["comm/fit/bytes"] > 0 and "communication (fit" in r.stdout
