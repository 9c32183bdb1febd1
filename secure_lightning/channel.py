"""Public messages between the parties: one typed wire format, no pickle.

Everything the strategy sends from one party to the others outside the protocols (a batch's public structure, a
metric value computed by the data owner, Lightning's `broadcast` of a path or flag, the start-up handshake) goes
through `PublicChannel.publish(kind, value, src)`. A party must never run code chosen by a peer, so messages are
data only:

    round 1: int64[3]  = (format version, header length, blob length)
    round 2: uint8[header length + blob length] = header, then the raw tensor bytes
    header:  UTF-8 JSON {"kind": str, "error": str | null, "tensors": [{"dtype", "shape"}], "body": value}

`value` is encoded as JSON with tagged containers: null, bool, int, float, str as themselves; {"list": [...]},
{"tuple": [...]}, {"dict": [[key, value], ...]} (str or int keys), {"path": str} and {"tensor": i} (the i-th entry of
the tensor table; its bytes follow in order in the blob). Tensor dtypes come from a fixed allow-list. Every kind has
a schema (a function checking the decoded body); the receiver checks the format version, the sizes, the kind it
expects, the tensor table and the schema, and raises `ProtocolMessageError` for anything else. A sender that cannot
encode its value sends an error message instead, so the receivers raise rather than wait.

Cost: 2 rounds; the sender sends 24 + len(header) + len(blob) bytes to each peer, the others send nothing.
"""
from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Callable, Optional

import torch
from torch import Tensor

FORMAT_VERSION = 1
MAX_HEADER_BYTES = 1 << 20      # 1 MiB of JSON
MAX_BLOB_BYTES = 1 << 31        # 2 GiB of tensor bytes
MAX_DEPTH = 32

_DTYPES = {name: getattr(torch, name) for name in (
    "float16", "bfloat16", "float32", "float64", "uint8", "int8", "int16", "int32", "int64", "bool")}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


class ProtocolMessageError(RuntimeError):
    """A message from a peer is malformed, too large, of an unexpected kind or outside its kind's schema (or the
    peer reported that it could not send the message)."""


# ---------------------------------------------------------------------------------------------------------------------
# Encoding

