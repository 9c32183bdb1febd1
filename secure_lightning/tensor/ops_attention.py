"""Attention on shares: F.scaled_dot_product_attention, F.multi_head_attention_forward (what nn.MultiheadAttention
calls) and the fused kernels torch calls for plain tensors in eval mode (torch._native_multi_head_attention,
torch._transformer_encoder_layer_fwd), registered in FUNCTION_HANDLERS so unmodified torch code reaches them.

Everything is a composition of SharedTensor ops (autograd records it) plus one autograd Function, the masked softmax:

  scores = (q * scale) @ k^T + bias      scale on the smaller of q, k (free when scale = 2^-j, j <= 4: a deferred
                                         scale); bias: the finite part of a public float mask (free)
  weights = softmax(scores; keep)         approx.softmax with a public keep mask: masked entries are excluded from
                                         the max and their exponentials are zeroed by a product with the 0/1 mask
                                         (free, no comparison); a row with nothing kept gives zeros, as torch
  out = (weights * drop) @ v / (1 - p)   dropout: a public mask from party.prg_common, as nn.Dropout on shares;
                                         the product with the 0/1 mask is free, 1/(1-p) scales the smaller output

Masks are public (they come from shapes or from public data: padding positions, causality). A boolean mask says
which entries take part (SDPA: True = kept; nn.MultiheadAttention: True = masked, as in torch); -inf in a float mask
masks an entry and finite values are added to the scores. A secret float mask (a SharedTensor) is added as shares.

Fast paths: nn.MultiheadAttention and nn.TransformerEncoderLayer/Encoder skip their fused kernels when an argument
has __torch_function__ (torch.overrides.has_torch_function), which every SharedTensor has, so eval mode takes the
same composed path as training. The fused ops are still routed here for code that calls them directly.

Cost per party (B batch x H heads, L queries, S keys, head dims E (q, k) and Ev (v); N = B H L S scores):
  scores          3 rounds, 16 N bytes (one truncation), + 16 B H min(L, S) E for a scale that is not 2^-j
  softmax         approx.softmax on N elements in rows of S (its docstring; a mask changes nothing)
  weights @ v     3 rounds, 16 B H L Ev bytes; dropout with p not in {0, 1/2}: + 3 rounds, 16 B H L Ev
  backward        softmax: 6 rounds, 16 (N + B H L) bytes; each matmul gradient 3 rounds, 16 bytes per element
Error (f = 20): softmax 3e-6 per weight on any scores (max-subtracted, exp's argument clamped at -32: large
logits such as +-50 and fully masked rows are exact cases of the same bound); each product adds <= 1 ulp plus the
inputs' rounding summed over the inner dimension (tests/test_ops_attention.py measures both against float64).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .activations import public_uniform
from .dispatch import UnsupportedOpError, as_shared, implements_function, party_of
from .losses import SoftmaxFn
from .shared import SharedTensor


def masked_softmax(x: SharedTensor, keep: torch.Tensor | None) -> SharedTensor:
    """Softmax over the last dim on the entries `keep` marks (losses.SoftmaxFn; backward 6 rounds, 16 (N + R) bytes)."""
    return SoftmaxFn.apply(x, x.dim() - 1, keep, "attention_softmax")


# ---------------------------------------------------------------------------------------------------------------------
# Masks

def mask_parts(mask, true_means_keep: bool, device=None) -> tuple:
    """(keep, bias) of an attention mask: keep a public bool tensor or None (all kept), bias a public float64 tensor,
    a SharedTensor or None. Boolean masks select; a float mask's -inf entries are masked and its finite entries
    added. +inf or NaN raise."""
    if mask is None:
        return None, None
    if isinstance(mask, SharedTensor):
        if mask.dtype == torch.bool or mask.public is None and mask.dtype != torch.float32:
            raise UnsupportedOpError("an attention mask of secret booleans is not supported: masks must be public "
                                     "(pass a plain tensor), or a secret additive float mask")
        return None, mask
    if mask.dtype == torch.bool:
        keep = mask if true_means_keep else ~mask
        return keep.to(device), None
    m = mask.detach().to(device=device, dtype=torch.float64)
    if bool(torch.isnan(m).any()) or bool(torch.isposinf(m).any()):
        raise ValueError("attention mask: NaN or +inf entries")
    keep = ~torch.isneginf(m)
    bias = torch.where(keep, m, torch.zeros((), dtype=m.dtype, device=m.device))
    return (None if bool(keep.all()) else keep), (None if not bool(bias.any()) else bias)


def _combine(a: tuple, b: tuple) -> tuple:
    """Both masks: keep = keep_a & keep_b, bias = bias_a + bias_b."""
    keep = a[0] if b[0] is None else b[0] if a[0] is None else a[0] & b[0]
    bias = a[1] if b[1] is None else b[1] if a[1] is None else a[1] + b[1]
    return keep, bias


def causal_keep(L: int, S: int, device=None) -> torch.Tensor:
    """torch's is_causal mask: query i attends to keys j <= i (top-left aligned)."""
    return torch.ones(L, S, dtype=torch.bool, device=device).tril()


