"""A generic image classifier as a plain LightningModule (no secure-specific code).

The network, optimizer and scheduler come from the config: `net` is an nn.Module, `optimizer` a partial
(`_partial_: true`) called with the parameters, `scheduler` an optional partial called with the optimizer.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy



class Classifier(pl.LightningModule):
    """Cross-entropy classifier; logs `{train,val,test}/loss` and `{train,val,test}/acc` (top-1 accuracy).

    Batches are `(inputs, labels)`; predict batches may also be bare inputs. `predict_step` returns the logits.
    """

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Optional[Callable[..., Any]] = None, num_classes: int = 10,
                 scheduler_monitor: str = "val/loss", scheduler_interval: str = "epoch"):
        super().__init__()
        # objects are rebuilt from the config, not from the checkpoint: keep only plain values in hparams
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # one metric object per stage (nn.Module attributes: moved with the model, reset by Lightning per epoch)
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = getattr(self, f"{stage}_acc")
        acc.update(logits.argmax(dim=1), y)  # predicted classes only (under RSS3PC: what the metric holder sees)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {
            "scheduler": scheduler, "monitor": self.hparams.scheduler_monitor,
            "interval": self.hparams.scheduler_interval, "frequency": 1}}