def encode(kind: str, value: Any = None, error: Optional[str] = None) -> tuple[bytes, bytes]:
    """(header, blob) for a message of `kind`; TypeError for a value that is not plain public data."""
    tensors: list = []

    def enc(v, depth):
        if depth > MAX_DEPTH:
            raise TypeError("public message nested too deeply")
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return float(v)
        if isinstance(v, Tensor):
            t = v.detach().cpu().contiguous()
            if t.dtype not in _DTYPE_NAMES:
                raise TypeError(f"a tensor of dtype {t.dtype} cannot be sent as a public message")
            tensors.append(t)
            return {"tensor": len(tensors) - 1}
        if isinstance(v, pathlib.PurePath):
            return {"path": str(v)}
        if isinstance(v, list):
            return {"list": [enc(x, depth + 1) for x in v]}
        if isinstance(v, tuple) and not hasattr(v, "_fields"):
            return {"tuple": [enc(x, depth + 1) for x in v]}
        if isinstance(v, dict) and type(v) is dict:
            for k in v:
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise TypeError(f"public message dict keys must be str or int, got {type(k).__name__}")
            return {"dict": [[k, enc(x, depth + 1)] for k, x in v.items()]}
        raise TypeError(f"a {type(v).__name__} cannot be sent between parties: public messages hold None, bool, int, "
                        f"float, str, paths, tensors, and lists, tuples and dicts of these")

    body = enc(value, 0) if error is None else None
    head = {"kind": kind, "error": error,
            "tensors": [{"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape)} for t in tensors], "body": body}
    header = json.dumps(head, allow_nan=True, separators=(",", ":")).encode("utf-8")
    blob = b"".join(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"" for t in tensors)
    if len(header) > MAX_HEADER_BYTES or len(blob) > MAX_BLOB_BYTES:
        raise TypeError(f"public message {kind!r} too large ({len(header)} header bytes, {len(blob)} tensor bytes)")
    return header, blob


def decode(header: bytes, blob: bytes, expect: str, src: int) -> tuple[Any, Optional[str]]:
    """(value, peer's error) from a received message; ProtocolMessageError if it is not a well-formed `expect`."""
    def bad(why):
        return ProtocolMessageError(f"malformed {expect!r} message from party {src}: {why}")

    try:
        head = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"the header is not UTF-8 JSON ({e})") from None
    if not isinstance(head, dict) or set(head) != {"kind", "error", "tensors", "body"}:
        raise bad("the header must be an object with keys kind, error, tensors, body")
    if head["kind"] != expect:
        raise ProtocolMessageError(f"party {src} sent a {head['kind']!r} message where {expect!r} was expected "
                                   f"(the parties are out of step)")
    if head["error"] is not None:
        if not isinstance(head["error"], str):
            raise bad("error must be a string")
        return None, head["error"]
    table = head["tensors"]
    if not isinstance(table, list):
        raise bad("tensors must be a list")
    tensors, off = [], 0
    for i, spec in enumerate(table):
        if not (isinstance(spec, dict) and set(spec) == {"dtype", "shape"} and spec["dtype"] in _DTYPES
                and isinstance(spec["shape"], list) and len(spec["shape"]) <= 16
                and all(type(s) is int and 0 <= s < 2 ** 40 for s in spec["shape"])):
            raise bad(f"tensor {i}: expected {{dtype in {sorted(_DTYPES)}, shape: list of sizes}}, got {spec!r}"[:300])
        dtype = _DTYPES[spec["dtype"]]
        n = math.prod(spec["shape"]) * torch.empty((), dtype=dtype).element_size()
        if off + n > len(blob):
            raise bad(f"tensor {i} runs past the end of the message")
        raw = bytearray(blob[off:off + n])
        t = torch.frombuffer(raw, dtype=torch.uint8) if n else torch.empty(0, dtype=torch.uint8)
        tensors.append(t.view(dtype).reshape(spec["shape"]).clone())
        off += n
    if off != len(blob):
        raise bad(f"{len(blob) - off} bytes after the last tensor")
    used = set()

    def dec(v, depth):
        if depth > MAX_DEPTH:
            raise bad("nested too deeply")
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if not (isinstance(v, dict) and len(v) == 1):
            raise bad(f"unexpected JSON value {str(v)[:80]!r}")
        (tag, x), = v.items()
        if tag == "list" and isinstance(x, list):
            return [dec(e, depth + 1) for e in x]
        if tag == "tuple" and isinstance(x, list):
            return tuple(dec(e, depth + 1) for e in x)
        if tag == "dict" and isinstance(x, list):
            out = {}
            for item in x:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], (str, int))
                        and not isinstance(item[0], bool)):
                    raise bad("dict entries must be [str or int key, value]")
                out[item[0]] = dec(item[1], depth + 1)
            return out
        if tag == "path" and isinstance(x, str):
            return pathlib.Path(x)
        if tag == "tensor" and type(x) is int and 0 <= x < len(tensors) and x not in used:
            used.add(x)
            return tensors[x]
        raise bad(f"unknown or invalid tag {tag!r}")

    value = dec(head["body"], 0)
    if len(used) != len(tensors):
        raise bad("tensors in the table that the body does not use")
    return value, None


# ---------------------------------------------------------------------------------------------------------------------
# Schemas: what the body of each kind may hold

def _any_public(v) -> bool:
    return True


def _scalar(v) -> bool:
    """A metric value published to all parties: a number or a tensor holding one number."""
    if isinstance(v, bool) or v is None:
        return False
    if isinstance(v, (int, float)):
        return True
    return isinstance(v, Tensor) and v.numel() == 1 and v.dim() <= 1


def _int_list(v) -> bool:
    return isinstance(v, list) and all(type(x) is int for x in v)


SCHEMAS: dict[str, Callable[[Any], bool]] = {
    "broadcast": _any_public,      # Lightning's strategy.broadcast: paths, flags, numbers (public by nature)
    # a torchmetrics value the data owner computed, published to all: a scalar, or None (it stays with the owner)
    "metric": lambda v: isinstance(v, dict) and set(v) == {"value"} and (v["value"] is None or _scalar(v["value"])),
    "batch_spec": _any_public,     # checked in detail by the strategy's batch-spec decoder
    "handshake": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    # which dataloader sources the data owner has (three hosts): {hook name: defined}
    "data_plan": lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, bool)
                                                       for k, x in v.items()),
}


