"""The benchmark runner end to end on a tiny configuration, and the network-namespace helper.

The secure run is real (three party processes over loopback): LeNet inference, batch 1, one step, no warm-up.
We check that the Markdown table, CSV and JSON are written and that bytes and rounds are positive; exact protocol
costs are tested where the protocols are.
"""
import csv
import json
import os
import subprocess
import sys

import pytest

from benchmarks import netns
from benchmarks import run as bench


@pytest.mark.slow  # ~20 s; the peers and transformer benchmarks keep default tests
def test_runner_tiny_lenet_inference_writes_outputs(tmp_path):
    out = bench.main(["--exp", "inference_all", "--nets", "lenet", "--repeats", "1", "--warmup", "0",
                      "--out", str(tmp_path), "--name", "tiny", "--per-layer", "--case-timeout", "240",
                      "--comm-timeout", "120"])
    rows = out["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "ok", row.get("error_detail", row["status"])
    assert row["net"] == "lenet" and row["input"] == "1x28x28" and row["batch"] == 1
    assert row["bytes_total"] > 0 and row["rounds"] > 0
    assert row["bytes_total"] == row["bytes_p0"] + row["bytes_p1"] + row["bytes_p2"]
    assert row["bytes_max_party"] == max(row["bytes_p0"], row["bytes_p1"], row["bytes_p2"])
    assert row["secure_s"] > 0 and row["plain_s"] > 0 and row["slowdown"] > 0
    assert row["peak_rss_mib"] > 0
    assert row["est_wan_s"] > row["est_lan_s"] >= row["secure_s"]
    # per-layer: forward layers carry the communication of the forward pass
    layers = row["layers_p0"]
    assert any("ReLU" in lr["type"] and lr["bytes"] > 0 and lr["rounds"] > 0 for lr in layers)
    assert sum(lr["bytes"] for lr in layers) == row["bytes_p0"]

    md = (tmp_path / "tiny.md").read_text()
    assert "| lenet | mnist 1x28x28 | inference | 1 |" in md
    assert "AMD" in md or "Intel" in md or "cores" in md  # machine description
    assert "Per-layer breakdown" in md
    with open(tmp_path / "tiny.csv") as f:
        recs = list(csv.DictReader(f))
    assert int(recs[0]["bytes_total"]) > 0 and int(recs[0]["rounds"]) > 0
    data = json.loads((tmp_path / "tiny.json").read_text())
    assert data["meta"]["machine"]["torch"] and data["meta"]["machine"]["cores"] >= 1
    assert data["rows"][0]["bytes_total"] == row["bytes_total"]
    assert (tmp_path / "tiny_layers.csv").exists()
    if "matplotlib" in sys.modules or _has_matplotlib():
        assert (tmp_path / "tiny.png").stat().st_size > 1000


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def test_plain_experiment_needs_no_parties(tmp_path):
    out = bench.main(["--exp", "train_plain", "--quick", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path),
                      "--no-plot"])
    assert out["rows"][0]["plain_s"] > 0
    assert (tmp_path / "train_plain_quick.md").exists()


def test_cases_follow_the_paper():
    train = {(c.net, c.dataset): c.batch for c in bench.TRAIN_ALL}
    assert train == {("lenet", "mnist"): 128, ("alexnet", "cifar10"): 128, ("vgg16", "cifar10"): 32,
                     ("alexnet", "tinyimagenet"): 128, ("vgg16", "tinyimagenet"): 8}
    assert all(c.batch == 1 for c in bench.INFERENCE_ALL)
    assert {c.net for c in bench.INFERENCE_ALL if c.dataset == "imagenet"} == {"resnet50", "resnet101", "resnet152"}
    for c in bench.INFERENCE_ALL + bench.TRAIN_ALL:  # every network builds for its input shape
        if c.dataset != "imagenet":
            import torch
            x = torch.zeros(1, *c.shape)
            assert bench.build_net(c.net, c.dataset)(x).shape == (1, c.classes)


