"""Our figures on the tasks of the fastest three-party systems' comparison table, optionally beside an older commit.

    python -m benchmarks.peers [--repeats N] [--warmup N] [--tasks a,b] [--vs COMMIT] [--out results/peers]
    python -m benchmarks.peers --render results/peers.json [--note TEXT]    # rewrite the .md from the .json

Tasks (`TASKS`): LeNet (benchmarks/lenet_cost.py: conv5 1->20, ReLU, pool 2, conv5 20->50, ReLU, pool 2, FC 800->500,
ReLU, FC 500->10) with average or max pooling, on random 1x28x28 inputs: inference at batch 1 and 64, one training
step (cross-entropy against one-hot labels, one SGD step, lr 0.01) at batch 64; and a 1000x1000 secret x secret
matrix product. Party 0 shares the weights before the clock starts. Only by name (`--tasks`): resnet50-train
(batch 64, or --size), one training step of the app's ResNet-50 (models/nets.py, SGD momentum 0.9, weight decay
1e-4) on 1x8x8 inputs, for a side-by-side with an older commit (the momentum buffers exist from the warm-up step on).

What is timed, in each of the three parties, after a barrier. LeNet: sharing the input from party 0 (and the one-hot
labels for training), the run (forward under no_grad; or forward, loss, backward and the SGD step), and opening the
output to party 0 (inference) or the loss to all parties (training, as a logged loss is). Matmul: both operands are
shared (by party 0) before the clock, as the peers time it; timed are the product (with its truncation) and opening
it to party 0. Reported per task:
  - time: median over repeats of the slowest party's time (s);
  - bytes: sent by the three parties together during the timed part (party.comm.cost()), and per party;
  - rounds: sequential communication rounds of the timed part (the same on every party);
  - peak RSS per party: VmHWM (MiB) of each party process, reset just before the timed part (torch runtime
    included); the maximum over repeats. Each task gets three fresh party processes, kept for its repeats.
Each repeat builds and shares the network again (not timed); `--warmup` untimed runs precede the first repeat.
The overflow guard is on, as under `Trainer(strategy="rss3pc")` by default: products and layer inputs are watched
and the pending samples are checked before each opening (and after the SGD step), so the figures include the
checks (a commit without the guard, such as 67a368b, runs without it). Without the guard the secure layers compare
on 64 bits instead of 48.

`--vs COMMIT` extracts that commit's `secure_lightning` package with `git archive` into a temporary folder and runs
the same task code against it and against this tree, each side in its own process (`--serve`) with its own three
parties, never both at once. Repeats alternate old/new (and which side goes first), so machine drift affects both
equally; the table then shows old, new and old/new per task. The task code uses only the API both sides have
(PartyPool, secure_module, share_tensor, reveal_tensor, party.comm.cost).

Outputs: <out>.md (tables, machine, load), <out>.json (all figures and per-repeat times).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.lenet_cost import build_lenet
from benchmarks.run import REPO, _barrier, _cost_dict, machine_info, peak_memory_mib, reset_peak_memory

# name: (kind, pool, train, batch or matrix size)
TASKS = {
    "lenet-avg-inference-b1": ("lenet", "avg", False, 1),
    "lenet-max-inference-b1": ("lenet", "max", False, 1),
    "lenet-avg-inference-b64": ("lenet", "avg", False, 64),
    "lenet-max-inference-b64": ("lenet", "max", False, 64),
    "lenet-avg-train-b64": ("lenet", "avg", True, 64),
    "lenet-max-train-b64": ("lenet", "max", True, 64),
    "matmul-1000": ("matmul", None, False, 1000),
    # not a peers' task (no peer figure; run it by name): one step of the app's `model=resnet50` on 8x8 inputs
    "resnet50-train": ("resnet50", None, True, 64),
}
# The comparison table of the issue: best peer (seconds, bytes total) and our figures at 67a368b (s, bytes, rounds).
PEERS = {"lenet-avg-inference-b1": (0.077, 2.59e6), "lenet-max-inference-b1": (0.205, 3.51e6),
         "lenet-avg-inference-b64": (2.66, 154e6), "lenet-max-inference-b64": (3.58, 211e6),
         "lenet-avg-train-b64": (5.03, 251e6), "lenet-max-train-b64": (13.2, 346e6), "matmul-1000": (0.98, 52e6)}
ISSUE_67A368B = {"lenet-avg-inference-b1": (0.113, 3.30e6, 45), "lenet-max-inference-b1": (0.220, 5.27e6, 71),
                 "lenet-avg-inference-b64": (2.68, 211e6, 45), "lenet-max-inference-b64": (4.50, 337e6, 71),
                 "lenet-avg-train-b64": (3.30, 301e6, 199), "lenet-max-train-b64": (4.93, 438e6, 221),
                 "matmul-1000": (0.197, 56e6, 4)}


# ----------------------------------------------------------------------------------------------------------------
# Party side: one task, in each of the three parties

@contextlib.contextmanager
def _overflow_guard(party):
    """The overflow guard on inside the block (the strategy's default), its check as the value; the party's previous
    guard state back after. A no-op check on a commit without the guard. Written out rather than guard.enabled,
    which older commits (the --vs side) lack."""
    try:
        from secure_lightning.protocols import guard
    except ImportError:
        yield lambda: None
        return
    before = getattr(party, "guard", None)
    guard.enable(party)
    try:
        yield lambda: guard.check(party=party)
    finally:
        party.guard = before


def task_job(party, name: str, size: int | None = None, warmup: int = 0) -> dict:
    """Set up `name` (size overrides its batch / matrix size), run `warmup` untimed, then one timed run; returns this
    party's time, communication of the timed part and peak RSS."""
    with _overflow_guard(party) as check:
        return _task(party, name, size, warmup, check)


def _task(party, name: str, size: int | None, warmup: int, check) -> dict:
    from secure_lightning.nn import secure_module
    from secure_lightning.tensor import reveal_tensor, share_tensor

    kind, pool, train, n = TASKS[name]
    n = size or n
    g = torch.Generator().manual_seed(1)
    owner = party.rank == 0
    torch.manual_seed(0)
    if kind == "matmul":
        w = share_tensor(torch.rand(n, n, generator=g) if owner else None, 0, party, label="weights")
        x = share_tensor(torch.rand(n, n, generator=g) if owner else None, 0, party)

        def run():
            y = x @ w
            check()
            reveal_tensor(y, to=0)
    else:
        if kind == "resnet50":  # conf/model/resnet50.yaml's SGD, lr 0.01 as benchmarks/resnet_profile.py
            from models.nets import resnet50
            net, side = resnet50(num_classes=10, in_channels=1), 8
            opt_args = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
        else:
            net, side, opt_args = build_lenet(pool), 28, {"lr": 0.01}
        secure_module(net, party, owner=0)
        net.train(train)
        x = torch.rand(n, 1, side, side, generator=g)
        y = F.one_hot(torch.randint(0, 10, (n,), generator=g), 10).float()
        opt = torch.optim.SGD(net.parameters(), **opt_args)

        def run():
            xs = share_tensor(x if owner else None, 0, party)
            if not train:
                with torch.no_grad():
                    out = net(xs)
                check()
                reveal_tensor(out, to=0)
                return
            ys = share_tensor(y if owner else None, 0, party, label="labels")
            opt.zero_grad()
            loss = F.cross_entropy(net(xs), ys)
            check()
            reveal_tensor(loss.detach(), label="loss")
            loss.backward()
            opt.step()
            check()

    for _ in range(warmup):
        run()
    _barrier()
    reset_peak_memory()
    t0 = time.perf_counter()
    with party.comm.cost() as c:
        run()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, **_cost_dict(c), "peak_rss_mib": peak_memory_mib()["rss"]}


