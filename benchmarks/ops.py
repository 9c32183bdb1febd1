"""Per-op microbenchmarks: each secure protocol against the same op in plaintext torch.

    python -m benchmarks.ops [--quick] [--out results/ops] [--repeats N] [--warmup N] [--ops mul,matmul]
                             [--timeout S] [--plain-threads 1] [--insecure-fast-prg]

For every op and size in `OPS`, three party processes (runtime.PartyPool, gloo over loopback, one torch thread each)
share random inputs (set-up, not timed), run the op once to record its communication (comm.cost(): bytes, messages
and rounds of each party), `warmup` more times, then `repeats` timed times. Each timed run starts after a barrier;
its time is that of the slowest party, and the table reports the median over repeats. The plaintext time is the
same op on float32 tensors of the same shape in this process (`--plain-threads` torch threads, 1 by default like each
party), the median of `repeats` measurements each long enough (>= 2 ms) to time reliably.

Nonlinear protocols (protocols/compare.py, protocols/approx.py) are imported lazily: an op whose module or function
is missing is listed as skipped with the reason. An op that fails is listed with its error and the pool restarts.

Bytes are those each party sends in one run of the op; "bytes/out elem" divides the busiest party's bytes by the
number of output elements. Rounds are sequential message exchanges (the same on every party).

Outputs: a Markdown table on stdout and `ops[_quick].md`, `.csv`, `.json` in --out (default results/ops).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------------------------
# The table of ops


@dataclass(frozen=True)
class Op:
    """One benchmarked op.

    make(size, gen) -> list of float tensors (public random inputs; input k is shared by party owners[k]).
    secure(fn, party, shares, inputs) -> result of the protocol (`fn` is the lazily imported `func`, or None).
    plain(*inputs) -> the plaintext op on float32 tensors; None where there is no plaintext counterpart.
    """
    name: str
    sizes: tuple          # full run
    quick_sizes: tuple    # --quick
    make: Callable
    secure: Callable
    plain: Callable | None
    module: str | None = None   # e.g. "secure_lightning.protocols.compare", imported lazily
    func: str | None = None     # function of `module` passed to `secure`
    owners: tuple = (0, 1)
    share_inputs: bool = True
    note: str = ""


def _randn(gen, *shape, scale=1.0, shift=0.0):
    return torch.randn(*shape, generator=gen) * scale + shift


def _uniform(gen, *shape, lo=0.0, hi=1.0):
    return torch.rand(*shape, generator=gen) * (hi - lo) + lo


def _n(size):
    return size if isinstance(size, int) else math.prod(size)


def _elementwise(k=1, **kw):
    return lambda size, gen: [_randn(gen, size, **kw) for _ in range(k)]


def _size_label(size) -> str:
    if isinstance(size, int):
        return f"{size:,}"
    if isinstance(size, dict):
        return " ".join(f"{k}={'x'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in size.items())
    return "x".join(str(s) for s in size)


# secure-side bodies (run inside each party)

def _s_share(fn, party, shares, inputs):
    from secure_lightning.protocols.sharing import share
    return share(inputs[0] if party.rank == 0 else None, 0, party=party)


def _s_reveal(fn, party, shares, inputs):
    from secure_lightning.protocols.sharing import reveal
    return reveal(shares[0], party=party)


def _s_add(fn, party, shares, inputs):
    return shares[0] + shares[1]


def _s_mul(fn, party, shares, inputs):
    from secure_lightning.protocols.arithmetic import mul
    return mul(shares[0], shares[1], party=party)


def _s_truncate(fn, party, shares, inputs):
    from secure_lightning.protocols.arithmetic import truncate
    return truncate(shares[0], party=party)


def _s_matmul(fn, party, shares, inputs):
    from secure_lightning.protocols.arithmetic import matmul
    return matmul(shares[0], shares[1], party=party)


def _s_conv2d(fn, party, shares, inputs):
    from secure_lightning.protocols.arithmetic import conv2d
    return conv2d(shares[0], shares[1], padding=1, party=party)


def _s_mean(fn, party, shares, inputs):
    from secure_lightning.protocols.local import mean
    return mean(shares[0], -1, party=party)


def _s_unary(fn, party, shares, inputs):
    return fn(shares[0], party=party)


def _s_lastdim(fn, party, shares, inputs):
    return fn(shares[0], -1, party=party)


def _s_pool2(fn, party, shares, inputs):
    return fn(shares[0], 2, party=party)


def _mm_inputs(size, gen):
    m, k, n = size
    return [_randn(gen, m, k), _randn(gen, k, n)]


def _conv_inputs(size, gen):
    (nb, cin, h, w), (cout, k) = size["x"], size["w"]
    return [_randn(gen, nb, cin, h, w), _randn(gen, cout, cin, k, k, scale=0.3)]


COMPARE = "secure_lightning.protocols.compare"
APPROX = "secure_lightning.protocols.approx"
ELEMS_FULL, ELEMS_QUICK = (1_000, 100_000, 1_000_000), (1_000, 100_000)

OPS: list[Op] = [
    Op("share", ELEMS_FULL, ELEMS_QUICK, _elementwise(1), _s_share, None, owners=(), share_inputs=False,
       note="party 0's input"),
    Op("reveal", ELEMS_FULL, ELEMS_QUICK, _elementwise(1), _s_reveal, None, owners=(0,), note="to all"),
    Op("add", ELEMS_FULL, ELEMS_QUICK, _elementwise(2), _s_add, torch.add),
    Op("mul", ELEMS_FULL, ELEMS_QUICK, _elementwise(2), _s_mul, torch.mul),
    Op("truncate", ELEMS_FULL, ELEMS_QUICK, _elementwise(1), _s_truncate, lambda x: x * (1 / 1048576), owners=(0,),
       note="plain: x * 2^-20"),
    Op("mean", ((1000, 10), (1000, 1000)), ((1000, 10),), _elementwise(1), _s_mean,
       lambda x: x.mean(-1), owners=(0,), note="last dim"),
    Op("matmul", ((64, 64, 64), (128, 128, 128), (256, 256, 256), (512, 512, 512)),
       ((32, 32, 32), (128, 128, 128), (256, 256, 256)), _mm_inputs, _s_matmul, torch.matmul, note="m x k x n"),
    Op("conv2d", ({"x": (8, 16, 32, 32), "w": (32, 3)}, {"x": (32, 3, 32, 32), "w": (64, 5)}),
       ({"x": (1, 3, 32, 32), "w": (16, 3)}, {"x": (8, 16, 16, 16), "w": (32, 3)}), _conv_inputs, _s_conv2d,
       lambda x, w: F.conv2d(x, w, padding=1), note="padding 1"),
    Op("ltz", (1_000, 100_000), (1_000, 10_000), _elementwise(1), _s_unary, lambda x: x < 0,
       module=COMPARE, func="ltz", owners=(0,)),
    Op("relu", (1_000, 100_000), (1_000, 10_000), _elementwise(1), _s_unary, torch.relu,
       module=COMPARE, func="relu", owners=(0,)),
    Op("max", ((1000, 10), (128, 1000)), ((100, 10),), _elementwise(1), _s_lastdim, lambda x: x.max(-1),
       module=COMPARE, func="max", owners=(0,), note="last dim"),
    Op("max_pool2d", ((32, 16, 32, 32),), ((4, 8, 16, 16),), _elementwise(1), _s_pool2,
       lambda x: F.max_pool2d(x, 2), module=COMPARE, func="max_pool2d", owners=(0,), note="2x2"),
    Op("exp", (1_000, 100_000), (1_000,), _elementwise(1, scale=2.0, shift=-1.0), _s_unary, torch.exp,
       module=APPROX, func="exp", owners=(0,)),
    Op("reciprocal", (1_000, 100_000), (1_000,), lambda size, gen: [_uniform(gen, size, lo=0.5, hi=50.0)],
       _s_unary, torch.reciprocal, module=APPROX, func="reciprocal", owners=(0,), note="x in [0.5, 50]"),
    Op("sigmoid", (1_000, 100_000), (1_000,), _elementwise(1, scale=3.0), _s_unary, torch.sigmoid,
       module=APPROX, func="sigmoid", owners=(0,)),
    Op("softmax", ((128, 10), (128, 1000)), ((100, 10),), _elementwise(1, scale=3.0), _s_lastdim,
       lambda x: torch.softmax(x, -1), module=APPROX, func="softmax", owners=(0,), note="last dim"),
]
OPS_BY_NAME = {op.name: op for op in OPS}


# ---------------------------------------------------------------------------------------------------------------------
# Party side


def _numel_of(result) -> int:
    """Elements of the op's (first) output: Shares, tensor, or a tuple starting with one."""
    if isinstance(result, (tuple, list)) and result and not isinstance(result, torch.Tensor) \
            and not hasattr(result, "cur"):
        return _numel_of(result[0])
    if hasattr(result, "cur"):
        return int(result.cur.numel())
    if isinstance(result, torch.Tensor):
        return int(result.numel())
    return 0