def test_netns_availability_reports_a_reason(monkeypatch, tmp_path):
    ok, why = netns.availability()
    assert isinstance(ok, bool) and isinstance(why, str) and why
    if os.geteuid() != 0:
        assert not ok and "root" in why
    # without iproute2 on PATH it must say so (or that we are not root), never raise
    monkeypatch.setenv("PATH", str(tmp_path))
    ok2, why2 = netns.availability()
    assert not ok2 and ("iproute2" in why2 or "root" in why2)


def test_netns_unavailable_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match="network namespaces are not available"):
        bench.main(["--exp", "inference_all", "--nets", "lenet", "--net", "lan", "--repeats", "1",
                    "--warmup", "0", "--out", str(tmp_path), "--no-plain", "--no-plot"])


@pytest.mark.skipif(not netns.availability()[0], reason="network namespaces not available (needs root + iproute2)")
def test_netns_three_namespaces_connect_and_are_removed():
    with netns.PartyNetwork("wan") as net:
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert all(net.ns(r) in names for r in range(3))
        # a TCP connection from party 2's namespace to party 0's address, through the shaped bridge
        server = subprocess.Popen(net.exec_prefix(0) + [sys.executable, "-c", (
            "import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
            f"s.bind(('{net.addr(0)}', 5299)); s.listen(1); c,_=s.accept(); c.sendall(c.recv(16)); c.close()")])
        try:
            client = (f"import socket,time\nfor i in range(50):\n    try:\n"
                      f"        s=socket.create_connection(('{net.addr(0)}', 5299), timeout=2); break\n"
                      f"    except OSError: time.sleep(0.1)\n"
                      f"s.sendall(b'ping'); print(s.recv(16).decode())")
            got = subprocess.run(net.exec_prefix(2) + [sys.executable, "-c", client], capture_output=True,
                                 text=True, timeout=30)
            assert got.stdout.strip() == "ping", got.stderr
        finally:
            server.kill()
            server.wait()
        assert "tbf" in net.qdisc_stats()[0] and "100Mbit" in net.qdisc_stats()[0]
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(net.ns(r) in names for r in range(3)) and net.bridge_ns not in names


@pytest.mark.slow
@pytest.mark.skipif(not netns.availability()[0], reason="network namespaces not available (needs root + iproute2)")
def test_runner_lan_namespaces_tiny(tmp_path):
    out = bench.main(["--exp", "inference_all", "--nets", "lenet", "--net", "lan", "--repeats", "1", "--warmup", "0",
                      "--out", str(tmp_path), "--no-plot", "--case-timeout", "240", "--comm-timeout", "120"])
    row = out["rows"][0]
    assert row["status"] == "ok", row.get("error_detail")
    assert row["rounds"] > 0 and row["modeled_s"] == pytest.approx(row["secure_s"] + row["rounds"] * 0.2e-3)


def test_crypten_missing_is_reported(tmp_path):
    from benchmarks.crypten.compare import crypten_status
    ok, why, _ = crypten_status(str(tmp_path / "no-such-python"))
    assert not ok and "setup.sh" in why


# ---- benchmarks/peers.py: the comparison with the three-party peers ----------------------------------------------

def _reference_costs(party, n: int) -> dict:
    """The timed parts of two peers tasks, written out here and measured with party.comm.cost() directly: the guard
    on as under the strategy, its pending samples checked before each opening and after the step."""
    import torch
    import torch.nn.functional as F
    from benchmarks.lenet_cost import build_lenet
    from secure_lightning.nn import secure_module
    from secure_lightning.protocols import guard
    from secure_lightning.tensor import reveal_tensor, share_tensor
    owner, out = party.rank == 0, {}
    with guard.enabled(party):
        w = share_tensor(torch.rand(n, n) if owner else None, 0, party)
        x = share_tensor(torch.rand(n, n) if owner else None, 0, party)
        with party.comm.cost() as c:
            y = x @ w
            guard.check(party=party)
            reveal_tensor(y, to=0)
        out["matmul-1000"] = (c.bytes, c.rounds)
        net = build_lenet("max")
        secure_module(net, party, owner=0)
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        with party.comm.cost() as c:
            xs = share_tensor(torch.rand(2, 1, 28, 28) if owner else None, 0, party)
            ys = share_tensor(F.one_hot(torch.tensor([3, 7]), 10).float() if owner else None, 0, party)
            opt.zero_grad()
            loss = F.cross_entropy(net(xs), ys)
            guard.check(party=party)
            reveal_tensor(loss.detach())
            loss.backward()
            opt.step()
            guard.check(party=party)
        out["lenet-max-train-b64"] = (c.bytes, c.rounds)
    return out


