"""What RSS3PC changes in Lightning's objects inside a party, and what it refuses before any process starts.

`HookPatches` installs, at `connect`, the per-party replacements of a few Lightning hooks and undoes them at teardown:
  - the DataConnector's `prepare_data`: only the data owner calls the DataModule's / LightningModule's hook;
  - the LightningModule's `log` / `log_dict`: routed through the opening ledger (secure_lightning.ledger);
  - the LightningModule's `_on_before_batch_transfer`: skipped for a batch that is not the data owner's plaintext.
`check_trainer` refuses Trainer settings the strategy cannot honour, with the alternative to use.
"""
from __future__ import annotations

from typing import Callable

from pytorch_lightning.trainer import call
from pytorch_lightning.utilities.model_helpers import is_overridden
from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature

from .data import PendingBatch

STEP_HOOKS = ("training_step", "validation_step", "test_step", "predict_step")


class HookPatches:
    """Attributes set on Lightning objects for the duration of one Trainer call (undone in reverse order)."""

    def __init__(self):
        self._patched: list = []

    def patch(self, obj, name: str, value) -> None:
        self._patched.append((obj, name, name in vars(obj), vars(obj).get(name)))
        setattr(obj, name, value)

    def undo(self) -> None:
        for obj, name, had, old in reversed(self._patched):
            if had:
                setattr(obj, name, old)
            else:
                try:
                    delattr(obj, name)
                except AttributeError:
                    pass
        self._patched = []

    def install(self, model, ledger, owner: bool) -> None:
        """Patch `model` (a LightningModule attached to its Trainer) for a party; `owner`: this is the data owner."""
        self.patch(model.trainer._data_connector, "prepare_data", prepare_data_hook(model, owner))
        self.patch(model, "log", ledger.wrap_log(model.log))
        self.patch(model, "log_dict", ledger.wrap_log_dict(model.log_dict))
        self.patch(model, "_on_before_batch_transfer", before_transfer_hook(model._on_before_batch_transfer))


def prepare_data_hook(model, owner: bool) -> Callable:
    """Lightning's DataConnector.prepare_data for a party: the data owner calls the DataModule's and the
    LightningModule's prepare_data hooks, the others nothing. Lightning's version wraps each hook in a barrier over
    all processes, which only the data owner (the only one with a DataModule) would enter."""
    def prepare_data() -> None:
        if not owner:
            return
        trainer = model.trainer
        if trainer.datamodule is not None and is_overridden("prepare_data", trainer.datamodule):
            call._call_lightning_datamodule_hook(trainer, "prepare_data")
        if is_overridden("prepare_data", model):
            call._call_lightning_module_hook(trainer, "prepare_data")
    return prepare_data


def before_transfer_hook(orig: Callable) -> Callable:
    """The user's on_before_batch_transfer runs on the data owner's plaintext only (a PendingBatch passes)."""
    def before(batch, dataloader_idx: int = 0):
        if isinstance(batch, PendingBatch):
            return batch
        return orig(batch, dataloader_idx)
    return before


def check_trainer(trainer) -> None:
    """Refuse, before any process starts, what RSS3PC cannot do."""
    clip = trainer.gradient_clip_val
    algo = trainer.gradient_clip_algorithm
    if clip is not None and float(clip) > 0 and (algo is None or str(getattr(algo, "value", algo)) == "norm"):
        raise NotImplementedError(
            "RSS3PC: gradient clipping by norm is not supported on secret-shared gradients (Lightning's default "
            "algorithm when gradient_clip_val is set). Use Trainer(gradient_clip_algorithm='value', "
            f"gradient_clip_val={clip}) to clip by value.")
    lm = trainer.lightning_module
    if lm is not None:
        for hook in STEP_HOOKS:
            fn = getattr(lm, hook, None)
            if fn is not None and is_param_in_hook_signature(fn, "dataloader_iter", explicit=True):
                raise NotImplementedError(
                    f"RSS3PC: `{hook}(self, dataloader_iter)` is not supported: only the data owner reads the data, "
                    "and batches are secret-shared in batch_to_device, which Lightning skips for dataloader_iter "
                    f"steps. Use `{hook}(self, batch, batch_idx)`.")
    if getattr(trainer, "_accelerator_connector", None) is not None and trainer._accelerator_connector._layer_sync:
        raise NotImplementedError("RSS3PC: sync_batchnorm is not supported")
