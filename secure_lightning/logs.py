"""Loggers across Trainer calls under RSS3PC: the same files and rows as plain Lightning.

Every Trainer call (fit, validate, test, predict) runs in fresh party processes that get a copy of the Trainer.
Plain Lightning keeps one logger object, so its version is chosen once and its CSV writer, created once, appends
every call's rows. Here each call would otherwise pick the next version (a new folder per call) and create a new
CSV writer, which deletes the metrics.csv of the previous call. So:
  * `pin_versions` (launching process, before the parties start): fix each logger's version, as the first access
    does in plain Lightning;
  * `note_call` (launching process, after a call): count the calls made through this logger;
  * `continue_files` (the logging party, before anything is logged): for a CSVLogger that already served a call of
    this Trainer, create its writer without deleting metrics.csv and with that file's columns, so new rows append
    (a new column rewrites the header, as Lightning's writer does within one call).
TensorBoard needs only the pinned version: each call adds an event file to the same folder.
"""
from __future__ import annotations

import csv
import os

CALLS = "_rss3pc_calls"


def pin_versions(trainer) -> None:
    for logger in getattr(trainer, "loggers", None) or []:
        try:
            logger.version  # noqa: B018 (the first access chooses and caches the version)
        except Exception:  # a logger without versions
            pass


def note_call(trainer) -> None:
    for logger in getattr(trainer, "loggers", None) or []:
        logger.__dict__[CALLS] = logger.__dict__.get(CALLS, 0) + 1


def continue_files(trainer) -> None:
    from pytorch_lightning.loggers import CSVLogger
    for logger in getattr(trainer, "loggers", None) or []:
        if not isinstance(logger, CSVLogger) or not logger.__dict__.get(CALLS) or logger._experiment is not None:
            continue
        path = os.path.join(logger.log_dir, "metrics.csv")
        if not os.path.isfile(path):
            continue
        kept = f"{path}.kept"
        os.replace(path, kept)  # the new writer deletes metrics.csv when it finds one
        try:
            writer = logger.experiment
        finally:
            os.replace(kept, path)
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        writer.metrics_keys = sorted(header)
