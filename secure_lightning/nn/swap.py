"""Making a plain nn.Module secure, and back.

`SecureLayers` swaps layers by a type table, modelled on Lightning's plugins/layer_sync.py (`apply` / `revert`):
an instance of a torch layer in SWAP gets the matching protocol-aware class from nn/layers.py (a subclass, so
attributes, hooks and state_dict keys stay), layers in SUPPORTED work as they are (their functional calls dispatch on
SharedTensor), and any other torch.nn layer raises UnsupportedLayerError naming it and what to use instead. Modules
defined outside torch.nn (your model classes, torchvision blocks) are containers: their children are checked.

`secure_module` then shares every floating-point parameter and buffer from the owner: one flat sharing for the whole
model. Parameters become nn.Parameter(SharedTensor) with their requires_grad; integer buffers (BatchNorm's
num_batches_tracked) stay plain public counters.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..protocols import guard
from ..protocols import sharing as S
from ..protocols.sharing import Shares
from ..tensor import SharedTensor, share_tensor
from ..tensor.dispatch import assign_inplace
from . import layers as SL


class UnsupportedLayerError(TypeError):
    """A layer of the module has no secure implementation (the message names it and says what to use instead)."""


SWAP: dict = {
    nn.ReLU: SL.SecureReLU,
    nn.MaxPool2d: SL.SecureMaxPool2d,
    nn.Sequential: SL.SecureSequential,  # runs ReLU -> MaxPool2d as pool -> ReLU (a quarter of the comparisons)
    nn.BatchNorm1d: SL.SecureBatchNorm1d,
    nn.BatchNorm2d: SL.SecureBatchNorm2d,
    nn.Dropout: SL.SecureDropout,
    nn.Dropout2d: SL.SecureDropout2d,
    nn.CrossEntropyLoss: SL.SecureCrossEntropyLoss,
    nn.NLLLoss: SL.SecureNLLLoss,
    nn.Softmax: SL.SecureSoftmax,
    nn.LogSoftmax: SL.SecureLogSoftmax,
}
REVERT: dict = {v: k for k, v in SWAP.items()}

SUPPORTED: tuple = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Flatten, nn.Unflatten, nn.Identity, nn.Sequential, nn.ModuleList,
    nn.ModuleDict, nn.ParameterList, nn.ParameterDict, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MSELoss,
    nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh,
    nn.Upsample,  # mode="nearest" (a public gather); other modes raise naming their aten op
    nn.MultiheadAttention, nn.modules.linear.NonDynamicallyQuantizableLinear,  # tensor/ops_attention.py
    nn.TransformerEncoderLayer, nn.TransformerEncoder,  # eval's fused kernels are bypassed or routed
    nn.Embedding,  # tensor/ops_embedding.py
    nn.GELU, nn.SiLU, nn.LayerNorm, nn.RMSNorm,  # tensor/ops_smooth.py, tensor/ops_layer_norm.py
)

ADVICE: dict = {
    nn.ELU: "use nn.ReLU or nn.LeakyReLU",
    nn.Hardswish: "use nn.ReLU or nn.Hardtanh", nn.Softplus: "use nn.ReLU",
    nn.Mish: "use nn.ReLU", nn.PReLU: "use nn.ReLU",
    nn.GroupNorm: "use nn.BatchNorm2d or nn.LayerNorm", nn.InstanceNorm2d: "use nn.BatchNorm2d",
    nn.BatchNorm3d: "use 2-D layers (nn.BatchNorm2d)", nn.SyncBatchNorm: "use nn.BatchNorm2d",
    nn.MaxPool1d: "use nn.MaxPool2d on a (N, C, 1, L) view", nn.MaxPool3d: "use 2-D layers",
    nn.AdaptiveMaxPool2d: "use nn.MaxPool2d with a fixed kernel, or nn.AdaptiveAvgPool2d",
    nn.AvgPool1d: "use nn.AvgPool2d on a (N, C, 1, L) view", nn.AvgPool3d: "use 2-D layers",
    nn.AdaptiveAvgPool1d: "use nn.AdaptiveAvgPool2d on a (N, C, 1, L) view",
    nn.Conv3d: "use nn.Conv2d", nn.ConvTranspose2d: "use nn.Conv2d (e.g. on a zero-dilated input)",
    nn.ConvTranspose1d: "use nn.Conv1d",
    nn.EmbeddingBag: "use nn.Embedding and a sum or mean over the bag",
    nn.LSTM: "recurrent layers are not supported; use nn.Conv1d or nn.Linear",
    nn.GRU: "recurrent layers are not supported; use nn.Conv1d or nn.Linear",
    nn.RNN: "recurrent layers are not supported; use nn.Conv1d or nn.Linear",
    nn.Transformer: "use nn.TransformerEncoder (decoder layers are not supported on shares yet)",
    nn.TransformerDecoder: "use nn.TransformerEncoder", nn.TransformerDecoderLayer: "use nn.TransformerEncoderLayer",
    nn.AlphaDropout: "use nn.Dropout", nn.Dropout1d: "use nn.Dropout", nn.Dropout3d: "use nn.Dropout2d",
    nn.BCELoss: "use nn.MSELoss or nn.CrossEntropyLoss with 2 classes",
    nn.BCEWithLogitsLoss: "use nn.CrossEntropyLoss with 2 classes", nn.L1Loss: "use nn.MSELoss",
    nn.SmoothL1Loss: "use nn.MSELoss", nn.HuberLoss: "use nn.MSELoss", nn.KLDivLoss: "use nn.CrossEntropyLoss",
    nn.Softmax2d: "use nn.Softmax(dim=1)", nn.Softmin: "use nn.Softmax on the negated input",
}


def _is_torch_layer(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch.nn.")


class SecureLayers:
    """Swap torch layers for secure ones by type table; `revert` undoes it (the LayerSync apply/revert pattern)."""

    def __init__(self, swap: dict | None = None, supported: tuple | None = None):
        self.swap = dict(SWAP if swap is None else swap)
        self.revert_table = {v: k for k, v in self.swap.items()}
        self.supported = SUPPORTED if supported is None else supported

    def check(self, model: nn.Module) -> None:
        """Raise UnsupportedLayerError for the first layer that cannot run on shares."""
        for name, m in model.named_modules():
            cls = type(m)
            where = f"'{name}' ({cls.__name__})" if name else cls.__name__
            if cls in self.swap or cls in self.revert_table or cls in self.supported:
                if isinstance(m, nn.MaxPool2d) and m.return_indices:
                    raise UnsupportedLayerError(f"layer {where}: return_indices=True would open the positions of "
                                                "secret maxima; use return_indices=False")
                if isinstance(m, (nn.CrossEntropyLoss, nn.NLLLoss)) and m.weight is not None:
                    raise UnsupportedLayerError(f"layer {where}: class weights are not supported on shares")
                continue
            if _is_torch_layer(m):
                advice = ADVICE.get(cls, "supported layers: " + ", ".join(
                    sorted({c.__name__ for c in (*self.swap, *self.supported)})))
                raise UnsupportedLayerError(f"layer {where} has no secure implementation: {advice}")

    def apply(self, model: nn.Module) -> nn.Module:
        """Check every layer, then swap in place; returns the same module. Also installs the overflow guard's
        layer-context hooks (protocols/guard.layer_hooks: forward pre/post hooks naming the running layer)."""
        self.check(model)
        for m in model.modules():
            new_cls = self.swap.get(type(m))
            if new_cls is not None:
                m.__class__ = new_cls
        guard.layer_hooks(model)
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        guard.remove_layer_hooks(model)
        for m in model.modules():
            old_cls = self.revert_table.get(type(m))
            if old_cls is not None:
                m.__class__ = old_cls
                m.__dict__.pop("_secure_eval_scale", None)  # SecureBatchNorm's eval cache (shares)
        return model


# ---------------------------------------------------------------------------------------------------------------------
# Sharing parameters and buffers

def _slots(module: nn.Module, *, shared: bool | None = None):
    """(module, kind, name, full_name, tensor) for every parameter and floating/shared buffer, each tensor once."""
    seen, out = set(), []
    for prefix, m in module.named_modules(remove_duplicate=False):
        for kind, table in (("param", m._parameters), ("buffer", m._buffers)):
            for name, t in table.items():
                if t is None:
                    continue
                full = f"{prefix}.{name}" if prefix else name
                is_sh = isinstance(t, SharedTensor)
                if kind == "buffer" and not is_sh and not t.is_floating_point():
                    continue
                if shared is not None and is_sh != shared:
                    continue
                out.append((m, kind, name, full, t, id(t) in seen))
                seen.add(id(t))
    return out


def _fingerprint(slots) -> torch.Tensor:
    desc = ";".join(f"{full}:{tuple(t.shape)}" for _, _, _, full, t, dup in slots if not dup)
    digest = hashlib.sha256(desc.encode()).digest()[:8]
    return torch.frombuffer(bytearray(digest), dtype=torch.int64).clone()


def _check_same_structure(slots, party, what: str):
    """All parties hold the same parameter names and shapes. Cost: 1 round, 8 bytes to each peer."""
    h = _fingerprint(slots)
    with party.label("check_structure"):
        got = party.comm.round({party.next: h, party.prev: h},
                               {party.next: (h.shape, h.dtype), party.prev: (h.shape, h.dtype)})
    for peer, g in got.items():
        if not torch.equal(g, h):
            raise ValueError(f"{what}: party {party.rank} and party {peer} have different parameter names or shapes; "
                             "every party must build the same model")


def _set(m: nn.Module, kind: str, name: str, value):
    if kind == "param":
        m._parameters[name] = value
    else:
        m._buffers[name] = value


def secure_module(module: nn.Module, party, owner: int = 0) -> nn.Module:
    """Swap layers (UnsupportedLayerError for unsupported ones) and share every floating parameter and buffer from
    `owner`, in place. The other parties' values are ignored; names and shapes must match (checked).

    Cost: 1 round (structure check, 16 bytes) + 2 rounds of share_tensor (owner: 176 header bytes + 16 bytes per
    parameter/buffer element)."""
    SecureLayers().apply(module)
    slots = _slots(module, shared=False)
    _check_same_structure(slots, party, "secure_module")
    unique = [s for s in slots if not s[5]]
    if not unique:
        return module
    flat = None
    if party.rank == owner:
        flat = torch.cat([t.detach().reshape(-1).to(torch.float64).cpu() for _, _, _, _, t, _ in unique])
    total = sum(t.numel() for _, _, _, _, t, _ in unique)
    shared = share_tensor(flat, owner, party, label="parameters", data=False)
    if shared.numel() != total:
        raise ValueError(f"secure_module: party {owner} shared {shared.numel()} values, this party's module has "
                         f"{total}")
    new_of, off = {}, 0
    for m, kind, name, full, t, dup in slots:
        if id(t) not in new_of:
            n = t.numel()
            sh = shared.shares.map(lambda s: s[off:off + n].reshape(t.shape).clone())
            off += n
            st = SharedTensor(sh, party)
            new_of[id(t)] = nn.Parameter(st, requires_grad=t.requires_grad) if kind == "param" else st
        _set(m, kind, name, new_of[id(t)])
    return module


def _entries(module: nn.Module):
    """state_dict name -> tensor (kept as the live objects), parameters and all buffers."""
    return module.state_dict(keep_vars=True)


def reveal_state_dict(module: nn.Module, party, to: int | None = 0) -> dict | None:
    """The plaintext state_dict, opened to party `to` (None: to all parties); other parties get None.
    Every party must call it. All shared entries are opened in one reveal (label "weights").
    Cost: 1 round; 8 bytes per shared element (sent by one party when `to` is a party, by each party for all)."""
    entries = _entries(module)
    shared = [(k, v) for k, v in entries.items() if isinstance(v, SharedTensor)]
    out = {}
    if shared:
        flat = Shares(torch.cat([v.shares.cur.reshape(-1) for _, v in shared]),
                      torch.cat([v.shares.prev.reshape(-1) for _, v in shared]))
        plain = S.reveal_float(flat, to, party=party, label="weights")
        if plain is not None:
            off = 0
            for k, v in shared:
                n = v.numel()
                val = plain[off:off + n].reshape(v.shape)
                out[k] = torch.round(val).to(torch.int64) if v.dtype == torch.int64 else val.to(torch.float32)
                off += n
    if to is not None and party.rank != to:
        return None
    result = {}
    for k, v in entries.items():
        result[k] = out[k] if k in out else v.detach().clone()
    return result


def share_state_dict(module: nn.Module) -> dict:
    """This party's shares of every shared entry: {name: {"cur": int64, "prev": int64, "dtype": str}}; plain entries
    (public counters) as {name: {"public": tensor}}. For checkpoints: each party saves its own."""
    out = {}
    for k, v in _entries(module).items():
        if isinstance(v, SharedTensor):
            out[k] = {"cur": v.shares.cur.detach().clone(), "prev": v.shares.prev.detach().clone(),
                      "dtype": str(v.dtype).replace("torch.", "")}
        else:
            out[k] = {"public": v.detach().clone()}
    return out


def _owner_of(module: nn.Module, full: str):
    prefix, _, name = full.rpartition(".")
    m = module.get_submodule(prefix) if prefix else module
    return m, name


def load_share_state_dict(module: nn.Module, state: dict, party, strict: bool = True) -> nn.Module:
    """Load shares saved by share_state_dict into `module` (secured or not: plain slots become shared). In place.
    Cost: 0 (local)."""
    entries = _entries(module)
    missing = [k for k in entries if k not in state]
    unexpected = [k for k in state if k not in entries]
    if strict and (missing or unexpected):
        raise KeyError(f"load_share_state_dict: missing keys {missing}, unexpected keys {unexpected}")
    SecureLayers().apply(module)
    for k, v in entries.items():
        if k not in state:
            continue
        e = state[k]
        m, name = _owner_of(module, k)
        if "public" in e:
            if isinstance(v, SharedTensor):
                raise ValueError(f"load_share_state_dict: '{k}' is shared in the module but public in the state")
            with torch.no_grad():
                v.copy_(e["public"])
            continue
        sh = Shares(e["cur"].to(party.device), e["prev"].to(party.device))
        if tuple(sh.cur.shape) != tuple(v.shape):
            raise ValueError(f"load_share_state_dict: '{k}' has shape {tuple(sh.cur.shape)} in the state, "
                             f"{tuple(v.shape)} in the module")
        if isinstance(v, SharedTensor):
            with torch.no_grad():
                assign_inplace(v, sh)
        else:
            dtype = getattr(torch, e.get("dtype", "float32"))
            st = SharedTensor(sh.map(torch.clone), party, dtype=dtype)
            is_param = name in m._parameters
            _set(m, "param" if is_param else "buffer", name,
                 nn.Parameter(st, requires_grad=v.requires_grad) if is_param else st)
    return module


def restore_plain(module: nn.Module, state_dict: dict) -> nn.Module:
    """Turn a secured module back into a plain one holding `state_dict` (e.g. from reveal_state_dict): layers are
    reverted to their torch classes, shared parameters/buffers replaced by plain ones. In place."""
    SecureLayers().revert(module)
    done = {}
    for prefix, m in module.named_modules(remove_duplicate=False):
        for kind, table in (("param", m._parameters), ("buffer", m._buffers)):
            for name, t in list(table.items()):
                if not isinstance(t, SharedTensor):
                    continue
                full = f"{prefix}.{name}" if prefix else name
                if id(t) not in done:
                    if full not in state_dict:
                        raise KeyError(f"restore_plain: no value for '{full}' in the state_dict")
                    v = torch.as_tensor(state_dict[full]).detach().clone().to(
                        torch.float32 if t.dtype == torch.float32 else t.dtype)
                    if tuple(v.shape) != tuple(t.shape):
                        raise ValueError(f"restore_plain: '{full}' has shape {tuple(v.shape)}, expected "
                                         f"{tuple(t.shape)}")
                    done[id(t)] = nn.Parameter(v, requires_grad=t.requires_grad) if kind == "param" else v
                _set(m, kind, name, done[id(t)])
    return module
