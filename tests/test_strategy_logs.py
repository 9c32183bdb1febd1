"""Loggers keep every row across Trainer calls under RSS3PC, as plain Lightning does (secure_lightning/logs.py).

fit -> validate -> test on ONE Trainer with a CSVLogger and a TensorBoardLogger, plain vs rss3pc on the same model, data and seed: the same
folder, the same rows (step, epoch and the logged names) in the same order, values within the fixed-point tolerance
of these linear-regression losses (5e-3 absolute: a few products and a mean of O(1) values at 2^-20 resolution,
after a few SGD steps whose errors compound).
"""
import csv

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from tests.test_strategy import LinearRegressor, regression_data, trainer_kwargs


class LoggedRegressor(LinearRegressor):
    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.mse_loss(self(x), y))


def _run(tmp_path, strategy):
    torch.manual_seed(0)
    model = LoggedRegressor()
    x, y = regression_data()
    val = DataLoader(TensorDataset(x, y), batch_size=16)
    loggers = [CSVLogger(str(tmp_path), name="logs"), TensorBoardLogger(str(tmp_path), name="tb")]
    trainer = pl.Trainer(strategy=strategy, max_steps=4, log_every_n_steps=1,
                         **trainer_kwargs(tmp_path, logger=loggers, limit_val_batches=1, limit_test_batches=1))
    trainer.fit(model, val_dataloaders=val)
    trainer.validate(model, val)
    trainer.test(model, val)
    with open(tmp_path / "logs" / "version_0" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, sorted(p.name for p in (tmp_path / "logs").iterdir()), _scalars(tmp_path / "tb")


def _scalars(root):
    """{tag: [(step, value)]} over every event file of every version folder under root."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    versions = sorted(p for p in root.iterdir())
    out = {"_versions": [p.name for p in versions]}
    for v in versions:
        acc = EventAccumulator(str(v))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_fit_validate_test_keep_every_csv_row(tmp_path):
    plain, plain_versions, plain_tb = _run(tmp_path / "plain", "auto")
    secure, secure_versions, secure_tb = _run(tmp_path / "secure", "rss3pc")
    assert secure_versions == plain_versions == ["version_0"]
    assert len(plain) >= 6 and len(secure) == len(plain)
    assert list(secure[0]) == list(plain[0])
    for s, p in zip(secure, plain):
        for k in p:
            if p[k] == "" or k in ("step", "epoch"):
                assert s[k] == p[k], (k, s, p)
            else:
                assert abs(float(s[k]) - float(p[k])) <= 5e-3, (k, s, p)
    assert {k for r in secure for k, v in r.items() if v} >= {"train_loss", "val_loss", "test_loss"}
    # TensorBoard: the same version folder, tags and points (each call adds an event file to it)
    assert secure_tb["_versions"] == plain_tb["_versions"] == ["version_0"]
    assert set(secure_tb) == set(plain_tb) and {"train_loss", "val_loss", "test_loss"} <= set(plain_tb)
    for tag in plain_tb:
        if tag != "_versions":
            assert [s for s, _ in secure_tb[tag]] == [s for s, _ in plain_tb[tag]], tag
            assert all(abs(a - b) <= 5e-3 for (_, a), (_, b) in zip(secure_tb[tag], plain_tb[tag])), tag
