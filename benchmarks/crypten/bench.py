"""The same networks and batches under CrypTen (run inside benchmarks/crypten/.venv, made by setup.sh).

    benchmarks/crypten/.venv/bin/python -m benchmarks.crypten.bench --cases cases.json --out out.json
    benchmarks/crypten/.venv/bin/python -m benchmarks.crypten.bench --smoke

Compatibility notes (CrypTen 0.4.1, the last release, with torch 2.14):
- `crypten.nn.onnx_converter` imports `torch.onnx._internal.registration`, which torch 2.14 no longer has, so
  `import crypten` fails. We register an empty stand-in module under that name before importing: it is only used by
  CrypTen's ONNX import path (`crypten.nn.from_pytorch`), which we do not use.
- Instead of `from_pytorch` (ONNX export), the plain network is traced with torch.fx and rebuilt from crypten.nn
  modules (`to_crypten`): Conv2d, Linear, ReLU, AvgPool2d, MaxPool2d, AdaptiveAvgPool2d, BatchNorm2d, Flatten,
  Dropout, Identity and residual `+`, as a crypten.nn.Graph. Weights are CrypTen's own random init (timing only).
- CrypTen's 3-party mode is additive sharing with Beaver triples from its default "TFP" provider (a trusted party
  generates them locally, uncounted). Its byte counter counts 8 bytes per element per send or broadcast call and
  one round per call (communicator.py `_log_communication`), in each party's own view.

Each case runs in `crypten.mpc.run_multiprocess(world_size=3)`; the result is the median over repeats of the slowest
party's step time, and rank 0's and the total of the parties' counted bytes and rounds.
"""
from __future__ import annotations

import argparse
import json
import operator
import statistics
import sys
import time
import types
from pathlib import Path


def import_crypten():
    """Import crypten on torch 2.14 (see the module doc for the stand-in module)."""
    import torch  # noqa: F401
    name = "torch.onnx._internal.registration"
    if name not in sys.modules:
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)

            class _Registry:
                def register(self, *a, **k):
                    raise RuntimeError("CrypTen's ONNX converter is not available with this torch")

            stub.registry = _Registry()
            sys.modules[name] = stub
    import crypten
    return crypten


def to_crypten(model):
    """Rebuild a plain torch network as a crypten.nn.Graph by tracing it with torch.fx."""
    import torch
    import torch.fx
    import crypten.nn as cnn
    from torch import nn

    def convert(m):
        if isinstance(m, nn.Conv2d):
            return cnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                              dilation=m.dilation, groups=m.groups, bias=m.bias is not None)
        if isinstance(m, nn.Linear):
            return cnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        if isinstance(m, nn.ReLU):
            return cnn.ReLU()
        if isinstance(m, nn.AvgPool2d):
            return cnn.AvgPool2d(m.kernel_size, stride=m.stride, padding=m.padding)
        if isinstance(m, nn.MaxPool2d):
            return cnn.MaxPool2d(m.kernel_size, stride=m.stride, padding=m.padding)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return cnn.AdaptiveAvgPool2d(m.output_size)
        if isinstance(m, nn.BatchNorm2d):
            return cnn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum)
        if isinstance(m, nn.Flatten):
            return cnn.Flatten(axis=m.start_dim)
        if isinstance(m, nn.Dropout):
            return cnn.Dropout(m.p)
        if isinstance(m, nn.Identity):
            return cnn.Identity() if hasattr(cnn, "Identity") else None
        raise NotImplementedError(f"no CrypTen equivalent for {type(m).__name__}")

    gm = torch.fx.symbolic_trace(model)
    names, output = {}, None
    inputs = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    graph = cnn.Graph(inputs, ["output"])
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            names[n.name] = n.name
            continue
        if n.op == "output":
            output = names[n.args[0].name]
            continue
        args = [names[a.name] for a in n.args if isinstance(a, torch.fx.Node)]
        if n.op == "call_module":
            mod = convert(gm.get_submodule(n.target))
            if mod is None:
                names[n.name] = args[0]
                continue
        elif n.op == "call_function" and n.target in (operator.add, torch.add):
            mod = cnn.Add()
        elif n.op == "call_function" and n.target is torch.flatten:
            mod = cnn.Flatten(axis=n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0))
        else:
            raise NotImplementedError(f"no CrypTen equivalent for {n.op} {n.target}")
        graph.add_module(n.name, mod, args)
        names[n.name] = n.name
    # the graph's output is the node named "output": rename the last node's value to it
    graph._graph["output"] = graph._graph.pop(output)
    graph._modules["output"] = graph._modules.pop(output)
    for k, v in graph._graph.items():
        graph._graph[k] = ["output" if x == output else x for x in v]
    return graph


