"""Results back to the launching process: what a party hands back (PartyOutput) and how the launching process puts
it where Lightning keeps it, so that after a Trainer call the launching process holds what plain Lightning would, as
far as it is public: trainer state and fit loop counters, callback/logged/progress-bar metrics, every callback's
state (`state_dict()` and its plain attributes), the LightningModule's plain-valued attributes set in its hooks, the
weights (opened to their recipient), and the optimizers and LR schedulers rebuilt by `configure_optimizers` with
their public state (hyperparameters such as lr, scheduler steps). What stays secret: the weights when the policy
does not open them, optimizer moments and momentum buffers (secret-shared), and anything held as a SharedTensor.

"Plain" values: None, bool, int, float, str, plain (non-shared) tensors, and lists, tuples and dicts of them. The
data owner's copies are used (it is the party that logs and runs the hooks on plaintext).

RSS3PC.party_output / restore_outputs / communication_summary delegate here; the launcher calls the first two.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn

from .launcher import PartyOutput

log = logging.getLogger(__name__)


def party_output(strategy, trainer: "pl.Trainer", results) -> PartyOutput:
    """What a spawned party hands back to the launching process: public state, and its own results."""
    party = strategy.party
    r = party.rank if party is not None else strategy.global_rank
    to_cpu = lambda t: t.detach().cpu()  # noqa: E731
    out = PartyOutput(rank=r, state=trainer.state, results=apply_to_collection(results, Tensor, to_cpu),
                      callback_metrics=apply_to_collection(dict(trainer.callback_metrics), Tensor, to_cpu),
                      openings=list(strategy.ledger.records),
                      audit=list(party.audit.records) if party is not None else [],
                      unaccounted=strategy.unaccounted_openings(), comm=comm_totals(party),
                      peak_rss_mib=peak_rss_mib())
    out.logged_metrics = _plain_metrics(trainer.logged_metrics)
    out.progress_bar_metrics = _plain_metrics(trainer.progress_bar_metrics)
    out.callbacks = [{"type": type(cb).__qualname__, "state": _plain_or_none(_state_dict(cb)),
                      "attrs": public_attributes(cb)} for cb in trainer.callbacks]
    out.module_attrs = public_attributes(trainer.lightning_module)
    if trainer.state.fn == TrainerFn.FITTING:
        out.optimizers, out.schedulers = strategy.public_optimizer_state or ([], [])
        out.fit_loop = trainer.fit_loop.state_dict()
        out.checkpoint_callbacks = [
            {k: getattr(cb, k) for k in ("best_model_path", "best_model_score", "last_model_path",
                                         "best_k_models", "kth_best_model_path", "kth_value")
             if hasattr(cb, k)} for cb in trainer.checkpoint_callbacks]
        if strategy._weights_revealed:
            out.weights = {k: v.detach().cpu() for k, v in trainer.lightning_module.state_dict().items()}
    return out


def peak_rss_mib() -> Optional[float]:
    """This process's peak resident set in MiB since it started: VmHWM on Linux (torch runtime, model, shares and
    every step included), else the rusage maximum; None where neither exists."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
        import sys
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2 ** 20 if sys.platform == "darwin" else rss / 1024
    except (ImportError, OSError):
        return None


def comm_totals(party) -> Optional[dict]:
    """This party's communication since its processes started (one stage): totals and bytes by top label."""
    if party is None:
        return None
    stats = party.comm.stats
    tot = stats.total()
    return {"bytes": tot.bytes, "rounds": tot.rounds, "messages": tot.messages,
            "bytes_by_label": {k: c.bytes for k, c in stats.grouped(1).items()}}


def communication_summary(comm: Optional[dict]) -> dict:
    """Party 0's bytes sent, rounds and messages, its bytes by protocol label, and `bytes_all_parties` (sum over the
    three, only when all three are known), from {rank: comm_totals}. Empty before any stage ran and on the hosts of
    parties 1 and 2 when each party runs on its own host."""
    comm = comm or {}
    if not comm.get(0):
        return {}
    out = dict(comm[0])
    if all(comm.get(r) for r in range(3)):
        out["bytes_all_parties"] = sum(comm[r]["bytes"] for r in range(3))
    return out


def public_optimizer_state(strategy) -> tuple[list, list]:
    """(per optimizer: its param_groups' plain hyperparameters, per LR scheduler: its plain state_dict), taken in the
    party before teardown drops the optimizers."""
    groups = [[{k: v for k, v in g.items() if k != "params" and is_plain(v)} for g in opt.param_groups]
              for opt in strategy.optimizers]
    return groups, [_plain_or_none(cfg.scheduler.state_dict()) for cfg in strategy.lr_scheduler_configs]