def bench_party(party, name: str, inputs: list, warmup: int, repeats: int) -> dict:
    """Runs in each party: share the inputs, one costed run, `warmup` runs, `repeats` timed runs after a barrier."""
    import torch.distributed as dist

    from secure_lightning.protocols.sharing import share

    op = OPS_BY_NAME[name]
    fn = getattr(importlib.import_module(op.module), op.func) if op.module else None
    shares = []
    if op.share_inputs:
        for k, x in enumerate(inputs):
            owner = op.owners[k] if k < len(op.owners) else 0
            shares.append(share(x if party.rank == owner else None, owner, party=party, label=f"bench_in{k}"))
    with party.comm.cost() as c:
        result = op.secure(fn, party, shares, inputs)
    numel = _numel_of(result)
    for _ in range(warmup):
        op.secure(fn, party, shares, inputs)
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        op.secure(fn, party, shares, inputs)
        times.append(time.perf_counter() - t0)
    return {"times": times, "bytes": c.bytes, "rounds": c.rounds, "messages": c.messages, "numel": numel}


# ---------------------------------------------------------------------------------------------------------------------
# Plaintext side


def plain_time(fn: Callable, inputs: list, repeats: int, min_s: float = 2e-3) -> float:
    """Median seconds per call; each measurement loops until it spans >= min_s."""
    fn(*inputs)
    loops, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn(*inputs)
        t = time.perf_counter() - t0
        if t >= min_s or loops >= 1 << 20:
            break
        loops *= 2 if t <= 0 else max(2, min(16, math.ceil(min_s / t)))
    samples = []
    for _ in range(max(repeats, 3)):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn(*inputs)
        samples.append((time.perf_counter() - t0) / loops)
    return statistics.median(samples)


