"""Starting the three parties for a Trainer entry point (fit / validate / test / predict).

One machine (`PartyLauncher(strategy, spawn=True)`): the launching process pickles the Trainer call into a file,
spawns three party processes, watches them and reads their results back from files (no queue, no size limit). The
data owner's process is the only one that receives the data: the other two get a copy of the call without any
DataModule, DataLoader or dataset (secure_lightning.data). If one party fails, the others stop on their own (peer errors or the communication
timeout); a party still running `timeout + grace` seconds after the first failure is killed. The launching process
then raises the first party's own error (with every party's story attached as a note), or `PartyFailedError` when a
party died or hung.

Several hosts or torchrun (`spawn=False`): the processes exist already; the call runs in this process.
"""
from __future__ import annotations

import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only

import pytorch_lightning as pl
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states
from pytorch_lightning.strategies.launchers.launcher import _Launcher
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from . import launch_checks, logs
from .data import NoData, data_plan, dumps_without_data, strip_data  # noqa: F401 (NoData: public here too)


GRACE_S = 10.0  # after the first failure, how long the other parties get (beyond the timeout) to stop by themselves


@dataclass
class PartyOutput:
    """What a party process hands back to the launching process (like Lightning's _WorkerOutput): public state only.
    Written to a file by the party and read by the launching process, the same user on the same machine; parties
    never exchange these."""
    rank: int
    state: Any                      # TrainerState
    results: Any                    # the Trainer call's return value in this party (plaintext or None)
    callback_metrics: dict
    openings: list                  # OpeningRecords (secure_lightning.reveal)
    audit: list                     # this party's party.audit records
    unaccounted: list
    comm: Optional[dict]            # communication totals
    fit_loop: Optional[dict] = None
    checkpoint_callbacks: list = field(default_factory=list)
    weights: Optional[dict] = None  # the opened weights, in their recipient only
    logged_metrics: dict = field(default_factory=dict)
    progress_bar_metrics: dict = field(default_factory=dict)
    callbacks: list = field(default_factory=list)       # per trainer.callbacks entry: {"state", "attrs"} (plain)
    module_attrs: dict = field(default_factory=dict)    # the LightningModule's plain-valued public attributes
    optimizers: list = field(default_factory=list)      # per optimizer: its param_groups' hyperparameters
    schedulers: list = field(default_factory=list)      # per LR scheduler: its state_dict (public: steps, lrs)
    peak_rss_mib: Optional[float] = None  # the party process's peak resident set (VmHWM), torch runtime included


class PartyFailedError(RuntimeError):
    """A party process died, hung, or failed without a readable error."""


def _atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


LAUNCHER_POLL_S = 1.0  # how often a party checks that its launching process is still there


def _exit_with_launcher(launcher_pid: int) -> None:
    """A daemon thread that ends this party (exit status 1) once the launching process is gone, e.g. killed by
    SIGKILL or SIGTERM, which leave it no chance to stop the parties: they would otherwise compute on, or wait for
    their peers until the communication timeout, holding memory and cores."""
    def watch():
        while True:
            time.sleep(LAUNCHER_POLL_S)
            try:
                os.kill(launcher_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass  # alive, owned by someone else

    threading.Thread(target=watch, name="rss3pc-launcher-watch", daemon=True).start()


def _party_main(rank: int, result_dir: str, port: int, launcher_pid: int | None = None) -> None:
    """Body of a spawned party process."""
    if launcher_pid is not None:
        _exit_with_launcher(launcher_pid)
    os.environ["LOCAL_RANK"] = str(rank)
    os.environ["NODE_RANK"] = "0"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rank_zero_only.rank = utils_rank_zero_only.rank = rank
    torch.set_num_threads(1)
    try:
        with open(os.path.join(result_dir, f"party{rank}.payload"), "rb") as f:
            launcher, trainer, function, args, kwargs, rng_states = pickle.loads(f.read())
        _set_rng_states(rng_states)
        strategy = launcher._strategy
        strategy.bind_spawned_process(rank, "127.0.0.1", port)
        results = function(*args, **kwargs)
        out = strategy.party_output(trainer, results)
        _atomic_write_bytes(os.path.join(result_dir, f"party{rank}.result"), pickle.dumps(out))
    except BaseException as e:  # report, then exit non-zero
        try:
            exc_bytes = pickle.dumps(e)
            pickle.loads(exc_bytes)
        except Exception:
            exc_bytes = None
        info = {"time": time.time(), "type": type(e).__name__, "message": str(e),
                "traceback": traceback.format_exc(), "exception": exc_bytes,
                "peer_failure": _is_peer_failure(e)}
        try:
            _atomic_write_bytes(os.path.join(result_dir, f"party{rank}.error"), pickle.dumps(info))
        finally:
            os._exit(1)
    os._exit(0)  # skip interpreter teardown (gloo threads); results are on disk


def _is_peer_failure(e: BaseException) -> bool:
    """Whether `e` looks like a consequence of another party failing (timeout, closed connection)."""
    from .comm import PartyTimeoutError
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, PartyTimeoutError) or getattr(e, "failed_party", None) is not None:
            return True
        text = f"{type(e).__name__}: {e}".lower()
        if any(s in text for s in ("connection closed", "connection reset", "timed out", "timeout",
                                   "broken pipe", "failed to pass monitoredbarrier", "peer")):
            return True
        e = e.__cause__ or e.__context__
    return False