def _case_job(case: dict, warmup: int, repeats: int):
    """Body of one party (rank from CrypTen's communicator)."""
    import torch
    import crypten
    import crypten.communicator as comm
    from benchmarks.run import Case, build_net, random_batch
    case = Case(**case)
    crypten.cfg.communicator.verbose = True
    c = comm.get()
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    model = to_crypten(build_net(case.net, case.dataset))
    train = case.mode == "train"
    x, y = random_batch(case)
    xs = crypten.cryptensor(x, src=0)
    model.encrypt(src=0)
    model.train(train)
    if train:
        ys = crypten.cryptensor(torch.nn.functional.one_hot(y, case.classes).float(), src=0)
        loss_fn = crypten.nn.CrossEntropyLoss()

    def step():
        if train:
            out = model(xs)
            loss = loss_fn(out, ys)
            model.zero_grad()
            loss.backward()
            model.update_parameters(0.01)
        else:
            with crypten.no_grad():
                model(xs)

    times, stats = [], None
    for i in range(warmup + repeats):
        c.barrier()
        c.reset_communication_stats()
        t0 = time.perf_counter()
        step()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
            stats = c.get_communication_stats()
    return {"rank": c.get_rank(), "times": times, "bytes": int(stats["bytes"]), "rounds": int(stats["rounds"])}


def run_case(case: dict, warmup: int, repeats: int) -> dict:
    import crypten
    import crypten.mpc as mpc
    job = mpc.run_multiprocess(world_size=3)(_case_job)
    try:
        res = job(case, warmup, repeats)
    except Exception as e:
        return {"status": f"error: {type(e).__name__}: {e}"}
    if not res or len(res) != 3 or any(r is None for r in res):
        return {"status": "error: a CrypTen party failed (see stderr)"}
    per_repeat = [max(r["times"][i] for r in res) for i in range(len(res[0]["times"]))]
    return {"status": "ok", "crypten_s": statistics.median(per_repeat),
            "crypten_bytes_p0": res[0]["bytes"], "crypten_bytes_total": sum(r["bytes"] for r in res),
            "crypten_rounds": max(r["rounds"] for r in res), "crypten_version": getattr(crypten, "__version__", "?")}


def _smoke():
    import torch
    import crypten
    import crypten.mpc as mpc
    crypten.init()

    @mpc.run_multiprocess(world_size=3)
    def job():
        net = crypten.nn.Sequential(crypten.nn.Linear(4, 3), crypten.nn.ReLU())
        net.encrypt()
        return net(crypten.cryptensor(torch.ones(2, 4))).get_plain_text().shape

    got = job()
    assert got is not None and len(got) == 3, f"3-party CrypTen run failed: {got}"
    print("crypten 3-party smoke test ok:", got[0])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.crypten.bench")
    p.add_argument("--cases", help="JSON list of benchmarks.run.Case dicts")
    p.add_argument("--out", help="JSON results path")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="import check and a tiny 3-party run")
    a = p.parse_args(argv)
    crypten = import_crypten()
    if a.smoke:
        return _smoke()
    crypten.init()
    cases = json.loads(Path(a.cases).read_text())
    results = []
    for case in cases:
        t0 = time.perf_counter()
        r = run_case(case, a.warmup, a.repeats)
        print(f"[crypten] {case}: {r.get('status')} {r.get('crypten_s', '')} ({time.perf_counter() - t0:.1f}s)",
              flush=True)
        results.append({"case": case, **r})
        Path(a.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