# ---------------------------------------------------------------------------------------------------------------------
# Driver


def availability(op: Op) -> str | None:
    """None if the op can run, else why not (its lazily imported module or function is missing)."""
    if not op.module:
        return None
    try:
        mod = importlib.import_module(op.module)
    except Exception as e:  # ImportError, or a half-written module failing at import
        return f"skipped: {op.module} not available ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if not hasattr(mod, op.func):
        return f"skipped: {op.module}.{op.func} not defined yet"
    return None


def _row(op: Op, size, status: str) -> dict:
    return {"op": op.name, "size": _size_label(size), "numel": None, "secure_ms": None, "secure_ms_per_party": None,
            "plain_ms": None, "ratio": None, "rounds": None, "bytes_p0": None, "bytes_p1": None, "bytes_p2": None,
            "bytes_per_elem_max": None, "messages_max": None, "note": op.note, "status": status}


def run(args) -> list[dict]:
    from secure_lightning.runtime import PartyError, PartyPool

    names = [s for s in args.ops.split(",") if s] if args.ops else [op.name for op in OPS]
    unknown = [n for n in names if n not in OPS_BY_NAME]
    if unknown:
        raise SystemExit(f"unknown ops {unknown}; choose from {', '.join(OPS_BY_NAME)}")
    torch.set_num_threads(args.plain_threads)
    gen = torch.Generator().manual_seed(0)  # public benchmark inputs
    rows = []
    pool = PartyPool(timeout=args.timeout, insecure_fast_prg=args.insecure_fast_prg)
    try:
        for op in (OPS_BY_NAME[n] for n in names):
            why = availability(op)
            for size in (op.quick_sizes if args.quick else op.sizes):
                if why:
                    rows.append(_row(op, size, why))
                    continue
                inputs = op.make(size, gen)
                row = _row(op, size, "ok")
                try:
                    res = pool.run(bench_party, op.name, inputs, args.warmup, args.repeats,
                                   timeout=args.timeout * 4 + 60)
                except PartyError as e:
                    lines = [ln for ln in str(e).splitlines() if ln.startswith("--- party")]
                    row["status"] = "error: " + (lines[0][:200] if lines else str(e)[:200])
                    rows.append(row)
                    print(f"[ops] {op.name} {row['size']}: {row['status']}", file=sys.stderr)
                    continue
                per_rep = [max(r["times"][i] for r in res) for i in range(args.repeats)]
                numel = res[0]["numel"]
                row.update(numel=numel, secure_ms=1e3 * statistics.median(per_rep),
                           secure_ms_per_party=[round(1e3 * statistics.median(r["times"]), 4) for r in res],
                           rounds=res[0]["rounds"], bytes_p0=res[0]["bytes"], bytes_p1=res[1]["bytes"],
                           bytes_p2=res[2]["bytes"], messages_max=max(r["messages"] for r in res),
                           bytes_per_elem_max=max(r["bytes"] for r in res) / numel if numel else None)
                if len({r["rounds"] for r in res}) != 1:
                    row["status"] = "ok (rounds differ between parties: " + "/".join(str(r["rounds"]) for r in res) + ")"
                if op.plain is not None:
                    row["plain_ms"] = 1e3 * plain_time(op.plain, inputs, args.repeats)
                    row["ratio"] = row["secure_ms"] / row["plain_ms"] if row["plain_ms"] > 0 else None
                rows.append(row)
                print(f"[ops] {op.name} {row['size']}: {row['secure_ms']:.3f} ms, {row['rounds']} rounds",
                      file=sys.stderr)
    finally:
        pool.close()
    return rows


