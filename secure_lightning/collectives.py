"""Collectives on public values for RSS3PC: reduce, barrier, broadcast, all_gather.

Secret-shared tensors are refused (RevealPolicyError): open them first through the reveal policy. Broadcast goes over
the typed party-to-party channel (never pickle); a failing process-group collective names the operation and party.
RSS3PC holds one `PublicCollectives` and its overrides delegate to it.
"""
from __future__ import annotations

import datetime
from contextlib import contextmanager
from typing import Any, Optional, Union

import torch
import torch.distributed as dist
from lightning_fabric.utilities.distributed import _all_gather_ddp_if_available, _sync_ddp
from lightning_fabric.utilities.types import ReduceOp
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor

from .reveal import RevealPolicyError
from .tensor import SharedTensor


def contains_shared(obj) -> bool:
    found = []
    apply_to_collection(obj, SharedTensor, lambda t: found.append(1))
    return bool(found)


class PublicCollectives:
    """The strategy's collectives, on public values only (reads party, layout, device and timeout from it)."""

    def __init__(self, strategy):
        self.strategy = strategy

    def _device(self) -> torch.device:
        s = self.strategy
        return s.root_device if s.layout.backend == "nccl" else torch.device("cpu")

    def _refuse_shared(self, obj, op: str) -> None:
        if self.strategy.party is not None and contains_shared(obj):
            raise RevealPolicyError(f"RSS3PC.{op} got a secret-shared tensor: collectives work on public values "
                                    f"only. Open it first with self.log(...) or trainer.strategy.reveal(...)")

    @contextmanager
    def _collective(self, op: str):
        """Name the operation and this party when a process-group collective fails (a peer died or hung)."""
        try:
            yield
        except RuntimeError as e:
            from .comm import PartyTimeoutError
            if isinstance(e, PartyTimeoutError):
                raise
            s = self.strategy
            rank = s.party.rank if s.party is not None else s.global_rank
            raise PartyTimeoutError(f"party {rank}: {op} over the process group failed (a party died, hung or "
                                    f"diverged; timeout {s.timeout:g}s): {e}") from e

    def reduce(self, tensor, group: Optional[Any] = None, reduce_op: Optional[Union[ReduceOp, str]] = "mean"):
        """All-reduce a public tensor over the three parties (mean by default); anything else comes back as is."""
        if not isinstance(tensor, Tensor):
            return tensor
        self._refuse_shared(tensor, "reduce")
        if not (dist.is_available() and dist.is_initialized()):
            return tensor
        t = tensor.detach().to(self._device()).clone()
        with self._collective("reduce"):
            out = _sync_ddp(t, group, reduce_op)
        return out.to(tensor.device)

    def barrier(self, name: Optional[str] = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            return
        s = self.strategy
        with self._collective(f"barrier {name or ''}".strip()):
            if s.layout.backend == "gloo":
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=s.timeout), wait_all_ranks=True)
            else:
                dist.barrier(device_ids=[s.root_device.index])

    def broadcast(self, obj, src: int = 0):
        if not (dist.is_available() and dist.is_initialized()):
            return obj
        self._refuse_shared(obj, "broadcast")
        if self.strategy.party is None:
            raise RuntimeError("RSS3PC.broadcast runs in the parties only")
        # public values only, in the channel's typed format (Lightning's broadcast_object_list would unpickle a
        # peer's bytes)
        return self.strategy.channel.publish("broadcast", obj, src, label="broadcast")

    def all_gather(self, tensor: Tensor, group: Optional[Any] = None, sync_grads: bool = False) -> Tensor:
        self._refuse_shared(tensor, "all_gather")
        if not (dist.is_available() and dist.is_initialized()):
            return tensor
        with self._collective("all_gather"):
            out = _all_gather_ddp_if_available(tensor.to(self._device()), group=group, sync_grads=sync_grads)
        return out.to(tensor.device)
