"""The app's TimeEstimate callback (models/callbacks.py, on by default in conf/callbacks/default.yaml): after the first
training steps it prints seconds per step and the estimated time of an epoch and of the whole run. The checks are
about the message and the arithmetic of the estimate, never about how long a step takes."""
import math
import re

import pytest

import train
from models.callbacks import TimeEstimate, run_batches
from tests.test_train_app import make_cfg


def test_run_batches_follows_epochs_steps_and_accumulation():
    assert run_batches(20, 10, -1) == 200
    assert run_batches(20, 10, 50) == 50           # max_steps stops the run first
    assert run_batches(20, 10, 50, accumulate=2) == 100
    assert run_batches(20, -1, -1) == math.inf     # unbounded: no estimate of the run
    assert run_batches(20, -1, 30) == 30


def test_default_app_config_prints_the_estimate(tmp_path, capsys):
    """Plain digits CNN, 2 epochs of 6 batches: the default callbacks print the estimate once, after 1 + 3 steps,
    and its figures hold together (epoch = 6 steps, run = 12 steps)."""
    cfg = make_cfg(tmp_path, "strategy=plain", "logger=none", "trainer.max_epochs=2", "trainer.limit_train_batches=6",
                   "trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0", "test_after_fit=false")
    assert cfg.callbacks.time_estimate.steps == 3
    train.train(cfg)
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("[time]")]
    assert len(lines) == 1, out
    m = re.match(r"\[time\] ([0-9.e+-]+) s per training step \(3 steps timed\); estimated ([0-9.]+) (s|min|h) per "
                 r"epoch \(6 steps\), ([0-9.]+) (s|min|h) for the run \(12 steps, 2 epochs\)", lines[0])
    assert m, lines[0]
    per_step = float(m.group(1))
    assert 0 < per_step < 60
    unit = {"s": 1, "min": 60, "h": 3600}
    assert float(m.group(2)) * unit[m.group(3)] == pytest.approx(6 * per_step, rel=0.05, abs=0.06)
    assert float(m.group(4)) * unit[m.group(5)] == pytest.approx(12 * per_step, rel=0.05, abs=0.06)


def test_short_epoch_reports_at_its_end():
    """Fewer batches than skip + steps in the first epoch: the estimate comes at the epoch's end, from what ran."""
    class Trainer:
        num_training_batches, max_epochs, max_steps, accumulate_grad_batches = 2, 3, -1, 1
        is_global_zero, progress_bar_callback = False, None

    cb, t = TimeEstimate(steps=3, skip=1), Trainer()
    cb.on_train_start(t, None)
    for i in range(2):
        cb.on_train_batch_end(t, None, None, None, i)
    assert cb.estimate is None
    cb.on_train_epoch_end(t, None)
    e = cb.estimate
    assert e["steps_timed"] == 1 and e["steps_per_epoch"] == 2 and e["run_steps"] == 6
    assert e["run_s"] == pytest.approx(6 * e["seconds_per_step"])
