"""Small transformers written as plain PyTorch: a ViT for 8x8 digits and a text encoder for token sequences.

Standard torch layers only (nn.Conv2d, nn.Embedding, nn.TransformerEncoder(Layer), nn.LayerNorm, nn.Linear) and
ordinary tensor code (torch.cat, +, mean): the secure strategy swaps or dispatches them itself.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["ViT", "TextEncoder", "encoder_stack"]


def encoder_stack(dim: int, depth: int, heads: int, mlp_ratio: int, dropout: float, activation: str,
                  norm_first: bool) -> nn.TransformerEncoder:
    """`depth` nn.TransformerEncoderLayer(batch_first=True) blocks with an MLP of width mlp_ratio * dim."""
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}")
    layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=mlp_ratio * dim, dropout=dropout,
                                       activation=activation, batch_first=True, norm_first=norm_first)
    # nested tensors only speed up padded batches, and are unavailable with norm_first anyway
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class ViT(nn.Module):
    """Vision transformer: non-overlapping `patch` x `patch` patches embedded by a strided Conv2d, a class token
    (torch.cat), a learned positional embedding, `depth` encoder layers, a final LayerNorm and a linear head on the
    class token. The default is `vit_tiny` for 8x8 digits: 16 patches of 2x2, dim 32, 2 layers, 2 heads."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size=8, patch: int = 2, dim: int = 32,
                 depth: int = 2, heads: int = 2, mlp_ratio: int = 2, dropout: float = 0.0, activation: str = "gelu",
                 norm_first: bool = True):
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
        if h % patch or w % patch:
            raise ValueError(f"ViT: image_size {image_size} is not a multiple of patch {patch}")
        num_patches = (h // patch) * (w // patch)
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)
        self.encoder = encoder_stack(dim, depth, heads, mlp_ratio, dropout, activation, norm_first)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, patches, dim)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.encoder(tokens))[:, 0])


class TextEncoder(nn.Module):
    """Text classifier: token and learned positional embeddings, `depth` encoder layers, a final LayerNorm, the mean
    over tokens and a linear head. Inputs are int64 token ids of shape (N, seq_len), all tokens real (no padding)."""

    def __init__(self, vocab_size: int = 32, seq_len: int = 16, num_classes: int = 2, dim: int = 32, depth: int = 2,
                 heads: int = 2, mlp_ratio: int = 2, dropout: float = 0.0, activation: str = "relu",
                 norm_first: bool = True):
        super().__init__()
        self.seq_len = int(seq_len)
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, self.seq_len, dim) * 0.02)
        self.encoder = encoder_stack(dim, depth, heads, mlp_ratio, dropout, activation, norm_first)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] != self.seq_len:
            raise ValueError(f"TextEncoder: sequences of length {tokens.shape[-1]}, built for {self.seq_len}")
        x = self.embed(tokens) + self.pos_embed
        return self.head(self.norm(self.encoder(x)).mean(dim=1))
