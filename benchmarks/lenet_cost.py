"""Communication and rounds of one private LeNet inference (batch 1) and one private LeNet training step (batch 128).

    python -m benchmarks.lenet_cost [--pool avg|max|both] [--labels onehot|index] [--guard] [--reveal-loss]
                                [--out results/lenet_cost.json]

LeNet on MNIST shape (1x28x28): conv 5x5 (20) - ReLU - pool 2 - conv 5x5 (50) - ReLU - pool 2 - FC 500 - ReLU - FC 10.
`--pool avg` is CryptGPU's variant (average pooling, models.nets.LeNet); `--pool max` puts back max pooling, as in
Falcon's LeNet. Party 0 owns the weights (secure_module) and the data; sharing the model and the inputs is set-up and
is not counted. Inference: one forward pass under no_grad. Training: forward, cross-entropy against labels shared by
party 0 (one-hot floats as in CryptGPU, or int64 class indices with --labels index), backward and one SGD step
(lr 0.01).

`--guard` also measures both steps with the overflow guard on (protocols/guard.py: every fixed-point product's output
sampled, 64 positions, and one `check` at the end of the step, as RSS3PC(overflow_guard=True) does after the optimizer
step; inputs here are in range, so it passes) and reports its overhead. `--reveal-loss` opens the loss after the forward pass,
as a Lightning `self.log("loss", ...)` does (with the guard on, a check runs before that opening too).

Counted per party with `party.comm.cost()`: bytes sent, messages, rounds (sequential exchanges; the same on every
party). "total" sums the bytes of the three parties (what the papers report as communication).
Reference (papers, same networks): CryptGPU 3 MB inference / 1.14 GB training step, Falcon 2.29 MB / 0.346 GB.
Inputs and weights are random: only the cost is measured (it does not depend on the values).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

PAPERS = {"CryptGPU": {"inference_bytes": 3e6, "training_bytes": 1.14e9},
          "Falcon": {"inference_bytes": 2.29e6, "training_bytes": 0.346e9}}


def build_lenet(pool: str) -> nn.Module:
    from models.nets import LeNet
    torch.manual_seed(0)
    net = LeNet(in_channels=1, num_classes=10, image_size=28)
    if pool == "max":
        for i, m in enumerate(net.features):
            if isinstance(m, nn.AvgPool2d):
                net.features[i] = nn.MaxPool2d(2, stride=2)
    return net


def _groups(meter) -> dict:
    out = {}
    for label, c in meter.by_label.items():
        top = label.split("/")[0]
        g = out.setdefault(top, {"bytes": 0, "rounds": 0})
        g["bytes"] += c.bytes
        g["rounds"] += c.rounds
    return out


def party_job(party, pool: str, labels: str, train_batch: int, guard_on: bool = False, reveal_loss: bool = False):
    """Runs in each party: one inference (batch 1) and one training step; returns this party's costs."""
    from secure_lightning.nn import secure_module
    from secure_lightning.protocols import guard
    from secure_lightning.tensor import reveal_tensor
    from secure_lightning.tensor import share_tensor
    net = build_lenet(pool)
    secure_module(net, party, owner=0)
    g = torch.Generator().manual_seed(1)
    mine = party.rank == 0
    x1 = share_tensor(torch.rand(1, 1, 28, 28, generator=g) if mine else None, 0, party, label="image")
    xb = share_tensor(torch.rand(train_batch, 1, 28, 28, generator=g) if mine else None, 0, party, label="batch")
    y = torch.randint(0, 10, (train_batch,), generator=g)
    y = F.one_hot(y, 10).float() if labels == "onehot" else y
    ys = share_tensor(y if mine else None, 0, party, label="labels")
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    out = {}

    if guard_on:
        guard.enable(party)
    net.eval()
    t = time.time()
    with torch.no_grad(), party.comm.cost() as c:
        net(x1)
        guard.check(party=party)
    out["inference"] = {"bytes": c.bytes, "rounds": c.rounds, "messages": c.messages, "seconds": time.time() - t,
                        "by_layer": _groups(c)}

    net.train()
    t = time.time()
    with party.comm.cost() as c:
        loss = F.cross_entropy(net(xb), ys)
        if reveal_loss:
            reveal_tensor(loss.detach(), label="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
        samples = guard.pending(party)
        guard.check(party=party)
    out["guard_samples"] = samples
    out["training"] = {"bytes": c.bytes, "rounds": c.rounds, "messages": c.messages, "seconds": time.time() - t,
                       "by_layer": _groups(c)}
    return out


def human(n: float) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e9 else f"{n / 1e6:.3f} MB"


def measure(pool: str, labels: str, train_batch: int, timeout: float, guard_on: bool = False,
            reveal_loss: bool = False) -> dict:
    from secure_lightning.runtime import PartyPool
    with PartyPool(timeout=timeout) as parties:
        per_party = parties.run(party_job, pool, labels, train_batch, guard_on, reveal_loss, timeout=timeout * 4)
    result = {"guard": guard_on, "reveal_loss": reveal_loss, "guard_samples_training": per_party[0]["guard_samples"]}
    for phase in ("inference", "training"):
        rows = [p[phase] for p in per_party]
        total = sum(r["bytes"] for r in rows)
        result[phase] = {
            "batch": 1 if phase == "inference" else train_batch,
            "bytes_per_party": [r["bytes"] for r in rows],
            "bytes_total": total,
            "MB_total": total / 1e6, "GB_total": total / 1e9,
            "rounds": max(r["rounds"] for r in rows),
            "messages_per_party": [r["messages"] for r in rows],
            "seconds_per_party": [round(r["seconds"], 3) for r in rows],
            "by_layer_party0": rows[0]["by_layer"],
        }
    return result


def report(name: str, res: dict) -> str:
    lines = [f"LeNet ({name})"]
    for phase in ("inference", "training"):
        r = res[phase]
        per = ", ".join(f"P{i} {b:,} B ({human(b)})" for i, b in enumerate(r["bytes_per_party"]))
        lines.append(f"  {phase:9s} batch {r['batch']:3d}: total {r['bytes_total']:,} B ({human(r['bytes_total'])}), "
                     f"{r['rounds']} rounds; per party: {per}")
    return "\n".join(lines)


def guard_overhead(off: dict, on: dict) -> str:
    lines = [f"  overflow guard ({on['guard_samples_training']} samples in the end-of-step check of the training "
             "step):"]
    for phase in ("inference", "training"):
        a, b = off[phase], on[phase]
        lines.append(f"    {phase:9s}: rounds {a['rounds']} -> {b['rounds']} ({100 * (b['rounds'] / a['rounds'] - 1):+.1f}%), "
                     f"bytes total {a['bytes_total']:,} -> {b['bytes_total']:,} "
                     f"({100 * (b['bytes_total'] / a['bytes_total'] - 1):+.2f}%)")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", choices=["avg", "max", "both"], default="both")
    ap.add_argument("--labels", choices=["onehot", "index"], default="onehot")
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--guard", action="store_true", help="also measure with the overflow guard on and report its "
                                                             "overhead")
    ap.add_argument("--reveal-loss", action="store_true", help="open the loss after the forward pass (as self.log)")
    ap.add_argument("--out", default=os.path.join("results", "lenet_cost.json"))
    args = ap.parse_args(argv)
    pools = ["avg", "max"] if args.pool == "both" else [args.pool]
    results = {"labels": args.labels, "papers": PAPERS, "networks": {}}
    for pool in pools:
        name = {"avg": "avgpool, CryptGPU's variant", "max": "maxpool, Falcon's"}[pool]
        res = measure(pool, args.labels, args.train_batch, args.timeout, reveal_loss=args.reveal_loss)
        results["networks"][f"lenet_{pool}pool"] = res
        print(report(name, res), flush=True)
        if args.guard:
            g = measure(pool, args.labels, args.train_batch, args.timeout, guard_on=True, reveal_loss=args.reveal_loss)
            results["networks"][f"lenet_{pool}pool_guard"] = g
            print(report(name + ", overflow guard on", g), flush=True)
            print(guard_overhead(res, g), flush=True)
    print("Papers (total bytes): " + "; ".join(
        f"{k} {human(v['inference_bytes'])} inference, {human(v['training_bytes'])} training" for k, v in PAPERS.items()))
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