class TaskRunner:
    """Runs tasks against the `secure_lightning` this process imports: three party processes per task, kept for the
    task's repeats and replaced by fresh ones when the next task starts (or, given `pool`, that PartyPool for all)."""

    label = "new"

    def __init__(self, timeout: float = 1200, pool=None):
        self.timeout, self.pool, self.task, self.shared = timeout, pool, None, pool is not None

    def run(self, name: str, size: int | None = None, warmup: int = 0) -> list[dict]:
        """One timed run of `name` (after `warmup` untimed ones): the three parties' results."""
        from secure_lightning.runtime import PartyPool
        from benchmarks import peers as this  # pickled by reference, not as __main__
        if not self.shared and (self.pool is None or self.task != (name, size)):
            self.close()
            self.pool, self.task = PartyPool(timeout=self.timeout), (name, size)
            self.pool.start()
        return self.pool.run(this.task_job, name, size, warmup, timeout=self.timeout)

    def close(self):
        if self.pool is not None and not self.shared:
            self.pool.close()
            self.pool = None


def summarize(runs: list[list[dict]]) -> dict:
    """Per-repeat party results -> one row: median slowest-party time, bytes (total, per party), rounds, peak RSS."""
    last = runs[-1]
    slowest = [max(p["seconds"] for p in r) for r in runs]
    costs = {(tuple(p["bytes"] for p in r), max(p["rounds"] for p in r)) for r in runs}
    return {"seconds": statistics.median(slowest), "seconds_repeats": slowest,
            "bytes_total": sum(p["bytes"] for p in last), "bytes_per_party": [p["bytes"] for p in last],
            "rounds": max(p["rounds"] for p in last), "messages_total": sum(p["messages"] for p in last),
            "peak_rss_mib_per_party": [max(r[i]["peak_rss_mib"] for r in runs) for i in range(3)],
            "cost_varies": len(costs) > 1}


