"""End-to-end benchmarks of private inference and training, after the CryptGPU paper's experiments.

    python -m benchmarks.run --exp inference_all|train_all|inference_plain|train_plain|ops|crypten|quick
                             [--quick] [--net none|lan|wan] [--repeats N] [--warmup N] [--per-layer] [--out results/]

Networks and batch sizes are the paper's (jeffreysijuntan/CryptGPU scripts/benchmark.py): LeNet on MNIST shape
(1x28x28), AlexNet and VGG16 on CIFAR-10 (3x32x32) and Tiny-ImageNet (3x64x64), ResNet-50/101/152 on ImageNet
(3x224x224). Inference uses batch 1; training one SGD step at batch 128, 128, 32, 128, 8 (LeNet, AlexNet-C10, VGG16-C10,
AlexNet-TinyImageNet, VGG16-TinyImageNet). Inputs and weights are random: only time and communication are measured.

What one secure case does, in each of the three parties: build the plain network, `secure_module` it (party 0 owns
the weights), share a random input batch from party 0 (and, for training, one-hot labels from party 0), then time
`warmup + repeats` steps. A step is a forward pass (inference, under no_grad) or forward + cross-entropy + backward +
SGD step (training). Sharing the model and the input is set-up and is reported apart (setup_s), not in the step.

Reported per case (see `COLUMNS`): the median over repeats of the slowest party's step time (a barrier starts every
step), bytes sent by each party in one step and their total, communication rounds (sequential exchanges, the same
for every party), messages, peak resident memory per party during the case (VmHWM, reset at the start of the case),
the plaintext time of the same network and batch in this process (torch with `--plain-threads` threads, 1 by default
because each party also runs on one thread) and the slowdown secure/plain.

`--net lan|wan` runs the parties in network namespaces on a bridge shaped by tc tbf (benchmarks/netns.py); there is
no latency emulation in this kernel, so `modeled_s = secure_s + rounds * RTT` is reported beside the measured time.
Without `--net`, `est_lan_s` / `est_wan_s` add both terms analytically to the loopback time: rounds * RTT +
(bytes of the busiest party * 8 / link rate).

`--exp quick` (or `--quick` alone): LeNet inference, AlexNet-CIFAR-10 inference and one LeNet training step at batch 8,
a few minutes on 2 cores; `--quick` with another experiment keeps that experiment's part of this subset.
`--exp crypten`: the same cases under CrypTen too (benchmarks/crypten/, needs `bash benchmarks/crypten/setup.sh`).
`--exp ops`: benchmarks/ops.py (per-protocol microbenchmarks). `--render results/X.json` rewrites X.md/.csv/.png.
Outputs: <out>/<exp>[_quick][_lan|_wan].md (table, machine, units), .csv, .json (all fields, meta, column meanings),
.png (time and communication per network) and, with --per-layer, _layers.csv.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------------------------------------------
# Experiments

DATASETS = {  # name: (input shape CxHxW, classes)
    "mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "tinyimagenet": ((3, 64, 64), 200),
    "imagenet": ((3, 224, 224), 1000),
}
NETS = ("lenet", "alexnet", "vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@dataclass(frozen=True)
class Case:
    net: str
    dataset: str
    mode: str   # "inference" or "train"
    batch: int

    @property
    def key(self) -> str:
        return f"{self.net}-{self.dataset}-{self.mode}-b{self.batch}"

    @property
    def shape(self) -> tuple:
        return DATASETS[self.dataset][0]

    @property
    def classes(self) -> int:
        return DATASETS[self.dataset][1]


INFERENCE_ALL = [Case("lenet", "mnist", "inference", 1),
                 Case("alexnet", "cifar10", "inference", 1), Case("vgg16", "cifar10", "inference", 1),
                 Case("alexnet", "tinyimagenet", "inference", 1), Case("vgg16", "tinyimagenet", "inference", 1),
                 Case("resnet50", "imagenet", "inference", 1), Case("resnet101", "imagenet", "inference", 1),
                 Case("resnet152", "imagenet", "inference", 1)]
TRAIN_ALL = [Case("lenet", "mnist", "train", 128),
             Case("alexnet", "cifar10", "train", 128), Case("vgg16", "cifar10", "train", 32),
             Case("alexnet", "tinyimagenet", "train", 128), Case("vgg16", "tinyimagenet", "train", 8)]
# --quick: a few minutes on 2 cores
QUICK_INFERENCE = [Case("lenet", "mnist", "inference", 1), Case("alexnet", "cifar10", "inference", 1)]
QUICK_TRAIN = [Case("lenet", "mnist", "train", 8)]

EXPERIMENTS = ("quick", "inference_all", "train_all", "inference_plain", "train_plain", "ops", "crypten")


def cases_for(exp: str, quick: bool) -> list[Case]:
    if exp == "quick":
        return QUICK_INFERENCE + QUICK_TRAIN
    if exp in ("inference_all", "inference_plain"):
        return QUICK_INFERENCE if quick else INFERENCE_ALL
    if exp in ("train_all", "train_plain"):
        return QUICK_TRAIN if quick else TRAIN_ALL
    if exp == "crypten":
        return QUICK_INFERENCE + QUICK_TRAIN if quick else INFERENCE_ALL + TRAIN_ALL
    raise ValueError(f"no cases for experiment {exp!r}")


def build_net(net: str, dataset: str) -> torch.nn.Module:
    """The plain network of the paper for `dataset`'s input shape (models/nets.py)."""
    import models.nets as nets
    (c, h, _w), k = DATASETS[dataset]
    if net == "lenet":
        return nets.LeNet(in_channels=c, num_classes=k, image_size=h)
    if net == "alexnet":
        return nets.AlexNet(num_classes=k, image_size=h, in_channels=c)
    if net == "vgg16":
        return nets.VGG16(num_classes=k, image_size=h, in_channels=c)
    if net.startswith("resnet") and hasattr(nets, net):
        return getattr(nets, net)(num_classes=k, in_channels=c, stem_pool="avg" if h >= 64 else "none")
    raise ValueError(f"unknown network {net!r}; choose from {', '.join(NETS)}")


