"""How users start RSS3PC, and the mistakes that would stop the parties (secure_lightning/launch_checks.py).

Scripts run as users run them (subprocesses): from stdin and in an interactive session (the parties are forked from
the launching process, as in a notebook), and three mistakes that must be refused before any party starts, with our
own message naming the file and line (never Lightning's advice to switch to an unprivate strategy).
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MODEL = textwrap.dedent("""
    import torch, pytorch_lightning as pl, secure_lightning
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class Regressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.mse_loss(self.net(x), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)
    """)

FIT = textwrap.dedent("""
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    trainer = pl.Trainer(strategy="rss3pc", max_steps=2, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(Regressor(), DataLoader(TensorDataset(x, y), batch_size=8))
    print("TRAINED", float(trainer.callback_metrics["loss"]))
    """)


def _python(args, stdin=None, cwd=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], input=stdin, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_script_from_stdin_trains():
    r = _python(["-"], stdin=MODEL + FIT)
    assert r.returncode == 0 and "TRAINED" in r.stdout, r.stderr[-3000:]


def test_interactive_session_trains(tmp_path):
    """`python -i` (sys.ps1 set, as in a REPL or a notebook kernel): the classes live only in __main__."""
    (tmp_path / "cells.py").write_text(MODEL + FIT)
    r = _python(["-i"], stdin="exec(compile(open('cells.py').read(), 'cell', 'exec'))\n", cwd=tmp_path)
    assert "TRAINED" in r.stdout, r.stderr[-3000:]


def _refused(tmp_path, source):
    (tmp_path / "script.py").write_text(source)
    r = _python(["script.py"], cwd=tmp_path, timeout=120)
    assert r.returncode != 0 and "TRAINED" not in r.stdout
    assert "ddp" not in r.stderr and "Can't get attribute" not in r.stderr, r.stderr[-3000:]
    return r.stderr


def test_unguarded_script_is_refused_naming_the_line(tmp_path):
    err = _refused(tmp_path, MODEL + FIT)
    line = (MODEL + FIT).splitlines().index("trainer.fit(Regressor(), DataLoader(TensorDataset(x, y), batch_size=8))")
    assert f"script.py:{line + 1}" in err and 'if __name__ == "__main__":' in err


@pytest.mark.slow  # ~15 s; the same pickling check as a module defined in a function (below)
def test_module_defined_under_the_main_guard_is_refused_naming_the_line(tmp_path):
    body = textwrap.indent(MODEL.replace("import torch, pytorch_lightning as pl, secure_lightning\n", "") + FIT,
                           "    ")
    source = "import torch, pytorch_lightning as pl, secure_lightning\n\nif __name__ == \"__main__\":\n" + body
    err = _refused(tmp_path, source)
    line = source.splitlines().index("    class Regressor(pl.LightningModule):") + 1
    assert f"script.py:{line}" in err and "Move the class above that block" in err


def test_module_defined_in_a_function_is_refused(tmp_path):
    source = ("import torch, pytorch_lightning as pl, secure_lightning\n\ndef main():\n"
              + textwrap.indent(MODEL.replace("import torch, pytorch_lightning as pl, secure_lightning\n", "") + FIT,
                                "    ")
              + "\n\nif __name__ == \"__main__\":\n    main()\n")
    err = _refused(tmp_path, source)
    assert "defined inside the function main" in err


def _descendants(pid: int) -> set[int]:
    """Live (non-zombie) descendants of pid, from /proc."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parent[int(d)] = int(fields[1])
    out, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parent.items() if p in frontier} - out
        out |= frontier
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # ~45 s: a real fit, killed
def test_parties_exit_when_the_launching_process_is_killed(tmp_path):
    """SIGKILL (or a scheduler's SIGTERM) gives the launcher no chance to stop its parties: each party watches the
    launching process and exits within about a second of it going, instead of training on for minutes."""
    import signal
    import time
    long_fit = FIT.replace("max_steps=2", "max_steps=100000").replace(
        "self.log(\"loss\", loss)", "self.log(\"loss\", loss)\n            print(\"STEP\", flush=True)")
    source = MODEL.replace("self.log(\"loss\", loss)", "self.log(\"loss\", loss)\n        print(\"STEP\", flush=True)")
    source += "\n\nif __name__ == \"__main__\":\n" + textwrap.indent(long_fit, "    ")
    (tmp_path / "script.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "script.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    parties: set[int] = set()
    try:
        for line in proc.stdout:  # the parties are training
            if line.startswith("STEP"):
                break
        parties = _descendants(proc.pid)
        assert len(parties) >= 3, parties
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(p) for p in parties):
            time.sleep(0.5)
        assert not any(_alive(p) for p in parties), [p for p in parties if _alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in parties | _descendants(proc.pid):
            if _alive(p):
                os.kill(p, signal.SIGKILL)