# ----------------------------------------------------------------------------------------------------------------
# Sides: this process, or a `--serve` process per side for --vs

class ServeSide:
    """A `python -m benchmarks.peers --serve` process whose `secure_lightning` is the one in `package_root` (checked;
    this tree's benchmarks/ and models/ serve both sides); JSON requests on stdin, one JSON line back."""

    TAG = "@peers-result "

    def __init__(self, label: str, package_root: Path | None):
        self.label = label
        root = Path(package_root or REPO)
        # `python -m` puts its working directory first on sys.path: run in the package's folder so that its
        # secure_lightning is the one imported (benchmarks/ and models/ then come from this tree via PYTHONPATH)
        env = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(root), str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")]
                                                                         if p]))
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.peers", "--serve"], cwd=str(root), env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.package = self._ask({"op": "where"})
        if Path(self.package).resolve() != (root / "secure_lightning").resolve():
            self.close()
            raise RuntimeError(f"{label} side imported {self.package}, not {root / 'secure_lightning'}")

    def _ask(self, req: dict):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(self.TAG):
                got = json.loads(line[len(self.TAG):])
                if "error" in got:
                    raise RuntimeError(f"{self.label} side: {got['error']}")
                return got["result"]
            sys.stderr.write(line)
        raise RuntimeError(f"{self.label} side ended (exit code {self.proc.wait()})")

    def run(self, name: str, size: int | None, warmup: int) -> list[dict]:
        return self._ask({"op": "run", "name": name, "size": size, "warmup": warmup})

    def close(self):
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def serve():
    """--serve: answer requests from stdin until it closes (see ServeSide)."""
    runner = TaskRunner()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["op"] == "where":
                import secure_lightning
                result = str(Path(secure_lightning.__file__).parent)
            else:
                result = runner.run(req["name"], req["size"], req["warmup"])
            out = {"result": result}
        except Exception as e:
            out = {"error": f"{type(e).__name__}: {e}"}
        print(ServeSide.TAG + json.dumps(out), flush=True)
    runner.close()


