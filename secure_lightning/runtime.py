"""Starting the three parties: spawned on one machine, or one per host from the usual environment variables.

`launch(fn, *args)` spawns three processes on this machine, connects them and returns [fn(party, *args) for each
party]. `connect_from_env()` is for one party per host: it reads RANK (or NODE_RANK), MASTER_ADDR, MASTER_PORT and
WORLD_SIZE=3. Each party uses one torch thread (three parties share the machine's cores).
"""
from __future__ import annotations

import datetime
import os
import socket
import traceback

import torch
import torch.distributed as dist

from .comm import Communicator
from .encoding import FixedPoint
from .memory import release_freed_memory
from .party import Party
from .transport import SocketMesh

DEFAULT_TIMEOUT = float(os.environ.get("SECURE_LIGHTNING_TIMEOUT", 120))
STARTUP_TIMEOUT = 120.0  # the least time the rendezvous waits for all three parties to join
ERROR_GRACE_S = 3.0  # after one party fails, how long PartyPool waits for the others' error reports


class PartyError(RuntimeError):
    """A function failed in at least one party; the message carries every party's error."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= 3 else "gloo"


def init_party(rank: int, master_addr: str, master_port: int, *, backend: str | None = None,
               timeout: float = DEFAULT_TIMEOUT, encoding: FixedPoint = FixedPoint(), device=None,
               insecure_fast_prg: bool = False, threads: int | None = 1, transport: str | None = None) -> Party:
    """Join the 3-party process group and run key agreement. Returns this process's Party.

    `transport`: "socket" (direct TCP connections between the parties, secure_lightning.transport; the default on
    CPU) or "dist" (isend/irecv on the torch.distributed group; the default, and the only choice, with NCCL).
    Also fixes the allocator's mmap threshold (secure_lightning.memory), so that freed share tensors leave the
    resident set."""
    release_freed_memory()
    if threads:
        torch.set_num_threads(threads)
    backend = backend or default_backend()
    if device is None:
        device = f"cuda:{rank}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        # rendezvous waits for the slowest party to start (seconds on a loaded machine), whatever the message timeout
        dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}", rank=rank, world_size=3,
                                timeout=datetime.timedelta(seconds=max(timeout, STARTUP_TIMEOUT)))
    elif dist.get_world_size() != 3:
        raise RuntimeError(f"secure_lightning needs exactly 3 processes, the process group has {dist.get_world_size()}")
    transport = transport or ("dist" if backend == "nccl" else "socket")
    if transport not in ("socket", "dist") or (transport == "socket" and backend == "nccl"):
        raise ValueError(f"transport {transport!r}: use 'socket' (CPU parties) or 'dist'")
    mesh = SocketMesh.connect(rank, master_addr, timeout=max(timeout, STARTUP_TIMEOUT)) if transport == "socket" \
        else None
    comm = Communicator(rank, timeout=timeout, transport_device=device if backend == "nccl" else "cpu",
                        transport=mesh)
    return Party.connect(comm, encoding=encoding, device=device, insecure_fast_prg=insecure_fast_prg)


def connect_from_env(**kw) -> Party:
    """One party per host: RANK or NODE_RANK, MASTER_ADDR, MASTER_PORT, WORLD_SIZE (must be 3)."""
    world = int(os.environ.get("WORLD_SIZE", "3"))
    if world != 3:
        raise RuntimeError(f"WORLD_SIZE={world}: secure_lightning runs exactly 3 parties")
    rank = int(os.environ.get("RANK", os.environ.get("NODE_RANK", "-1")))
    if rank not in (0, 1, 2):
        raise RuntimeError("set RANK (or NODE_RANK) to 0, 1 or 2 for this party")
    for v in ("MASTER_ADDR", "MASTER_PORT"):
        if v not in os.environ:
            raise RuntimeError(f"set {v}: the address and port of party 0")
    return init_party(rank, os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), **kw)


def _pickle():
    try:
        import cloudpickle
        return cloudpickle
    except ImportError:  # pragma: no cover
        import pickle
        return pickle


def party_worker(rank: int, port: int, conn, init_kw: dict):
    """Process body: connect, then run jobs from `conn` until told to stop. Each job: (fn, args, kwargs) pickled."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    pk = _pickle()
    try:
        party = init_party(rank, "127.0.0.1", port, **init_kw)
        conn.send(("ready", None))
    except Exception:
        conn.send(("err", traceback.format_exc()))
        return
    while True:
        try:
            job = conn.recv()
        except EOFError:
            break
        if job is None:
            break
        try:
            fn, args, kwargs = pk.loads(job)
            party.audit.clear()
            result = fn(party, *args, **kwargs)
            conn.send(("ok", pk.dumps(result)))
        except BaseException as e:  # report, then stop: streams may be out of step now
            conn.send(("err", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
            break
    try:
        party.comm.close()
        dist.destroy_process_group()
    except Exception:
        pass


class PartyPool:
    """Three party processes kept alive across calls: `pool.run(fn, *args)` -> [result of P0, P1, P2].

    After any failure the pool restarts itself on the next call (protocol state and PRG streams may be out of step).
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, **init_kw):
        self.timeout = timeout
        self.init_kw = dict(init_kw, timeout=timeout)
        self.procs, self.conns = [], []

    def start(self):
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        port = free_port()
        self.procs, self.conns = [], []
        for r in range(3):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=party_worker, args=(r, port, child, self.init_kw), daemon=True)
            p.start()
            self.procs.append(p)
            self.conns.append(parent)
        self._collect(max(self.timeout, STARTUP_TIMEOUT) + 60, "start-up")

    @property
    def alive(self) -> bool:
        return bool(self.procs) and all(p.is_alive() for p in self.procs)

    def run(self, fn, *args, timeout: float | None = None, **kwargs) -> list:
        if not self.alive:
            self.close()
            self.start()
        job = _pickle().dumps((fn, args, kwargs))
        for c in self.conns:
            c.send(job)
        return self._collect(timeout or (self.timeout + 30), getattr(fn, "__name__", "job"))

    def _collect(self, timeout: float, what: str) -> list:
        """Wait for all three answers. Once one party has failed, the others get ERROR_GRACE_S more to report their
        own error (a dead or failed peer makes them fail fast); any still running then is stopped, not waited for."""
        import time
        deadline = time.monotonic() + timeout
        results, errors = [None] * 3, {}
        pending = set(range(3))
        first_error_at = None
        while pending and time.monotonic() < deadline:
            if errors:
                first_error_at = first_error_at or time.monotonic()
                if time.monotonic() - first_error_at > ERROR_GRACE_S:
                    break
            for r in list(pending):
                c = self.conns[r]
                if c.poll(0.05):
                    try:
                        kind, payload = c.recv()
                    except EOFError:  # the pipe closed: the process ended without answering
                        self.procs[r].join(timeout=1)
                        kind, payload = "err", f"process died (exit code {self.procs[r].exitcode})"
                    pending.discard(r)
                    if kind == "ok":
                        results[r] = _pickle().loads(payload)
                    elif kind == "err":
                        errors[r] = payload
                elif not self.procs[r].is_alive():
                    pending.discard(r)
                    errors[r] = f"process died (exit code {self.procs[r].exitcode})"
        for r in pending:
            errors[r] = (f"still running {ERROR_GRACE_S:g}s after another party failed; stopped" if first_error_at
                         else f"no answer within {timeout:g}s")
        if errors:
            self.close()
            msg = "\n".join(f"--- party {r}: {e}" for r, e in sorted(errors.items()))
            raise PartyError(f"{what} failed in {len(errors)} part{'y' if len(errors) == 1 else 'ies'}:\n{msg}")
        return results

    def close(self):
        for c in self.conns:
            try:
                c.send(None)
            except Exception:
                pass
        for p in self.procs:
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join(timeout=2)
        self.procs, self.conns = [], []

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()


def launch(fn, *args, timeout: float = DEFAULT_TIMEOUT, **init_kw) -> list:
    """Spawn three parties on this machine, run fn(party, *args) in each, return the three results."""
    with PartyPool(timeout=timeout, **init_kw) as pool:
        return pool.run(fn, *args)
