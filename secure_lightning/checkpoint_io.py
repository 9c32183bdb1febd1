"""Checkpoint files of the RSS3PC strategy, as a Lightning CheckpointIO plugin: one share file per party.

Party r writes its shares to `<path>.party<r>` and the public part of the checkpoint (no weights, no optimizer
states, no shares) to `<path>`, both atomically (temporary file + rename: readers never see a partial file).
`save_plaintext` writes the model owner's opened weights to `<path>.plain` (a plain Lightning checkpoint). Shares
travel in checkpoints as blobs `{"__rss3pc_shares__": True, "cur", "prev", "dtype}` (`to_blobs` / `from_blobs`).
Every file here is written and read by the same party: nothing crosses to a peer.

Plain PyTorch / Lightning given the public part (`Model.load_from_checkpoint(path)`, `trainer.test(ckpt_path=path)`
without RSS3PC) must not load anything silently: its "state_dict" maps every weight name to an empty tensor (a size
mismatch, which torch raises even with strict=False) plus one key that says what the file is and where a plaintext
comes from (`SECURE_CHECKPOINT_NOTE`); `secure_checkpoint_note(path)` gives the same text to apps.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Optional

import torch
from lightning_fabric.plugins import CheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection

from .protocols.sharing import Shares
from .tensor import SharedTensor

_BLOB = "__rss3pc_shares__"
FORMAT = 2  # 2: Adam/AdamW/RMSprop moments bias-corrected at their own scales (protocols/adaptive.py)


def party_path(path, rank: int) -> str:
    """The file holding party `rank`'s shares of the checkpoint `path`."""
    return f"{os.fspath(path)}.party{rank}"


def checkpoint_base(path) -> str:
    """The checkpoint a file belongs to: `x.ckpt.party1` and `x.ckpt.plain` -> `x.ckpt` (Lightning's "last" lookup
    lists every file whose name contains "last", our per-party files included)."""
    return re.sub(r"\.(party[0-2]|plain)$", "", os.fspath(path))


SECURE_CHECKPOINT_NOTE = (
    "THIS IS A secure_lightning SHARE CHECKPOINT (public part only): the weights are secret-shared in {base}.party0, "
    ".party1 and .party2. Resume it with Trainer(strategy='rss3pc'); for plain PyTorch or Lightning load the model "
    "owner's plaintext export {base}.plain, written with RSS3PC(export_plaintext=True) or "
    "trainer.strategy.export_plaintext(path) when the reveal policy opens the weights to the model owner")


def secure_checkpoint_note(path) -> Optional[str]:
    """The explanation above for the public part of a share checkpoint, None for any other checkpoint file."""
    try:
        ckpt = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception:
        return None
    meta = ckpt.get("secure_lightning") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or meta.get("plaintext") or meta.get("party", -1) is not None:
        return None
    return SECURE_CHECKPOINT_NOTE.format(base=os.path.basename(checkpoint_base(path)))


def _public_state_dict(state_dict: dict, path) -> dict:
    """What plain torch finds under "state_dict" in the public part: empty tensors and the note (see above)."""
    out = {k: torch.empty(0) for k in state_dict}
    out[SECURE_CHECKPOINT_NOTE.format(base=os.path.basename(os.fspath(path)))] = torch.empty(0)
    return out


