"""Wall time of private LeNet inference (batch 1 and 64, avg and max pooling) and one LeNet training step.

    python -m benchmarks.lenet_speed [--repeats 5] [--cases avg1,max1,avg64,max64,train64] [--profile FILE]

Each case runs `1 + repeats` steps in the three parties (the first is a warm-up); a barrier (torch.distributed, not
counted) starts every step, and a step's time is the slowest party's. Printed per case: the median step time, the
rounds of one step (the same on every party) and the time per round (median / rounds). `--profile FILE` writes
party 0's cProfile of the timed steps (pstats format). Inputs and weights are random: only time is measured.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

CASES = {"avg1": ("avg", 1, False), "max1": ("max", 1, False), "avg64": ("avg", 64, False),
         "max64": ("max", 64, False), "train64": ("avg", 64, True)}


def party_job(party, cases: list, repeats: int, profile: bool):
    import cProfile
    import io
    import marshal
    import torch.distributed as dist
    from benchmarks.lenet_cost import build_lenet
    from secure_lightning.nn import secure_module
    from secure_lightning.tensor import share_tensor
    prof = cProfile.Profile() if profile and party.rank == 0 else None
    out = {}
    for case in cases:
        pool, batch, train = CASES[case]
        net = build_lenet(pool)
        secure_module(net, party, owner=0)
        g = torch.Generator().manual_seed(1)
        mine = party.rank == 0
        x = share_tensor(torch.rand(batch, 1, 28, 28, generator=g) if mine else None, 0, party, label="x")
        y = F.one_hot(torch.randint(0, 10, (batch,), generator=g), 10).float()
        ys = share_tensor(y if mine else None, 0, party, label="y")
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        times, rounds = [], 0
        for i in range(repeats + 1):
            dist.barrier()
            if prof is not None and i:
                prof.enable()
            t = time.perf_counter()
            with party.comm.cost() as c:
                if train:
                    net.train()
                    loss = F.cross_entropy(net(x), ys)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                else:
                    net.eval()
                    with torch.no_grad():
                        net(x)
            dt = time.perf_counter() - t
            if prof is not None:
                prof.disable()
            if i:
                times.append(dt)
            rounds = c.rounds
        out[case] = {"times": times, "rounds": rounds}
    if prof is not None:
        prof.create_stats()
        out["profile"] = marshal.dumps(prof.stats)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--profile", default=None)
    args = ap.parse_args(argv)
    from secure_lightning.runtime import PartyPool
    cases = args.cases.split(",")
    with PartyPool(timeout=600) as parties:
        res = parties.run(party_job, cases, args.repeats, bool(args.profile), timeout=3600)
    for case in cases:
        per_step = [max(p[case]["times"][i] for p in res) for i in range(args.repeats)]
        med, rounds = statistics.median(per_step), res[0][case]["rounds"]
        print(f"{case:8s} median {med * 1e3:9.1f} ms  min {min(per_step) * 1e3:9.1f} ms  rounds {rounds:4d}  "
              f"{med / rounds * 1e3:6.2f} ms/round", flush=True)
    if args.profile:
        with open(args.profile, "wb") as f:
            f.write(res[0]["profile"])


if __name__ == "__main__":
    main()
