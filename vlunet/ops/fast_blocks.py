"""The fast forwards of the Restormer blocks (MDTA, GDFN) and of VLU-Net's degradation cross-attention.

Each block's module computes the paper's operations plainly and calls one of these where
:func:`vlunet.ops.dispatch.fast_path_allowed` allows the channels-last products (measured: CPU). Same values as
the plain forward (to float rounding) and the same multiply-adds, with fewer passes over full-size memory:

- 1x1 convolutions are matrix products on channels-last pixel rows, the attention's weights and its output
  projection one small merged matrix, residual sums the products' accumulators (:mod:`vlunet.ops.attention`);
- without autograd, on large float32 maps, the expanded maps exist a band of rows at a time
  (:mod:`vlunet.ops.bands`), the GDFN's hidden width is zero-padded to whole vectors (:func:`vector_aligned_weights`),
  and a residual sum may be written into the residual's memory when its owner allows it (``in_place``);
- in float32 training the attentions run with a hand-written backward (:mod:`vlunet.ops.attention_backward`) and
  the GDFN computes its gate and content as two maps.

Every sub-path asks :mod:`vlunet.ops.dispatch` whether it may run. Weights are passed as the blocks' own
``nn.Conv2d`` modules and parameters; shapes are those of the blocks: (B, C, H, W) maps, channels-last.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vlunet.ops import attention_backward, bands, dispatch
from vlunet.ops.attention import project_values, projected_attention
from vlunet.ops.channels_last import (
    accumulate_in_place,
    depthwise_expanded,
    empty_map,
    matrix,
    pixel_product,
    pointwise,
    pointwise_weight,
)
from vlunet.ops.weight_layout import weight_halves

VECTOR_LANES = 16  # float32 values in a 64-byte (AVX-512) vector: the GDFN pads its hidden width to it


def self_attention(x: torch.Tensor, qkv: nn.Conv2d, qkv_dwconv: nn.Conv2d, project_out: nn.Conv2d,
                   temperature: torch.Tensor, heads: int, residual: Optional[torch.Tensor] = None,
                   scale: Optional[torch.Tensor] = None, norm: Optional[nn.Module] = None,
                   in_place: bool = False) -> torch.Tensor:
    """``residual + scale * MDTA(norm(x))`` (None: omitted); ``in_place``: the sum may be written into
    ``residual`` (the caller no longer needs it). See the MDTA module for the parameters."""
    band_rows = bands.banded(x, qkv.out_channels)
    if band_rows is not None:
        return bands.per_image(lambda i: _self_attention_in_bands(x[i:i + 1], bands.one_image(residual, i), scale,
                                                                  band_rows, norm, in_place, qkv, qkv_dwconv,
                                                                  project_out, temperature, heads),
                               x.shape[0], residual if in_place else None)
    x = x if norm is None else norm(x)
    expanded = qkv_dwconv(pointwise(x, qkv))
    if dispatch.fused_backward_allowed(expanded):
        channels = expanded.shape[1] // 3
        layout = attention_backward.AttentionChannels(query=0, key=channels, value=2 * channels, channels=channels,
                                                      heads=heads)
        return attention_backward.fused_projected_attention(expanded, None, layout, temperature, project_out.weight,
                                                            scale, residual)
    query, key, value = expanded.chunk(3, dim=1)
    return projected_attention(query, key, value, temperature, heads, project_out, residual, scale,
                               in_place=in_place)


def _self_attention_in_bands(image: torch.Tensor, residual: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                             band_rows: List[Tuple[int, int]], norm: Optional[nn.Module], in_place: bool,
                             qkv: nn.Conv2d, qkv_dwconv: nn.Conv2d, project_out: nn.Conv2d,
                             temperature: torch.Tensor, heads: int) -> torch.Tensor:
    """One image (1, C, H, W) with q, k and v in bands of rows (:func:`~vlunet.ops.bands.depthwise_bands`,
    :func:`~vlunet.ops.bands.attention_from_bands`), then one product over v (:func:`project_values`)."""
    qkv_bands = ((start, stop, *hidden.chunk(3, dim=1))
                 for start, stop, hidden in bands.depthwise_bands(image, pointwise_weight(qkv), qkv_dwconv.weight,
                                                                  band_rows, norm))
    attention, value = bands.attention_from_bands(qkv_bands, image, temperature, heads)
    return project_values(attention, value, project_out, residual, scale, in_place=in_place)


def cross_attention(x: torch.Tensor, key: torch.Tensor, qv: nn.Conv2d, qv_dwconv: nn.Conv2d, k: nn.Conv2d,
                    k_dwconv: nn.Conv2d, project_out: nn.Conv2d, temperature: torch.Tensor, heads: int,
                    subtract: Optional[torch.Tensor] = None) -> torch.Tensor:
    """VLU-Net's Phi(x, key) (q, v from x, k from the degradation key), minus ``subtract`` (fused into the output
    product). x (B, C, H, W), key (B, Ck, H, W) -> (B, C, H, W)."""
    band_rows = bands.banded(x, qv.out_channels + k.out_channels)
    if band_rows is not None and key.is_contiguous(memory_format=torch.channels_last):
        return bands.per_image(lambda i: _cross_attention_in_bands(x[i:i + 1], key[i:i + 1],
                                                                   bands.one_image(subtract, i), band_rows, qv,
                                                                   qv_dwconv, k, k_dwconv, project_out, temperature,
                                                                   heads),
                               x.shape[0])
    query_value = qv_dwconv(pointwise(x, qv))
    key = k_dwconv(pointwise(key, k))
    if dispatch.fused_backward_allowed(query_value) and key.is_contiguous(memory_format=torch.channels_last):
        channels = key.shape[1]
        layout = attention_backward.AttentionChannels(query=0, key=0, value=channels, channels=channels, heads=heads)
        return attention_backward.fused_projected_attention(query_value, key, layout, temperature, project_out.weight,
                                                            residual=subtract, residual_weight=-1.0)
    query, value = query_value.chunk(2, dim=1)
    return projected_attention(query, key, value, temperature, heads, project_out, residual=subtract,
                               residual_weight=-1.0)


def _cross_attention_in_bands(image: torch.Tensor, key: torch.Tensor, subtract: Optional[torch.Tensor],
                              band_rows: List[Tuple[int, int]], qv: nn.Conv2d, qv_dwconv: nn.Conv2d, k: nn.Conv2d,
                              k_dwconv: nn.Conv2d, project_out: nn.Conv2d, temperature: torch.Tensor,
                              heads: int) -> torch.Tensor:
    """One image (1, C, H, W) with q, v and k in bands of rows (no autograd)."""
    qkv_bands = ((start, stop, query_value[:, :k.out_channels], key_band, query_value[:, k.out_channels:])
                 for (start, stop, query_value), (_, _, key_band)
                 in zip(bands.depthwise_bands(image, pointwise_weight(qv), qv_dwconv.weight, band_rows),
                        bands.depthwise_bands(key, pointwise_weight(k), k_dwconv.weight, band_rows)))
    attention, value = bands.attention_from_bands(qkv_bands, image, temperature, heads)
    return project_values(attention, value, project_out, subtract, residual_weight=-1.0)


def gated_feed_forward(x: torch.Tensor, project_in: nn.Conv2d, dwconv: nn.Conv2d, project_out: nn.Conv2d,
                       residual: Optional[torch.Tensor] = None, norm: Optional[nn.Module] = None,
                       in_place: bool = False) -> torch.Tensor:
    """``residual + GDFN(norm(x))``; ``in_place``: the sum may be written into ``residual`` (the caller no longer
    needs it, e.g. x itself). See the GDFN module for the parameters."""
    band_rows = bands.banded(x, project_in.out_channels)
    if band_rows is not None:
        return bands.per_image(lambda i: _feed_forward_in_bands(x[i:i + 1], bands.one_image(residual, i), band_rows,
                                                                norm, in_place, project_in, dwconv, project_out),
                               x.shape[0], residual if in_place else None)
    x = x if norm is None else norm(x)
    if dispatch.fused_backward_allowed(x):
        # The gate and the content as maps of their own, from the halves of the weights (not strided halves
        # of one 2 x hidden map): GELU, gating and their backward run 1.5-2.5x faster on whole maps, and the
        # halves' gradients need no concatenation. Same products, values and gradients.
        gate, content = (depthwise_expanded(x, pointwise_weight(expand), depthwise) for expand, depthwise
                         in zip(weight_halves(project_in.weight), weight_halves(dwconv.weight)))
        return pointwise(F.gelu(gate) * content, project_out, residual)
    if not dispatch.vector_padding_allowed(x):
        gate, content = dwconv(pointwise(x, project_in)).chunk(2, dim=1)
        return pointwise(F.gelu(gate) * content, project_out, residual)
    expand, depthwise, project = vector_aligned_weights(project_in, dwconv, project_out)
    gate, content = depthwise_expanded(x, expand, depthwise).chunk(2, dim=1)
    # no graph to keep: GELU and gating in place, in the first half (read in place by the product)
    return pixel_product(torch.ops.aten.gelu_(gate).mul_(content), project, residual, in_place)


def vector_aligned_weights(project_in: nn.Conv2d, dwconv: nn.Conv2d,
                           project_out: nn.Conv2d) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(expand (C, 2 x h'), depthwise (2 x h', 1, 3, 3), project (h', C)): the GDFN's weights with the hidden width
    h zero-padded to h', a multiple of :data:`VECTOR_LANES` (gate channels [0, h), content [h', h' + h)).

    The padded channels are zero throughout (zero expansion, zero depthwise filter, GELU(0) * 0 = 0, a zero
    row of the projection): the same values, while the depthwise convolution, the GELU, the gating and the
    products work on whole vectors at aligned offsets (a 255-channel band's chain runs about 18 % faster on CPU).
    Used without autograd (bands and whole maps); training keeps the module's weights.
    """
    hidden = project_out.in_channels
    padded = -(-hidden // VECTOR_LANES) * VECTOR_LANES
    expand, depthwise, project = (project_in.weight, dwconv.weight, project_out.weight)
    if padded != hidden:
        expand = expand.new_zeros(2, padded, expand.shape[1])
        depthwise = depthwise.new_zeros(2, padded, 9)
        project = project.new_zeros(project.shape[0], padded)
        expand[:, :hidden] = project_in.weight.reshape(2, hidden, -1)
        depthwise[:, :hidden] = dwconv.weight.reshape(2, hidden, 9)
        project[:, :hidden] = project_out.weight.flatten(1)
    return (expand.reshape(2 * padded, -1).t(), depthwise.reshape(2 * padded, 1, 3, 3),
            project.reshape(project.shape[0], padded).t())


def _feed_forward_in_bands(image: torch.Tensor, residual: Optional[torch.Tensor], band_rows: List[Tuple[int, int]],
                           norm: Optional[nn.Module], in_place: bool, project_in: nn.Conv2d, dwconv: nn.Conv2d,
                           project_out: nn.Conv2d) -> torch.Tensor:
    """One image (1, C, H, W) of the GDFN in bands of rows (:func:`~vlunet.ops.bands.depthwise_bands`): the same
    values and products.

    The hidden maps of a band (2.66 x 2 x its input) reuse the same memory and stay in cache; the
    full-size ones are fresh memory every time, and writing them costs as much as computing them.
    The hidden width is padded to whole vectors (:func:`vector_aligned_weights`). Each band's output is
    written in place into the output map, its residual as the accumulator; with
    ``in_place`` the output map is the residual itself (also when the residual is the image: a band's
    image rows are no longer read once :func:`~vlunet.ops.bands.depthwise_bands` yields it).
    """
    expand, depthwise, weight = vector_aligned_weights(project_in, dwconv, project_out)
    accumulate = accumulate_in_place(image, residual, in_place)
    out = residual if accumulate else empty_map(image, weight.shape[1])
    for start, stop, hidden in bands.depthwise_bands(image, expand, depthwise, band_rows, norm):
        gate, content = hidden.chunk(2, dim=1)
        gated = matrix(torch.ops.aten.gelu_(gate).mul_(content))
        target = matrix(out[:, :, start:stop])
        if residual is None:
            torch.mm(gated, weight, out=target)
        elif accumulate:
            target.addmm_(gated, weight)
        else:
            torch.addmm(matrix(residual[:, :, start:stop]), gated, weight, out=target)
    return out
