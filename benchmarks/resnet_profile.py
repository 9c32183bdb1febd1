"""Where the time of one private ResNet-50 training step goes: the app's `model=resnet50` on 8x8 digits-shaped input.

    python -m benchmarks.resnet_profile [--batch 4] [--image 8] [--top 25] [--no-cprofile]
                                        [--out results/resnet50_profile_run]
    python -m benchmarks.resnet_profile --kernels [--batch 64]     # the int64 conv kernels alone (see kernel_times)

In each of three parties (loopback): models.nets.resnet50(in_channels=1, num_classes=10, stem_pool="avg") shared by
party 0, SGD(momentum 0.9, weight_decay 1e-4) as conf/model/resnet50.yaml but lr 0.01 (on random data lr 0.1 leaves
the fixed-point range within three steps; a public learning rate does not change the cost), the overflow guard on
(RSS3PC's default), standardised random inputs and int64 labels shared by party 0. A step: forward, cross-entropy,
opening the loss (as a logged loss), backward, optimizer step, guard check. Step 1 is a warm-up (it also creates the
momentum buffers); step 2 is timed per phase (slowest party's wall time, and the CPU time of each party) and, through
forward hooks, per layer type (party 0's clock and communication, labelled by layer type); step 3 runs party 0 under
cProfile (the other parties wait for it; not with --no-cprofile). The Lightning loop (logging, metrics, the
accuracy's argmax) is not included.

Reported: phase times and communication; forward time per layer type; cProfile's totals of the protocol functions
(`CATEGORIES`, cumulative: nested entries overlap) and its top functions by own time.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.run import _barrier, machine_info

# label: (file suffix, function name) whose cumulative time cProfile reports
CATEGORIES = {
    "conv forward (ops_linear.convolution)": ("tensor/ops_linear.py", "convolution"),
    "conv backward (ops_linear.convolution_backward)": ("tensor/ops_linear.py", "convolution_backward"),
    "  of which int64 conv kernels (gemm.conv2d)": ("secure_lightning/gemm.py", "conv2d"),
    "batch norm forward (BatchNormFn.forward)": ("tensor/batch_norm_fn.py", "forward"),
    "batch norm backward (BatchNormFn.backward)": ("tensor/batch_norm_fn.py", "backward"),
    "ReLU forward (ReLUFn.forward)": ("tensor/activations.py", "forward"),
    "ReLU backward (ReLUFn.backward)": ("tensor/activations.py", "backward"),
    "optimizer step (SGD.step)": ("torch/optim/sgd.py", "step"),
    "overflow guard check (guard.check)": ("protocols/guard.py", "check"),
    "truncations (arithmetic.truncate_additive)": ("protocols/arithmetic.py", "truncate_additive"),
    "communication rounds (Communicator.round)": ("secure_lightning/comm.py", "round"),
    "PRG (AesCtrPRG.ring)": ("secure_lightning/prg.py", "ring"),
}


def _type_of(module) -> str:
    name = type(module).__name__
    return name[len("Secure"):] if name.startswith("Secure") else name


def profile_job(party, batch: int, image: int, top: int, cprofile: bool = True, arch: str = "resnet50") -> dict:
    """Runs in each party: warm-up step, a timed step with per-layer-type forward hooks, a cProfiled step (party 0)."""
    import models.nets as nets
    from secure_lightning.nn import secure_module
    from secure_lightning.protocols import guard
    from secure_lightning.tensor import reveal_tensor, share_tensor

    torch.manual_seed(0)
    net = getattr(nets, arch)(num_classes=10, in_channels=1, stem_pool="avg")
    secure_module(net, party, owner=0)
    net.train()
    guard.enable(party)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(1)
    owner = party.rank == 0
    x = share_tensor(torch.randn(batch, 1, image, image, generator=g) if owner else None, 0, party)
    y = share_tensor(torch.randint(0, 10, (batch,), generator=g) if owner else None, 0, party, label="labels")

    t_guard, cpu0, cpu, overflow = [0.0], [0.0], {}, []

    def step(clock: dict, costs: dict):
        def phase(name, fn):
            t0, c0 = t_guard[0], cpu0[0] = time.perf_counter(), time.process_time()
            with party.comm.cost() as c:
                out = fn()
            clock[name] = time.perf_counter() - t0
            cpu[name] = time.process_time() - c0
            costs[name] = {"bytes": int(c.bytes), "rounds": int(c.rounds)}
            return out
        loss = phase("forward + loss", lambda: F.cross_entropy(net(x), y))
        phase("open the loss", lambda: reveal_tensor(loss.detach(), label="loss"))
        opt.zero_grad()
        phase("backward", loss.backward)
        phase("optimizer step", opt.step)
        try:
            phase("guard check", lambda: guard.check(party=party))
        except Exception as e:  # tiny batches: batch norm over a few values per channel may overflow; cost the same
            if type(e).__name__ != "FixedPointOverflowError":
                raise
            clock["guard check"] = time.perf_counter() - t_guard[0]
            cpu["guard check"] = time.process_time() - cpu0[0]
            costs["guard check"] = {"bytes": 0, "rounds": 0}
            overflow.append(str(e)[:300])

    step({}, {})  # warm-up
    # timed step, forward hooks per layer type
    layer_t, layer_c, stack, handles = defaultdict(float), {}, [], []
    for m in net.modules():
        if next(m.children(), None) is None:
            def pre(mod, args):
                cm = party.comm.label(f"layer:{_type_of(mod)}")
                cm.__enter__()
                stack.append((cm, time.perf_counter()))

            def post(mod, args, out):
                cm, t0 = stack.pop()
                layer_t[_type_of(mod)] += time.perf_counter() - t0
                cm.__exit__(None, None, None)
            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    _barrier()
    clock, costs = {}, {}
    cpu.clear()
    with party.comm.cost() as total:
        step(clock, costs)
    cpu_timed = dict(cpu)
    for h in handles:
        h.remove()
    for label, c in total.by_label.items():
        kind = next((p[len("layer:"):] for p in label.split("/") if p.startswith("layer:")), None)
        if kind:
            d = layer_c.setdefault(kind, {"bytes": 0, "rounds": 0})
            d["bytes"] += int(c.bytes)
            d["rounds"] += int(c.rounds)
    # cProfiled step (party 0)
    _barrier()
    prof = cProfile.Profile() if owner and cprofile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    if cprofile:
        step({}, {})
    if prof:
        prof.disable()
    profiled_s = time.perf_counter() - t0
    out = {"clock": clock, "cpu": cpu_timed, "costs": costs, "bytes_total": int(total.bytes),
           "rounds": int(total.rounds),
           "layer_time": dict(layer_t), "layer_comm": layer_c, "profiled_s": profiled_s, "overflow": overflow}
    if prof:
        st = pstats.Stats(prof)
        cats = {}
        for label, (suffix, fn) in CATEGORIES.items():
            cats[label] = sum(v[3] for (file, _line, name), v in st.stats.items()
                              if file.endswith(suffix) and name == fn)
        out["categories"] = cats
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
        out["top_tottime"] = buf.getvalue()
    return out


def kernel_times(arch: str, batch: int, image: int) -> dict:
    """--kernels: one process, one thread. For every conv of the network (shapes from a plain forward pass), the time
    of one int64 ring convolution of its forward pass, input gradient and weight gradient (a private product does two
    per party), with gemm.conv2d on explicitly padded operands (before conv_live) and with conv_live.conv2d; results
    checked equal. Returns {"gemm": [fwd, input grad, weight grad], "conv_live": [...]} in seconds."""
    import models.nets as nets
    from secure_lightning import gemm
    from secure_lightning.protocols import conv_live
    torch.set_num_threads(1)
    net, shapes = getattr(nets, arch)(num_classes=10, in_channels=1, stem_pool="avg"), []
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, a, o: shapes.append((a[0].shape, mod.weight.shape, mod.stride,
                                                                     mod.padding, o.shape)))
    net(torch.randn(batch, 1, image, image))
    g = torch.Generator().manual_seed(0)
    tot = {"gemm": [0.0, 0.0, 0.0], "conv_live": [0.0, 0.0, 0.0]}

    def timed(i, name, fn):
        t0 = time.perf_counter()
        out = fn()
        tot[name][i] += time.perf_counter() - t0
        return out
    for xs, ws, (sh, sw), (ph, pw), os_ in shapes:
        x, w, gy = (torch.randint(-2 ** 62, 2 ** 62, s, generator=g) for s in (xs, ws, os_))
        (n, _, h, wd), (cout, _, kh, kw), (ho, wo) = xs, ws, os_[-2:]
        d = torch.zeros(n, cout, (ho - 1) * sh + 1, (wo - 1) * sw + 1, dtype=torch.int64)
        d[:, :, ::sh, ::sw] = gy
        wt = w.transpose(0, 1).flip(-1, -2).contiguous()
        gpad = (kw - 1 - pw, wd - (wo - 1) * sw - 1 + pw, kh - 1 - ph, h - (ho - 1) * sh - 1 + ph)
        hn, wn = (ho - 1) * sh + kh, (wo - 1) * sw + kw
        xt, gt = x.transpose(0, 1).contiguous(), gy.transpose(0, 1).contiguous()
        xpad = (pw, wn - wd - pw, ph, hn - h - ph)
        for i, args in enumerate([(x, w, (sh, sw), (ph, pw), 1), (d, wt, 1, gpad, 1), (xt, gt, 1, xpad, (sh, sw))]):
            a, b, st, pad, dil = args
            ref = timed(i, "gemm", lambda: gemm.conv2d(F.pad(a, pad) if len(pad) == 4 else a, b, st,
                                                       0 if len(pad) == 4 else pad, dil))
            assert torch.equal(ref, timed(i, "conv_live", lambda: conv_live.conv2d(a, b, st, pad, dil)))
    return {"convs": len(shapes), **tot}


def markdown(res: list[dict], args, meta: dict) -> str:
    p0 = res[0]
    step_s = sum(max(r["clock"][k] for r in res) for k in p0["clock"])
    cpu_s = sum(sum(r["cpu"].values()) for r in res)
    m = meta["machine"]
    lines = [f"# One private {args.net} training step: batch {args.batch}, 1x{args.image}x{args.image} input", "",
             f"Machine: {m['cpu']}, {m['cores_usable']} usable cores; torch {m['torch']}; commit "
             f"{m.get('git_commit')}; load average {meta['load_avg']} (other jobs shared the cores). "
             f"Command: `python -m benchmarks.resnet_profile --net {args.net} --batch {args.batch} --image {args.image}"
             f"{' --no-cprofile' if args.no_cprofile else ''}`; secure_lightning from {meta['package']}.", "",
             f"Step (sum of the phases' slowest-party times): {step_s:.2f} s; CPU time of the three parties "
             f"{cpu_s:.2f} s (less sensitive to the machine's load than wall time); communication "
             f"{sum(r['bytes_total'] for r in res) / 1e6:.1f} MB over the three parties, {p0['rounds']} rounds.", "",
             "| phase | time (s, slowest party) | share | CPU (s, 3 parties) | P0 sent (MB) | rounds |",
             "|---|---|---|---|---|---|"]
    if p0["overflow"]:
        lines[-2:-2] = [f"The overflow guard reported overflow in {len(p0['overflow'])} of the steps (batch norm over "
                        f"few values per channel at this batch; the step's work is the same): "
                        f"{p0['overflow'][0][:200]}...", ""]
    for k in p0["clock"]:
        t = max(r["clock"][k] for r in res)
        lines.append(f"| {k} | {t:.2f} | {100 * t / step_s:.0f}% | {sum(r['cpu'][k] for r in res):.2f} | "
                     f"{p0['costs'][k]['bytes'] / 1e6:.1f} | {p0['costs'][k]['rounds']} |")
    fwd = sum(p0["layer_time"].values())
    lines += ["", "Forward pass by layer type (party 0's clock; communication labelled by layer):", "",
              "| layer type | time (s) | share of forward | P0 sent (MB) | rounds |", "|---|---|---|---|---|"]
    for k, t in sorted(p0["layer_time"].items(), key=lambda kv: -kv[1]):
        c = p0["layer_comm"].get(k, {"bytes": 0, "rounds": 0})
        lines.append(f"| {k} | {t:.2f} | {100 * t / fwd:.0f}% | {c['bytes'] / 1e6:.1f} | {c['rounds']} |")
    cats = p0.get("categories")
    if not cats:
        return "\n".join(lines + [""])
    lines += ["", f"cProfile of party 0, one more step ({p0['profiled_s']:.1f} s under the profiler), cumulative "
                  "time of the protocol functions (nested entries overlap):", "",
              "| function | cumulative (s) | share of step |", "|---|---|---|"]
    for k, v in cats.items():
        lines.append(f"| {k} | {v:.2f} | {100 * v / p0['profiled_s']:.0f}% |")
    lines += ["", "Top functions by own time (party 0, cProfile):", "", "```", p0.get("top_tottime", "").strip(),
              "```", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.resnet_profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--net", default="resnet50", choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    ap.add_argument("--image", type=int, default=8)
    ap.add_argument("--top", type=int, default=25, help="functions listed by own time")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--no-cprofile", action="store_true", help="skip the cProfiled step (phase and layer times only)")
    ap.add_argument("--kernels", action="store_true", help="only time the network's int64 conv kernels, one process")
    ap.add_argument("--out", default=os.path.join("results", "resnet50_profile_run"),
                    help="output path without extension (.md, .json)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.kernels:
        k = kernel_times(args.net, args.batch, args.image)
        print(f"{args.net}, batch {args.batch}, {k['convs']} convs: one int64 ring conv per pass, seconds "
              "(forward, input grad, weight grad, total):")
        for name in ("gemm", "conv_live"):
            print(f"  {name:9s}: " + ", ".join(f"{t:.2f}" for t in k[name]) + f"; {sum(k[name]):.2f}")
        return k
    from secure_lightning.runtime import PartyPool
    from benchmarks import resnet_profile as this  # pickled by reference, not as __main__
    with PartyPool(timeout=args.timeout) as pool:
        res = pool.run(this.profile_job, args.batch, args.image, args.top, not args.no_cprofile, args.net,
                       timeout=args.timeout)
    import secure_lightning
    meta = {"machine": machine_info(), "load_avg": round(os.getloadavg()[0], 2), "batch": args.batch,
            "image": args.image, "package": str(Path(secure_lightning.__file__).parent)}
    text = markdown(res, args, meta)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "parties": res}, indent=1))
    return {"parties": res, "meta": meta}


if __name__ == "__main__":
    main()