@contextlib.contextmanager
def materialize(commit: str):
    """That commit's secure_lightning/ in a temporary folder (git archive): yields the folder to put on sys.path."""
    with tempfile.TemporaryDirectory(prefix="peers-old-") as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "secure_lightning"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield Path(tmp)


def measure(names: list[str], sides: list, repeats: int, warmup: int, size: int | None = None,
            log=print, sizes: dict | None = None) -> dict:
    """{side label: {task: row}}; for each task, repeat r runs every side once, the side order alternating.
    `size` overrides every task's batch / matrix size, `sizes` single tasks'."""
    out = {s.label: {} for s in sides}
    for name in names:
        runs = {s.label: [] for s in sides}
        n = (sizes or {}).get(name, size)
        for r in range(repeats):
            for s in (sides if r % 2 == 0 else sides[::-1]):
                runs[s.label].append(s.run(name, n, warmup if r == 0 else 0))
        for s in sides:
            out[s.label][name] = summarize(runs[s.label])
            row = out[s.label][name]
            log(f"[peers] {s.label} {name}: {row['seconds']:.3f} s, {row['bytes_total'] / 1e6:.2f} MB, "
                f"{row['rounds']} rounds")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Tables

def _mib(row) -> str:
    return "/".join(f"{m:.0f}" for m in row["peak_rss_mib_per_party"])


def _secs(row) -> str:
    """median (min-max over repeats)"""
    r = row["seconds_repeats"]
    return f"{row['seconds']:.3g}" + (f" ({min(r):.3g}-{max(r):.3g})" if len(r) > 1 else "")


def _vs_peer(ours: float, peer: float) -> str:
    return f"{ours / peer:.2f}x {'ok' if ours <= peer else 'over'}"


def peer_table(rows: dict) -> list[str]:
    lines = ["| task | peer time (s) | peer comm (MB) | ours time (s) | ours comm (MB) | rounds | peak RSS P0/P1/P2 "
             "(MiB) | time vs peer | comm vs peer |", "|" + "---|" * 9]
    for name, row in rows.items():
        if name not in PEERS:
            lines.append(f"| {name} | - | - | {_secs(row)} | {row['bytes_total'] / 1e6:.3f} | {row['rounds']} | "
                         f"{_mib(row)} | - | - |")
            continue
        pt, pb = PEERS[name]
        lines.append(f"| {name} | {pt:g} | {pb / 1e6:g} | {_secs(row)} | {row['bytes_total'] / 1e6:.3f} | "
                     f"{row['rounds']} | {_mib(row)} | {_vs_peer(row['seconds'], pt)} | "
                     f"{_vs_peer(row['bytes_total'], pb)} |")
    return lines


def vs_table(old: dict, new: dict) -> list[str]:
    lines = ["| task | old time (s) | new time (s) | old/new time | old comm (MB) | new comm (MB) | old/new comm | "
             "old rounds | new rounds | old/new rounds | old peak RSS (MiB) | new peak RSS (MiB) |", "|" + "---|" * 12]
    for name, n in new.items():
        o = old[name]
        lines.append(f"| {name} | {_secs(o)} | {_secs(n)} | {o['seconds'] / n['seconds']:.2f} | "
                     f"{o['bytes_total'] / 1e6:.3f} | {n['bytes_total'] / 1e6:.3f} | "
                     f"{o['bytes_total'] / n['bytes_total']:.2f} | {o['rounds']} | {n['rounds']} | "
                     f"{o['rounds'] / n['rounds']:.2f} | {_mib(o)} | {_mib(n)} |")
    return lines


