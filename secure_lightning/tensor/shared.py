"""SharedTensor: a torch.Tensor whose value is secret-shared between the three parties.

A SharedTensor is a wrapper subclass (`torch.Tensor._make_wrapper_subclass`, like DTensor or
torch/testing/_internal/two_tensor.py): the outer tensor has the logical shape, the logical dtype (float32 for
fixed-point reals, int64 for integer values such as class labels, which are fixed-point encoded all the same) and no
storage. It holds

  shares  protocols.sharing.Shares(cur, prev) of int64 ring elements: this party's two replicated shares
  party   the Party that owns those shares (rank, communicator, PRG streams, encoding)
  pending None, or a PendingBits: the shares carry e extra fractional bits not yet truncated away (an average
          pool's power-of-two divisor, deferred). Reading `shares` settles them first (one truncation); the
          products (matmul, conv), ReLU and the shape ops read the raw shares instead (`raw_shares`) and fold e
          into their own truncation, which removes the pool's truncation (3 rounds, 16 bytes per element).
          Or a PendingReshare: a secret x secret matrix product before its resharing. Any read of the shares (or
          the raw shares) reshares it; `reveal_tensor` opens it directly instead, which saves the resharing
          (the product opened at once, as a final layer's output or a lone matmul is).
  public  None, or the float64 value when every party knows it (constants made by factories such as ones_like,
          the seed of `loss.backward()`); the shares are then the public sharing of that value. Operations use it
          to skip a protocol (a product with a public value needs no multiplication protocol). It is tied to the
          write generation of the shares' storages (`note_write`): an in-place write through this tensor or any
          tensor aliasing its shares (views) makes it None again.
  owner_integers  None, or (owner, value) on an integer tensor made by share_tensor: the rank that shared it (public)
          and, on that party only, its own plaintext (None on the others). Lets the owner share derived data
          cheaply (an embedding's one-hot rows). Not carried to results of ops.

Because the outer dtype is a float, `requires_grad`, `nn.Parameter` and torch.optim accept it. Autograd records
operations above `__torch_dispatch__`, so backward ops dispatch back in and gradients are SharedTensors.

This module holds data only: every operation is routed by `tensor.dispatch` (which installs its routers here) to the
handlers in `tensor/ops_*.py` (aten ops) or to the autograd Functions (the few functional calls that need their own
protocol or gradient). There is no protocol code here.
"""
from __future__ import annotations

import torch

from ..protocols.arithmetic import truncate
from ..protocols.sharing import Additive, Shares, reshare

LOGICAL_DTYPES = (torch.float32, torch.int64, torch.bool)

# Write generations of share storages, keyed by storage address. Views share their base's storage, so a write through
# any alias is seen by every SharedTensor over that storage. (Inner ops run below autograd, where tensor version
# counters are not shared by views, so they cannot serve.) A live tensor keeps its storage, so its address is not
# reused while it is being tracked.
_WRITES: dict = {}


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def note_write(t: torch.Tensor) -> None:
    """Record an in-place write into the storage of share tensor t."""
    k = _storage_key(t)
    _WRITES[k] = _WRITES.get(k, 0) + 1


def _generation(shares) -> tuple:
    return (_WRITES.get(_storage_key(shares.cur), 0), _WRITES.get(_storage_key(shares.prev), 0))


class PendingBits:
    """e extra fractional bits of a freshly computed share pair (`base`) and of every view of it: the value is
    decode(shares) / 2^e. `settle` truncates the whole base in place, so every view sees it and reads e = 0.
    Cost of settle: one truncation of the base (3 rounds, 16 bytes per element per party); collective, and run at
    the same point on every party because every party runs the same operations."""
    __slots__ = ("bits", "base", "party")

    def __init__(self, bits: int, base: Shares, party):
        self.bits, self.base, self.party = int(bits), base, party

    def settle(self) -> None:
        if self.bits:
            with self.party.label("settle_scale"):
                y = truncate(self.base, self.bits, party=self.party)
            self.base.cur.copy_(y.cur)
            self.base.prev.copy_(y.prev)
            self.bits = 0