def _fmt(v, spec="{:.3g}") -> str:
    return "-" if v is None else spec.format(v)


def _fmt_bytes(row) -> str:
    b = [row["bytes_p0"], row["bytes_p1"], row["bytes_p2"]]
    if b[0] is None:
        return "-"
    return f"{b[0]:,}" if len(set(b)) == 1 else " / ".join(f"{x:,}" for x in b)


def markdown(rows: list[dict], meta: dict) -> str:
    m = meta["machine"]
    lines = [f"Secure ops vs plaintext ({'quick' if meta['quick'] else 'full'}): 3 parties on one machine over "
             f"loopback, 1 torch thread each; {m['cores']} cores, torch {m['torch']}; median of {meta['repeats']} "
             f"timed runs after {meta['warmup']} warm-up (+1 costed) runs; slowest party per run."
             + (" INSECURE fast PRG." if meta["insecure_fast_prg"] else ""),
             "",
             "| op | size | out elems | secure ms | plain ms | secure/plain | rounds | bytes sent P0 / P1 / P2 "
             "| bytes/out elem (max) | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if not r["status"].startswith("ok"):
            lines.append(f"| {r['op']} | {r['size']} | - | - | - | - | - | - | - | {r['status']} |")
            continue
        note = "; ".join(x for x in (r["note"], r["status"] if r["status"] != "ok" else "") if x)
        lines.append(
            f"| {r['op']} | {r['size']} | {r['numel']:,} | {_fmt(r['secure_ms'])} | {_fmt(r['plain_ms'])} "
            f"| {_fmt(r['ratio'], '{:,.0f}x') if r['ratio'] and r['ratio'] >= 10 else _fmt(r['ratio'], '{:.3g}x')} "
            f"| {r['rounds']} | {_fmt_bytes(r)} | {_fmt(r['bytes_per_elem_max'], '{:.4g}')} | {note} |")
    return "\n".join(lines)


def machine_info() -> dict:
    return {"cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def write_outputs(rows: list[dict], meta: dict, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / ("ops_quick" if meta["quick"] else "ops")
    md = markdown(rows, meta)
    base.with_suffix(".md").write_text(md + "\n")
    base.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    with open(base.with_suffix(".csv"), "w", newline="") as f:
        cols = [c for c in rows[0] if c != "secure_ms_per_party"] if rows else []
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return {"markdown": md, "files": [str(base.with_suffix(s)) for s in (".md", ".csv", ".json")]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.ops", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, a few minutes on 2 cores")
    p.add_argument("--out", default="results/ops", help="output folder")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per op (default 3 quick, 10 full)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs after the costed one")
    p.add_argument("--ops", default=None, help=f"comma-separated subset of: {', '.join(OPS_BY_NAME)}")
    p.add_argument("--timeout", type=float, default=300, help="seconds a party waits for a peer")
    p.add_argument("--plain-threads", type=int, default=1, help="torch threads for the plaintext baseline")
    p.add_argument("--insecure-fast-prg", action="store_true",
                   help="parties use torch's non-cryptographic generator (speed comparison only)")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 10
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--repeats must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    rows = run(args)
    meta = {"quick": args.quick, "repeats": args.repeats, "warmup": args.warmup, "plain_threads": args.plain_threads,
            "insecure_fast_prg": args.insecure_fast_prg, "machine": machine_info(),
            "elapsed_s": round(time.time() - t0, 1)}
    out = write_outputs(rows, meta, Path(args.out))
    print(out["markdown"])
    print("\nwrote " + ", ".join(out["files"]), file=sys.stderr)
    return {"rows": rows, "meta": meta, **out}


if __name__ == "__main__":
    # run the importable module's main so that the party processes pickle `bench_party` by reference
    from benchmarks import ops as _ops
    _ops.main()
