"""Data stays with the data owner: what the other parties get instead of DataModules, DataLoaders and datasets.

On one machine the launcher pickles each party's copy of the Trainer call separately. The copies for the parties
other than the data owner go through `strip_data`: every DataModule argument becomes None, every dataloader
argument a `NoData` placeholder, and any Dataset, DataLoader or LightningDataModule found anywhere else in the call
(an attribute of the LightningModule, say) a `NoData` as well, so those parties never receive, unpickle, set up or
iterate the data. The launcher also works out, without calling any hook, which of the four dataloader sources
(train, val, test, predict) the data owner's call defines (`data_plan`); in those parties the strategy replaces
Lightning's sources by `PeerDataSource`s that answer the same and hand Lightning a `NoData` without calling a hook,
and makes the LightningModule's `prepare_data` a no-op. The strategy then turns the data owner's loader into
`OwnerLoader` and the others' `NoData` into `PeerLoader`, which follow the owner's batches, and secret-shares each
batch (`DataFeed`, used by the strategy's process_dataloader and batch_to_device).
"""
from __future__ import annotations

import collections
import io
import pickle
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

import pytorch_lightning as pl
from pytorch_lightning.trainer.connectors.data_connector import _DataLoaderSource

from .channel import ProtocolMessageError

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


def _loops(trainer: "pl.Trainer") -> dict:
    return {"train_dataloader": [trainer.fit_loop],
            "val_dataloader": [trainer.fit_loop.epoch_loop.val_loop, trainer.validate_loop],
            "test_dataloader": [trainer.test_loop], "predict_dataloader": [trainer.predict_loop]}


def owner_plan(trainer: "pl.Trainer") -> dict:
    """{hook: defined} from the data owner's attached sources (no hook is called). On three hosts the data owner
    publishes it and the others install PeerDataSources from it (the launcher does this on one machine)."""
    loops = _loops(trainer)
    return {hook: any(loop._data_source.is_defined() for loop in owners) for hook, owners in loops.items()}


def install_peer_sources(trainer: "pl.Trainer", plan: dict) -> None:
    """Replace every loop's dataloader source in a non-owner party (see the module docstring)."""
    for hook, owners in _loops(trainer).items():
        for loop in owners:
            loop._data_source = PeerDataSource(None, hook, defined=bool(plan.get(hook, False)))


def describe(obj) -> Optional[str]:
    """A short name for a data object a non-owner was given (for messages), or None."""
    return type(obj).__name__ if _is_data(obj) and not isinstance(obj, NoData) else None


# ---------------------------------------------------------------------------------------------------------------------
# Feeding batches: the data owner's loader drives the others' stubs; each batch is secret-shared

class PendingBatch:
    """What a party without the data gets from its stub loader: the data owner is about to share the real batch."""

    def __repr__(self):
        return "PendingBatch()"


_PENDING = PendingBatch()


class OwnerLoader:
    """The data owner's loader: iterates the user's loader and tells the other parties, per batch, that one came
    (and when the epoch ended), so their stubs stay in step even for loaders without a length."""

    def __init__(self, loader, feed: "DataFeed"):
        self._loader = loader
        self._feed = feed

    def __len__(self):
        return len(self._loader)

    def __iter__(self):
        for batch in self._loader:
            self._feed.batch_flag(1)
            yield batch
        self._feed.batch_flag(0)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_loader", "_feed", "state_dict", "load_state_dict"):
            raise AttributeError(name)  # loader state stays with the owner: the others cannot mirror it
        return getattr(self._loader, name)


class PeerLoader:
    """A non-owner party's loader: as many PendingBatch placeholders as the data owner has batches."""

    def __init__(self, length: Optional[int], feed: "DataFeed"):
        self._length = length
        self._feed = feed

    def __len__(self):
        if self._length is None:
            raise TypeError("the data owner's loader has no length")
        return self._length

    def __iter__(self):
        while self._feed.batch_flag(None):
            yield _PENDING