def is_plain(v, depth: int = 0) -> bool:
    """Whether v is public plain data (see the module docstring); a SharedTensor never is."""
    if depth > 8:
        return False
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, Tensor):
        return type(v) is Tensor or isinstance(v, torch.nn.Parameter) and type(v.data) is Tensor
    if isinstance(v, (list, tuple)):
        return all(is_plain(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, (str, int, float, bool)) and is_plain(x, depth + 1) for k, x in v.items())
    return False


def _plain_or_none(v):
    return apply_to_collection(v, Tensor, lambda t: t.detach().cpu()) if is_plain(v) else None


def _plain_metrics(metrics) -> dict:
    return {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in dict(metrics).items() if is_plain(v)}


def public_attributes(obj) -> dict:
    """obj's public attributes (no leading underscore) that hold plain values, detached to the CPU."""
    return {k: _plain_or_none(v) for k, v in vars(obj).items() if not k.startswith("_") and is_plain(v)}


def _state_dict(cb) -> Any:
    try:
        return cb.state_dict()
    except Exception:  # a callback without a usable state_dict
        return None


def _restore_callbacks(trainer, states: list) -> None:
    """Match callbacks by type and order among their type (the party may have added the model's own callbacks)."""
    by_type: dict = {}
    for saved in states:
        by_type.setdefault(saved["type"], []).append(saved)
    seen: dict = {}
    for cb in trainer.callbacks:
        name = type(cb).__qualname__
        idx = seen[name] = seen.get(name, -1) + 1
        if idx >= len(by_type.get(name, [])):
            continue
        saved = by_type[name][idx]
        if saved["state"]:
            try:
                cb.load_state_dict(saved["state"])
            except Exception as e:  # pragma: no cover - a callback that cannot take back its own state
                log.debug(f"RSS3PC: {type(cb).__name__}.load_state_dict failed: {e}")
        for k, v in saved["attrs"].items():
            try:
                setattr(cb, k, v)
            except Exception:  # read-only properties
                pass


def _restore_optimizers(trainer, groups: list, schedulers: list) -> None:
    """configure_optimizers on the launching process's model, then the parties' public optimizer/scheduler state."""
    from pytorch_lightning.core.optimizer import _init_optimizers_and_lr_schedulers
    if trainer.lightning_module._trainer is None:
        trainer.lightning_module.trainer = trainer  # attached after fit, as in plain Lightning
    try:
        optimizers, configs = _init_optimizers_and_lr_schedulers(trainer.lightning_module)
    except Exception as e:  # pragma: no cover - configure_optimizers that needs the run (e.g. the trainer's loaders)
        log.warning(f"RSS3PC: could not rebuild the optimizers in the launching process: {e}")
        return
    for opt, saved in zip(optimizers, groups):
        for group, values in zip(opt.param_groups, saved):
            group.update(values)
    for cfg, state in zip(configs, schedulers):
        if state is not None:
            cfg.scheduler.load_state_dict(state)
    trainer.strategy.optimizers = optimizers
    trainer.strategy.lr_scheduler_configs = configs


def restore_outputs(strategy, trainer: "pl.Trainer", outs: list) -> Any:
    """In the launching process: put the parties' PartyOutputs where Lightning keeps them; returns the results of the
    Trainer call (predictions: those of their recipient)."""
    main = outs[strategy.data_owner]
    trainer.state = main.state
    trainer.callback_metrics.update(main.callback_metrics)
    connector = trainer._logger_connector
    connector._logged_metrics.update(main.logged_metrics)
    connector._progress_bar_metrics.update(main.progress_bar_metrics)
    _restore_callbacks(trainer, main.callbacks)
    for k, v in main.module_attrs.items():
        try:
            setattr(trainer.lightning_module, k, v)
        except Exception:  # read-only properties
            pass
    strategy._openings = main.openings
    strategy._party_audits = {o.rank: o.audit for o in outs}
    strategy._party_unaccounted = main.unaccounted
    strategy._party_comm = {o.rank: o.comm for o in outs}
    strategy._party_peak_rss = {o.rank: o.peak_rss_mib for o in outs}
    if trainer.state.fn == TrainerFn.FITTING:
        owner = strategy.policy.recipient("weights")
        src = outs[owner] if isinstance(owner, int) else outs[strategy.model_owner]
        if src.weights is not None:
            trainer.lightning_module.load_state_dict(src.weights, strict=True)
        try:
            trainer.fit_loop.load_state_dict(main.fit_loop)
            trainer.fit_loop.restarting = False
        except Exception as e:  # pragma: no cover - best effort
            log.debug(f"RSS3PC: could not restore the fit loop counters: {e}")
        for cb, attrs in zip(trainer.checkpoint_callbacks, main.checkpoint_callbacks):
            for k, v in attrs.items():
                setattr(cb, k, v)
        _restore_optimizers(trainer, main.optimizers, main.schedulers)
    if trainer.state.fn == TrainerFn.PREDICTING:
        to = strategy.policy.recipient("predictions")
        return outs[to].results if isinstance(to, int) else main.results
    return main.results