def random_batch(case: Case, seed: int = 0):
    """Public random test data (a torch.Generator, not the parties' PRGs): inputs in [0, 1), labels in [0, classes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((case.batch, *case.shape), generator=g)
    y = torch.randint(0, case.classes, (case.batch,), generator=g)
    return x, y


# ----------------------------------------------------------------------------------------------------------------
# Memory

def reset_peak_memory(device=None):
    """Reset this process's peak RSS (Linux: /proc/self/clear_refs 5) and the CUDA peak counter."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device=None) -> dict:
    """{'rss': peak resident MiB since the last reset, 'cuda': peak CUDA MiB allocated or None}."""
    rss = None
    with contextlib.suppress(OSError):
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 1024
    if rss is None:
        import resource
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda = None
    if device is not None and torch.device(device).type == "cuda":
        cuda = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return {"rss": rss, "cuda": cuda}


# ----------------------------------------------------------------------------------------------------------------
# Party side (runs in each of the three party processes)

def _barrier():
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()


def _cost_dict(c) -> dict:
    return {"bytes": int(c.bytes), "rounds": int(c.rounds), "messages": int(c.messages)}


def _by_top_label(by_label: dict, depth: int = 1) -> dict:
    out = defaultdict(lambda: [0, 0])
    for k, c in by_label.items():
        top = "/".join(k.split("/")[:depth])
        out[top][0] += int(c.bytes)
        out[top][1] += int(c.rounds)
    return {k: {"bytes": v[0], "rounds": v[1]} for k, v in out.items()}


def _loss_fn(out, y_onehot):
    """Mean cross-entropy against one-hot targets: what the paper trains with (labels shared as one-hot)."""
    return F.cross_entropy(out, y_onehot)


