"""RSS3PC: a Lightning strategy that trains a LightningModule on secret-shared data and weights (3 parties).

    import secure_lightning                      # registers strategy="rss3pc"
    trainer = Trainer(strategy=secure_lightning.RSS3PC(), max_epochs=3)
    trainer.fit(model, train_loader, val_loader)  # model's parameters hold the trained weights afterwards

Three party processes hold replicated shares of every weight, activation and gradient and run Lightning's loops in
lock step; only the data owner reads data (batches are shared in `batch_to_device`), the model owner supplies and gets
back the weights, and nothing is opened unless `RSS3PC(reveal=...)` allows it. Roles, reveal policy, launch on one
machine or three hosts, and checkpoints: see the README (Concepts).

Pieces (each its own module, as Lightning's DDPStrategy delegates to its launcher and plugins): process and device
layout (layout.py), the precision plugin (precision.py), the per-party hook patches and trainer checks (hooks.py),
collectives on public values (collectives.py), the party-to-party channel for public messages
(channel.py), the start-up handshake (handshake.py), the opening ledger that enforces the policy and makes every
opening, with the log and metric wrappers (ledger.py), data feeding (data.py), the share checkpoint files
(checkpoint_io.py, a CheckpointIO), the launcher with its typed PartyOutput (launcher.py) and the results handed back
to the launching process (results.py).

Threat model: semi-honest parties, honest majority (no two parties collude); see the README.
"""
from __future__ import annotations

import datetime
import logging
import os
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Callable, Optional, Union

import torch
import torch.distributed as dist
from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only
from torch import Tensor

import pytorch_lightning as pl
from lightning_fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning_fabric.utilities.types import ReduceOp
from pytorch_lightning.plugins.precision import Precision
from pytorch_lightning.strategies import ParallelStrategy, StrategyRegistry
from pytorch_lightning.trainer.states import TrainerFn, TrainerStatus
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from pytorch_lightning.utilities.warnings import PossibleUserWarning

from . import nn as secure_nn
from .channel import PublicChannel
from .collectives import PublicCollectives, contains_shared
from .checkpoint_io import ShareCheckpointIO, checkpoint_base, from_blobs, party_path, to_blobs  # noqa: F401
from .data import DataFeed, NoData, PendingBatch, install_peer_sources, owner_plan
from .encoding import FixedPoint
from .handshake import handshake, session_fields
from .hooks import HookPatches, check_trainer
from .launcher import PartyLauncher, PartyOutput
from .layout import PartyLayout
from .precision import SharePrecision, share_precision
from .ledger import OpeningLedger, OwnerHeld  # noqa: F401 (OwnerHeld: public here too)
from .protocols import guard
from . import logs
from . import results as results_
from .reveal import RevealPolicy, RevealPolicyError, report  # noqa: F401 (RevealPolicyError: public here too)
from .runtime import DEFAULT_TIMEOUT, init_party

log = logging.getLogger(__name__)

__all__ = ["RSS3PC", "SharePrecision", "NoData", "OwnerHeld", "PendingBatch", "party_path", "checkpoint_base"]

