"""Results back to the launching process: what a party hands back (PartyOutput) and how the launching process puts
it where Lightning keeps it (trainer state, callback metrics, fit loop counters, checkpoint callbacks, weights).

RSS3PC.party_output / restore_outputs / communication_summary delegate here; the launcher calls the first two.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

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
    if trainer.state.fn == TrainerFn.FITTING:
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
    three), from {rank: comm_totals}. Empty before any stage ran."""
    comm = comm or {}
    if not comm.get(0):
        return {}
    return {**comm[0], "bytes_all_parties": sum(c["bytes"] for c in comm.values() if c)}


def restore_outputs(strategy, trainer: "pl.Trainer", outs: list) -> Any:
    """In the launching process: put the parties' PartyOutputs where Lightning keeps them; returns the results of the
    Trainer call (predictions: those of their recipient)."""
    main = outs[strategy.data_owner]
    trainer.state = main.state
    trainer.callback_metrics.update(main.callback_metrics)
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
    if trainer.state.fn == TrainerFn.PREDICTING:
        to = strategy.policy.recipient("predictions")
        return outs[to].results if isinstance(to, int) else main.results
    return main.results
