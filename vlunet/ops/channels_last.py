"""Channels-last products: 1x1 convolutions as matrix products on the pixel rows of channels-last maps.

On a channels-last (B, C, H, W) map, (B, H*W, C) pixel rows are a free view, also of a channel slice (such as
the halves of a ``chunk``). A 1x1 convolution is then one matrix product that reads the slice in place, and a
residual sum is the product's accumulator (no second pass). Fresh full-size tensors cost page faults on CPU,
so without autograd a sum may accumulate in the residual's own memory when its owner allows it.
These run where :func:`vlunet.ops.dispatch.fast_path_allowed` says (measured: CPU); elsewhere :func:`pointwise`
is the module's own convolution.
"""
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from vlunet.ops import dispatch


def pixel_rows(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C): a view on channels-last maps and their channel slices (a copy otherwise)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def as_map(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W) channels-last view, H and W from ``like``."""
    return tokens.view(tokens.shape[0], *like.shape[-2:], tokens.shape[-1]).permute(0, 3, 1, 2)


def matrix(x: torch.Tensor) -> torch.Tensor:
    """One channels-last image or band (1, C, h, W) -> its (h*W, C) pixel matrix, a view."""
    return pixel_rows(x)[0]


def empty_map(like: torch.Tensor, channels: int) -> torch.Tensor:
    """An empty channels-last (1, channels, H, W) map with ``like``'s H, W, dtype and device."""
    return torch.empty(1, channels, *like.shape[-2:], dtype=like.dtype, device=like.device,
                       memory_format=torch.channels_last)


def fuse_residual(product: torch.Tensor, residual: Optional[torch.Tensor]) -> bool:
    """Whether ``residual`` can be the accumulator of the matrix product (same dtype, no autocast).

    Under autocast the product runs in fp16/bf16 and the sum keeps the residual's float32, as unfused.
    """
    return residual is not None and residual.dtype == product.dtype and not dispatch.autocast_enabled(product)


def accumulate_in_place(product: torch.Tensor, residual: Optional[torch.Tensor], in_place: bool) -> bool:
    """Whether the product may accumulate into ``residual``'s own memory: the caller allows it (``in_place``: it
    no longer needs the residual), the sum is fused (:func:`fuse_residual`), the device and grad mode allow it
    (:func:`~vlunet.ops.dispatch.in_place_allowed`), and the residual is a channels-last map, whose pixel rows are
    a view.
    Saves copying the residual into a fresh output.
    """
    return (in_place and fuse_residual(product, residual) and dispatch.in_place_allowed(residual)
            and residual.is_contiguous(memory_format=torch.channels_last))


def pointwise(x: torch.Tensor, conv: nn.Conv2d, residual: Optional[torch.Tensor] = None,
              in_place: bool = False) -> torch.Tensor:
    """The bias-free 1x1 ``conv`` of x (B, C, H, W) (plus ``residual``) -> (B, C_out, H, W).

    Where the channels-last products run (:mod:`vlunet.ops.dispatch`), one matrix product on (B, H*W, C), channels-
    last: as fast as the convolution forward on CPU, faster backward with several threads (oneDNN's 1x1 backward);
    it reads a channels-last slice of a wider map in place, and the residual sum is the product's accumulator.
    The weight's gradient comes out contiguous: store 1x1 weights contiguous for DDP's gradient buckets.
    ``in_place``: the sum may be written into ``residual`` (:func:`accumulate_in_place`; the caller no longer
    needs it); the result is returned either way. Elsewhere: ``conv(x) + residual``.
    """
    if not dispatch.fast_path_allowed('channels_last_products', x):
        out = conv(x)
        return out if residual is None else out + residual
    return pixel_product(x, pointwise_weight(conv), residual, in_place)


def pixel_product(x: torch.Tensor, weight: torch.Tensor, residual: Optional[torch.Tensor] = None,
                  in_place: bool = False) -> torch.Tensor:
    """:func:`pointwise` with a weight matrix: x (B, C, H, W) times ``weight`` (C, C_out) at every pixel (plus
    ``residual``) -> (B, C_out, H, W), channels-last."""
    rows = pixel_rows(x)  # (B, H*W, C)
    if accumulate_in_place(rows, residual, in_place):
        pixel_rows(residual).flatten(0, 1).addmm_(rows.flatten(0, 1), weight)
        return residual
    if fuse_residual(rows, residual):
        out = torch.addmm(pixel_rows(residual).flatten(0, 1), rows.flatten(0, 1), weight)
        return as_map(out.view(x.shape[0], -1, out.shape[-1]), x)
    out = as_map(rows @ weight, x)
    return out if residual is None else out + residual


def pointwise_weight(conv: Union[nn.Conv2d, torch.Tensor]) -> torch.Tensor:
    """The (C_in, C_out) matrix of a bias-free 1x1 ``conv`` (or of its (C_out, C_in, 1, 1) weight) acting on pixel
    rows (a view of the weight)."""
    weight = conv.weight if isinstance(conv, nn.Conv2d) else conv
    return weight.flatten(1).t()


def depthwise_expanded(x: torch.Tensor, expand_weight: torch.Tensor, depthwise_weight: torch.Tensor) -> torch.Tensor:
    """The depthwise 3x3 (zero padding 1) of ``x @ expand_weight`` at every pixel, the whole map at once
    (:func:`~vlunet.ops.bands.depthwise_bands`: band by band). x (B, C, H, W), expand_weight (C, C_expanded),
    depthwise_weight (C_expanded, 1, 3, 3) -> (B, C_expanded, H, W), channels-last."""
    return F.conv2d(pixel_product(x, expand_weight), depthwise_weight, padding=1, groups=depthwise_weight.shape[0])