class RSS3PC(ParallelStrategy):
    """Private training with three-party replicated secret sharing (see the module docstring).

    Args:
        data_owner: the party (0, 1, 2) that holds the data and iterates the dataloaders.
        model_owner: the party that supplies the initial weights and receives the trained ones.
        reveal: the reveal policy, a dict {what: recipient} updating the default (see secure_lightning.reveal) or a
            RevealPolicy.
        reveal_weights: open the trained weights to the model owner at the end of fit (False: the weights stay
            secret-shared; only the per-party share checkpoints hold them).
        timeout: seconds a party waits for a peer before failing (communication, collectives, start-up).
        frac_bits: fixed-point fractional bits.
        export_plaintext: at every checkpoint also write the model owner's plaintext state_dict to `<path>.plain`
            (opens the weights to the model owner; needs the policy to allow "weights").
        backend: "gloo" or "nccl" (default: NCCL when every party has its own GPU, else gloo).
        insecure_fast_prg: use torch's (non-cryptographic) generator for correlated randomness: for debugging only.
        overflow_guard: check fixed-point products for overflow (protocols/guard.py): every product's output is
            sampled, and the samples are checked in one batched comparison at the end of every training batch
            (after the optimizer step), after every validation/test step and before every opening; an overflow stops
            the run with FixedPointOverflowError naming the layer. About +5-10% rounds, <1% bytes per training step;
            opens one count of out-of-range samples per checked op (0 in a healthy run). False: no checks.
    """

    strategy_name = "rss3pc"

    def __init__(self, data_owner: int = 0, model_owner: int = 0, reveal=None, reveal_weights: bool = True,
                 timeout: float = DEFAULT_TIMEOUT, frac_bits: Optional[int] = None, export_plaintext: bool = False,
                 backend: Optional[str] = None, insecure_fast_prg: bool = False, overflow_guard: bool = True,
                 accelerator: Optional["pl.accelerators.Accelerator"] = None,
                 cluster_environment: Optional[ClusterEnvironment] = None,
                 checkpoint_io: Optional[CheckpointIO] = None,
                 precision_plugin: Optional[Precision] = None):
        if checkpoint_io is not None and not isinstance(checkpoint_io, ShareCheckpointIO):
            raise ValueError(f"RSS3PC writes one share file per party and needs a ShareCheckpointIO, got "
                             f"checkpoint_io={type(checkpoint_io).__name__}")
        super().__init__(accelerator=accelerator, parallel_devices=None, cluster_environment=cluster_environment,
                         checkpoint_io=checkpoint_io or ShareCheckpointIO(), precision_plugin=precision_plugin)
        for name, r in (("data_owner", data_owner), ("model_owner", model_owner)):
            if r not in (0, 1, 2):
                raise ValueError(f"RSS3PC({name}={r!r}): parties are 0, 1 and 2")
        if backend not in (None, "gloo", "nccl"):
            raise ValueError(f"RSS3PC(backend={backend!r}): use 'gloo' or 'nccl'")
        self.data_owner = data_owner
        self.model_owner = model_owner
        self.policy = RevealPolicy.build(reveal, data_owner=data_owner, model_owner=model_owner,
                                         reveal_weights=reveal_weights)
        if export_plaintext and self.policy.recipient("weights") is None:
            raise ValueError("RSS3PC(export_plaintext=True) opens the weights at every checkpoint, but the reveal "
                             "policy forbids opening 'weights' (reveal_weights=False or reveal={'weights': None})")
        self.timeout = float(timeout)
        self.encoding = FixedPoint() if frac_bits is None else FixedPoint(frac_bits)
        self.export_plaintext_on_save = export_plaintext
        self.insecure_fast_prg = insecure_fast_prg
        self.overflow_guard = bool(overflow_guard)
        self.layout = PartyLayout(backend)  # processes, devices, ranks (secure_lightning.layout)
        self.collectives = PublicCollectives(self)  # reduce, barrier, broadcast, all_gather on public values
        self._spawned_as = None          # (rank, addr, port) inside a process our launcher spawned
        self._party = None
        self._channel: Optional[PublicChannel] = None
        self._feed: Optional[DataFeed] = None
        self._secured = False
        self._plain_backup: Optional[dict] = None
        self.patches = HookPatches()     # Lightning hooks replaced inside a party, undone in teardown
        self._data_plan: Optional[dict] = None  # set by the launcher: which dataloader sources the data owner has
        self.ledger = OpeningLedger(self.policy)  # enforces the policy on every opening of this party
        self._openings: list = []        # in the launching process: the data owner's OpeningRecords
        self._party_audits: dict = {}    # in the launching process: {rank: [Opening]} from the parties
        self._party_unaccounted: list = []
        self._weights_revealed = False
        self.public_optimizer_state = None  # inside a party after fit: results.public_optimizer_state

    # ---- layout: processes, devices, ranks ----------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return self.layout.num_nodes

    @num_nodes.setter
    def num_nodes(self, n: int) -> None:
        self.layout.num_nodes = n

    @property
    def num_processes(self) -> int:
        return self.layout.procs_per_node

    @property
    def is_distributed(self) -> bool:
        # Not "distributed" in Lightning's sense: no DistributedSampler (the data owner iterates the whole loader),
        # no sync_dist (logged values are opened to all parties and equal).
        return False

    @property
    def distributed_sampler_kwargs(self) -> dict:
        return {"num_replicas": 1, "rank": 0}

    @property
    def root_device(self) -> torch.device:
        return self.layout.root_device(self.parallel_devices, self.local_rank)

    @property
    def party(self):
        """This process's Party (None in the launching process)."""
        return self._party

    def _resolve_layout(self) -> None:
        self.parallel_devices = self.layout.resolve(self.parallel_devices, self.cluster_environment)

    def set_world_ranks(self) -> None:
        self._resolve_layout()
        self.layout.set_world_ranks(self.cluster_environment, self.node_rank, self.local_rank)
        rank_zero_only.rank = utils_rank_zero_only.rank = self.global_rank

    def _configure_launcher(self) -> None:
        self._check_precision()
        self._resolve_layout()
        if self.num_nodes == 3 and self._spawned_as is None:
            env = self.cluster_environment
            from lightning_fabric.plugins.environments import LightningEnvironment
            if isinstance(env, LightningEnvironment) and not env.creates_processes_externally:
                missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if v not in os.environ]
                if missing:
                    raise ValueError(f"RSS3PC on three hosts (num_nodes=3): set {', '.join(missing)} on every host "
                                     f"(MASTER_ADDR/MASTER_PORT: party 0's address and a free port; NODE_RANK: 0, 1, "
                                     f"2) or start with torchrun")
        self._launcher = PartyLauncher(self, spawn=self.layout.spawn)

    def _check_precision(self) -> None:
        self._precision_plugin = share_precision(self._precision_plugin, self.encoding.frac_bits)

    def check_trainer(self, trainer: "pl.Trainer") -> None:
        """Refuse, before any process starts, what the strategy cannot do (secure_lightning.hooks.check_trainer)."""
        check_trainer(trainer)

    # ---- environment ----------------------------------------------------------------------------------------------
    def setup_environment(self) -> None:
        self.set_world_ranks()
        super().setup_environment()  # accelerator.setup_device(root_device)
        rank = self.global_rank
        if self._spawned_as is not None:
            rank, addr, port = self._spawned_as
        else:
            addr, port = self.cluster_environment.main_address, self.cluster_environment.main_port
        self._party = init_party(rank, addr, int(port), backend=self.layout.backend, timeout=self.timeout,
                                 encoding=self.encoding, device=self.root_device,
                                 insecure_fast_prg=self.insecure_fast_prg,
                                 threads=1 if self._spawned_as is not None else None)
        if self.insecure_fast_prg:
            msg = (f"RSS3PC party {rank}: insecure_fast_prg=True: correlated randomness comes from torch's "
                   f"predictable generator; shares and masks can be reconstructed. For benchmarks only, never with "
                   f"real data.")
            warnings.warn(msg, UserWarning, stacklevel=2)
            log.warning(msg)
        self.ledger.attach(self._party, self.channel, self._where)
        self.checkpoint_io.bind(self._party.rank, self.encoding.frac_bits)
        handshake(self.channel, session_fields(
            frac_bits=self.encoding.frac_bits, insecure_prg=self._party.insecure_prg, policy=self.policy,
            data_owner=self.data_owner, model_owner=self.model_owner, overflow_guard=self.overflow_guard,
            module=self.lightning_module))
        if self._data_plan is None:  # started by three hosts or torchrun: the data owner says what data it has
            trainer = self.lightning_module.trainer
            plan = self.channel.publish("data_plan", owner_plan(trainer) if rank == self.data_owner else None,
                                        self.data_owner, label="data/plan")
            if rank != self.data_owner:
                install_peer_sources(trainer, plan)
        if self.overflow_guard:
            guard.enable(self._party)
        if self.global_rank == 0:  # the logging party: continue this Trainer's log files (secure_lightning.logs)
            logs.continue_files(self.lightning_module.trainer)
        if hasattr(dist, "set_timeout"):  # the rendezvous may wait longer (start-up); every later op: our timeout
            dist.set_timeout(datetime.timedelta(seconds=self.timeout))
        # logged values are opened to all parties and equal everywhere: Lightning's advice to sync them is moot
        warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\(.*sync_dist=True\)`",
                                category=PossibleUserWarning)
        log.info(f"RSS3PC: party {rank} ready on {self.root_device} ({self.layout.backend})")

    def connect(self, model: "pl.LightningModule") -> None:
        super().connect(model)
        if self._spawned_as is None and self.layout.spawn:
            return  # the launching process on one machine: nothing runs here
        rank = self._spawned_as[0] if self._spawned_as is not None else self.global_rank
        plan = getattr(self, "_data_plan", None)
        if rank != self.data_owner and plan is not None:
            # this party has no data (the launcher left it out): its loops get placeholders, no hook is called
            install_peer_sources(model.trainer, plan)
        self.patches.install(model, self.ledger, owner=rank == self.data_owner)

    # ---- model: share at setup, restore at teardown ----------------------------------------------------------
    def model_to_device(self) -> None:
        assert self.model is not None
        if not self._secured:
            self.model.to(self.root_device)

    def setup(self, trainer: "pl.Trainer") -> None:
        self.check_trainer(trainer)
        assert self.accelerator is not None and self.lightning_module is not None
        self.accelerator.setup(trainer)
        for loop in (trainer.fit_loop.epoch_loop.val_loop, trainer.validate_loop, trainer.test_loop,
                     trainer.predict_loop):
            loop.inference_mode = False  # SharedTensor autograd-free ops run under no_grad
        self.model_to_device()
        self._secure_model()
        self.ledger.wrap_metrics(self.lightning_module, self.patches.patch)
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()

    def _secure_model(self) -> None:
        lm = self.lightning_module
        self._plain_backup = {k: v.detach().to("cpu", copy=True) for k, v in lm.state_dict().items()}
        out = secure_nn.secure_module(lm, self._party, owner=self.model_owner)
        if out is not None and out is not lm:
            raise RuntimeError("secure_module must secure the LightningModule in place")
        self._secured = True
        self._weights_revealed = False

    def teardown(self) -> None:
        lm = self.lightning_module
        if self._party is not None and self._secured and lm is not None:
            trainer = lm._trainer
            finished = trainer is not None and trainer.state.status == TrainerStatus.RUNNING
            state = self._plain_backup
            if finished and trainer.state.fn == TrainerFn.FITTING and self.policy.recipient("weights") is not None:
                self._guard_check()
                sd = self._open_weights()
                if sd is not None:
                    state = sd
                    self._weights_revealed = True
            secure_nn.restore_plain(lm, state)
            self._secured = False
            self.public_optimizer_state = results_.public_optimizer_state(self)  # before they are dropped
            self._reset_optimizers_and_schedulers()
        if self._party is not None:
            self.patches.undo()
            self.ledger.detach()
        super().teardown()

    def _open_weights(self) -> Optional[dict]:
        """Open the weights to the recipient of "weights" (the model owner by default); returns them there."""
        return self.ledger.open_weights(self.lightning_module)

    # ---- openings -----------------------------------------------------------------------------------------------
    def _where(self) -> tuple:
        """(Lightning stage, global step) for the opening records."""
        lm = self.lightning_module
        trainer = lm._trainer if lm is not None else None
        stage = trainer.state.stage.value if trainer is not None and trainer.state.stage is not None else ""
        step = trainer.global_step if trainer is not None else -1
        return stage, step

    def reveal(self, value, what: str = "metrics", name: Optional[str] = None, *, need_all: bool = False):
        """Open every SharedTensor in `value` (a tensor or a collection) as the reveal policy allows for (what, name).

        Collective: all three parties must call it at the same point. Returns plaintext on the recipients and None
        (per tensor) elsewhere. Raises RevealPolicyError (on every party, before anything is sent) when the policy
        forbids it. This and the hooks built on it (self.log, metrics, predict_step) are the only ways to open a
        value while the strategy runs: the ledger refuses any other opening (secure_lightning.ledger).
        """
        return self.ledger.reveal(value, what, name, need_all=need_all)

    def _guard_check(self) -> None:
        """Run the overflow guard's pending checks (OpeningLedger.guard_check)."""
        if self._party is not None:
            self.ledger.guard_check()

    # ---- steps: the overflow guard's checks -------------------------------------------------------------------
    def optimizer_step(self, optimizer, closure: Callable[[], Any], model=None, **kwargs: Any) -> Any:
        out = super().optimizer_step(optimizer, closure, model, **kwargs)
        self._guard_check()  # forward, backward and the update of this batch
        return out

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        out = super().validation_step(*args, **kwargs)
        self._guard_check()
        return out

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        out = super().test_step(*args, **kwargs)
        self._guard_check()
        return out

    @property
    def openings(self) -> list:
        """Every opening made (OpeningRecord: what, name, shape, to, stage, step, kind). In the launching process:
        the data owner's record of the last run."""
        return list(self.ledger.records if self._party is not None else self._openings)

    def unaccounted_openings(self) -> list:
        """Openings in party.audit not made through the reveal policy. Empty while the strategy runs: the ledger
        refuses such openings before anything is sent (kept to report openings made before it was attached)."""
        if self._party is None:
            return list(self._party_unaccounted)
        return self.ledger.unaccounted()

    def opening_report(self) -> str:
        """A table of every opening, grouped with counts (a record of what the enforced policy let through)."""
        return report(self.openings, self.unaccounted_openings())

    @property
    def channel(self) -> PublicChannel:
        """The party-to-party channel for public messages (typed, no pickle: secure_lightning.channel)."""
        if self._channel is None or self._channel.party is not self._party:
            self._channel = PublicChannel(self._party)
        return self._channel

    # ---- data: the data owner's batches reach all three as shares (secure_lightning.data.DataFeed) -------------------
    @property
    def feed(self) -> DataFeed:
        if self._feed is None or self._feed.party is not self._party:
            self._feed = DataFeed(self._party, self.channel, self.data_owner)
        return self._feed

    def process_dataloader(self, dataloader: object) -> object:
        if self._party is None:
            return dataloader
        return self.feed.loader(dataloader)

    def batch_to_device(self, batch: Any, device: Optional[torch.device] = None, dataloader_idx: int = 0) -> Any:
        """Secret-share the data owner's batch (DataFeed.share_batch), after the LightningModule's (and
        DataModule's) batch transfer hooks ran on it in the data owner."""
        if self._party is None:
            return super().batch_to_device(batch, device, dataloader_idx)
        lm = self.lightning_module
        return self.feed.share_batch(batch, lambda b: lm._apply_batch_transfer_handler(
            b, device=self.root_device, dataloader_idx=dataloader_idx))

    # ---- steps ---------------------------------------------------------------------------------------------------
    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        out = super().predict_step(*args, **kwargs)
        self._guard_check()
        if self._party is None or not contains_shared(out):
            return out
        return self.reveal(out, "predictions", "predict_step")

    # ---- collectives on public values ---------------------------------------------------------------------------
    def reduce(self, tensor, group: Optional[Any] = None, reduce_op: Optional[Union[ReduceOp, str]] = "mean"):
        return self.collectives.reduce(tensor, group, reduce_op)

    def barrier(self, name: Optional[str] = None) -> None:
        self.collectives.barrier(name)

    def broadcast(self, obj, src: int = 0):
        return self.collectives.broadcast(obj, src)

    def all_gather(self, tensor: Tensor, group: Optional[Any] = None, sync_grads: bool = False) -> Tensor:
        return self.collectives.all_gather(tensor, group, sync_grads)

    @contextmanager
    def block_backward_sync(self):
        yield None

    # ---- checkpoints: one share file per party -------------------------------------------------------------------
    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True  # load shares into the secured model

    def lightning_module_state_dict(self) -> dict:
        if self._secured:
            return secure_nn.share_state_dict(self.lightning_module)
        return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer) -> dict:
        return to_blobs(super().optimizer_state(optimizer))

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options: Optional[Any] = None) -> None:
        """Party r writes its shares to `<filepath>.party<r>` and the public part (no state_dict, no optimizer
        states, no shares) to `<filepath>`; both atomically."""
        if storage_options is not None:
            raise TypeError("RSS3PC.save_checkpoint does not take storage_options")
        if self._party is None:
            raise RuntimeError("RSS3PC: checkpoints are written by the parties (inside fit/validate/...)")
        self.checkpoint_io.save_checkpoint(to_blobs(dict(checkpoint)), filepath)
        if self.export_plaintext_on_save:
            self.export_plaintext(f"{os.fspath(filepath)}.plain", checkpoint)

    def export_plaintext(self, filepath, checkpoint: Optional[dict] = None) -> None:
        """Collective: open the weights to the recipient of "weights" (the model owner), which writes a Lightning
        checkpoint with the plaintext state_dict (`plain_model.load_state_dict(torch.load(path)["state_dict"])`)."""
        sd = self._open_weights()
        if sd is None:
            return
        self.checkpoint_io.save_plaintext(checkpoint or {}, sd, filepath)

    def remove_checkpoint(self, filepath) -> None:
        if self._party is None:
            return
        self.checkpoint_io.remove_checkpoint(filepath)

    def load_checkpoint(self, checkpoint_path, weights_only: Optional[bool] = None) -> dict:
        if self._party is None:
            return super().load_checkpoint(checkpoint_path, weights_only)
        return self.checkpoint_io.load_agreed(checkpoint_base(checkpoint_path), self.channel.agree)

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        if not self._secured:
            return super().load_model_state_dict(checkpoint, strict)
        secure_nn.load_share_state_dict(self.lightning_module, checkpoint["state_dict"], self._party)

    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        for optimizer, state in zip(self.optimizers, checkpoint["optimizer_states"]):
            optimizer.load_state_dict(from_blobs(state, self._party))

    # ---- results back to the launching process --------------------------------------------------------------------
    def party_output(self, trainer: "pl.Trainer", results) -> PartyOutput:
        """What a spawned party hands back to the launching process (secure_lightning.results)."""
        return results_.party_output(self, trainer, results)

    def communication_summary(self) -> dict:
        """In the launching process, after a stage: party 0's bytes sent, rounds and messages, its bytes by protocol
        label, and `bytes_all_parties` (sum over the three). Empty before any stage ran. One party per host: the host of
        party 0 reports party 0's figures (without bytes_all_parties), the others nothing."""
        comm = getattr(self, "_party_comm", None)
        if not comm and self._party is not None:  # one party per host: this host's party only
            comm = {self._party.rank: results_.comm_totals(self._party)}
        return results_.communication_summary(comm)

    def restore_outputs(self, trainer: "pl.Trainer", outs: list) -> Any:
        """In the launching process: put the parties' PartyOutputs where Lightning keeps them (results.py)."""
        return results_.restore_outputs(self, trainer, outs)

    def bind_spawned_process(self, rank: int, addr: str, port: int) -> None:
        """Inside a party process the launcher started: this process is party `rank`, rendezvous at addr:port."""
        self._spawned_as = (rank, addr, port)

    @property
    def peak_memory_mib(self) -> dict:
        """In the launching process, after a stage run by spawned parties: {party: its process's peak resident set in
        MiB} (VmHWM: the torch runtime included). Empty before any stage ran."""
        return dict(getattr(self, "_party_peak_rss", {}))

    @property
    def party_audits(self) -> dict:
        """In the launching process: {party: its party.audit records} from the last run."""
        return dict(self._party_audits)

    # ---- registry ------------------------------------------------------------------------------------------------
    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        strategy_registry.register(cls.strategy_name, cls,
                                   description="3-party replicated secret sharing (secure_lightning)")

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_party"] = None
        state["_channel"] = None
        state["_feed"] = None
        state["patches"] = HookPatches()
        return state


if RSS3PC.strategy_name not in StrategyRegistry:
    RSS3PC.register_strategies(StrategyRegistry)
