"""CPU inference paths of 3x3 convolutions (IR-SDE's U-Net, :mod:`vlunet.archs.daclip.irsde_unet_blocks`).

The fast path ``fused_convolutions`` of :mod:`vlunet.ops.dispatch`: used only where it was measured faster (CPU
with oneDNN, float32, no autograd; docs/performance.md): every other device, dtype or mode, and :func:`plain`,
keep the plain PyTorch path. Same function to
float rounding (max relative error ~1e-6 per convolution):

- **modulation and SiLU fused into the convolution**: ``silu(conv(x)·(scale+1) + shift)`` with one
  time embedding (batch 1, the sampler's case) is ``silu(conv(x, W·(scale+1)) + shift)``: the scale
  folds into the weight, the shift is the bias, and oneDNN applies the SiLU as a post-op, so the
  full-size map is written once instead of three times;
- **Winograd F(2x2, 3x3)** for 3x3 convolutions with many input channels on small maps (the deep
  levels): each 4x4 input tile becomes 16 transformed values, the convolution 16 matrix products
  (T tiles, C) x (C, C_out) and an output transform to the 2x2 outputs: 4 instead of 9 multiply-adds
  per output. The transforms are additions of strided views, so they pay only where C is large and
  the maps small (:data:`WINOGRAD_MIN_CHANNELS`). The transformed weight (16/9 of the weight's
  memory) is kept on the convolution module until the weight changes.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vlunet.ops.dispatch import capturing_graph, fast_path_allowed, plain_float32_map

# oneDNN's convolution with a fused post-op (a private torch op: without it, the plain path runs)
ONEDNN_POINTWISE_CONVOLUTION = hasattr(torch.ops.mkldnn, '_convolution_pointwise')
WINOGRAD_MIN_CHANNELS = 512  # input channels from which F(2x2, 3x3) beat oneDNN's direct 3x3 (measured, 1-2 threads)
WINOGRAD_MAX_PIXELS = 64 * 64  # and maps up to this size (larger maps: the transforms' memory traffic dominates)
# G of F(2, 3): the 4 transformed taps of a 3-tap kernel.
_KERNEL_TRANSFORM = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def fast_cpu_inference(x: torch.Tensor) -> bool:
    """Whether the CPU inference paths apply to the map x: CPU with oneDNN, no autograd, a float32
    channels-last map outside autocast and graph capture."""
    return (fast_path_allowed('fused_convolutions', x) and ONEDNN_POINTWISE_CONVOLUTION
            and torch.backends.mkldnn.is_available() and not torch.is_grad_enabled()
            and plain_float32_map(x) and not capturing_graph())


def _uses_winograd(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    height, width = x.shape[-2:]
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.in_channels >= WINOGRAD_MIN_CHANNELS
            and height * width <= WINOGRAD_MAX_PIXELS and height % 2 == 0 and width % 2 == 0)


def winograd_weight(conv: nn.Conv2d) -> torch.Tensor:
    """G·w·Gᵀ of the 3x3 weight (C_out, C, 3, 3) as (16, C, C_out), cached on ``conv`` until the weight changes."""
    weight = conv.weight
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
    cached = getattr(conv, '_winograd_weight', None)
    if cached is None or cached[0] != key:
        transform = torch.tensor(_KERNEL_TRANSFORM, dtype=torch.float64, device=weight.device)
        taps = torch.einsum('ak,ockl,bl->abco', transform, weight.detach().double(), transform)
        cached = (key, taps.reshape(16, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous())
        conv._winograd_weight = cached
    return cached[1]


def _tile_transform(rows: torch.Tensor, out: torch.Tensor, dim: int) -> None:
    """Bᵀ of F(2, 3) along ``dim`` of rows (length 2n+2, zero-padded): out[k] = (d0−d2, d1+d2, d2−d1, d1−d3)
    of the taps 2i..2i+3, each n long."""
    length = rows.shape[dim] - 3  # taps k, k+2, ..., k+2(n-1)
    taps = [rows.narrow(dim, k, length).unfold(dim, 1, 2).squeeze(-1) for k in range(4)]
    torch.sub(taps[0], taps[2], out=out[0])
    torch.add(taps[1], taps[2], out=out[1])
    torch.sub(taps[2], taps[1], out=out[2])
    torch.sub(taps[1], taps[3], out=out[3])


def winograd_conv3x3(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv(x) (3x3, padding 1, bias added) by Winograd F(2x2, 3x3): x (B, C, H, W) channels-last, H and W even
    -> (B, C_out, H, W) channels-last."""
    batch, channels, height, width = x.shape
    rows, columns = height // 2, width // 2
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # (B, H+2, W+2, C)
    row_taps = x.new_empty(4, batch, rows, width + 2, channels)
    _tile_transform(padded, row_taps, 1)
    tiles = x.new_empty(4, 4, batch, rows, columns, channels)
    for index in range(4):
        _tile_transform(row_taps[index], tiles[index], 2)
    weight = winograd_weight(conv)
    products = torch.bmm(tiles.view(16, -1, channels), weight).view(4, 4, batch, rows, columns, -1)
    # Aᵀ of F(2, 3) on the 4 transformed rows, then on the 4 columns: y0 = m0+m1+m2, y1 = m1−m2−m3.
    row_sums = torch.stack([products[0] + products[1] + products[2], products[1] - products[2] - products[3]])
    out = torch.empty(batch, weight.shape[-1], height, width, dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    pixels = out.permute(0, 2, 3, 1)
    for row in range(2):
        sums = row_sums[row]
        even, odd = pixels[:, row::2, 0::2], pixels[:, row::2, 1::2]
        torch.add(sums[0], sums[1], out=even).add_(sums[2])
        torch.sub(sums[1], sums[2], out=odd).sub_(sums[3])
    if conv.bias is not None:
        out.add_(conv.bias.view(1, -1, 1, 1))
    return out


def conv_modulate_silu(x: torch.Tensor, conv: nn.Conv2d, scale: Optional[torch.Tensor],
                       shift: Optional[torch.Tensor]) -> torch.Tensor:
    """``silu(conv(x)·(scale+1) + shift)`` (or ``silu(conv(x))`` without a scale) on the CPU inference path
    (:func:`fast_cpu_inference`). x (B, C, H, W); scale, shift (B or 1, C_out, 1, 1) -> (B, C_out, H, W)."""
    if _uses_winograd(x, conv):
        out = winograd_conv3x3(x, conv)
        if scale is not None:
            torch.addcmul(shift, out, scale + 1, out=out)
        return F.silu(out, inplace=True)
    weight, bias = conv.weight, conv.bias
    if scale is not None:
        if scale.shape[0] != 1:  # one embedding per image: each image its own folded weight
            return torch.cat([conv_modulate_silu(x[i:i + 1], conv, scale[i:i + 1], shift[i:i + 1])
                              for i in range(x.shape[0])])
        weight = weight * (scale.view(-1, 1, 1, 1) + 1)
        bias = shift.flatten() if bias is None else bias * (scale.flatten() + 1) + shift.flatten()
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, list(conv.padding), list(conv.stride),
                                                   list(conv.dilation), conv.groups, 'swish', [], '')
