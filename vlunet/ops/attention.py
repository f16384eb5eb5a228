"""Restormer's channel ("transposed") attention as tensor maths: per-head grams, normalisation, the merged projection.

The attention of every head and the 1x1 output projection are both linear maps of v's channels, so
:func:`projected_attention` merges them into one small (B, C, C_out) matrix and reads v once, the residual sum
being the product's accumulator (the channels-last products of :mod:`vlunet.ops.channels_last`). Norms, logits and
softmax are float32; in fp16 q and k are normalised first (fp16 overflow), in bf16 on the CPU they are read in float32
(see :func:`attention_weights`).
"""
from typing import Optional

import torch
from torch import nn

from vlunet.ops import dispatch
from vlunet.ops.channels_last import accumulate_in_place, as_map, fuse_residual, pixel_rows

REDUCED_PRECISION = (torch.float16, torch.bfloat16)


def head_grams(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """q, k (B, C, N) -> (B, heads, C/heads, C/heads): per head q @ k^T (channels grouped head-major)."""
    return torch.stack([q_head @ k_head.transpose(1, 2)
                        for q_head, k_head in zip(q.chunk(heads, 1), k.chunk(heads, 1))], dim=1)


def normalized_attention(grams: torch.Tensor, query_norm: torch.Tensor, key_norm: torch.Tensor,
                         temperature: torch.Tensor) -> torch.Tensor:
    """softmax(q @ k^T / (|q| |k|^T) * temperature) from the float32 grams (B, heads, c, c) and norms (B, C)."""
    b, heads = grams.shape[:2]
    logits = grams / (query_norm.view(b, heads, -1, 1) * key_norm.view(b, heads, 1, -1))
    return (logits * temperature.view(1, heads, 1, 1)).softmax(dim=-1)


def attention_projection(attention: torch.Tensor, projection_weight: torch.Tensor) -> torch.Tensor:
    """(B, C, C_out): the per-head attention weights (B, heads, c, c), block-diagonal, times the 1x1 projection
    (C_out, C, 1, 1): one matrix that maps v's channels to the projected output."""
    b, heads, c = attention.shape[:3]
    projection = projection_weight.flatten(1).t().reshape(heads, c, -1)  # (heads, C/heads, C_out)
    return (attention.transpose(2, 3) @ projection).reshape(b, heads * c, -1)


def spatial_norms(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C) float32: the L2 norm of every channel over the H*W pixels, floored at 1e-12.

    fp32: ``square().sum()`` (it reads strided channels-last memory ~3x faster than
    ``linalg.vector_norm``); fp16/bf16: ``vector_norm`` accumulating in float32 (fp16 squares overflow
    from |x| > 255).
    """
    flat = x.flatten(2)
    if flat.dtype in REDUCED_PRECISION:
        norms = torch.linalg.vector_norm(flat, dim=-1, dtype=torch.float32)
    else:
        norms = flat.square().sum(dim=-1, dtype=torch.float32).sqrt()
    return norms.clamp_min(1e-12)


def _normalized(x: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """x (B, C, N) in fp16/bf16 divided by its float32 row norms (B, C): one multiplication in x's dtype.

    The reciprocal is capped at the dtype's largest value, so an all-zero row stays zero.
    """
    reciprocal = norm.reciprocal().clamp_max(torch.finfo(x.dtype).max).to(x.dtype)
    return x * reciprocal.unsqueeze(-1)


def attention_weights(query: torch.Tensor, key: torch.Tensor, temperature: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, heads, C/heads, C/heads): per head softmax(normalize(q) @ normalize(k)^T * temperature), in v's dtype.

    query, key: (B, C, H, W), channels grouped head-major; q, k are the (C/heads, H*W) head matrices
    and normalize is L2 over the spatial axis. Channels-last head matrices are strided views that the products read
    directly (no per-head copies). In float32 the small logits are divided by the outer product of the
    norms instead of normalising the large q and k (same value; saves two full-size divisions). On the CPU
    (fast path ``float32_attention_weights``) bf16 q and k are converted to float32 and take that path: bf16
    products of strided (C, H*W) matrices copy them first, and the conversion costs less. Elsewhere, and in
    fp16, q and k are normalised first, as in the official code: in fp16 q @ k^T sums H*W products and would
    pass fp16's largest value (65,504) from about 256x256 on. Norms, logits and softmax are float32.
    """
    if query.dtype == torch.bfloat16 and dispatch.fast_path_allowed('float32_attention_weights', query):
        with torch.autocast(query.device.type, enabled=False):  # autocast would cast the products back to bf16
            return attention_weights(query.float(), key.float(), temperature, heads)
    query_norm, key_norm = spatial_norms(query), spatial_norms(key)
    q, k = query.flatten(2), key.flatten(2)  # (B, C, H*W)
    normalize_first = q.dtype in REDUCED_PRECISION
    if normalize_first:
        q, k = _normalized(q, query_norm), _normalized(k, key_norm)
    logits = head_grams(q, k, heads).float()
    if not normalize_first:
        return normalized_attention(logits, query_norm, key_norm, temperature)
    return (logits * temperature.view(1, heads, 1, 1)).softmax(dim=-1)


def channel_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, temperature: torch.Tensor,
                      heads: int) -> torch.Tensor:
    """Attention across channels ("transposed" attention) of Restormer.

    Args:
        query, key, value: (B, C, H, W) maps; channels are grouped head-major into ``heads`` heads.
        temperature: (heads, 1, 1) learnable scale of the logits.
        heads: Number of heads; must divide C.

    Returns:
        (B, C, H, W), channels-last: per head, :func:`attention_weights` @ v (v: the (C/heads, H*W)
        head matrix), produced as (B, H*W, C) from strided views of channels-last maps.
    """
    attention = attention_weights(query, key, temperature, heads).to(value.dtype)
    v = pixel_rows(value)
    outputs = [v_head @ attention[:, head].transpose(1, 2) for head, v_head in enumerate(v.chunk(heads, 2))]
    return as_map(outputs[0] if heads == 1 else torch.cat(outputs, dim=2), value)


