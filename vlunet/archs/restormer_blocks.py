"""Restormer building blocks used by VLU-Net's proximal mapping module (PMM), Restormer and Perceive-IR.

Channel layer norm, transposed (channel) self-attention (MDTA), gated feed-forward (GDFN), the
transformer block that chains them, and the 2x down/up samplers. All convolutions are bias-free,
as in the official VLU-Net release. Feature maps are (B, C, H, W) throughout, fastest channels-last.

Each block's forward reads as the paper: its plain computation with its own ``nn.Conv2d`` modules, and one
dispatch point (:func:`vlunet.ops.dispatch.fast_path_allowed`) to the same computation with fewer passes over
memory (:mod:`vlunet.ops.fast_blocks`: channels-last products, bands of rows, in-place residual sums, a
hand-written backward), where it was measured faster (the CPU). ``with vlunet.ops.plain():`` or
``VLUNET_PLAIN=1`` runs the plain computation everywhere.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vlunet.ops import dispatch, fast_blocks
from vlunet.ops.attention import channel_attention


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map, at every pixel (eps 1e-5, biased variance).

    On a channels-last map the (B, H, W, C) permute is a free view, so this is one fused kernel
    with no copies (the official code computes mean and variance on a rearranged copy).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = x.permute(0, 2, 3, 1)
        normalized = F.layer_norm(channels_last, self.normalized_shape, self.weight, self.bias, self.eps)
        return normalized.permute(0, 3, 1, 2)


def scaled_sum(out: torch.Tensor, residual: Optional[torch.Tensor], scale: Optional[torch.Tensor] = None,
               residual_weight: float = 1.0) -> torch.Tensor:
    """``residual_weight * residual + scale * out`` (None: omitted); scale broadcastable to (B, 1, 1)."""
    if scale is not None:
        out = out * scale.view(-1, 1, 1, 1)
    return out if residual is None else out + residual_weight * residual


class TransposedSelfAttention(nn.Module):
    """MDTA: multi-Dconv head transposed self-attention of Restormer, (B, C, H, W) -> (B, C, H, W).

    ``forward(x, residual=None, scale=None)`` returns ``residual + scale * MDTA(x)`` (None: omitted),
    the sum and the scaling fused into the output product on the fast path.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                scale: Optional[torch.Tensor] = None, norm: Optional[nn.Module] = None,
                in_place: bool = False) -> torch.Tensor:
        """``residual + scale * MDTA(norm(x))``; ``norm``: a per-pixel module applied first (in bands: band by band).

        ``in_place``: the sum may be written into ``residual`` (the caller no longer needs it, e.g. x itself).
        """
        if not dispatch.fast_path_allowed('channels_last_products', x):
            x = x if norm is None else norm(x)
            query, key, value = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
            attended = channel_attention(query, key, value, self.temperature, self.heads)
            return scaled_sum(self.project_out(attended), residual, scale)
        return fast_blocks.self_attention(x, self.qkv, self.qkv_dwconv, self.project_out, self.temperature,
                                          self.heads, residual, scale, norm, in_place)


class GatedFeedForward(nn.Module):
    """GDFN: 1x1 expand to 2 x hidden, 3x3 depthwise, GELU(first half) * second half, 1x1 back to dim.

    ``forward(x, residual=None)`` returns ``residual + GDFN(x)``, the sum fused into the last product on the
    fast path.
    """

    def __init__(self, dim: int, expansion_factor: float):
        super().__init__()
        hidden = int(dim * expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                norm: Optional[nn.Module] = None, in_place: bool = False) -> torch.Tensor:
        """``residual + GDFN(norm(x))``; ``norm``: a per-pixel module applied first (in bands: band by band).

        ``in_place``: the sum may be written into ``residual`` (the caller no longer needs it, e.g. x itself).
        """
        if not dispatch.fast_path_allowed('channels_last_products', x):
            x = x if norm is None else norm(x)
            gate, content = self.dwconv(self.project_in(x)).chunk(2, dim=1)
            return scaled_sum(self.project_out(F.gelu(gate) * content), residual)
        return fast_blocks.gated_feed_forward(x, self.project_in, self.dwconv, self.project_out, residual, norm,
                                              in_place)


class TransformerBlock(nn.Module):
    """Restormer block: x + MDTA(LN(x)), then x + GDFN(LN(x)); (B, C, H, W) -> (B, C, H, W).

    ``forward(x, overwrite_input=False)``: on the fast path without autograd, the GDFN's sum accumulates into the
    attention's
    output (the block's own map); with ``overwrite_input`` (the caller no longer needs x) the attention's sum
    accumulates into x too. Same values; saves copying each residual into a fresh map.
    """

    def __init__(self, dim: int, heads: int, ffn_expansion_factor: float):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = TransposedSelfAttention(dim, heads)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GatedFeedForward(dim, ffn_expansion_factor)

    def forward(self, x: torch.Tensor, overwrite_input: bool = False) -> torch.Tensor:
        attended = self.attn(x, residual=x, norm=self.norm1, in_place=overwrite_input)
        return self.ffn(attended, residual=attended, norm=self.norm2, in_place=overwrite_input or attended is not x)


class TransformerBlocks(nn.Sequential):
    """A chain of :class:`TransformerBlock` (state-dict keys as ``nn.Sequential``'s), (B, C, H, W) -> (B, C, H, W).

    Every block after the first overwrites its input, the chain's own map (see :class:`TransformerBlock`);
    ``forward(x, overwrite_input=True)``: the first block too (the caller no longer needs x). Built like
    ``nn.Sequential`` (so slicing works) or with :meth:`of`.
    """

    @classmethod
    def of(cls, dim: int, count: int, heads: int, ffn_expansion_factor: float) -> 'TransformerBlocks':
        """``count`` new blocks of ``dim`` channels."""
        return cls(*(TransformerBlock(dim, heads, ffn_expansion_factor) for _ in range(count)))

    def forward(self, x: torch.Tensor, overwrite_input: bool = False) -> torch.Tensor:
        for index, block in enumerate(self):
            x = block(x, overwrite_input=overwrite_input or index > 0)
        return x


class Downsample(nn.Module):
    """(B, C, H, W) -> (B, 2C, H/2, W/2): 3x3 conv to C/2 channels, then pixel-unshuffle by 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """(B, C, H, W) -> (B, C/2, 2H, 2W): 3x3 conv to 2C channels, then pixel-shuffle by 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