class PendingReshare:
    """The additive shares of a product not yet reshared (protocols.sharing.Additive). `settle` reshares them
    (1 round, 8 bytes per element per party) under the label path where the product ran, and returns the Shares.
    `open_additive` hands them to an opening instead (sharing.reveal opens additive shares without the resharing).
    At most one per party waits: a new lazy product, the normal end of a comm.cost() block or any read of the tensor
    settles it first, at the same point on every party (every party runs the same operations)."""
    __slots__ = ("additive", "result", "party", "labels")
    bits = 0

    def __init__(self, additive: Additive, party):
        waiting = getattr(party, "unsettled_product", None)
        if waiting is not None:
            waiting.settle()
        self.additive, self.result, self.party = additive, None, party
        self.labels = party.comm.current_label.split("/") if party.comm.current_label != "unlabelled" else []
        party.unsettled_product = self
        party.comm.settle_pending = self.settle

    def settle(self) -> Shares:
        if self.result is None:
            with self.party.comm.at_labels(self.labels):
                self.result = reshare(self.additive.part, party=self.party)
            self.additive = None
            self._release()
        return self.result

    def open_additive(self) -> Additive | None:
        """The additive shares for an opening (None once settled); after it, only a read of the tensor settles."""
        self._release()
        return self.additive

    def _release(self):
        if getattr(self.party, "unsettled_product", None) is self:
            self.party.unsettled_product = None
            self.party.comm.settle_pending = None


def lazy_product(additive: Additive, party) -> "SharedTensor":
    """A float32 SharedTensor over a product's additive shares, reshared on first use (PendingReshare)."""
    z = torch.zeros((), dtype=torch.int64, device=additive.part.device).expand(additive.part.shape)
    out = SharedTensor(Shares(z, z), party)
    out.__dict__["_pending"] = PendingReshare(additive, party)
    return out


