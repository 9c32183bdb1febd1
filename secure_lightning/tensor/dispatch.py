"""Routing for SharedTensor: the aten handler table, the torch-function table, and the one unwrap/wrap path.

Two tables, filled by decorators in `tensor/ops_*.py` and the autograd Function modules (activations.py, pooling.py,
losses.py, batch_norm_fn.py):

  HANDLERS            aten OpOverload -> handler. `__torch_dispatch__` sends every aten op that has a SharedTensor
                      argument here. Ops are listed one by one (no tag-driven bulk registration): most pointwise ops
                      are not local on shares, so an op without a handler raises `UnsupportedOpError` naming it.
  FUNCTION_HANDLERS   torch-level callable (F.relu, F.max_pool2d, F.cross_entropy, ...) -> handler, consulted by
                      `__torch_function__` before autograd sees the call. Only for the few calls that need their own
                      protocol or gradient (ReLU keeps its sign bit for backward, max pooling must not produce int64
                      indices, losses use (softmax - onehot)/N, ...). Everything else falls through to aten.

Handlers registered with `implements` receive the op's arguments (`handler(*args, **kwargs)`, aten schema names);
those registered with `implements_generic` receive the OpOverload first (for families that share one rule).

Values in ops: a SharedTensor contributes its shares; a Python number or a plain tensor is a public constant (it is
encoded in fixed point, or used as an integer when every entry is an integer, which needs no truncation).
"""
from __future__ import annotations

import functools

import torch
import torch.utils._pytree as pytree

from ..protocols.sharing import Shares, public_shares
from .shared import OPEN_HINT, SharedTensor, install_routers, note_write

aten = torch.ops.aten

HANDLERS: dict = {}
FUNCTION_HANDLERS: dict = {}
_ADVICE: dict = {}

# Public integers up to this magnitude multiply shares without truncation (the product stays far inside the ring).
MAX_PUBLIC_INT = 1 << 30


class UnsupportedOpError(NotImplementedError):
    """An operation that has no secure implementation on SharedTensor (the message says what to use instead, and
    where in the caller's code it was reached: the innermost frame outside secure_lightning, torch, Lightning and
    the standard library)."""

    def __init__(self, message: str = ""):
        where = user_frame()
        super().__init__(f"{message} (at {where})" if where and " (at " not in message else message)


_LIBRARY_DIRS: tuple | None = None


def _library_dirs() -> tuple:
    """(package dirs, standard-library dirs, site-packages dirs) as path prefixes."""
    global _LIBRARY_DIRS
    if _LIBRARY_DIRS is None:
        import importlib.util
        import os
        import sysconfig
        pkgs = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(torch.__file__)]
        for name in ("pytorch_lightning", "lightning", "lightning_fabric"):
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.origin:
                pkgs.append(os.path.dirname(spec.origin))
        paths = sysconfig.get_paths()
        prefixes = lambda keys: tuple(os.path.join(paths[k], "") for k in keys if k in paths)  # noqa: E731
        _LIBRARY_DIRS = (tuple(os.path.join(d, "") for d in pkgs), prefixes(("stdlib", "platstdlib")),
                         prefixes(("purelib", "platlib")))
    return _LIBRARY_DIRS


def user_frame() -> str | None:
    """'file.py:123 in forward' for the innermost Python frame outside secure_lightning, torch, Lightning and the
    standard library (installed packages other than those count as the caller's code). None if there is none."""
    import os
    import sys
    pkgs, stdlib, site = _library_dirs()
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        full = os.path.abspath(path)
        library = path.startswith("<frozen") or full.startswith(pkgs) or \
            (full.startswith(stdlib) and not full.startswith(site))
        if not library:
            shown = os.path.relpath(full) if full.startswith(os.path.join(os.getcwd(), "")) else path
            return f"{shown}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Registration

def implements(*ops):
    """Register `fn(*args, **kwargs)` as the handler of each aten OpOverload in `ops`."""
    def deco(fn):
        for op in ops:
            _register(op, fn)
        return fn
    return deco


def implements_generic(*ops):
    """Register `fn(op, *args, **kwargs)` for each op: one rule shared by a family of ops."""
    def deco(fn):
        for op in ops:
            _register(op, functools.partial(fn, op))
        return fn
    return deco


