"""The precision plugin of RSS3PC: precision="32-true" on secret shares (fixed point over Z_2^64).

Lightning's only precision-dependent step that touches gradients is clipping: by value it is two secure ReLUs per
element; by norm it is refused (a secure square root and division of the global norm is not implemented).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from pytorch_lightning.plugins.precision import Precision

from .tensor import SharedTensor


class SharePrecision(Precision):
    """precision="32-true" on secret shares: clipping by value uses two secure ReLUs per element; clipping by norm is
    refused."""

    def clip_grad_by_value(self, optimizer, clip_val: Union[int, float]) -> None:
        """g <- clamp(g, -c, c) (tensor/ops_piecewise.py: both ReLUs in one comparison). Cost: 8 rounds per gradient,
        a ReLU on 2 elements per gradient element."""
        c = float(clip_val)
        with torch.no_grad():
            for p in self.main_params(optimizer):
                g = p.grad
                if g is None:
                    continue
                if isinstance(g, SharedTensor):
                    p.grad = g.clamp(-c, c)
                else:
                    g.clamp_(-c, c)

    def clip_grad_by_norm(self, optimizer, clip_val: Union[int, float]) -> None:
        raise NotImplementedError(
            "RSS3PC: gradient clipping by norm is not supported on secret-shared gradients (it needs a secure square "
            "root and division of the global norm). Use Trainer(gradient_clip_algorithm='value', "
            "gradient_clip_val=...) instead.")


def share_precision(plugin: Optional[Precision], frac_bits: int) -> SharePrecision:
    """The plugin RSS3PC uses: SharePrecision for Lightning's default (32-true); any other precision is refused."""
    if plugin is None or type(plugin) is Precision:
        return SharePrecision()
    if isinstance(plugin, SharePrecision):
        return plugin
    name = getattr(plugin, "precision", type(plugin).__name__)
    raise ValueError(f"RSS3PC supports precision='32-true' only (secret shares are fixed point over Z_2^64, with "
                     f"{frac_bits} fractional bits); got precision={name!r}")