def projected_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, temperature: torch.Tensor,
                        heads: int, project_out: nn.Conv2d, residual: Optional[torch.Tensor] = None,
                        scale: Optional[torch.Tensor] = None, residual_weight: float = 1.0,
                        in_place: bool = False) -> torch.Tensor:
    """``residual_weight * residual + scale * project_out(channel_attention(query, key, value))``, one product.

    Shapes: query, key, value, residual (B, C, H, W); scale: a tensor broadcastable to (B, 1, 1)
    (e.g. a learnable step); None: omitted. Returns (B, C_out, H, W), channels-last.

    The attention weights of every head and the 1x1 projection are both linear maps of v's channels:
    they are merged first into one small (B, C, C_out) matrix (block-diagonal weights @ projection,
    times ``scale``), so v is read once by a single product, which accumulates onto the residual.
    Saves the per-head products, their concatenation, the projection pass and the residual pass.
    Under autocast the scale and the residual are applied afterwards in float32, as unfused. ``in_place``: the
    sum may be written into ``residual`` (:func:`~vlunet.ops.channels_last.accumulate_in_place`); the result is
    returned either way.
    """
    attention = attention_weights(query, key, temperature, heads)
    return project_values(attention, value, project_out, residual, scale, residual_weight, in_place)


def project_values(attention: torch.Tensor, value: torch.Tensor, project_out: nn.Conv2d,
                   residual: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                   residual_weight: float = 1.0, in_place: bool = False) -> torch.Tensor:
    """The second half of :func:`projected_attention`, from the attention weights (B, heads, c, c)."""
    merged = attention_projection(attention.to(value.dtype), project_out.weight)  # (B, C, C_out)
    v = pixel_rows(value)
    if fuse_residual(v, residual):
        if scale is not None:
            merged = merged * scale.view(-1, 1, 1)
        if accumulate_in_place(v, residual, in_place):
            pixel_rows(residual).baddbmm_(v, merged, beta=residual_weight)
            return residual
        return as_map(torch.baddbmm(pixel_rows(residual), v, merged, beta=residual_weight), value)
    out = as_map(v @ merged, value)
    if scale is not None:
        out = out * scale.view(-1, 1, 1, 1)
    return out if residual is None else out + residual_weight * residual

