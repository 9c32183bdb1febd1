"""`python -m benchmarks.run --exp crypten`: our secure runs beside CrypTen's on the same networks and batches.

Runs benchmarks/crypten/bench.py with the CrypTen venv's python (benchmarks/crypten/setup.sh makes it) and adds
crypten_s, crypten_bytes_*, crypten_rounds and crypten_vs_ours = crypten_s / secure_s to each row. If CrypTen cannot
be used, every row and the report say 'CrypTen not available: <reason>'.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENV_PYTHON = HERE / ".venv" / "bin" / "python"
UNAVAILABLE_MARK = HERE / ".venv" / "UNAVAILABLE"


def crypten_status(python: str | None = None) -> tuple[bool, str, str]:
    """(usable, reason, python). Usable means setup.sh finished and the venv's python exists."""
    py = Path(python) if python else VENV_PYTHON
    if python is None and UNAVAILABLE_MARK.exists():
        return False, UNAVAILABLE_MARK.read_text().strip(), str(py)
    if not py.exists():
        return False, f"no CrypTen venv at {py.parent.parent} (run `bash benchmarks/crypten/setup.sh`)", str(py)
    return True, "ok", str(py)


def add_crypten(rows: list[dict], cases, args, meta: dict) -> None:
    ok, reason, py = crypten_status(getattr(args, "crypten_python", None))
    if not ok:
        msg = f"CrypTen not available: {reason}"
        print(msg, flush=True)
        meta["crypten"] = msg
        for r in rows:
            r["crypten_status"] = msg
        return
    with tempfile.TemporaryDirectory(prefix="slcrypten") as tmp:
        cpath, opath = Path(tmp, "cases.json"), Path(tmp, "out.json")
        cpath.write_text(json.dumps([asdict(c) for c in cases]))
        cmd = [py, "-m", "benchmarks.crypten.bench", "--cases", str(cpath), "--out", str(opath),
               "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
        try:
            p = subprocess.run(cmd, cwd=str(REPO), timeout=args.case_timeout * max(len(cases), 1),
                               capture_output=True, text=True)
            failed = None if p.returncode == 0 else (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]
        except subprocess.TimeoutExpired:
            failed = "timed out"
        got = json.loads(opath.read_text()) if opath.exists() else []
    by_key = {tuple(g["case"].values()): g for g in got}
    meta["crypten"] = ("CrypTen 0.4.1 in benchmarks/crypten/.venv (torch.fx-converted networks, Beaver triples from "
                       "CrypTen's TFP provider, uncounted; bytes = 8 per element per send as CrypTen counts)")
    if failed:
        meta["crypten"] += f"; the CrypTen run failed: {failed}"
    for r in rows:
        g = by_key.get((r["net"], r["dataset"], r["mode"], r["batch"]))
        if g is None:
            r["crypten_status"] = f"CrypTen not available: {failed or 'no result'}"
            continue
        r["crypten_status"] = g["status"]
        for k in ("crypten_s", "crypten_bytes_p0", "crypten_bytes_total", "crypten_rounds"):
            if k in g:
                r[k] = g[k]
        if r.get("secure_s") and r.get("crypten_s"):
            r["crypten_vs_ours"] = r["crypten_s"] / r["secure_s"]