class DataFeed:
    """The data owner's loaders and batches, seen from one party: `loader(dl)` wraps a loader (OwnerLoader in the
    data owner, PeerLoader elsewhere), `share_batch(batch, transfer)` secret-shares the owner's batch."""

    def __init__(self, party, channel, data_owner: int):
        self.party = party
        self.channel = channel
        self.data_owner = data_owner

    def send_int(self, value: Optional[int], label: str) -> int:
        """The data owner sends one public integer to both others. Cost: 1 round, 8 bytes to each peer from it."""
        party, src = self.party, self.data_owner
        peers = [p for p in range(3) if p != src]
        with party.label(f"strategy/{label}"):
            if party.rank == src:
                t = torch.tensor([int(value)], dtype=torch.int64)
                party.comm.round({p: t for p in peers})
                return int(value)
            return int(party.comm.round({}, {src: ((1,), torch.int64)})[src][0])

    def batch_flag(self, value: Optional[int]) -> int:
        return self.send_int(value, "data/has_batch")

    def loader(self, dataloader: object) -> object:
        if self.party.rank == self.data_owner:
            if isinstance(dataloader, NoData):
                raise ValueError("RSS3PC: the data owner was given NoData() as a dataloader; pass the real loader "
                                 "to the data owner's Trainer call")
            try:
                n = len(dataloader)
            except (TypeError, NotImplementedError):
                n = -1
            self.send_int(n, "data/length")
            return OwnerLoader(dataloader, self)
        if not isinstance(dataloader, NoData):
            import logging
            logging.getLogger(__name__).warning(
                f"RSS3PC: party {self.party.rank} was given a {type(dataloader).__name__} as a dataloader; only the "
                f"data owner (party {self.data_owner}) reads data, so it is not used (pass NoData())")
        n = self.send_int(None, "data/length")
        return PeerLoader(None if n < 0 else n, self)

    def share_batch(self, batch: Any, transfer: Callable[[Any], Any]) -> Any:
        """Secret-share the data owner's batch (after `transfer`, the user's batch transfer hooks, ran on it there):
        float tensors as fixed point, integer and bool tensors (labels) as integer SharedTensors; tuples, lists,
        dicts recursively. Cost: the structure as a channel message (2 rounds), then `share_tensor` per tensor."""
        from .tensor import share_tensor
        party, owner = self.party, self.data_owner
        if party.rank == owner:
            if isinstance(batch, PendingBatch):
                raise RuntimeError("RSS3PC internal error: the data owner got a placeholder batch")
            batch = transfer(batch)
            leaves: Optional[list] = []
            try:
                spec, err = _spec_of(batch, leaves, "batch"), None
            except TypeError as e:
                spec, err = None, str(e)
            self.channel.publish("batch_spec", {"spec": spec, "error": err}, owner, label="data/batch_spec")
        else:
            msg = self.channel.publish("batch_spec", None, owner, label="data/batch_spec")
            if not (isinstance(msg, dict) and set(msg) == {"spec", "error"}):
                raise ProtocolMessageError("batch spec from the data owner: expected {spec, error}")
            spec, err = msg["spec"], msg["error"]
            if err is None:
                _check_spec(spec, [0])
            leaves = None
        if err is not None:
            raise TypeError(f"RSS3PC: {err}")
        it = iter(leaves) if leaves is not None else None
        counter = [0]

        def build(s):
            kind = s[0]
            if kind == "T":
                x = next(it) if it is not None else None
                i = counter[0]
                counter[0] += 1
                return share_tensor(x, owner, party, label=f"batch/{i}")
            if kind == "N":
                return None
            if kind == "L":
                return [build(c) for c in s[1]]
            if kind == "U":
                return tuple(build(c) for c in s[1])
            if kind == "NT":
                return _namedtuple_class(s[1], s[2])(*[build(c) for c in s[3]])
            if kind == "D":
                cls = (_lookup_type(s[1], dict) if s[1] is not None else None) or dict
                return cls((k, build(c)) for k, c in s[2])
            raise AssertionError(kind)

        return build(spec)


# ---------------------------------------------------------------------------------------------------------------------
# A batch's public structure, as plain data for the channel

def _type_ref(cls) -> dict:
    return {"module": cls.__module__, "qualname": cls.__qualname__}


