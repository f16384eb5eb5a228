"""A hand-written backward pass for the training path of the channel attention (float32, channels-last).

Autograd's generic backward of the channel attention loses time on full-size maps that the math does
not need: the backward of ``chunk`` concatenates the gradients of q, k and v into a new map, the
gradients of q and k come out of ``bmm`` in the (B, C, H*W) layout and are reordered before the
depthwise convolution's backward (which is twice as slow on them), and the norms' ``square`` backward
adds another full pass. :func:`fused_projected_attention` computes the same gradients (to float
rounding) and writes them straight into one channels-last gradient map of the block's expanded input,
as the depthwise convolution's backward wants it. Only the large products run by hand; the small part
(norms, softmax, temperature, merged projection, scale: matrices of C x C) is recomputed in the
backward and differentiated by autograd.

It runs where :func:`vlunet.ops.dispatch.fused_backward_allowed` says (measured: CPU).
"""
from typing import NamedTuple, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from vlunet.ops.attention import attention_projection, head_grams, normalized_attention
from vlunet.ops.channels_last import as_map, pixel_rows


class AttentionChannels(NamedTuple):
    """Where q, k and v lie in the expanded maps: their channel offsets and count, and the heads.

    q and v are channels ``[query, query + channels)`` and ``[value, value + channels)`` of the source
    map; k is ``[key, key + channels)`` of the key map (the source map itself when none is given).
    """
    query: int
    key: int
    value: int
    channels: int
    heads: int

    def query_of(self, source: torch.Tensor) -> torch.Tensor:
        return source[:, self.query:self.query + self.channels]

    def key_of(self, key_source: torch.Tensor) -> torch.Tensor:
        return key_source[:, self.key:self.key + self.channels]

    def value_of(self, source: torch.Tensor) -> torch.Tensor:
        return source[:, self.value:self.value + self.channels]