class _LayerProfiler:
    """Forward hooks on leaf modules: time per call (this party's clock) and a `layer:<name>` comm label, so
    `comm.cost().by_label` splits communication by layer. Backward, loss and optimizer traffic stays unlabelled."""

    def __init__(self, model, party):
        self.party, self.handles = party, []
        self.rows: dict[str, dict] = {}
        self._stack = defaultdict(list)
        for name, m in model.named_modules():
            if name and next(m.children(), None) is None:
                self.rows[name] = {"layer": name, "type": type(m).__name__, "calls": 0, "time_s": 0.0,
                                   "bytes": 0, "rounds": 0}
                self.handles.append(m.register_forward_pre_hook(self._pre(name)))
                self.handles.append(m.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(mod, args):
            cm = self.party.label(f"layer:{name}")
            cm.__enter__()
            self._stack[name].append((cm, time.perf_counter()))
        return hook

    def _post(self, name):
        def hook(mod, args, out):
            cm, t0 = self._stack[name].pop()
            self.rows[name]["time_s"] += time.perf_counter() - t0
            self.rows[name]["calls"] += 1
            cm.__exit__(None, None, None)
        return hook

    def finish(self, by_label: dict, total_time: float) -> list[dict]:
        for h in self.handles:
            h.remove()
        other = {"layer": "(outside forward layers: loss, backward, optimizer)", "type": "", "calls": 1,
                 "time_s": total_time - sum(r["time_s"] for r in self.rows.values()), "bytes": 0, "rounds": 0}
        for label, c in by_label.items():
            layer = next((p[len("layer:"):] for p in label.split("/") if p.startswith("layer:")), None)
            row = self.rows.get(layer, other)
            row["bytes"] += int(c.bytes)
            row["rounds"] += int(c.rounds)
        rows = [r for r in self.rows.values() if r["calls"]]
        return rows + [other]


def bench_case(party, case: dict, opts: dict) -> dict:
    """Run one benchmark case in this party; returns its timings, communication and memory (see module doc)."""
    from secure_lightning.nn import secure_module
    from secure_lightning.tensor import share_tensor

    case = Case(**case)
    rank = party.rank
    reset_peak_memory(party.device)
    torch.manual_seed(1234)  # plain init of the public architecture; parties 1, 2's values are ignored by sharing
    model = build_net(case.net, case.dataset)
    train = case.mode == "train"
    model.train(train)
    x, y = random_batch(case)
    t_setup = time.perf_counter()
    with party.comm.cost() as setup_cost:
        secure_module(model, party, owner=0)
        xs = share_tensor(x if rank == 0 else None, 0, party, label="input")
        ys = None
        if train:
            onehot = F.one_hot(y, case.classes).float()
            ys = share_tensor(onehot if rank == 0 else None, 0, party, label="labels")
    setup_s = time.perf_counter() - t_setup
    opt = torch.optim.SGD(model.parameters(), lr=opts.get("lr", 0.01)) if train else None

    def step():
        if train:
            opt.zero_grad()
            loss = _loss_fn(model(xs), ys)
            loss.backward()
            opt.step()
        else:
            with torch.no_grad():
                model(xs)

    times, costs, by_label = [], [], {}
    for i in range(opts["warmup"] + opts["repeats"]):
        _barrier()
        t0 = time.perf_counter()
        with party.comm.cost() as c:
            step()
        dt = time.perf_counter() - t0
        if i >= opts["warmup"]:
            times.append(dt)
            costs.append(_cost_dict(c.total))
            by_label = c.by_label
    layers = None
    if opts.get("per_layer"):
        prof = _LayerProfiler(model, party)
        _barrier()
        t0 = time.perf_counter()
        with party.comm.cost() as c:
            step()
        layers = prof.finish(c.by_label, time.perf_counter() - t0)
    mem = peak_memory_mib(party.device)
    return {"rank": rank, "times": times, "cost": costs[-1] if costs else None,
            "cost_varies": any(c != costs[0] for c in costs), "by_label": _by_top_label(by_label),
            "setup_s": setup_s, "setup_cost": _cost_dict(setup_cost.total), "peak_rss_mib": mem["rss"],
            "peak_cuda_mib": mem["cuda"], "layers": layers, "device": str(party.device),
            "insecure_prg": bool(getattr(party, "insecure_prg", False))}


# ----------------------------------------------------------------------------------------------------------------
# Plaintext

PLAIN_MIN_S = 0.05


def plain_case(case: Case, warmup: int, repeats: int, threads: int, device: str = "cpu") -> dict:
    """Median time of the same network and batch in plaintext torch (float32)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(1234)
        model = build_net(case.net, case.dataset).to(device)
        train = case.mode == "train"
        model.train(train)
        x, y = random_batch(case)
        x, y = x.to(device), y.to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01) if train else None
        sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

        def step():
            if train:
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            else:
                with torch.no_grad():
                    model(x)

        def timed(n: int) -> float:
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            sync()
            return (time.perf_counter() - t0) / n

        t_first = timed(1)
        for _ in range(warmup):
            t_first = timed(1)
        # tiny networks take microseconds: time loops of n steps lasting >= PLAIN_MIN_S, median of >= 5 loops
        n = max(1, math.ceil(PLAIN_MIN_S / max(t_first, 1e-7)))
        times = [timed(n) for _ in range(max(repeats, 5 if n > 1 else 1))]
        return {"plain_s": statistics.median(times), "plain_threads": threads, "plain_loops": n}
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------------------------------------------
# Drivers: loopback (PartyPool) and network namespaces (one process per namespace)

def _case_timeout(opts) -> float:
    return float(opts.get("case_timeout", 3600))


def run_secure_loopback(cases: list[Case], opts: dict, on_result):
    """All cases in one PartyPool (three processes on 127.0.0.1); a failed case restarts the pool."""
    from secure_lightning.runtime import PartyError, PartyPool
    from benchmarks import run as this  # pickled by reference, not as __main__
    pool = PartyPool(timeout=float(opts.get("comm_timeout", 600)),
                     insecure_fast_prg=bool(opts.get("insecure_fast_prg")))
    try:
        for case in cases:
            try:
                res = pool.run(this.bench_case, asdict(case), opts, timeout=_case_timeout(opts))
                on_result(case, res, None)
            except PartyError as e:
                on_result(case, None, str(e))
    finally:
        pool.close()


def run_secure_netns(cases: list[Case], opts: dict, profile: str, on_result) -> str:
    """Each case: three fresh `python -m benchmarks.run --worker` processes, one per namespace."""
    from benchmarks import netns
    with netns.PartyNetwork(profile) as net, tempfile.TemporaryDirectory(prefix="slbench") as tmp:
        for k, case in enumerate(cases):
            spec = Path(tmp, f"case{k}.json")
            spec.write_text(json.dumps({"case": asdict(case), "opts": opts}))
            procs, outs, logs = [], [], []
            for r in range(3):
                out = Path(tmp, f"case{k}_p{r}.json")
                log = open(Path(tmp, f"case{k}_p{r}.log"), "w")
                env = dict(os.environ, **net.env(r), MASTER_PORT=str(29500 + k % 1000),
                           PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                           OMP_NUM_THREADS="1")
                cmd = net.exec_prefix(r) + [sys.executable, "-m", "benchmarks.run", "--worker", str(spec),
                                            "--worker-out", str(out)]
                procs.append(subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT))
                outs.append(out)
                logs.append(log)
            deadline = time.monotonic() + _case_timeout(opts) + 120
            for p in procs:
                try:
                    p.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            for lg in logs:
                lg.close()
            results, errors = [], []
            for r, out in enumerate(outs):
                got = json.loads(out.read_text()) if out.exists() else {"error": "no result (killed or crashed)"}
                if "error" in got:
                    tail = Path(tmp, f"case{k}_p{r}.log").read_text()[-2000:]
                    errors.append(f"--- party {r}: {got['error']}\n{tail}")
                results.append(got)
            on_result(case, None if errors else results, "\n".join(errors) or None)
        return net.describe(), _qdisc_summary(net.qdisc_stats())


def _qdisc_summary(stats: dict) -> dict:
    """{party: "sent N bytes, dropped D"} from `tc -s qdisc` text: evidence the traffic crossed the shaped links."""
    import re
    out = {}
    for r, text in stats.items():
        m = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)", text)
        out[r] = (f"tbf sent {int(m.group(1)) / 1e6:.1f} MB in {m.group(2)} packets, dropped {m.group(3)}, "
                  f"overlimits {m.group(4)}") if m else text.strip()[:200]
    return out


def worker_main(spec_path: str, out_path: str):
    """One party in a namespace: connect_from_env (RANK, MASTER_ADDR, MASTER_PORT), run one case, write JSON."""
    spec = json.loads(Path(spec_path).read_text())
    opts = spec["opts"]
    try:
        from secure_lightning.runtime import connect_from_env
        party = connect_from_env(timeout=float(opts.get("comm_timeout", 600)),
                                 insecure_fast_prg=bool(opts.get("insecure_fast_prg")))
        res = bench_case(party, spec["case"], opts)
    except BaseException as e:
        res = {"error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
    Path(out_path).write_text(json.dumps(res))
    with contextlib.suppress(Exception):
        import torch.distributed as dist
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------
# Aggregation and output

COLUMNS = {  # CSV/JSON field: meaning (units)
    "net": "network", "dataset": "dataset whose input shape is used", "input": "input shape CxHxW",
    "mode": "inference (forward) or train (forward+backward+SGD step)", "batch": "batch size",
    "status": "ok, or the error",
    "secure_s": "median over repeats of the slowest party's step time (s)",
    "secure_min_s": "fastest repeat (s)", "secure_max_s": "slowest repeat (s)",
    "plain_s": "plaintext float32 torch, same network and batch: median of >= 3 loops of >= 50 ms after >= 1 warm-up (s)",
    "slowdown": "secure_s / plain_s",
    "bytes_p0": "bytes sent by party 0 in one step", "bytes_p1": "bytes sent by party 1",
    "bytes_p2": "bytes sent by party 2", "bytes_max_party": "max over parties of bytes sent (per party)",
    "bytes_total": "bytes sent by all three parties together",
    "rounds": "communication rounds in one step (sequential exchanges, same on every party)",
    "messages_total": "point-to-point messages sent, all parties",
    "peak_rss_mib": "max over parties of peak resident memory during the case (MiB, includes the torch runtime)",
    "peak_rss_mib_parties": "peak resident memory per party (MiB), P0/P1/P2",
    "peak_cuda_mib": "max over parties of peak CUDA memory allocated (MiB), GPU runs only",
    "setup_s": "sharing the model and the input (s), not in secure_s",
    "setup_bytes_total": "bytes of the set-up, all parties",
    "net_mode": "none (loopback), lan or wan (namespaces + tbf)", "rtt_ms": "RTT charged per round (ms)",
    "modeled_s": "lan/wan: secure_s + rounds x RTT (latency is not emulated in this kernel)",
    "est_lan_s": "loopback runs: secure_s + rounds x 0.2 ms + bytes_max_party x 8 / 10 Gbit/s",
    "est_wan_s": "loopback runs: secure_s + rounds x 40 ms + bytes_max_party x 8 / 100 Mbit/s",
    "repeats": "timed steps", "warmup": "untimed steps before them",
    "crypten_s": "--exp crypten: CrypTen 0.4.1, same network and batch, median slowest-party step (s)",
    "crypten_vs_ours": "crypten_s / secure_s (above 1: we are faster)",
    "crypten_bytes_p0": "bytes party 0 sent, as CrypTen counts (8 per element per send)",
    "crypten_bytes_total": "the same summed over the three parties", "crypten_rounds": "CrypTen's round counter",
}


def aggregate(case: Case, results: list | None, error: str | None, net_mode: str, opts: dict) -> dict:
    from benchmarks.netns import PROFILES
    row = {"net": case.net, "dataset": case.dataset, "input": "x".join(map(str, case.shape)), "mode": case.mode,
           "batch": case.batch, "net_mode": net_mode, "repeats": opts["repeats"], "warmup": opts["warmup"]}
    if error is not None:
        import re
        m = re.search(r"^--- party \d: (.+)$", error, re.M)
        first = m.group(1) if m else next((ln for ln in error.strip().splitlines() if ln.strip()), "")
        row["status"] = "error: " + first[:300]
        row["error_detail"] = error[-4000:]
        return row
    per_repeat = [max(r["times"][i] for r in results) for i in range(len(results[0]["times"]))]
    costs = [r["cost"] for r in results]
    row.update({
        "status": "ok",
        "secure_s": statistics.median(per_repeat), "secure_min_s": min(per_repeat), "secure_max_s": max(per_repeat),
        "bytes_p0": costs[0]["bytes"], "bytes_p1": costs[1]["bytes"], "bytes_p2": costs[2]["bytes"],
        "bytes_max_party": max(c["bytes"] for c in costs), "bytes_total": sum(c["bytes"] for c in costs),
        "rounds": max(c["rounds"] for c in costs), "messages_total": sum(c["messages"] for c in costs),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
        "peak_rss_mib_parties": "/".join(f"{r['peak_rss_mib']:.0f}" for r in results),
        "peak_cuda_mib": max((r["peak_cuda_mib"] or 0) for r in results) or None,
        "setup_s": max(r["setup_s"] for r in results),
        "setup_bytes_total": sum(r["setup_cost"]["bytes"] for r in results),
        "device": results[0]["device"], "insecure_prg": results[0]["insecure_prg"],
        "comm_by_label_p0": results[0]["by_label"],
    })
    if any(r["cost_varies"] for r in results):
        row["note"] = "communication differed between repeats (last repeat reported)"
    if net_mode in PROFILES:
        p = PROFILES[net_mode]
        row["rtt_ms"] = p.rtt_s * 1e3
        row["modeled_s"] = row["secure_s"] + row["rounds"] * p.rtt_s
    else:
        for name, p in PROFILES.items():
            row[f"est_{name}_s"] = row["secure_s"] + row["rounds"] * p.rtt_s + row["bytes_max_party"] * 8 / p.rate_bps
    if results[0].get("layers") is not None:
        row["layers_p0"] = results[0]["layers"]
    return row


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2 ** 20, 1)
    info = {"cpu": cpu, "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": mem_gib, "torch": torch.__version__, "python": platform.python_version(),
            "os": platform.platform(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "secure_lightning", "models"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if info["git_commit"] and dirty:
            info["git_commit"] += " + uncommitted changes"
    return info


def _fmt_s(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3g}"


def _fmt_mb(v) -> str:
    return "-" if v is None else f"{v / 1e6:.4g}"


def _fmt_x(v) -> str:
    return "-" if v is None else f"{v:,.0f}x" if v >= 10 else f"{v:.3g}x"


def markdown(rows: list[dict], meta: dict) -> str:
    m = meta["machine"]
    net_mode = meta["net_mode"]
    quick = " (quick)" if meta["quick"] and meta["exp"] != "quick" else ""
    lines = [f"# secure_lightning benchmark: {meta['exp']}{quick}, network: {net_mode}",
             "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), {m['memory_gib']} GiB RAM, "
             f"torch {m['torch']}, Python {m['python']}" + (f", GPU {m['gpu']}" if m.get("gpu") else "") +
             f"; {m['date']}" + (f", commit {m['git_commit']}" if m.get("git_commit") else "") +
             (f"; load average (1 min) {m['load_avg_1m']} at start, {meta['load_avg_end']} at end"
              if m.get("load_avg_1m") is not None and meta.get("load_avg_end") is not None else "") + ".",
             (f"Parties: 3 processes on this machine, one torch thread each; {meta['transport']}. "
              if not meta["exp"].endswith("_plain") else "") +
             f"Timing: median of {meta['repeats']} steps after {meta['warmup']} warm-up, slowest party; "
             f"plaintext: float32 torch, {meta['plain_threads']} thread(s), median of >= 3 timed loops."
             + (" PRG: INSECURE fast torch generator (--insecure-fast-prg)." if meta.get("insecure_fast_prg") else
                " PRG: AES-128-CTR."),
             ""]
    secure = meta["exp"] not in ("inference_plain", "train_plain")
    if secure:
        head = ["Network", "Input", "Mode", "Batch", "Secure (s)", "Plain (s)", "Slowdown",
                "Comm/party max (MB)", "Comm total (MB)", "Rounds", "Peak RSS/party max (MiB)"]
        if net_mode in ("lan", "wan"):
            head.insert(5, f"Modeled +RTT (s)")
        else:
            head.insert(5, "Est. LAN (s)")
            head.insert(6, "Est. WAN (s)")
    else:
        head = ["Network", "Input", "Mode", "Batch", "Plain (s)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for r in rows:
        base = [r["net"], f"{r['dataset']} {r['input']}", r["mode"], str(r["batch"])]
        if not secure:
            lines.append("| " + " | ".join(base + [_fmt_s(r.get("plain_s"))]) + " |")
            continue
        if r.get("status") != "ok":
            cells = base + [r.get("status", "?")] + ["-"] * (len(head) - 5)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells = base + [_fmt_s(r["secure_s"])]
        if net_mode in ("lan", "wan"):
            cells.append(_fmt_s(r["modeled_s"]))
        else:
            cells += [_fmt_s(r["est_lan_s"]), _fmt_s(r["est_wan_s"])]
        cells += [_fmt_s(r.get("plain_s")), _fmt_x(r.get("slowdown")), _fmt_mb(r["bytes_max_party"]),
                  _fmt_mb(r["bytes_total"]), f"{r['rounds']:,}", f"{r['peak_rss_mib']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
        if r.get("note"):
            notes.append(f"{r['net']} {r['dataset']} {r['mode']}: {r['note']}")
    lines.append("")
    if secure:
        lines += ["Units: seconds per step (one forward pass for inference; forward + loss + backward + SGD update "
                  "for training). MB = 10^6 bytes sent in one step: *per party* is the busiest party's sends, "
                  "*total* is the sum over the three parties. Rounds: sequential message exchanges in one step. "
                  "Peak RSS: resident memory of the busiest party process, torch runtime included.",
                  ""]
        if net_mode in ("lan", "wan"):
            lines += [f"Network: {meta.get('net_description', '')}. Modeled = measured + rounds x RTT.", ""]
            if meta.get("qdisc"):
                lines += ["Shaped links over the whole run (tc -s qdisc): " + "; ".join(
                    f"P{r}: {v}" for r, v in sorted(meta["qdisc"].items())) + ".", ""]
        else:
            lines += ["Est. LAN / WAN: loopback time + rounds x RTT + per-party bytes x 8 / rate, with LAN = 10 Gbit/s, "
                      "0.2 ms RTT and WAN = 100 Mbit/s, 40 ms RTT (a model, not a measurement).", ""]
    lines += [f"- {n}" for n in notes]
    op_rows = [r for r in rows if r.get("comm_by_label_p0")]
    if op_rows:
        lines += ["", "## Communication by operation (party 0, one step: MB sent / rounds)", ""]
        for r in op_rows:
            parts = sorted(r["comm_by_label_p0"].items(), key=lambda kv: -kv[1]["bytes"])
            lines.append(f"- {r['net']} {r['dataset']} {r['mode']} b{r['batch']}: " + "; ".join(
                f"{k} {v['bytes'] / 1e6:.3g} / {v['rounds']}" for k, v in parts))
    if meta["exp"] == "crypten":
        lines += ["", "## Comparison with CrypTen", "", meta.get("crypten", ""), ""]
        if any(r.get("crypten_s") for r in rows):
            lines += ["| Network | Input | Mode | Batch | Ours (s) | CrypTen (s) | CrypTen / ours | Ours total (MB) | "
                      "CrypTen total (MB) | Ours rounds | CrypTen rounds |", "|" + "---|" * 11]
            for r in rows:
                lines.append("| " + " | ".join([
                    r["net"], f"{r['dataset']} {r['input']}", r["mode"], str(r["batch"]), _fmt_s(r.get("secure_s")),
                    _fmt_s(r.get("crypten_s")) if r.get("crypten_s") else r.get("crypten_status", "-"),
                    _fmt_x(r.get("crypten_vs_ours")), _fmt_mb(r.get("bytes_total")),
                    _fmt_mb(r.get("crypten_bytes_total")), str(r.get("rounds", "-")),
                    str(r.get("crypten_rounds", "-"))]) + " |")
    layer_rows = [r for r in rows if r.get("layers_p0")]
    for r in layer_rows:
        lines += ["", f"## Per-layer breakdown: {r['net']} {r['dataset']} {r['mode']} batch {r['batch']} "
                      "(party 0, one extra profiled step)", "",
                  "| Layer | Type | Time (ms) | Sent by P0 (MB) | Rounds |", "|---|---|---|---|---|"]
        for lr in r["layers_p0"]:
            lines.append(f"| {lr['layer']} | {lr['type']} | {lr['time_s'] * 1e3:.3g} | {lr['bytes'] / 1e6:.4g} | "
                         f"{lr['rounds']} |")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ["net", "dataset", "input", "mode", "batch", "status", "secure_s", "secure_min_s", "secure_max_s",
              "plain_s", "slowdown", "bytes_p0", "bytes_p1", "bytes_p2", "bytes_max_party", "bytes_total", "rounds",
              "messages_total", "peak_rss_mib", "peak_rss_mib_parties", "peak_cuda_mib", "setup_s",
              "setup_bytes_total", "net_mode", "rtt_ms", "modeled_s", "est_lan_s", "est_wan_s", "repeats", "warmup",
              "crypten_status", "crypten_s", "crypten_vs_ours", "crypten_bytes_p0", "crypten_bytes_total",
              "crypten_rounds"]


def write_outputs(rows: list[dict], meta: dict, out_dir: Path, base: str, plot: bool = True) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"{base}.{k}" for k in ("md", "csv", "json", "png")}
    paths["md"].write_text(markdown(rows, meta))
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    layer_rows = [r for r in rows if r.get("layers_p0")]
    if layer_rows:
        paths["layers_csv"] = out_dir / f"{base}_layers.csv"
        with open(paths["layers_csv"], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["net", "dataset", "mode", "batch", "layer", "type", "calls", "time_s", "bytes_p0", "rounds"])
            for r in layer_rows:
                for lr in r["layers_p0"]:
                    w.writerow([r["net"], r["dataset"], r["mode"], r["batch"], lr["layer"], lr["type"], lr["calls"],
                                f"{lr['time_s']:.6g}", lr["bytes"], lr["rounds"]])
    paths["json"].write_text(json.dumps({"meta": meta, "columns": COLUMNS, "rows": rows}, indent=1, default=str))
    if plot:
        try:
            from benchmarks.plot import plot_rows
            plot_rows(rows, paths["png"], title=f"{meta['exp']}{' quick' if meta['quick'] else ''} "
                                                f"(net: {meta['net_mode']})")
        except Exception as e:  # matplotlib missing: say so, keep the tables
            print(f"[bench] no plot: {type(e).__name__}: {e}", file=sys.stderr)
            paths.pop("png")
    else:
        paths.pop("png")
    return paths


# ----------------------------------------------------------------------------------------------------------------
# Main

def run_experiment(args) -> dict:
    exp = args.exp or ("quick" if args.quick else "inference_all")
    quick = args.quick or exp == "quick"
    out_dir = Path(args.out)
    base = args.name or (exp + ("_quick" if quick and exp != "quick" else "")
                         + (f"_{args.net}" if args.net != "none" else ""))
    if exp == "ops":
        return run_ops(args, out_dir)
    cases = select(cases_for(exp, quick), args)
    opts = {"warmup": args.warmup, "repeats": args.repeats, "per_layer": args.per_layer,
            "comm_timeout": args.comm_timeout, "case_timeout": args.case_timeout,
            "insecure_fast_prg": args.insecure_fast_prg}
    meta = {"exp": exp, "quick": quick, "net_mode": args.net, "repeats": args.repeats, "warmup": args.warmup,
            "plain_threads": args.plain_threads, "insecure_fast_prg": args.insecure_fast_prg,
            "machine": machine_info(), "cases": [asdict(c) for c in cases],
            "transport": "gloo over loopback" if args.net == "none" else f"gloo over network namespaces ({args.net})"}
    t0 = time.perf_counter()
    rows = collect_rows(cases, args, opts, meta, out_dir, base, plain_only=exp.endswith("_plain"))
    if exp == "crypten":
        from benchmarks.crypten.compare import add_crypten
        add_crypten(rows, cases, args, meta)
    meta["wall_s"] = time.perf_counter() - t0
    meta["load_avg_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    paths = write_outputs(rows, meta, out_dir, base, plot=not args.no_plot)
    print(markdown(rows, meta))
    print("[bench] wrote " + ", ".join(str(p) for p in paths.values()))
    return {"rows": rows, "meta": meta, "paths": paths}


def collect_rows(cases: list[Case], args, opts: dict, meta: dict, out_dir: Path, base: str,
                 plain_only: bool = False) -> list[dict]:
    """Secure runs (loopback or namespaces) plus the plaintext baseline; partial outputs are written after each case."""
    rows: list[dict] = []

    def add_plain(case: Case, row: dict):
        if args.no_plain:
            return
        try:
            # plaintext is cheap: always at least 1 warm-up and 3 timed loops, whatever the secure settings
            row.update(plain_case(case, max(args.warmup, 1), max(args.repeats, 3), args.plain_threads))
            if row.get("secure_s"):
                row["slowdown"] = row["secure_s"] / row["plain_s"]
        except Exception as e:
            row["plain_error"] = f"{type(e).__name__}: {e}"

    def on_result(case: Case, results, error):
        row = aggregate(case, results, error, args.net, opts)
        add_plain(case, row)
        rows.append(row)
        print(f"[bench] {case.key}: {row['status']}" + (f"  secure {row['secure_s']:.3f}s  "
              f"{row['bytes_total'] / 1e6:.3f} MB total  {row['rounds']} rounds" if row["status"] == "ok" else ""),
              flush=True)
        write_outputs(rows, meta, out_dir, base, plot=False)

    if plain_only:
        for case in cases:
            row = {"net": case.net, "dataset": case.dataset, "input": "x".join(map(str, case.shape)),
                   "mode": case.mode, "batch": case.batch, "status": "ok", "net_mode": "none",
                   "repeats": args.repeats, "warmup": args.warmup}
            add_plain(case, row)
            rows.append(row)
            print(f"[bench] {case.key}: plain {row.get('plain_s', float('nan')):.4f}s", flush=True)
    elif args.net == "none":
        run_secure_loopback(cases, opts, on_result)
    else:
        from benchmarks import netns
        ok, why = netns.availability()
        if not ok:
            raise SystemExit(f"--net {args.net}: network namespaces are not available here: {why}. "
                             f"Run as root with iproute2 installed, or use --net none.")
        meta["net_description"], meta["qdisc"] = run_secure_netns(cases, opts, args.net, on_result)
    return rows


def select(cases: list[Case], args) -> list[Case]:
    if args.nets:
        want = set(args.nets.split(","))
        cases = [c for c in cases if c.net in want]
    if args.datasets:
        want = set(args.datasets.split(","))
        cases = [c for c in cases if c.dataset in want]
    if args.mode:
        cases = [c for c in cases if c.mode == args.mode]
    if args.batch:
        cases = [Case(c.net, c.dataset, c.mode, args.batch) for c in cases]
    if not cases:
        raise SystemExit("no benchmark cases left after --nets/--datasets/--mode filtering")
    return cases


def run_ops(args, out_dir: Path) -> dict:
    """Per-op microbenchmarks: delegated to benchmarks/ops.py (its own CLI and outputs)."""
    try:
        from benchmarks import ops
    except ImportError as e:
        raise SystemExit(f"--exp ops needs benchmarks/ops.py: {e}")
    argv = (["--out", str(out_dir / "ops"), "--warmup", str(args.warmup), "--plain-threads", str(args.plain_threads)]
            + (["--repeats", str(args.repeats)] if args.repeats else []) + (["--quick"] if args.quick else [])
            + (["--insecure-fast-prg"] if args.insecure_fast_prg else []))
    if hasattr(ops, "main"):
        return {"result": ops.main(argv)}
    raise SystemExit("benchmarks/ops.py has no main(argv)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", choices=EXPERIMENTS, default=None,
                   help="experiment (default: quick with --quick, else inference_all)")
    p.add_argument("--quick", action="store_true", help="a small subset that runs in a few minutes on 2 cores")
    p.add_argument("--net", choices=("none", "lan", "wan"), default="none",
                   help="none: loopback; lan/wan: network namespaces with tbf 10gbit / 100mbit (root)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed steps per case, median reported (default 3; --exp ops: its own default)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    p.add_argument("--per-layer", action="store_true", help="also profile one step per layer (forward hooks)")
    p.add_argument("--out", default="results", help="output folder")
    p.add_argument("--name", default=None, help="base name of the output files (default from exp/quick/net)")
    p.add_argument("--nets", default=None, help="comma-separated networks to keep, e.g. lenet,alexnet")
    p.add_argument("--datasets", default=None, help="comma-separated datasets to keep")
    p.add_argument("--mode", choices=("inference", "train"), default=None, help="keep only these cases")
    p.add_argument("--batch", type=int, default=None, help="override every case's batch size")
    p.add_argument("--plain-threads", type=int, default=1, help="torch threads for the plaintext baseline")
    p.add_argument("--no-plain", action="store_true", help="skip the plaintext baseline")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--insecure-fast-prg", action="store_true",
                   help="parties use torch's non-cryptographic generator (speed comparison only)")
    p.add_argument("--comm-timeout", type=float, default=600, help="seconds a party waits for a peer")
    p.add_argument("--case-timeout", type=float, default=3600, help="seconds one case may take")
    p.add_argument("--crypten-python", default=None, help="python of the CrypTen venv (--exp crypten)")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="only rewrite the .md/.csv/.png beside a results JSON written earlier")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.worker_out)
    if args.render:
        src = Path(args.render)
        data = json.loads(src.read_text())
        return write_outputs(data["rows"], data["meta"], src.parent, src.stem, plot=not args.no_plot)
    if args.exp != "ops" and args.repeats is None:
        args.repeats = 3
    if (args.repeats is not None and args.repeats < 1) or args.warmup < 0:
        raise SystemExit("--repeats must be >= 1 and --warmup >= 0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return run_experiment(args)


if __name__ == "__main__":
    main()