def register_schema(kind: str, check: Callable[[Any], bool]) -> None:
    SCHEMAS[kind] = check


# ---------------------------------------------------------------------------------------------------------------------
# The channel

class PublicChannel:
    """The one party-to-party channel for public, non-share messages (see the module docstring)."""

    def __init__(self, party):
        self.party = party

    def publish(self, kind: str, value: Any, src: int, *, label: Optional[str] = None) -> Any:
        """Party `src` sends `value` (a message of `kind`) to both others; every party calls this at the same point
        and gets the value back (the sender its own). Raises TypeError on the sender (and ProtocolMessageError on
        the receivers) when the value cannot be sent or breaks the kind's schema."""
        if kind not in SCHEMAS:
            raise ValueError(f"unknown public message kind {kind!r}")
        party = self.party
        with party.label(f"channel/{label or kind}"):
            if party.rank == src:
                err = None
                try:
                    if not SCHEMAS[kind](value):
                        raise TypeError(f"the value does not fit the schema of a {kind!r} message")
                    header, blob = encode(kind, value)
                except Exception as e:  # tell the receivers instead of leaving them waiting
                    err = e
                    header, blob = encode(kind, error=f"{type(e).__name__}: {e}")
                self._send(src, header, blob)
                if err is not None:
                    raise err
                return value
            return self._receive(kind, src)

    def agree(self, ok: bool, what: str) -> None:
        """Every party learns whether all three succeeded at `what`; all raise together if one did not.
        Cost: 1 round; each party sends one int64 to each peer (16 bytes)."""
        party = self.party
        t = torch.tensor([int(bool(ok))], dtype=torch.int64)
        with party.label("channel/agree"):
            got = party.comm.round({party.next: t, party.prev: t},
                                   {party.next: ((1,), torch.int64), party.prev: ((1,), torch.int64)})
        bad = [p for p, v in got.items() if int(v[0]) == 0]
        if bad and ok:
            exc = RuntimeError(f"RSS3PC: {what} failed in party {', '.join(map(str, sorted(bad)))} (see its error)")
            exc.failed_party = min(bad)  # a consequence of another party's error: report that one first
            raise exc

    def send_raw(self, header: bytes, blob: bytes = b"") -> None:
        """Send preformed bytes from this party to both others (the wire format's two rounds). Tests use it to
        play a peer that deviates from the protocol."""
        self._send(self.party.rank, header, blob)

    def _send(self, src: int, header: bytes, blob: bytes) -> None:
        comm = self.party.comm
        peers = [p for p in range(3) if p != src]
        n = torch.tensor([FORMAT_VERSION, len(header), len(blob)], dtype=torch.int64)
        comm.round({p: n for p in peers})
        data = torch.frombuffer(bytearray(header + blob), dtype=torch.uint8) if header or blob else \
            torch.empty(0, dtype=torch.uint8)
        comm.round({p: data for p in peers})

    def _receive(self, kind: str, src: int) -> Any:
        comm = self.party.comm
        version, nh, nb = (int(v) for v in comm.round({}, {src: ((3,), torch.int64)})[src])
        if version != FORMAT_VERSION or not 0 < nh <= MAX_HEADER_BYTES or not 0 <= nb <= MAX_BLOB_BYTES:
            # nothing more is read: the sender's second round is left unanswered and the run stops here
            raise ProtocolMessageError(
                f"malformed {kind!r} message from party {src}: format {version}, header {nh} bytes, tensors {nb} "
                f"bytes (expected format {FORMAT_VERSION}, header 1..{MAX_HEADER_BYTES}, tensors <= {MAX_BLOB_BYTES})")
        data = comm.round({}, {src: ((nh + nb,), torch.uint8)})[src].cpu().numpy().tobytes()
        value, err = decode(data[:nh], data[nh:], kind, src)
        if err is not None:
            exc = ProtocolMessageError(f"party {src} could not send its {kind!r} message: {err}")
            exc.failed_party = src  # the sender's own error is the one to report
            raise exc
        if not SCHEMAS[kind](value):
            raise ProtocolMessageError(f"party {src} sent a {kind!r} message outside its schema")
        return value