def merged_projection(grams: torch.Tensor, query_squares: torch.Tensor, key_squares: torch.Tensor,
                      temperature: torch.Tensor, projection_weight: torch.Tensor,
                      scale: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, C, C_out): the attention weights of every head, block-diagonal, times the 1x1 projection and ``scale``.

    grams (B, heads, c, c) are the per-head q @ k^T, query/key_squares (B, C) the squared L2 norms of
    q's and k's channels over space; the norms are floored at 1e-12 (before the square root, so that
    their gradient is 0, not NaN, for an all-zero channel).
    """
    query_norm, key_norm = (squares.clamp_min(1e-24).sqrt() for squares in (query_squares, key_squares))
    merged = attention_projection(normalized_attention(grams, query_norm, key_norm, temperature), projection_weight)
    return merged if scale is None else merged * scale.view(-1, 1, 1)


class _ProjectedChannelAttention(torch.autograd.Function):
    """See :func:`fused_projected_attention`."""

    @staticmethod
    def forward(ctx, source: torch.Tensor, key_source: Optional[torch.Tensor], temperature: torch.Tensor,
                projection_weight: torch.Tensor, scale: Optional[torch.Tensor], residual: Optional[torch.Tensor],
                channels: AttentionChannels, residual_weight: float) -> torch.Tensor:
        keys = source if key_source is None else key_source
        q, k = channels.query_of(source).flatten(2), channels.key_of(keys).flatten(2)  # (B, C, H*W)
        grams = head_grams(q, k, channels.heads)
        query_squares, key_squares = q.square().sum(dim=-1), k.square().sum(dim=-1)
        merged = merged_projection(grams, query_squares, key_squares, temperature, projection_weight, scale)
        value = channels.value_of(source)
        if residual is None:
            out = pixel_rows(value) @ merged
        else:
            out = torch.baddbmm(pixel_rows(residual), pixel_rows(value), merged, beta=residual_weight)
        ctx.save_for_backward(source, key_source, grams, query_squares, key_squares, temperature, projection_weight,
                              scale, merged)
        ctx.channels, ctx.residual_weight = channels, residual_weight
        return as_map(out, value)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        source, key_source, grams, query_squares, key_squares, temperature, weight, scale, merged = ctx.saved_tensors
        channels: AttentionChannels = ctx.channels
        grad = pixel_rows(grad_out.contiguous(memory_format=torch.channels_last))  # (B, H*W, C_out)
        value_rows = pixel_rows(channels.value_of(source))
        small_grads = _merged_projection_grads(value_rows.transpose(1, 2) @ grad, grams, query_squares, key_squares,
                                               temperature, weight, scale)
        grad_grams, grad_query_squares, grad_key_squares, grad_temperature, grad_weight, grad_scale = small_grads
        source_grad = torch.empty_like(source, memory_format=torch.channels_last)
        key_grad = source_grad if key_source is None else torch.empty_like(key_source,
                                                                           memory_format=torch.channels_last)
        keys = source if key_source is None else key_source
        for image, merged_image in enumerate(merged):
            torch.mm(grad[image], merged_image.t(), out=pixel_rows(channels.value_of(source_grad))[image])
        query_rows, key_rows = pixel_rows(channels.query_of(source)), pixel_rows(channels.key_of(keys))
        _gram_operand_grad(pixel_rows(channels.query_of(source_grad)), query_rows, grad_query_squares,
                           key_rows, grad_grams, channels.heads)
        _gram_operand_grad(pixel_rows(channels.key_of(key_grad)), key_rows, grad_key_squares,
                           query_rows, grad_grams.transpose(2, 3), channels.heads)
        residual_grad = None
        if ctx.needs_input_grad[5]:
            residual_grad = grad_out if ctx.residual_weight == 1 else grad_out * ctx.residual_weight
        return (source_grad, None if key_source is None else key_grad, grad_temperature, grad_weight, grad_scale,
                residual_grad, None, None)


def _merged_projection_grads(grad_merged: torch.Tensor, grams: torch.Tensor, query_squares: torch.Tensor,
                             key_squares: torch.Tensor, temperature: torch.Tensor, weight: torch.Tensor,
                             scale: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
    """The gradients of :func:`merged_projection`'s inputs from that of its output (small C x C matrices:
    autograd on a recomputation). None for ``scale`` when it is None."""
    inputs = [tensor.detach().requires_grad_() for tensor in (grams, query_squares, key_squares, temperature, weight)]
    if scale is not None:
        inputs.append(scale.detach().requires_grad_())
    with torch.enable_grad():
        merged = merged_projection(*inputs[:5], inputs[5] if scale is not None else None)
        grads = torch.autograd.grad(merged, inputs, grad_merged)
    return tuple(grads) if scale is not None else (*grads, None)


def _gram_operand_grad(out_rows: torch.Tensor, rows: torch.Tensor, grad_squares: torch.Tensor,
                       other_rows: torch.Tensor, grad_grams: torch.Tensor, heads: int) -> None:
    """Writes into ``out_rows`` (B, H*W, C) the gradient of q (rows (B, H*W, C)) in grams = q_h @ k_h^T and
    squares = |q|^2: ``2 * q * grad_squares + k_h @ grad_grams_h^T`` per head, in rows (``other_rows``: k's rows;
    ``grad_grams``: (B, heads, c, c); for k's gradient the caller swaps q and k and transposes ``grad_grams``)."""
    torch.mul(rows, (2 * grad_squares).unsqueeze(1), out=out_rows)
    c = rows.shape[-1] // heads
    for image in range(rows.shape[0]):
        for head in range(heads):
            span = slice(head * c, (head + 1) * c)
            out_rows[image, :, span].addmm_(other_rows[image, :, span], grad_grams[image, head].t())


def fused_projected_attention(source: torch.Tensor, key_source: Optional[torch.Tensor], channels: AttentionChannels,
                              temperature: torch.Tensor, projection_weight: torch.Tensor,
                              scale: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None,
                              residual_weight: float = 1.0) -> torch.Tensor:
    """``residual_weight * residual + scale * project(channel_attention(q, k, v))`` with a hand-written backward.

    Shapes: source (B, C_s, H, W) channels-last, holding q and v (and k when ``key_source`` is None),
    key_source (B, C_k, H, W) channels-last or None, at the offsets of ``channels``; temperature
    (heads, 1, 1); projection_weight (C_out, C, 1, 1); scale broadcastable to (B, 1, 1) or None;
    residual (B, C_out, H, W) or None. Returns (B, C_out, H, W), channels-last. float32 only.
    """
    return _ProjectedChannelAttention.apply(source, key_source, temperature, projection_weight, scale, residual,
                                            channels, residual_weight)
