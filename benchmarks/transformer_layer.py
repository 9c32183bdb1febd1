"""Cost of one nn.TransformerEncoderLayer run privately by three parties, beside plain torch.

    python -m benchmarks.transformer_layer                      # --quick: a few small cases
    python -m benchmarks.transformer_layer --full               # sequence length 16..128 x width 64..768
    python -m benchmarks.transformer_layer --cases 16x64,128x768 [--batch 1] [--repeats 3] [--plain-only]
                                           [--out results/transformer_layer]

The layer: nn.TransformerEncoderLayer(width, heads = max(2, width // 64), dim_feedforward = 4 * width,
activation="gelu", dropout=0, batch_first=True), post-norm as torch's default; random inputs of shape
(batch, seq, width). Party 0 owns the weights and the data (secure_module, share_tensor); sharing them is set-up and is
not counted. Measured per case, in each party after a barrier:
  - inference: the forward pass under no_grad and opening the output to party 0;
  - training: one step: forward, MSE loss against a random target shared by party 0, backward, SGD (lr 0.01).
Reported per phase: time (slowest party, median over repeats), bytes sent and rounds (party.comm.cost(), per party),
peak resident memory per party (VmHWM, reset before the phase), and party 0's bytes grouped by the protocol that sent
them (the top component of the comm label): attention softmax, GELU, LayerNorm, matmuls, other; plus plain torch's
time for the same layer and batch (float32, one thread). Until secure_module accepts the layer
(secure_lightning/nn/swap.py), the secure columns say why it was refused and only plain torch is measured.

Outputs: <out>.md (table, machine) and <out>.json (all figures, every label's bytes and rounds).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.run import _barrier, machine_info, peak_memory_mib, reset_peak_memory

SEQ_LENS = (16, 32, 64, 128)
WIDTHS = (64, 128, 256, 512, 768)
QUICK = ((16, 64), (32, 64), (16, 128))
FULL = tuple((s, w) for s in SEQ_LENS for w in WIDTHS)
GROUPS = ("attention softmax", "GELU", "LayerNorm", "matmuls", "other")
MATMUL_OPS = ("mm", "bmm", "addmm", "baddbmm", "linear", "conv1d", "conv2d")
PHASES = ("inference", "training")


def heads_for(width: int) -> int:
    return max(2, width // 64)


def build_layer(width: int) -> nn.TransformerEncoderLayer:
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(width, heads_for(width), dim_feedforward=4 * width, dropout=0.0,
                                      activation="gelu", batch_first=True)


def label_group(label: str) -> str:
    """The group of a comm label, by its top component (the op that ran the protocol)."""
    top = label.split("/")[0].lower()
    if "softmax" in top:
        return "attention softmax"
    if "gelu" in top:
        return "GELU"
    if "layer_norm" in top or "layernorm" in top:
        return "LayerNorm"
    if top in MATMUL_OPS or top.startswith("matmul"):
        return "matmuls"
    return "other"


def group_bytes(by_label: dict) -> dict:
    out = dict.fromkeys(GROUPS, 0)
    for label, c in by_label.items():
        out[label_group(label)] += int(c["bytes"])
    return out


def secure_refusal(width: int) -> str | None:
    """Why secure_module refuses the layer (UnsupportedLayerError's message), or None when it accepts it."""
    from secure_lightning.nn.swap import SecureLayers, UnsupportedLayerError
    try:
        SecureLayers().check(build_layer(width))
    except UnsupportedLayerError as e:
        return str(e)
    return None


def parse_cases(text: str) -> list[tuple[int, int]]:
    """"16x64,128x768" -> [(16, 64), (128, 768)] (sequence length x width)."""
    cases = []
    for item in text.split(","):
        seq, _, width = item.strip().partition("x")
        if not (seq.isdigit() and width.isdigit()):
            raise argparse.ArgumentTypeError(f"a case is SEQxWIDTH, e.g. 16x64; got {item!r}")
        if int(width) % heads_for(int(width)):
            raise argparse.ArgumentTypeError(f"width {width} is not divisible by its {heads_for(int(width))} heads")
        cases.append((int(seq), int(width)))
    return cases


# ----------------------------------------------------------------------------------------------------------------
# Party side: one case, in each of the three parties

def party_case(party, seq: int, width: int, batch: int, repeats: int) -> dict:
    """Share the layer and the data from party 0, then time and count `repeats` runs of each phase."""
    from secure_lightning.nn import secure_module
    from secure_lightning.tensor import reveal_tensor, share_tensor

    layer = build_layer(width)
    secure_module(layer, party, owner=0)
    g = torch.Generator().manual_seed(1)
    owner = party.rank == 0
    x = torch.randn(batch, seq, width, generator=g)
    target = torch.randn(batch, seq, width, generator=g)
    xs = share_tensor(x if owner else None, 0, party)
    ts = share_tensor(target if owner else None, 0, party, label="target")
    opt = torch.optim.SGD(layer.parameters(), lr=0.01)

    def inference():
        layer.eval()
        with torch.no_grad():
            reveal_tensor(layer(xs), to=0)

    def training():
        layer.train()
        opt.zero_grad()
        F.mse_loss(layer(xs), ts).backward()
        opt.step()

    out = {}
    for phase, run in (("inference", inference), ("training", training)):
        times, peak = [], 0.0
        for _ in range(repeats):
            _barrier()
            reset_peak_memory(party.device)
            t0 = time.perf_counter()
            with party.comm.cost() as c:
                run()
            times.append(time.perf_counter() - t0)
            peak = max(peak, peak_memory_mib(party.device)["rss"])
        out[phase] = {"times": times, "bytes": int(c.bytes), "rounds": int(c.rounds), "messages": int(c.messages),
                      "peak_rss_mib": peak,
                      "by_label": {k: {"bytes": int(v.bytes), "rounds": int(v.rounds)} for k, v in c.by_label.items()}}
    return out


def secure_rows(per_party: list[dict]) -> dict:
    """The three parties' results of one case -> {phase: figures}."""
    rows = {}
    for phase in PHASES:
        r = [p[phase] for p in per_party]
        slowest = [max(ts) for ts in zip(*(x["times"] for x in r))]
        rows[phase] = {"secure_s": statistics.median(slowest), "bytes_per_party": [x["bytes"] for x in r],
                       "rounds": max(x["rounds"] for x in r), "messages_per_party": [x["messages"] for x in r],
                       "peak_rss_mib_per_party": [round(x["peak_rss_mib"], 1) for x in r],
                       "groups_p0": group_bytes(r[0]["by_label"]), "by_label_p0": r[0]["by_label"]}
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Plain torch

def plain_times(seq: int, width: int, batch: int, repeats: int) -> dict:
    """Median seconds of the same layer and batch in plain float32 torch, one thread (as each party has)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        layer = build_layer(width)
        g = torch.Generator().manual_seed(1)
        x, target = torch.randn(batch, seq, width, generator=g), torch.randn(batch, seq, width, generator=g)
        opt = torch.optim.SGD(layer.parameters(), lr=0.01)

        def inference():
            layer.eval()
            with torch.no_grad():
                layer(x)

        def training():
            layer.train()
            opt.zero_grad()
            F.mse_loss(layer(x), target).backward()
            opt.step()

        out = {}
        for phase, run in (("inference", inference), ("training", training)):
            run()  # warm-up
            times = []
            for _ in range(max(repeats, 5)):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            out[phase] = statistics.median(times)
        return out
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------------------------------------------
# Driver and report

def measure(cases, batch: int, repeats: int, plain_only: bool, timeout: float) -> list[dict]:
    rows, pool = [], None
    try:
        for seq, width in cases:
            plain = plain_times(seq, width, batch, repeats)
            refusal = None if plain_only else secure_refusal(width)
            secure = None
            if not plain_only and refusal is None:
                if pool is None:
                    from secure_lightning.runtime import PartyPool
                    pool = PartyPool(timeout=timeout)
                    pool.start()
                secure = secure_rows(pool.run(party_case, seq, width, batch, repeats, timeout=timeout * 4))
            status = "plain only" if plain_only else "ok" if secure else f"refused: {refusal}"
            for phase in PHASES:
                row = {"seq": seq, "width": width, "heads": heads_for(width), "batch": batch, "phase": phase,
                       "plain_s": plain[phase], "status": status}
                if secure:
                    row.update(secure[phase])
                    row["slowdown"] = row["secure_s"] / plain[phase]
                rows.append(row)
                print(one_line(row), flush=True)
    finally:
        if pool is not None:
            pool.close()
    return rows


def one_line(row: dict) -> str:
    head = f"seq {row['seq']:4d} width {row['width']:4d} {row['phase']:9s}: plain {1e3 * row['plain_s']:.2f} ms"
    if "secure_s" not in row:
        return f"{head}; secure: {row['status'][:100]}"
    return (f"{head}; secure {row['secure_s']:.3f} s, {max(row['bytes_per_party']) / 1e6:.2f} MB (max party), "
            f"{row['rounds']} rounds")


def markdown(rows: list[dict], meta: dict) -> str:
    m = meta["machine"]
    lines = [f"# One nn.TransformerEncoderLayer, private (3 parties) vs plain torch ({meta['cases_name']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, commit {m.get('git_commit')}, "
             f"{m['date']}. Batch {meta['batch']}, median of {meta['repeats']} repeats; GELU, post-norm, "
             "dim_feedforward 4 x width, heads max(2, width / 64).", "",
             "| seq | width | heads | phase | plain ms | secure s | slowdown | MB sent P0/P1/P2 | rounds | "
             "peak RSS MiB P0/P1/P2 | " + " | ".join(f"{g} %" for g in GROUPS) + " |",
             "|" + "---|" * (10 + len(GROUPS))]
    for r in rows:
        cells = [r["seq"], r["width"], r["heads"], r["phase"], f"{1e3 * r['plain_s']:.3g}"]
        if "secure_s" in r:
            total = sum(r["groups_p0"].values()) or 1
            cells += [f"{r['secure_s']:.3g}", f"{r['slowdown']:,.0f}x",
                      "/".join(f"{b / 1e6:.3g}" for b in r["bytes_per_party"]), f"{r['rounds']:,}",
                      "/".join(f"{v:.0f}" for v in r["peak_rss_mib_per_party"])]
            cells += [f"{100 * r['groups_p0'][g] / total:.1f}" for g in GROUPS]
        else:
            cells += ["-"] * (5 + len(GROUPS))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    refused = sorted({r["status"] for r in rows if r["status"].startswith("refused")})
    lines += ["", "Bytes by group: party 0's bytes sent, grouped by the op at the top of each comm label (matmuls: "
              "linear layers and attention products with their truncation; other: everything else, e.g. sharing "
              "the output, elementwise products). Every label's figures are in the .json."]
    lines += [f"Secure run not measured, {s}" for s in refused]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sets = ap.add_mutually_exclusive_group()
    sets.add_argument("--quick", action="store_true", help=f"the default: {QUICK}")
    sets.add_argument("--full", action="store_true", help="sequence length 16..128 x width 64..768")
    sets.add_argument("--cases", type=parse_cases, help="SEQxWIDTH[,SEQxWIDTH...], e.g. 16x64,128x768")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per phase (median); costs are per run")
    ap.add_argument("--plain-only", action="store_true", help="measure plain torch only (no parties)")
    ap.add_argument("--timeout", type=float, default=600.0, help="party communication timeout (s)")
    ap.add_argument("--out", default=os.path.join("results", "transformer_layer"),
                    help="output path without extension: writes <out>.md and <out>.json")
    args = ap.parse_args(argv)
    cases = args.cases or (FULL if args.full else QUICK)
    name = "custom cases" if args.cases else "full" if args.full else "quick"
    rows = measure(cases, args.batch, args.repeats, args.plain_only, args.timeout)
    meta = {"machine": machine_info(), "cases_name": name, "batch": args.batch, "repeats": args.repeats,
            "groups": list(GROUPS)}
    text = markdown(rows, meta)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return {"meta": meta, "rows": rows}


if __name__ == "__main__":
    main()