def _register(op, fn):
    if not isinstance(op, torch._ops.OpOverload):
        raise TypeError(f"register aten overloads (e.g. aten.add.Tensor), not {op!r}")
    if op in HANDLERS:
        raise ValueError(f"{op} already has a SharedTensor handler")
    HANDLERS[op] = fn


def implements_function(*funcs):
    """Register `fn(*args, **kwargs)` for torch-level callables, intercepted in `__torch_function__`."""
    def deco(fn):
        for f in funcs:
            if FUNCTION_HANDLERS.get(f, fn) is not fn:
                raise ValueError(f"{f} already has a SharedTensor function handler")
            FUNCTION_HANDLERS[f] = fn
        return fn
    return deco


def advise(ops, text: str):
    """Attach advice (what to use instead) to unsupported op packets, shown in UnsupportedOpError."""
    for op in ops:
        _ADVICE[op] = text


def supported_ops() -> list[str]:
    return sorted(str(op) for op in HANDLERS)


# ---------------------------------------------------------------------------------------------------------------------
# Routers (called from SharedTensor.__torch_function__ / __torch_dispatch__)

def torch_function(func, types, args, kwargs):
    handler = FUNCTION_HANDLERS.get(func)
    if handler is not None:
        return handler(*args, **kwargs)
    with torch._C.DisableTorchFunctionSubclass():
        return func(*args, **kwargs)


def dispatch_op(func, args, kwargs):
    handler = HANDLERS.get(func)
    if handler is None:
        raise UnsupportedOpError(unsupported_message(func))
    if func in NO_BACKWARD and torch.is_grad_enabled() and _needs_grad(args, kwargs):
        advice, applies = NO_BACKWARD[func]
        if applies is None or applies(*args, **kwargs):
            raise UnsupportedOpError(f"{func} is computed on shares, but its gradient is not (reached here with "
                                     f"requires_grad, the backward pass would fail): {advice}")
    return handler(*args, **kwargs)


# aten ops with a forward handler whose autograd formula needs ops that shares lack. Reached only below the torch-level
# calls that have their own Functions (a decomposition, torch function disabled); refused in forward when a gradient
# would be needed, naming the call to use instead.
NO_BACKWARD: dict = {}


def no_backward(ops, advice: str, applies=None):
    """Refuse `ops` in forward when a gradient will be needed; applies(*args, **kwargs): only for these arguments."""
    for op in ops:
        NO_BACKWARD[op] = (advice, applies)


def _needs_grad(args, kwargs) -> bool:
    return any(isinstance(a, SharedTensor) and a.requires_grad for a in pytree.tree_leaves((args, kwargs)))


install_routers(torch_function, dispatch_op)


def unsupported_message(func) -> str:
    packet = getattr(func, "overloadpacket", func)
    advice = _ADVICE.get(packet)
    if advice is None:
        advice = ("it is not one of the operations computed on secret shares (list: "
                  "secure_lightning.tensor.supported_ops()); if the value may be opened, " + OPEN_HINT +
                  ", and continue in plaintext")
    return f"SharedTensor does not support {func}: {advice}"


# ---------------------------------------------------------------------------------------------------------------------
# Unwrap / wrap

def party_of(*objs):
    """The Party of the first SharedTensor found in objs (nested lists/tuples/dicts are searched)."""
    for leaf in pytree.tree_leaves(objs):
        if isinstance(leaf, SharedTensor):
            return leaf.party
    raise TypeError("no SharedTensor among the arguments")


def public_value(x, device=None) -> torch.Tensor | None:
    """The float64 value of a public operand (number, plain tensor, or public SharedTensor); None if secret."""
    if isinstance(x, SharedTensor):
        return x.public
    if isinstance(x, bool):
        return torch.tensor(float(x), dtype=torch.float64, device=device)
    if isinstance(x, (int, float)):
        return torch.tensor(float(x), dtype=torch.float64, device=device)
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError("complex public operands are not supported with SharedTensor")
        v = x.detach().to(torch.float64)
        return v if device is None else v.to(device)
    raise TypeError(f"cannot use a {type(x).__name__} as a public operand of a SharedTensor op")