def _atomic_save(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: readers never see a partial file."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class ShareCheckpointIO(CheckpointIO):
    """Reads and writes this party's share files (see the module docstring). `bind(rank, frac_bits)` inside a
    party before use; the strategy does it when the party connects."""

    def __init__(self):
        self.rank: Optional[int] = None
        self.frac_bits: Optional[int] = None

    def bind(self, rank: int, frac_bits: int) -> None:
        self.rank, self.frac_bits = int(rank), int(frac_bits)

    def _need_rank(self) -> int:
        if self.rank is None:
            raise RuntimeError("RSS3PC: checkpoints are written and read by the parties (inside fit/validate/...)")
        return self.rank

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Optional[Any] = None) -> None:
        """`checkpoint` with its shares as blobs (to_blobs): all of it to `<path>.party<r>`, its public part to
        `<path>`."""
        if storage_options is not None:
            raise TypeError("ShareCheckpointIO.save_checkpoint does not take storage_options")
        r = self._need_rank()
        meta = {"party": r, "frac_bits": self.frac_bits, "format": FORMAT,
                "share_files": [os.path.basename(party_path(path, p)) for p in range(3)]}
        full = dict(checkpoint)
        full["secure_lightning"] = meta
        _atomic_save(full, party_path(path, r))
        public = {k: strip_blobs(v) for k, v in full.items() if k not in ("state_dict", "optimizer_states")}
        public["state_dict"] = _public_state_dict(full.get("state_dict") or {}, path)
        public["secure_lightning"] = dict(meta, party=None,
                                          note="public part only: the shares are in the .party<r> files")
        _atomic_save(public, os.fspath(path))

    def save_plaintext(self, checkpoint: dict, state_dict: dict, path) -> None:
        """A plain Lightning checkpoint with the opened `state_dict` and the public part of `checkpoint`."""
        out = {k: strip_blobs(v) for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        out["state_dict"] = state_dict
        out["secure_lightning"] = {"plaintext": True, "frac_bits": self.frac_bits}
        _atomic_save(out, os.fspath(path))

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict:
        """This party's share file of the checkpoint `path` (its base name), checked to be this party's and to use
        this run's fractional bits."""
        r = self._need_rank()
        path = party_path(checkpoint_base(path), r)
        if not os.path.exists(path):
            raise FileNotFoundError(f"party {r}: share file {path} not found (an RSS3PC checkpoint is one file per "
                                    f"party, <path>.party<r>; pass the path without the suffix)")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # this party's own file
        meta = ckpt.get("secure_lightning") or {}
        if meta.get("party") != r:
            raise ValueError(f"party {r}: {path} holds the shares of party {meta.get('party')}")
        if meta.get("frac_bits") != self.frac_bits:
            raise ValueError(f"party {r}: {path} uses {meta.get('frac_bits')} fractional bits, this run "
                             f"{self.frac_bits}")
        if meta.get("format", 1) < 2 and _has_adaptive_state(ckpt.get("optimizer_states", ())):
            raise ValueError(f"party {r}: {path} was written before format 2 and holds Adam/AdamW/RMSprop state as "
                             "torch's raw moments at 2^f; this version keeps them bias-corrected at other scales "
                             "(tensor/optim_adaptive.py), so resuming would misread them. Resume the weights only "
                             "(load the state_dict) and let the optimizer start afresh")
        return ckpt

    def load_agreed(self, path, agree: Callable[[bool, str], None]) -> dict:
        """Collective load: every party reads its share file, then all learn whether all three succeeded (`agree`,
        PublicChannel.agree: 1 round) so that a missing or refused file stops every party, not one."""
        ckpt, err = None, None
        try:
            ckpt = self.load_checkpoint(path)
        except Exception as e:
            err = e
        agree(err is None, f"loading checkpoint {path}")
        if err is not None:
            raise err
        return ckpt

    def remove_checkpoint(self, path) -> None:
        r = self._need_rank()
        for p in (party_path(path, r), os.fspath(path), f"{os.fspath(path)}.plain"):
            try:
                os.remove(p)
            except FileNotFoundError:
                pass


def _has_adaptive_state(optimizer_states) -> bool:
    return any(isinstance(st, dict) and any(isinstance(v, dict) and ("exp_avg_sq" in v or "square_avg" in v)
                                            for v in (st.get("state") or {}).values())
               for st in optimizer_states)


# ---------------------------------------------------------------------------------------------------------------------
# Share blobs

def to_blobs(obj):
    """Replace each SharedTensor by {_BLOB: True, cur, prev, dtype} (this party's int64 shares)."""
    return apply_to_collection(obj, SharedTensor, lambda t: {
        _BLOB: True, "cur": t.shares.cur.detach().cpu().clone(), "prev": t.shares.prev.detach().cpu().clone(),
        "dtype": str(t.dtype).replace("torch.", "")})


def from_blobs(obj, party):
    if isinstance(obj, dict):
        if obj.get(_BLOB):
            dev = party.device
            return SharedTensor.from_shares(Shares(obj["cur"].to(dev), obj["prev"].to(dev)), party,
                                              dtype=getattr(torch, obj["dtype"]))
        return type(obj)((k, from_blobs(v, party)) for k, v in obj.items())
    if isinstance(obj, list):
        return [from_blobs(v, party) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(from_blobs(v, party) for v in obj)
    return obj


def strip_blobs(obj):
    if isinstance(obj, dict):
        if obj.get(_BLOB):
            return "<secret-shared: see the .party<r> files>"
        return {k: strip_blobs(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [strip_blobs(v) for v in obj]
    return obj


