"""Starting parties and surviving failures: dead or stuck parties end in a clear error within the timeout, the pool
restarts itself, and one-party-per-host start-up from environment variables works."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from secure_lightning import runtime
from secure_lightning.protocols.arithmetic import mul
from secure_lightning.protocols.sharing import reveal_float, share

TIMEOUT = 5.0  # the short-timeout pool's communication timeout (seconds)


def _square_ones(party):
    x = share(torch.ones(4) if party.rank == 0 else None, 0, party=party)
    return reveal_float(mul(x, x, party=party), party=party)


def _dies_mid_protocol(party, victim):
    x = share(torch.ones(4) if party.rank == 0 else None, 0, party=party)
    if party.rank == victim:
        os._exit(1)
    return reveal_float(mul(x, x, party=party), party=party)


def _stuck_mid_protocol(party, victim, seconds):
    x = share(torch.ones(4) if party.rank == 0 else None, 0, party=party)
    if party.rank == victim:
        time.sleep(seconds)
    return reveal_float(mul(x, x, party=party), party=party)


def _run_expecting_failure(pool, fn, *args):
    t0 = time.monotonic()
    with pytest.raises(runtime.PartyError) as info:
        pool.run(fn, *args)
    return str(info.value), time.monotonic() - t0


@pytest.fixture(scope="module")
def short_pool():
    pool = runtime.PartyPool(timeout=TIMEOUT)
    pool.start()
    yield pool
    pool.close()


def test_dead_party_gives_clear_error_and_pool_recovers(short_pool):
    assert torch.equal(short_pool.run(_square_ones)[0], torch.ones(4, dtype=torch.float64))
    msg, elapsed = _run_expecting_failure(short_pool, _dies_mid_protocol, 2)
    assert elapsed < TIMEOUT + runtime.ERROR_GRACE_S + 5, elapsed
    assert "_dies_mid_protocol failed in 3 parties" in msg
    assert "--- party 2: process died (exit code 1)" in msg
    for r in (0, 1):  # the survivors name the peer they lost and where
        line = msg.split(f"--- party {r}: ")[1].splitlines()[0]
        assert line.startswith("PartyTimeoutError") and "with party 2" in line and "mul/truncate" in line, line
    assert not short_pool.alive
    # the next call starts three fresh parties
    assert torch.equal(short_pool.run(_square_ones)[1], torch.ones(4, dtype=torch.float64))


def test_stuck_party_times_out_and_pool_recovers(short_pool):
    msg, elapsed = _run_expecting_failure(short_pool, _stuck_mid_protocol, 1, 6 * TIMEOUT)
    assert TIMEOUT - 0.5 < elapsed < TIMEOUT + runtime.ERROR_GRACE_S + 5, elapsed  # not the 30 s the party sleeps
    assert "PartyTimeoutError" in msg and f"timeout {TIMEOUT:g}s" in msg
    assert "--- party 1: still running" in msg
    assert torch.equal(short_pool.run(_square_ones)[2], torch.ones(4, dtype=torch.float64))


def _raises_on_one_party(party):
    if party.rank == 0:
        raise KeyError("boom")
    return _square_ones(party)


def test_exception_in_one_party_is_reported_with_traceback(short_pool):
    msg, elapsed = _run_expecting_failure(short_pool, _raises_on_one_party)
    assert "--- party 0: KeyError: 'boom'" in msg and "Traceback" in msg
    assert elapsed < TIMEOUT + runtime.ERROR_GRACE_S + 5
    assert not short_pool.alive  # (restarting on the next call is tested above)


# ---------------------------------------------------------------------------------------------------------------------
# one party per host: RANK, MASTER_ADDR, MASTER_PORT, WORLD_SIZE

PARTY_SCRIPT = """
import json, torch
from secure_lightning.runtime import connect_from_env
from secure_lightning.protocols.arithmetic import mul
from secure_lightning.protocols.sharing import reveal_float, share
party = connect_from_env(timeout=60)
x = share(torch.tensor([1.5, -2.0, 3.25]) if party.rank == 0 else None, 0, party=party)
y = share(torch.tensor([4.0, 0.5, -1.0]) if party.rank == 1 else None, 1, party=party)
z = reveal_float(mul(x, y, party=party), party=party)
print("RESULT", json.dumps({"rank": party.rank, "z": z.tolist()}))
"""


def _env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "NODE_RANK", "WORLD_SIZE")}
    env.update({k: str(v) for k, v in kw.items()})
    return env


def test_connect_from_env_three_processes():
    port = runtime.free_port()
    procs = [subprocess.Popen([sys.executable, "-c", PARTY_SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=_env(RANK=r, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=3))
             for r in range(3)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-2000:]
            outs.append(json.loads(out.split("RESULT", 1)[1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert sorted(o["rank"] for o in outs) == [0, 1, 2]
    for o in outs:
        assert torch.allclose(torch.tensor(o["z"]), torch.tensor([6.0, -1.0, -3.25]), atol=1e-5)


@pytest.mark.parametrize("env,words", [
    (dict(RANK=0, WORLD_SIZE=4, MASTER_ADDR="127.0.0.1", MASTER_PORT=1), "WORLD_SIZE=4: secure_lightning runs exactly 3"),
    (dict(WORLD_SIZE=3, MASTER_ADDR="127.0.0.1", MASTER_PORT=1), "set RANK"),
    (dict(RANK=3, WORLD_SIZE=3, MASTER_ADDR="127.0.0.1", MASTER_PORT=1), "set RANK"),
    (dict(RANK=1, WORLD_SIZE=3, MASTER_PORT=1), "set MASTER_ADDR"),
])
def test_connect_from_env_refuses_bad_environment(monkeypatch, env, words):
    for k in ("RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    with pytest.raises(RuntimeError, match=words):
        runtime.connect_from_env()

