"""Data stays with the data owner: what the other parties get instead of DataModules, DataLoaders and datasets.

On one machine the launcher pickles each party's copy of the Trainer call separately. The copies for the parties
other than the data owner go through `strip_data`: every DataModule argument becomes None, every dataloader
argument a `NoData` placeholder, and any Dataset, DataLoader or LightningDataModule found anywhere else in the call
(an attribute of the LightningModule, say) a `NoData` as well, so those parties never receive, unpickle, set up or
iterate the data. The launcher also works out, without calling any hook, which of the four dataloader sources
(train, val, test, predict) the data owner's call defines (`data_plan`); in those parties the strategy replaces
Lightning's sources by `PeerDataSource`s that answer the same and hand Lightning a `NoData` without calling a hook,
and makes the LightningModule's `prepare_data` a no-op. The strategy then turns the data owner's loader into
`OwnerLoader` and the others' `NoData` into `PeerLoader`, which follow the owner's batches (secure_lightning.strategy:
process_dataloader, batch_to_device).
"""
from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from typing import Optional

from torch.utils.data import DataLoader, Dataset

import pytorch_lightning as pl
from pytorch_lightning.trainer.connectors.data_connector import _DataLoaderSource

HOOKS = ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader")

# Trainer._{fit,validate,test,predict}_impl: positions of (dataloader arguments, datamodule argument) and the hooks
# their loops use
_CALLS = {
    "_fit_impl": ((1, 2), 3, ("train_dataloader", "val_dataloader")),
    "_validate_impl": ((1,), 4, ("val_dataloader",)),
    "_test_impl": ((1,), 4, ("test_dataloader",)),
    "_predict_impl": ((1,), 2, ("predict_dataloader",)),
}


class NoData:
    """What a party without the data passes as a dataloader (and what stands in for DataModules, DataLoaders and
    datasets in the other parties' copy of a Trainer call on one machine). Iterates nothing: the RSS3PC strategy
    replaces it by a stub that follows the data owner's batches."""

    def __init__(self, name: str = "dataloader"):
        self.name = name

    def __iter__(self):
        return iter(())

    def __repr__(self):
        return f"NoData({self.name!r})"


def _is_data(obj) -> bool:
    return isinstance(obj, (Dataset, DataLoader, pl.LightningDataModule, NoData))


def data_plan(function, args: tuple) -> dict:
    """{hook: defined} for the data owner's call: whether Lightning will find each dataloader source. Mirrors
    Lightning's DataConnector.attach_data (explicit loaders, else the DataModule, else the LightningModule) and
    _DataLoaderSource.is_defined (a module defines a source when it overrides the hook); no hook is called."""
    from pytorch_lightning.utilities.model_helpers import is_overridden
    spec = _CALLS.get(getattr(function, "__name__", ""))
    if spec is None:
        return {}
    loader_pos, dm_pos, hooks = spec
    args = list(args) + [None] * 8
    model, datamodule = args[0], args[dm_pos]
    loaders = [args[i] for i in loader_pos]
    if isinstance(loaders[0], pl.LightningDataModule):  # Trainer.fit(model, datamodule) positionally
        datamodule, loaders[0] = loaders[0], None
    plan = {}
    for hook, loader in zip(hooks, loaders):
        if loader is not None:
            plan[hook] = True
        else:
            module = datamodule if datamodule is not None else model
            plan[hook] = module is not None and is_overridden(hook, module)
    return plan


def strip_data(function, args: tuple) -> tuple:
    """A non-owner's arguments: DataModules -> None, dataloader arguments -> NoData (None stays None)."""
    spec = _CALLS.get(getattr(function, "__name__", ""))
    if spec is None:
        return args
    loader_pos, dm_pos, _ = spec
    args = list(args)
    for i in loader_pos:
        if i < len(args) and args[i] is not None:
            args[i] = NoData(type(args[i]).__name__)
    if dm_pos < len(args):
        args[dm_pos] = None
    return tuple(args)


class _DataFreePickler(pickle.Pickler):
    """Pickles a non-owner's copy of a call: every Dataset, DataLoader and LightningDataModule becomes NoData."""

    def reducer_override(self, obj):
        if not isinstance(obj, type) and isinstance(obj, (Dataset, DataLoader, pl.LightningDataModule)):
            return NoData, (type(obj).__name__,)
        return NotImplemented


def dumps_without_data(obj) -> bytes:
    buf = io.BytesIO()
    _DataFreePickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


@dataclass
class PeerDataSource(_DataLoaderSource):
    """A non-owner's dataloader source: defined exactly when the data owner's is; its loader is a NoData, and no
    hook (LightningModule or DataModule) is ever called."""
    defined: bool = False

    def dataloader(self):
        return NoData(self.name)

    def is_defined(self) -> bool:
        return self.defined

    def is_module(self) -> bool:
        return False


def install_peer_sources(trainer: "pl.Trainer", plan: dict) -> None:
    """Replace every loop's dataloader source in a non-owner party (see the module docstring)."""
    loops = {"train_dataloader": [trainer.fit_loop],
             "val_dataloader": [trainer.fit_loop.epoch_loop.val_loop, trainer.validate_loop],
             "test_dataloader": [trainer.test_loop], "predict_dataloader": [trainer.predict_loop]}
    for hook, owners in loops.items():
        for loop in owners:
            loop._data_source = PeerDataSource(None, hook, defined=bool(plan.get(hook, False)))


def describe(obj) -> Optional[str]:
    """A short name for a data object a non-owner was given (for messages), or None."""
    return type(obj).__name__ if _is_data(obj) and not isinstance(obj, NoData) else None