def test_peers_tasks_report_the_comm_cost_figures(parties, tmp_path):
    """One repeat of the matmul (8x8) and of the LeNet-max training step (batch 2) through the command's core: bytes
    (total and per party) and rounds are exactly what party.comm.cost() gives for the same operations."""
    from benchmarks import peers
    from tests import test_benchmarks as this
    runner = peers.TaskRunner(pool=parties, timeout=240)
    res = peers.measure(["matmul-1000", "lenet-max-train-b64"], [runner], repeats=1, warmup=0, size=None,
                        log=lambda *a: None, sizes={"matmul-1000": 8, "lenet-max-train-b64": 2})
    ref = parties.run(this._reference_costs, 8)
    for name, row in res["new"].items():
        assert row["bytes_per_party"] == [r[name][0] for r in ref]
        assert row["bytes_total"] == sum(r[name][0] for r in ref)
        assert row["rounds"] == ref[0][name][1] == ref[1][name][1] == ref[2][name][1]
        assert row["seconds"] > 0 and len(row["seconds_repeats"]) == 1 and not row["cost_varies"]
        assert all(m > 0 for m in row["peak_rss_mib_per_party"])
    result = {"meta": {"repeats": 1, "warmup": 0, "vs": "HEAD", "machine": machine_stub(), "load_avg_start": 0,
                       "load_avg_end": 0}, "sides": {"new": res["new"], "old": res["new"]}}
    md = peers.markdown(result)
    assert "| matmul-1000 | 0.98 | 52 |" in md and "old/new time" in md and "| 1.00 |" in md


def machine_stub():
    return {"cpu": "cpu", "cores_usable": 2, "memory_gib": 1, "torch": "x", "git_commit": "abc"}


def test_peers_materializes_an_older_package():
    from benchmarks import peers
    with peers.materialize("HEAD") as root:
        assert (root / "secure_lightning" / "__init__.py").exists()
        assert not (root / "benchmarks").exists()  # the task code stays this tree's


@pytest.mark.slow  # ~15 s: extracts a commit and imports it in a subprocess
def test_peers_old_side_imports_the_older_package():
    """--vs: the serving process imports secure_lightning from the extracted commit, not from this tree."""
    from benchmarks import peers
    with peers.materialize("HEAD") as root:
        side = peers.ServeSide("old", root)
        try:
            assert side.package == str(root / "secure_lightning")
        finally:
            side.close()


def test_peer_table_lists_a_task_without_peer_figures():
    """resnet50-train (run by name for side-by-sides) has no peer figure: its row shows ours and dashes."""
    from benchmarks import peers
    row = {"seconds": 98.0, "seconds_repeats": [98.0], "bytes_total": 2.5e9, "rounds": 4157,
           "peak_rss_mib_per_party": [5310, 5200, 5190]}
    lines = peers.peer_table({"resnet50-train": row, "matmul-1000": row})
    assert lines[2] == "| resnet50-train | - | - | 98 | 2500.000 | 4157 | 5310/5200/5190 | - | - |"
    assert lines[3].startswith("| matmul-1000 | 0.98 | 52 | 98 |") and lines[3].endswith("over |")
    assert "resnet50-train" in peers.TASKS and "resnet50-train" not in peers.PEERS