def _spec_of(x, leaves: list, path: str):
    """Public structure of a batch as plain data (the data owner's tensors go to `leaves`): ["T"] tensor, ["N"] None,
    ["L"/"U", children] list/tuple, ["NT", type, fields, children] namedtuple, ["D", type or None, [[key, child]]]
    dict; a type is named by {"module", "qualname"} and only looked up (never imported) on the other parties."""
    if isinstance(x, Tensor):
        from .tensor import SharedTensor
        if isinstance(x, SharedTensor):
            raise TypeError(f"{path} is already secret-shared")
        leaves.append(x)
        return ["T"]
    if x is None:
        return ["N"]
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return ["NT", _type_ref(type(x)), list(x._fields),
                [_spec_of(v, leaves, f"{path}.{f}") for f, v in zip(x._fields, x)]]
    if isinstance(x, (list, tuple)):
        return ["L" if isinstance(x, list) else "U", [_spec_of(v, leaves, f"{path}[{i}]") for i, v in enumerate(x)]]
    if isinstance(x, dict):
        for k in x:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"{path} has a key of type {type(k).__name__}; batch dict keys must be str or int")
        cls = None if type(x) is dict or not _rebuildable(type(x)) else _type_ref(type(x))
        return ["D", cls, [[k, _spec_of(v, leaves, f"{path}[{k!r}]")] for k, v in x.items()]]
    raise TypeError(f"the data owner's batch holds a {type(x).__name__} at {path}: only tensors (in tuples, lists, "
                    f"dicts, or None) can be secret-shared. Turn it into a tensor or drop it in "
                    f"on_before_batch_transfer / transfer_batch_to_device.")


def _lookup_type(ref, base: type):
    """The class a batch spec names, if this process has already loaded it and it is a subclass of `base`; else
    None. Nothing is imported or called: a peer's message only selects among classes loaded here."""
    if not (isinstance(ref, dict) and set(ref) == {"module", "qualname"} and all(isinstance(v, str) for v in
                                                                                ref.values())):
        raise ProtocolMessageError(f"batch spec: bad type reference {str(ref)[:100]!r}")
    obj = sys.modules.get(ref["module"])
    for part in ref["qualname"].split("."):
        obj = vars(obj).get(part) if obj is not None and hasattr(obj, "__dict__") else None
    return obj if isinstance(obj, type) and issubclass(obj, base) else None


def _check_spec(s, count: list, depth: int = 0) -> None:
    """Receivers: the batch spec a peer sent has the documented form (ProtocolMessageError otherwise)."""
    def bad(why):
        return ProtocolMessageError(f"batch spec from the data owner: {why}")
    count[0] += 1
    if depth > 32 or count[0] > 100_000:
        raise bad("too deep or too large")
    if not isinstance(s, list) or not s or not isinstance(s[0], str):
        raise bad(f"bad node {str(s)[:80]!r}")
    kind = s[0]
    if kind in ("T", "N") and len(s) == 1:
        return
    if kind in ("L", "U") and len(s) == 2 and isinstance(s[1], list):
        for c in s[1]:
            _check_spec(c, count, depth + 1)
        return
    if (kind == "NT" and len(s) == 4 and isinstance(s[2], list) and isinstance(s[3], list)
            and len(s[2]) == len(s[3]) and all(isinstance(f, str) and f.isidentifier() and not f.startswith("_")
                                               for f in s[2])):
        _lookup_type(s[1], tuple)
        for c in s[3]:
            _check_spec(c, count, depth + 1)
        return
    if kind == "D" and len(s) == 3 and isinstance(s[2], list):
        if s[1] is not None:
            _lookup_type(s[1], dict)
        for item in s[2]:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))):
                raise bad("dict entries must be [key, child]")
            _check_spec(item[1], count, depth + 1)
        return
    raise bad(f"bad node {str(s)[:80]!r}")


def _namedtuple_class(ref, fields: list):
    cls = _lookup_type(ref, tuple)
    if cls is not None and list(getattr(cls, "_fields", ())) == fields:
        return cls
    name = ref["qualname"].rpartition(".")[2]
    return collections.namedtuple(name if name.isidentifier() else "Batch", fields)


def _rebuildable(cls) -> bool:
    try:
        cls([])
        return True
    except Exception:
        return False