def markdown(result: dict) -> str:
    meta, new = result["meta"], result["sides"]["new"]
    m = meta["machine"]
    peers = any(name in PEERS for name in new)
    title = "# Three-party LeNet and matmul: ours beside the best peer" if peers else \
        f"# {', '.join(new)}: this tree" + (f" beside {meta['vs']}" if meta.get("vs") else "")
    lines = [title, "",
             f"Machine: {m['cpu']}, {m['cores_usable']} usable cores, {m['memory_gib']} GiB; torch {m['torch']}; "
             f"commit {m.get('git_commit')}; {meta['repeats']} repeats (+{meta['warmup']} warm-up) per task; "
             f"load average {meta['load_avg_start']} at the start, {meta['load_avg_end']} at the end.", "",
             "Timed: share the input (and labels) from party 0 + run + open the output to party 0 (or the loss to "
             "all; matmul: operands shared before the clock, product + opening), slowest party, median (min-max) "
             "over repeats; comm: bytes sent by the three parties together (MB = 10^6 B); rounds: "
             "sequential exchanges; peak RSS: VmHWM of each party process during the timed run. "
             + ("Target: at or below the best peer on time and comm (ratio ours/peer, `ok` when <= 1). " if peers
                else "") + "Loopback, parties on 2 shared cores.", ""] + peer_table(new)
    if "old" in result["sides"]:
        old = result["sides"]["old"]
        lines += ["", f"## {meta['vs']} (old) vs this tree (new)", "",
                  f"Old package: `secure_lightning` of {meta['vs']}, same task code, its own processes; repeats "
                  "interleaved old/new. Ratios above 1: the new tree is faster / sends less.", ""] + vs_table(old, new)
    if peers:
        lines += ["", "Issue figures at 67a368b (s / MB / rounds): " + "; ".join(
            f"{k} {t:g} / {b / 1e6:g} / {r}" for k, (t, b, r) in ISSUE_67A368B.items())]
    lines += [""]
    if meta.get("note"):
        lines += [meta["note"], ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Main

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per task (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before the first repeat of a task")
    ap.add_argument("--tasks", default=None, help=f"comma-separated subset of: {', '.join(TASKS)}")
    ap.add_argument("--size", type=int, default=None, help="override every task's batch / matrix size (tests)")
    ap.add_argument("--vs", default=None, metavar="COMMIT", help="also run COMMIT's secure_lightning, interleaved")
    ap.add_argument("--out", default=os.path.join("results", "peers"), help="output path without extension")
    ap.add_argument("--note", default=None, help="a line added to the Markdown (e.g. the machine's load)")
    ap.add_argument("--render", default=None, metavar="JSON", help="only rewrite the .md beside a results JSON")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        return serve()
    if args.render:
        src = Path(args.render)
        result = json.loads(src.read_text())
        if args.note:  # kept in the JSON too, so a later --render keeps it
            result["meta"]["note"] = args.note
            src.write_text(json.dumps(result, indent=1))
        src.with_suffix(".md").write_text(markdown(result))
        return result
    names = args.tasks.split(",") if args.tasks else list(PEERS)
    if unknown := [n for n in names if n not in TASKS]:
        raise SystemExit(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--repeats must be >= 1 and --warmup >= 0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    meta = {"repeats": args.repeats, "warmup": args.warmup, "size": args.size, "vs": args.vs, "note": args.note,
            "machine": machine_info(), "load_avg_start": round(os.getloadavg()[0], 2)}
    with contextlib.ExitStack() as stack:
        if args.vs:
            old_root = stack.enter_context(materialize(args.vs))
            sides = [ServeSide("old", old_root), ServeSide("new", None)]
            # which package each side imported (checked in ServeSide), recorded without this machine's paths
            meta["packages"] = {"old": f"secure_lightning of {args.vs} (git archive)",
                                "new": "secure_lightning of this tree"}
        else:
            sides = [TaskRunner()]
        for s in sides:
            stack.callback(s.close)
        result = {"meta": meta, "sides": measure(names, sides, args.repeats, args.warmup, args.size)}
    meta["load_avg_end"] = round(os.getloadavg()[0], 2)
    text = markdown(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        print(f"[peers] wrote {out.with_suffix('.md')}, {out.with_suffix('.json')}")
    return result


if __name__ == "__main__":
    main()