def encode(value: torch.Tensor, party, what: str = "public operand") -> torch.Tensor:
    """Fixed-point ring encoding of a public float64 tensor, on the party's device."""
    return party.encoding.encode(value, what=what).to(party.device)


def is_integral(value: torch.Tensor) -> bool:
    """True when every entry is an integer of moderate size: multiplying shares by it needs no truncation."""
    if value.numel() == 0:
        return True
    return bool(torch.all(value == torch.round(value))) and float(value.abs().max()) < MAX_PUBLIC_INT


def make_public(value, party, dtype: torch.dtype = torch.float32) -> SharedTensor:
    """A SharedTensor holding the public value (public sharing: x_0 = value, x_1 = x_2 = 0). Cost: 0."""
    value = public_value(value, device=party.device)
    shares = public_shares(encode(value, party), party=party)
    if shares.cur is shares.prev:  # keep the two shares distinct tensors, so in-place updates stay correct
        shares = Shares(shares.cur, shares.prev.clone())
    return SharedTensor(shares, party, dtype=dtype, public=value)


def shares_of(x, party) -> Shares:
    """Shares of any operand: a SharedTensor's own shares, or the public sharing of a public value."""
    if isinstance(x, SharedTensor):
        return x.shares
    return public_shares(encode(public_value(x, device=party.device), party), party=party)


def raw_of(x, party) -> tuple:
    """(shares, e) of any operand: a SharedTensor's shares as stored with its deferred extra fractional bits e
    (shared.PendingBits), or the public sharing of a public value with e = 0. For ops that fold e into their own
    truncation (products) or that commute with the scale (ReLU, shape ops)."""
    if isinstance(x, SharedTensor):
        return x.raw_shares
    return shares_of(x, party), 0


def wrap(shares: Shares, party, dtype: torch.dtype = torch.float32) -> SharedTensor:
    return SharedTensor(shares, party, dtype=dtype)


def as_shared(x, party, dtype: torch.dtype = torch.float32) -> SharedTensor:
    """x itself if it is a SharedTensor, else the public sharing of the public value x (wrapped as `dtype`)."""
    return x if isinstance(x, SharedTensor) else wrap(shares_of(x, party), party, dtype)


def result_dtype(*operands) -> torch.dtype:
    """float32 unless every operand is integer-valued (int64/bool SharedTensors, Python ints, integer tensors)."""
    for x in operands:
        if isinstance(x, SharedTensor):
            if x.dtype == torch.float32:
                return torch.float32
        elif isinstance(x, bool) or isinstance(x, int):
            continue
        elif isinstance(x, float):
            return torch.float32
        elif isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex()):
            return torch.float32
    return torch.int64


def assign_inplace(self, new: SharedTensor | Shares) -> SharedTensor:
    """Write new shares into a SharedTensor in place (the in-place aten ops: add_, mul_, copy_, ...).

    Copies into the existing share tensors, so views that alias them see the update; a share that cannot be
    written (an expanded view) is replaced instead. The tensor is no longer marked public unless `new` is."""
    if not isinstance(self, SharedTensor):
        raise UnsupportedOpError("an in-place op would write a secret value into a plain tensor; "
                                 "make the destination a SharedTensor (e.g. share_tensor or torch.zeros_like(shared))")
    shares = new.shares if isinstance(new, SharedTensor) else new
    if tuple(shares.cur.shape) != tuple(self.shape):
        shares = shares.map(lambda t: t.expand(self.shape))
    cur, prev = self.shares
    if _writable(cur) and _writable(prev) and cur.untyped_storage().data_ptr() != prev.untyped_storage().data_ptr():
        cur.copy_(shares.cur)
        prev.copy_(shares.prev)
        note_write(cur)  # tensors aliasing these storages (views) stop claiming a stale public value
        note_write(prev)
    else:
        self.shares = shares.map(lambda t: t.clone())
    self.public = new.public if isinstance(new, SharedTensor) else None
    return self


def _writable(t: torch.Tensor) -> bool:
    return all(s != 0 or n <= 1 for s, n in zip(t.stride(), t.shape))