# ---------------------------------------------------------------------------------------------------------------------
# The attention core

def attention(q, k, v, keep=None, bias=None, dropout_p: float = 0.0, scale: float | None = None,
              weights_scaled: bool = False):
    """(out, weights): softmax((q k^T) scale + bias; keep) [dropout] @ v for (..., L, E), (..., S, E), (..., S, Ev).

    weights_scaled: the returned weights carry dropout's 1/(1-p) (nn.MultiheadAttention's need_weights), at the cost
    of scaling N weights; otherwise the factor scales the output (B H L Ev values) and `weights` excludes it."""
    party = party_of(q, k, v)
    q, k, v = (as_shared(t, party) for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if scale != 1.0:  # the smaller operand carries the scale (one truncation, free for 2^-j)
        if q.numel() <= k.numel():
            q = q * scale
        else:
            k = k * scale
    scores = q @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    if keep is not None:
        keep = keep.to(party.device)
        if tuple(torch.broadcast_shapes(keep.shape, scores.shape)) != tuple(scores.shape):
            raise ValueError(f"attention mask of shape {tuple(keep.shape)} does not broadcast to the scores "
                             f"{tuple(scores.shape)}")
    weights = masked_softmax(scores, keep)
    if dropout_p > 0.0:
        if dropout_p >= 1.0:
            drop = torch.zeros(weights.shape, dtype=torch.float64)
            return (weights * drop) @ v, weights * drop
        drop = (public_uniform(weights.shape, party) >= dropout_p).to(torch.float64)
        weights = weights * drop                      # public 0/1: free
        if weights_scaled:
            weights = weights * (1.0 / (1.0 - dropout_p))
            return weights @ v, weights
        return (weights @ v) * (1.0 / (1.0 - dropout_p)), weights
    return weights @ v, weights


def _gqa(k, v, q_heads: int):
    """enable_gqa: repeat each of the Hk key/value heads q_heads / Hk times (repeat_interleave on dim -3)."""
    hk = k.shape[-3]
    if q_heads % hk:
        raise ValueError(f"enable_gqa: {q_heads} query heads is not a multiple of {hk} key/value heads")
    r = q_heads // hk

    def rep(t):
        shape = t.shape
        return t.unsqueeze(-3).expand(*shape[:-2], r, *shape[-2:]).reshape(*shape[:-3], hk * r, *shape[-2:])
    return rep(k), rep(v)


@implements_function(F.scaled_dot_product_attention)
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """F.scaled_dot_product_attention on shares (cost and error: the module docstring). Dropout is applied whenever
    dropout_p > 0, as in torch (the caller passes 0 in eval mode)."""
    party = party_of(query, key, value, attn_mask)
    if is_causal and attn_mask is not None:
        raise RuntimeError("scaled_dot_product_attention: explicit attn_mask should not be set when is_causal=True")
    if enable_gqa and query.dim() >= 3 and key.shape[-3] != query.shape[-3]:
        key, value = _gqa(key, value, query.shape[-3])
    keep, bias = mask_parts(attn_mask, True, party.device)
    if is_causal:
        keep = causal_keep(query.shape[-2], key.shape[-2], party.device)
    return attention(query, key, value, keep, bias, float(dropout_p), scale)[0]


# ---------------------------------------------------------------------------------------------------------------------
# Multi-head attention

def _in_projection(query, key, value, w, b, wq=None, wk=None, wv=None):
    """q, k, v projections; one product when query is key is value (self-attention) or key is value."""
    if wq is None:
        if query is key and key is value:
            return F.linear(query, w, b).chunk(3, dim=-1)
        wq, wkv = w.split([w.shape[0] // 3, 2 * w.shape[0] // 3])
        bq, bkv = (None, None) if b is None else b.split([w.shape[0] // 3, 2 * w.shape[0] // 3])
        q = F.linear(query, wq, bq)
        if key is value:
            return (q, *F.linear(key, wkv, bkv).chunk(2, dim=-1))
        wk, wv = wkv.chunk(2)
        bk, bv = (None, None) if bkv is None else bkv.chunk(2)
        return q, F.linear(key, wk, bk), F.linear(value, wv, bv)
    bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
    return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)


def _pad_key(mask: tuple) -> tuple:
    """(keep, bias) for one more key (bias_k / add_zero_attn): kept, bias 0."""
    keep, bias = mask
    return (None if keep is None else F.pad(keep, (0, 1), value=True),
            None if bias is None else F.pad(bias, (0, 1)))


@implements_function(F.multi_head_attention_forward)
def multi_head_attention_forward(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias,
                                 bias_k, bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias,
                                 training=True, key_padding_mask=None, need_weights=True, attn_mask=None,
                                 use_separate_proj_weight=False, q_proj_weight=None, k_proj_weight=None,
                                 v_proj_weight=None, static_k=None, static_v=None, average_attn_weights=True,
                                 is_causal=False):
    """torch.nn.functional.multi_head_attention_forward on shares: inputs (L, B, E) (or (L, E) unbatched), the
    same arguments and results as torch (weights averaged over heads when average_attn_weights).
    Cost: the projections (one truncation each: q, k, v in one product for self-attention), attention (module
    docstring), the output projection; need_weights with average_attn_weights adds one truncation of B L S."""
    party = party_of(query, key, value, in_proj_weight, q_proj_weight, out_proj_weight)
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    L, B, E = query.shape
    if E != embed_dim_to_check:
        raise AssertionError(f"was expecting embedding dimension of {embed_dim_to_check}, but got {E}")
    H = num_heads
    hd = E // H
    if hd * H != E:
        raise AssertionError(f"embed_dim {E} not divisible by num_heads {H}")
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
    dev = party.device
    if use_separate_proj_weight:
        q, k, v = _in_projection(query, key, value, None, in_proj_bias, q_proj_weight, k_proj_weight, v_proj_weight)
    else:
        q, k, v = _in_projection(query, key, value, in_proj_weight, in_proj_bias)
    # masks as (keep, bias) of shape (B or 1, H or 1, L, S); torch: True / -inf = masked
    if is_causal and key_padding_mask is None and not need_weights:
        attn = (causal_keep(L, key.shape[0], dev), None)  # torch uses is_causal here and ignores attn_mask
    else:
        attn = mask_parts(attn_mask, False, dev)
        if attn_mask is not None and attn_mask.dim() == 3:  # (B H, L, S); 4-D (B, H or 1, L, S): merged masks
            attn = tuple(None if t is None else t.reshape(B, H, L, -1) for t in attn)
    pad = mask_parts(key_padding_mask, False, dev)
    pad = tuple(None if t is None else t.reshape(B, 1, 1, -1) for t in pad)
    if bias_k is not None and bias_v is not None:
        k = torch.cat([k, bias_k.repeat(1, B, 1)])
        v = torch.cat([v, bias_v.repeat(1, B, 1)])
        attn, pad = _pad_key(attn), _pad_key(pad)
    elif bias_k is not None or bias_v is not None:
        raise AssertionError("bias_k and bias_v must be given together")
    q = q.reshape(L, B, H, hd).permute(1, 2, 0, 3)                       # (B, H, L, hd)
    k = k.reshape(k.shape[0], B, H, hd).permute(1, 2, 0, 3) if static_k is None else static_k.reshape(B, H, -1, hd)
    v = v.reshape(v.shape[0], B, H, hd).permute(1, 2, 0, 3) if static_v is None else static_v.reshape(B, H, -1, hd)
    if add_zero_attn:
        k = torch.cat([k, torch.zeros(B, H, 1, hd)], dim=2)
        v = torch.cat([v, torch.zeros(B, H, 1, hd)], dim=2)
        attn, pad = _pad_key(attn), _pad_key(pad)
    keep, bias = _combine(attn, pad)
    if not training:
        dropout_p = 0.0
    out, weights = attention(q, k, v, keep, bias, float(dropout_p), None, weights_scaled=need_weights)
    out = out.permute(2, 0, 1, 3).reshape(L * B, E)
    out = F.linear(out, out_proj_weight, out_proj_bias).reshape(L, B, -1)
    if need_weights:
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if not batched:
            weights = weights.squeeze(0)
    else:
        weights = None
    return (out if batched else out.squeeze(1)), weights


# ---------------------------------------------------------------------------------------------------------------------
# The fused eval-mode kernels (reached only by direct calls: the modules bypass them for SharedTensor arguments)

def _merged_mask_args(mask, mask_type):
    """torch's merged mask (MultiheadAttention.merge_masks): type 1 = key padding (B, S), else an attention mask
    (L, S) or merged (B, H, L, S); True / -inf = masked."""
    if mask is None:
        return None, None
    return (None, mask) if mask_type == 1 else (mask, None)


@implements_function(torch._native_multi_head_attention)
def native_multi_head_attention(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias, proj_weight,
                                proj_bias, mask=None, need_weights=True, average_attn_weights=True, mask_type=None):
    """torch._native_multi_head_attention (batch first, eval mode) as multi_head_attention_forward."""
    attn_mask, kpm = _merged_mask_args(mask, mask_type)
    batched = query.dim() == 3
    tr = (lambda t: t.transpose(0, 1)) if batched else (lambda t: t)
    q = tr(query)
    k = q if key is query else tr(key)
    v = k if value is key else q if value is query else tr(value)
    out, w = multi_head_attention_forward(q, k, v, embed_dim, num_head, qkv_weight, qkv_bias, None, None, False, 0.0,
                                          proj_weight, proj_bias, training=False, key_padding_mask=kpm,
                                          need_weights=need_weights, attn_mask=attn_mask,
                                          average_attn_weights=average_attn_weights)
    return tr(out), w


@implements_function(torch._transformer_encoder_layer_fwd)
def transformer_encoder_layer_fwd(src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, use_gelu,
                                  norm_first, eps, norm_weight_1, norm_bias_1, norm_weight_2, norm_bias_2,
                                  ffn_weight_1, ffn_bias_1, ffn_weight_2, ffn_bias_2, mask=None, mask_type=None):
    """torch._transformer_encoder_layer_fwd (batch first, eval mode): nn.TransformerEncoderLayer's forward composed
    of the calls above, F.layer_norm and the activation."""
    def norm(x, w, b):
        return F.layer_norm(x, (embed_dim,), w, b, eps)

    def sa(x):
        return native_multi_head_attention(x, x, x, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight,
                                           proj_bias, mask, False, True, mask_type)[0]

    def ff(x):
        h = F.linear(x, ffn_weight_1, ffn_bias_1)
        return F.linear(F.gelu(h) if use_gelu else F.relu(h), ffn_weight_2, ffn_bias_2)
    if norm_first:
        x = src + sa(norm(src, norm_weight_1, norm_bias_1))
        return x + ff(norm(x, norm_weight_2, norm_bias_2))
    x = norm(src + sa(src), norm_weight_1, norm_bias_1)
    return norm(x + ff(x), norm_weight_2, norm_bias_2)