class SharedTensor(torch.Tensor):
    shares: Shares
    party: object
    public: torch.Tensor | None
    owner_integers: tuple | None = None

    @staticmethod
    def __new__(cls, shares: Shares, party, dtype: torch.dtype = torch.float32, requires_grad: bool = False,
                public: torch.Tensor | None = None):
        if not isinstance(shares, Shares):
            raise TypeError(f"SharedTensor takes protocols.sharing.Shares, got {type(shares).__name__}")
        cur, prev = shares
        if cur.dtype != torch.int64 or prev.dtype != torch.int64:
            raise TypeError(f"shares must be torch.int64 ring tensors, got {cur.dtype} and {prev.dtype}")
        if cur.shape != prev.shape:
            raise ValueError(f"the two shares differ in shape: {tuple(cur.shape)} vs {tuple(prev.shape)}")
        if dtype not in LOGICAL_DTYPES:
            raise TypeError(f"SharedTensor dtype must be one of {LOGICAL_DTYPES}, got {dtype}")
        out = torch.Tensor._make_wrapper_subclass(cls, cur.shape, dtype=dtype, device=cur.device,
                                                  requires_grad=requires_grad)
        out.shares = shares
        out.party = party
        out.public = public
        return out

    @property
    def shares(self) -> Shares:
        """This party's shares at scale 2^f (a deferred scale is settled first: see PendingBits)."""
        d = self.__dict__
        pending = d.get("_pending")
        if pending is not None:
            settled = pending.settle()
            if settled is not None:  # a PendingReshare's result replaces the placeholder shares
                d["_shares"] = settled
            d["_pending"] = None
        return d["_shares"]

    @shares.setter
    def shares(self, value: Shares) -> None:
        self.__dict__["_shares"] = value
        self.__dict__["_pending"] = None

    @property
    def raw_shares(self) -> tuple:
        """(shares, e): the shares as stored and the extra fractional bits they carry (0: plain scale 2^f)."""
        d = self.__dict__
        pending = d.get("_pending")
        if isinstance(pending, PendingReshare):
            return self.shares, 0
        return d["_shares"], (pending.bits if pending is not None else 0)

    def defer_scale(self, bits: int, same_base_as: "SharedTensor | None" = None) -> "SharedTensor":
        """Mark this (new) tensor's shares as carrying `bits` extra fractional bits. same_base_as: a pending tensor
        whose base this tensor's shares are a view of (they then settle together). Returns self."""
        if bits:
            src = same_base_as.__dict__.get("_pending") if same_base_as is not None else None
            shares = self.__dict__["_shares"]
            if src is not None and src.bits == bits and \
                    shares.cur.untyped_storage().data_ptr() == src.base.cur.untyped_storage().data_ptr():
                self.__dict__["_pending"] = src
            else:
                self.__dict__["_pending"] = PendingBits(bits, shares, self.party)
        return self

    @property
    def public(self):
        pub = self.__dict__.get("_public")
        if pub is None:
            return None
        if self.__dict__.get("_public_generation") != _generation(self.shares):
            self.__dict__["_public"] = None  # the shares were written in place since: no longer known to be public
            return None
        return pub

    @public.setter
    def public(self, value):
        self.__dict__["_public"] = value
        self.__dict__["_public_generation"] = _generation(self.shares) if value is not None else None

    def __init__(self, shares, party, dtype=torch.float32, requires_grad=False, public=None):
        pass  # everything is set in __new__

    @classmethod
    def from_shares(cls, shares: Shares, party, requires_grad: bool = False, dtype: torch.dtype = torch.float32,
                    public: torch.Tensor | None = None) -> "SharedTensor":
        """Wrap this party's `Shares` (int64 ring elements, fixed-point encoded) as a SharedTensor."""
        return cls(shares, party, dtype=dtype, requires_grad=requires_grad, public=public)

    # ---- routing: the routers of tensor/dispatch.py, installed by it (install_routers) when it is imported --------
    _route_function = None
    _route_op = None

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return cls._route_function(func, types, args, kwargs or {})

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return cls._route_op(func, args, kwargs or {})

    # ---- plain-Python protocol: nothing here may open the value -----------------------------------------------
    def __repr__(self, *, tensor_contents=None):
        grad = ", requires_grad=True" if self.requires_grad else ""
        pub = ", public" if self.public is not None else ""
        rank = getattr(self.party, "rank", "?")
        return f"SharedTensor(shape={tuple(self.shape)}, dtype={self.dtype}, party={rank}{pub}{grad})"

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        new = SharedTensor(self.shares.map(torch.clone), self.party, self.dtype, self.requires_grad,
                           None if self.public is None else self.public.clone())
        memo[id(self)] = new
        if self.grad is not None:
            new.grad = self.grad.__deepcopy__(memo)
        if getattr(self, "_is_param", False):
            new._is_param = True
        return new

    def __reduce_ex__(self, proto):
        raise TypeError("a SharedTensor holds one party's shares and its live Party; it cannot be pickled. "
                        "Save shares with secure_lightning.nn.share_state_dict, or " + OPEN_HINT)


OPEN_HINT = ("open it where the reveal policy allows: inside a LightningModule run by RSS3PC, "
             "self.log(name, t) or self.trainer.strategy.reveal(t, what, name) (a direct reveal_tensor there is "
             "refused unless the policy names it); outside the strategy, secure_lightning.tensor.reveal_tensor(t) "
             "on every party")


def state_token(t) -> tuple | None:
    """A value that changes whenever the content of t (a SharedTensor, a plain tensor or None) may have changed, for
    caches of values derived from module state (SecureBatchNorm's eval scale): the identities of t and of its share
    tensors (replaced shares), the write generations of their storages (every in-place write on shares goes through
    dispatch.assign_inplace, which notes it) and t's autograd version counter. Ids are only meaningful while the
    objects live: a cache keeps references to the tensors it keyed. Local: every party computes the same token
    after the same operations, so every party reuses or recomputes a cached value together."""
    if t is None:
        return None
    if isinstance(t, SharedTensor):
        return (id(t), id(t.shares.cur), id(t.shares.prev), *_generation(t.shares), t._version)
    return (id(t), t._version)


def install_routers(function_router, op_router) -> None:
    """Route SharedTensor's `__torch_function__` / `__torch_dispatch__` to these (tensor/dispatch.py calls it once).

    The routers are handed in rather than imported, so this data-only module imports nothing from the modules that
    use it and the import graph of tensor/ stays one-way (dispatch.py imports shared.py, never the reverse)."""
    SharedTensor._route_function = staticmethod(function_router)
    SharedTensor._route_op = staticmethod(op_router)
