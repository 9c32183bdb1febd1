"""Peak resident memory per party of one private training step (forward, loss, backward, optimizer step).

    python -m benchmarks.memory                      # the cases of results/memory.md, one line of JSON each
    python -m benchmarks.memory --case demo:32:sgd --trace

Each case runs in three fresh party processes (secure_lightning.runtime.PartyPool), so a party's peak (VmHWM) is
that of one process: the torch runtime, the model, its shares and the step. `--trace` also prints the resident set
(VmRSS) and the peak since the previous line after every layer's forward and backward in party 0, to find where the peak comes from.
A watchdog in every party stops it above --cap-gib resident (the machine is shared). `plain_step_mib`: the same step
in plain float32 torch in a fresh process, its peak above the resident set before the model (weights, activations,
gradients, optimizer state): the reference of the bound "8x the plaintext step plus the runtime".

Cases: lenet (models.nets.LeNet, 1x28x28, cross-entropy against a secret one-hot) and demo (Lightning's
`pytorch_lightning.demos.boring_classes.Net`: conv3 1->32, conv3 32->64, max pool 2, dropout, fc 9216->128, fc
128->10, log_softmax; nll_loss against a secret one-hot), with SGD(lr=0.01) or Adam(). Data: public random inputs
in [0, 1) and labels from a torch.Generator, shared by party 0.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time

import torch
import torch.nn.functional as F

CASES = ("lenet:128:sgd", "demo:32:sgd", "demo:32:adam")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _watchdog(cap_kib: int):
    def watch():
        while True:
            if _status_kib("VmRSS") > cap_kib:
                os.write(2, f"party {os.getpid()}: resident set above the cap, stopping\n".encode())
                os._exit(9)
            time.sleep(0.05)
    threading.Thread(target=watch, daemon=True).start()


def _build(net: str):
    if net == "lenet":
        import models.nets as nets
        return nets.LeNet(in_channels=1, num_classes=10, image_size=28), F.cross_entropy
    from pytorch_lightning.demos.boring_classes import Net
    return Net(), F.nll_loss


def _mark(rows, what):
    """Record (what, resident now, peak since the previous mark) and start a new peak (VmHWM := VmRSS)."""
    if rows is None:
        return
    rows.append((what, _status_kib("VmRSS") // 1024, _status_kib("VmHWM") // 1024))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _trace_hooks(model, rows):
    def mark(what):
        def hook(*_):
            _mark(rows, what)
        return hook
    for name, m in model.named_modules():
        if name and next(m.children(), None) is None:
            m.register_forward_hook(mark(f"fwd {name}"))
            m.register_full_backward_hook(mark(f"bwd {name}"))


def step_case(party, net: str, batch: int, opt_name: str, cap_gib: float, trace: bool) -> dict:
    """One training step in this party; its peak resident memory (MiB) and the step's communication."""
    from secure_lightning.nn import secure_module
    from secure_lightning.tensor import share_tensor
    _watchdog(int(cap_gib * 2 ** 20))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS (the runtime, before the model)
    runtime = _status_kib("VmRSS") // 1024
    torch.manual_seed(0)
    model, loss_fn = _build(net)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((batch, 1, 28, 28), generator=g)
    y = F.one_hot(torch.randint(0, 10, (batch,), generator=g), 10).float()
    secure_module(model, party, owner=0)
    xs = share_tensor(x if party.rank == 0 else None, 0, party, label="input")
    ys = share_tensor(y if party.rank == 0 else None, 0, party, label="labels")
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.01) if opt_name == "sgd" else torch.optim.Adam(params)
    rows = [] if trace and party.rank == 0 else None
    if rows is not None:
        _trace_hooks(model, rows)
    t0 = time.perf_counter()
    with party.comm.cost() as c:
        loss = loss_fn(model(xs), ys)
        _mark(rows, "loss")
        loss.backward()
        _mark(rows, "backward done")
        opt.step()
        _mark(rows, "optimizer step")
    peak = max([_status_kib("VmHWM") // 1024] + [r[2] for r in rows or []])
    return {"rank": party.rank, "runtime_mib": runtime, "peak_mib": peak,
            "seconds": time.perf_counter() - t0, "bytes": int(c.total.bytes), "rounds": int(c.total.rounds),
            "params": sum(p.numel() for p in params), "trace": rows or []}


def _plain_step(net: str, batch: int, opt_name: str, queue) -> None:
    """The same step in plain float32 torch (one thread), in a fresh process: its peak over the resident set
    before the model was built (MiB)."""
    import pytorch_lightning  # noqa: F401  (the same runtime as a party)
    torch.set_num_threads(1)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    runtime = _status_kib("VmRSS")
    torch.manual_seed(0)
    model, loss_fn = _build(net)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((batch, 1, 28, 28), generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=0.01) if opt_name == "sgd" else torch.optim.Adam(params)
    loss_fn(model(x), y).backward()
    opt.step()
    queue.put((_status_kib("VmHWM") - runtime) / 1024)


def plain_step_mib(net: str, batch: int, opt: str) -> float:
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_plain_step, args=(net, batch, opt, q))
    p.start()
    out = q.get(timeout=600)
    p.join()
    return out


def run_case(spec: str, cap_gib: float, trace: bool) -> dict:
    from secure_lightning.runtime import PartyPool
    net, batch, opt = spec.split(":")
    plain = plain_step_mib(net, int(batch), opt)
    with PartyPool(timeout=600) as pool:
        res = pool.run(step_case, net, int(batch), opt, cap_gib, trace, timeout=3600)
    out = {"case": spec, "peak_mib_parties": [r["peak_mib"] for r in res], "plain_step_mib": round(plain, 1),
           "runtime_mib": max(r["runtime_mib"] for r in res), "seconds": max(r["seconds"] for r in res),
           "bytes_p0": res[0]["bytes"], "rounds": res[0]["rounds"], "params": res[0]["params"]}
    if trace:
        for what, rss, hwm in res[0]["trace"]:
            print(f"  {what:24s} rss {rss:6d} MiB  peak since the previous line {hwm:6d} MiB")
    return out


def main():
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--case", action="append", help="net:batch:optimizer, e.g. demo:32:adam (default: all cases)")
    p.add_argument("--cap-gib", type=float, default=6.0, help="stop a party above this resident size")
    p.add_argument("--trace", action="store_true", help="resident set after every layer (party 0)")
    a = p.parse_args()
    for spec in a.case or CASES:
        print(json.dumps(run_case(spec, a.cap_gib, a.trace)), flush=True)


if __name__ == "__main__":
    main()
