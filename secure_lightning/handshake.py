"""The start-up handshake: the three parties check that they run the same session before anything secret moves.

Each party publishes its settings over the public channel (secure_lightning.channel, message kind "handshake"):
package version, fixed-point fractional bits, the PRG kind ("aes-128-ctr" or the insecure torch generator), the
reveal policy, the roles, the overflow guard, and the model's parameter and buffer names and shapes. Every party
compares the three and, if they differ, raises `HandshakeError` naming each field that differs and what each party
has; all three raise the same error at the same point. Parties started with different settings would otherwise
compute garbage (frac_bits), mix a predictable generator into the shares (PRG kind) or open under different
policies.

Cost: 6 rounds (each party publishes once); each party sends its settings (a few hundred bytes plus about 40 bytes
per model entry) to both peers.
"""
from __future__ import annotations

from typing import Any, Optional

FIELD_NAMES = {"version": "package version", "frac_bits": "frac_bits", "prg": "PRG kind",
               "policy": "reveal policy", "data_owner": "data_owner", "model_owner": "model_owner",
               "overflow_guard": "overflow_guard", "model": "model parameters (names and shapes)"}

SECURE_PRG = "aes-128-ctr"
INSECURE_PRG = "insecure-torch-mt19937"


class HandshakeError(ValueError):
    """The parties were started with different settings (raised on every party, naming the fields)."""


def package_version() -> str:
    try:
        import importlib.metadata
        return importlib.metadata.version("secure_lightning")
    except Exception:  # pragma: no cover - not installed as a package
        return "unknown"


def session_fields(*, frac_bits: int, insecure_prg: bool, policy, data_owner: int, model_owner: int,
                   overflow_guard: bool, module=None) -> dict:
    """This party's handshake fields (plain JSON-able data)."""
    model: Optional[dict] = None
    if module is not None:
        model = {k: list(v.shape) for k, v in module.state_dict().items()}
    return {"version": package_version(), "frac_bits": int(frac_bits),
            "prg": INSECURE_PRG if insecure_prg else SECURE_PRG,
            "policy": {"rules": dict(policy.rules), "data_owner": policy.data_owner,
                       "model_owner": policy.model_owner},
            "data_owner": int(data_owner), "model_owner": int(model_owner), "overflow_guard": bool(overflow_guard),
            "model": model}


def _show(field: str, value: Any) -> str:
    if field == "model" and isinstance(value, dict):
        return f"{len(value)} entries"
    return repr(value)


def compare(all_fields: list) -> None:
    """Raise HandshakeError if the parties' fields (list indexed by party) differ."""
    keys = list(dict.fromkeys(k for f in all_fields for k in f))
    lines = []
    for k in keys:
        vals = [f.get(k) for f in all_fields]
        if all(v == vals[0] for v in vals):
            continue
        what = FIELD_NAMES.get(k, k)
        detail = ", ".join(f"party {r}: {_show(k, v)}" for r, v in enumerate(vals))
        if k == "model" and all(isinstance(v, dict) for v in vals):
            names = sorted(set().union(*vals))
            diff = [n for n in names if len({repr(v.get(n)) for v in vals}) > 1]
            detail += "; first difference " + ", ".join(
                f"{diff[0]!r} party {r}: {v.get(diff[0])}" for r, v in enumerate(vals))
        lines.append(f"{what} differs ({detail})")
    if lines:
        raise HandshakeError("RSS3PC handshake failed: the three parties were started with different settings: "
                             + "; ".join(lines) + ". Start every party with the same settings and model.")


def handshake(channel, fields: dict) -> list:
    """Every party publishes `fields`; all compare. Returns the three parties' fields (by party)."""
    rank = channel.party.rank
    got = []
    for src in range(3):
        got.append(channel.publish("handshake", fields if src == rank else None, src, label="setup/handshake"))
    compare(got)
    return got