_PRELOAD = ["torch", "pytorch_lightning", "secure_lightning.strategy"]


def _context():
    """A forkserver context where available: the server imports torch, Lightning and secure_lightning once, and
    each launch forks the three parties from it (a spawned party would import them again: seconds per process).
    Elsewhere: spawn. Both need the script's `if __name__ == "__main__":` guard and importable classes."""
    import multiprocessing as mp
    method = launch_checks.start_method()
    if method == "fork":  # a notebook, REPL or stdin script: the parties inherit this process's classes
        return mp.get_context("fork")
    if method == "forkserver":
        from multiprocessing import forkserver
        if getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", 1) is None:  # not started yet
            forkserver.set_forkserver_preload(["__main__", *_PRELOAD])
        return mp.get_context("forkserver")
    return mp.get_context("spawn")


class PartyLauncher(_Launcher):
    """Runs a Trainer entry point in the three parties; see the module docstring."""

    def __init__(self, strategy, spawn: bool = True):
        self._strategy = strategy
        self.spawn = spawn
        self.procs: list = []
        self._already_fit = False

    @property
    def is_interactive_compatible(self) -> bool:
        return True  # notebooks and stdin scripts: the parties are forked (launch_checks.start_method)

    def launch(self, function: Callable, *args: Any, trainer: Optional["pl.Trainer"] = None, **kwargs: Any) -> Any:
        strategy = self._strategy
        if trainer is not None:
            strategy.check_trainer(trainer)
        if not self.spawn:
            return function(*args, **kwargs)
        if self._already_fit and trainer is not None and trainer.state.fn == TrainerFn.FITTING:
            raise NotImplementedError(
                "Calling trainer.fit() twice on the same Trainer with RSS3PC is not supported: create a new Trainer "
                "and pass fit(ckpt_path=...) to resume from a checkpoint.")
        launch_checks.check_main_guard()
        if trainer is not None:
            launch_checks.check_importable(trainer.lightning_module, "LightningModule")
            launch_checks.check_importable(getattr(trainer, "datamodule", None), "LightningDataModule")
        from .runtime import free_port

        result_dir = tempfile.mkdtemp(prefix="rss3pc-")
        if trainer is not None:
            logs.pin_versions(trainer)  # one folder for every call, as plain Lightning's single logger object
        try:
            rng = _collect_rng_states()
            strategy._data_plan = data_plan(function, args)  # which dataloader sources exist (no hook called)
            for r in range(3):  # one file per party: only the data owner's holds any data (secure_lightning.data)
                if r == strategy.data_owner:
                    payload = pickle.dumps((self, trainer, function, args, kwargs, rng))
                else:
                    payload = dumps_without_data((self, trainer, function, strip_data(function, args), kwargs, rng))
                with open(os.path.join(result_dir, f"party{r}.payload"), "wb") as f:
                    f.write(payload)
            port = free_port()
            ctx = _context()
            self.procs = [ctx.Process(target=_party_main, args=(r, result_dir, port, os.getpid()),
                                      name=f"rss3pc-party{r}", daemon=False) for r in range(3)]
            for p in self.procs:
                p.start()
            try:
                self._watch(result_dir)
            except BaseException:
                self.kill(signal.SIGKILL)
                raise
            outs = self._read_results(result_dir)
        finally:
            shutil.rmtree(result_dir, ignore_errors=True)
            self.procs = []
        if trainer is None:
            return outs[strategy.data_owner].results
        self._already_fit |= trainer.state.fn == TrainerFn.FITTING
        logs.note_call(trainer)
        return strategy.restore_outputs(trainer, outs)

    # ---- watching the parties ---------------------------------------------------------------------------------
    def _watch(self, result_dir: str) -> None:
        """Wait for all three to exit. After the first failure the others get timeout + GRACE_S to stop by
        themselves (their next exchange with the failed party errors or times out); once two have failed, the
        third cannot finish anything and is stopped at once. A party still running then is killed (hung)."""
        deadline = None
        self._killed = set()
        while any(p.is_alive() for p in self.procs):
            failed = [r for r, p in enumerate(self.procs)
                      if (p.exitcode not in (None, 0)) or os.path.exists(os.path.join(result_dir, f"party{r}.error"))]
            if failed and deadline is None:
                deadline = time.monotonic() + self._strategy.timeout + GRACE_S
            if deadline is not None and (time.monotonic() > deadline or
                                         len([r for r in failed if not self.procs[r].is_alive()]) >= 2):
                time.sleep(0.5)  # let a party that is failing right now finish writing its error
                for r, p in enumerate(self.procs):
                    if p.is_alive():
                        self._killed.add(r)
                        p.kill()
                for p in self.procs:
                    p.join(5)
                break
            time.sleep(0.05)
        for p in self.procs:
            p.join(5)

    def _read_results(self, result_dir: str) -> list:
        outs, errors, died = [None] * 3, {}, {}
        for r, p in enumerate(self.procs):
            res = os.path.join(result_dir, f"party{r}.result")
            err = os.path.join(result_dir, f"party{r}.error")
            if os.path.exists(err):
                with open(err, "rb") as f:
                    errors[r] = pickle.loads(f.read())
            elif p.exitcode == 0 and os.path.exists(res):
                with open(res, "rb") as f:
                    outs[r] = pickle.loads(f.read())
            else:
                code = p.exitcode
                how = ("hung: it was still running after the others had failed, and was stopped"
                       if r in getattr(self, "_killed", ()) else
                       f"was killed (signal {-code})" if code is not None and code < 0 else
                       f"exited with code {code} without a result")
                died[r] = how
        if not errors and not died:
            return outs
        lines = [f"party {r} {how}" for r, how in sorted(died.items())]
        lines += [f"party {r}: {e['type']}: {e['message']}" for r, e in sorted(errors.items())]
        summary = "RSS3PC parties:\n  " + "\n  ".join(lines)
        own = [(e["time"], r) for r, e in errors.items() if not e["peer_failure"]]
        if own:  # a party's own error (the others failing because of it): raise that error here
            r = min(own)[1]
            e = errors[r]
            exc = pickle.loads(e["exception"]) if e["exception"] is not None else None
            if exc is None:
                exc = PartyFailedError(f"party {r} failed: {e['type']}: {e['message']}")
            exc.add_note(f"--- raised in party {r}:\n{e['traceback']}")
            exc.add_note(summary)
            raise exc
        if died:
            r = min(died)
            first = min(errors.items(), key=lambda kv: kv[1]["time"])[1] if errors else None
            msg = (f"party {r} {died[r]}; the other parties stopped"
                   + (f" ({first['type']}: {first['message']})" if first else "")
                   + f". A party that dies or hangs stops the others within the timeout "
                   f"({self._strategy.timeout:g}s); checkpoints already written are intact.\n{summary}")
            raise PartyFailedError(msg)
        r = min(errors.items(), key=lambda kv: kv[1]["time"])[0]
        e = errors[r]
        exc = pickle.loads(e["exception"]) if e["exception"] is not None else PartyFailedError(e["message"])
        exc.add_note(f"--- raised in party {r}:\n{e['traceback']}")
        exc.add_note(summary)
        raise exc

    def kill(self, signum) -> None:
        for p in self.procs:
            if p.is_alive() and p.pid is not None:
                try:
                    os.kill(p.pid, signum)
                except ProcessLookupError:
                    pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["procs"] = []
        return state
