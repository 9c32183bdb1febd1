"""Lightning callbacks of the app (conf/callbacks/)."""
from __future__ import annotations

import math
import time
from typing import Optional

import pytorch_lightning as pl


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def run_batches(steps_per_epoch: float, max_epochs: Optional[int], max_steps: int, accumulate: int = 1) -> float:
    """Training batches the whole fit will run: epochs x batches per epoch, capped by max_steps (optimizer steps,
    `accumulate` batches each); inf when neither bounds it."""
    epochs = max_epochs if max_epochs is not None and max_epochs >= 0 else math.inf
    total = steps_per_epoch * epochs if steps_per_epoch else math.inf
    if max_steps is not None and max_steps >= 0:
        total = min(total, max_steps * accumulate)
    return total


class TimeEstimate(pl.Callback):
    """After the first training steps, prints the measured seconds per step and the estimated time of one epoch
    and of the whole fit (max_epochs, max_steps and limit_train_batches taken into account).

    Measured: wall time between the ends of consecutive training batches (forward, loss, backward, optimizer and
    logging; data loading included, validation not), over `steps` batches after `skip` warm-up batches, in the
    process of global rank 0. Fewer batches in the first epoch: it reports at that epoch's end. The estimates cover
    training batches only; validation and test add their own time. The figures are kept in `self.estimate`.
    """

    def __init__(self, steps: int = 3, skip: int = 1):
        if steps < 1 or skip < 0:
            raise ValueError("steps must be >= 1 and skip >= 0")
        self.steps, self.skip = steps, skip
        self.estimate: Optional[dict] = None
        self._ends: list[float] = []

    def on_train_start(self, trainer, pl_module):
        self._ends, self.estimate = [time.perf_counter()], None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.estimate is not None:
            return
        self._ends.append(time.perf_counter())
        if len(self._ends) - 1 >= self.skip + self.steps:
            self._report(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        if self.estimate is None and len(self._ends) > 1:
            self._report(trainer)

    def _report(self, trainer):
        timed = self._ends[min(self.skip, len(self._ends) - 2):]  # too few batches: count the warm-up ones too
        per_step = (timed[-1] - timed[0]) / (len(timed) - 1)
        per_epoch = float(trainer.num_training_batches)
        total = run_batches(per_epoch, trainer.max_epochs, trainer.max_steps, trainer.accumulate_grad_batches)
        self.estimate = {"seconds_per_step": per_step, "steps_timed": len(timed) - 1, "steps_per_epoch": per_epoch,
                         "epoch_s": per_step * per_epoch, "run_steps": total, "run_s": per_step * total}
        if trainer.is_global_zero:
            epochs = total / per_epoch if per_epoch and math.isfinite(total) else math.inf
            msg = (f"[time] {per_step:.3g} s per training step ({len(timed) - 1} steps timed); estimated "
                   f"{_duration(self.estimate['epoch_s'])} per epoch ({per_epoch:g} steps), "
                   f"{_duration(self.estimate['run_s'])} for the run ({total:g} steps, {epochs:.3g} epochs); "
                   "validation and test not included")
            bar = trainer.progress_bar_callback
            (bar.print if bar is not None and hasattr(bar, "print") else print)(msg)
