"""NAFNet building blocks (Chen et al., "Simple Baselines for Image Restoration", ECCV 2022).

NAFNet is a U-shaped network of "nonlinear activation free" blocks: instead of ReLU/GELU, a block
multiplies the two halves of its channels (:class:`SimpleGate`) and re-weights channels by a gate
computed from the global average (simplified channel attention, SCA). Each block has two residual
branches scaled by learnable per-channel factors ``beta`` and ``gamma`` that start at zero, so a new
block is the identity.

:class:`NAFBlock` can take two optional inputs, used by guided variants (NAFNet + DA-CLIP,
Perceive-IR's backbone):

- a per-block *modulation* vector (B, modulation_dim): ``SimpleGate -> Linear(modulation_dim/2, 4C)``
  gives a scale and shift for the output of each of the block's two layer norms, applied as
  ``x·(1 + scale) + shift`` (the conditioning of the NAFBlocks of the DA-CLIP author's
  ``ConditionalNAFNet``, where the vector is a time embedding);
- an *attention* module that replaces the simplified channel attention; it is called as
  ``attention(x, context)`` on (B, C, H, W) and returns (B, C, H, W), so it can attend to a context.

Parameter names follow the NAFNet release (``norm1``, ``conv1`` … ``conv5``, ``sca.1``, ``beta``,
``gamma``; in a network ``intro``, ``encoders``, ``downs``, ``middle_blks``, ``ups``, ``decoders``,
``ending``), so NAFNet state dicts map onto networks built from these blocks by name.
Feature maps are (B, C, H, W) throughout.
"""
from typing import Optional

import torch
from torch import nn

from vlunet.archs.restormer_blocks import ChannelLayerNorm


class LayerNorm2d(ChannelLayerNorm):
    """NAFNet's layer norm: over the channels of (B, C, H, W) at every pixel, affine, biased variance, eps 1e-6."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__(channels, eps=eps)


class SimpleGate(nn.Module):
    """Splits the channel axis (dim 1) in two halves and multiplies them: (B, 2C, ...) -> (B, C, ...).

    Works on feature maps (B, 2C, H, W) and on vectors (B, 2C) alike.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % 2:
            raise ValueError(f'SimpleGate: the channel axis must be even, got {x.shape[1]} channels.')
        first, second = x.chunk(2, dim=1)
        return first * second


class SimplifiedChannelAttention(nn.Sequential):
    """SCA's gate: global average -> 1×1 conv, (B, C, H, W) -> (B, C, 1, 1); the block multiplies x by it.

    A Sequential, so the convolution is named ``sca.1`` inside a block, as in the NAFNet release.
    """

    def __init__(self, channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1))


class NAFBlock(nn.Module):
    """NAFNet block: ``y = x + β·conv3(attend(SG(dwconv2(conv1(LN1(x))))))``, then
    ``y + γ·conv5(SG(conv4(LN2(y))))`` (SG: SimpleGate; attend: SCA, i.e. ``x·sca(x)``, or ``attention``).

    Args:
        channels: C, the block's input and output channels.
        dw_expand: Width factor of the depthwise branch (conv1 maps C to dw_expand·C; SimpleGate halves it).
        ffn_expand: Width factor of the feed-forward branch (conv4 maps C to ffn_expand·C).
        dropout: Dropout after each branch (0 disables it).
        modulation_dim: Size of an optional per-block modulation vector (even); ``None``: no modulation.
        attention: Module that replaces the simplified channel attention, called as ``attention(x, context)``
            with x (B, dw_expand·C/2, H, W); ``None``: NAFNet's SCA.

    Forward: x (B, C, H, W), modulation (B, modulation_dim) or None, context (passed to ``attention``)
    -> (B, C, H, W). Without a modulation vector the layer-norm outputs are used unchanged.
    """

    def __init__(self, channels: int, dw_expand: int = 2, ffn_expand: int = 2, dropout: float = 0.0,
                 modulation_dim: Optional[int] = None, attention: Optional[nn.Module] = None):
        super().__init__()
        if dw_expand * channels % 2 or ffn_expand * channels % 2:
            raise ValueError(f'NAFBlock: dw_expand·channels and ffn_expand·channels must be even for SimpleGate, '
                             f'got channels={channels}, dw_expand={dw_expand}, ffn_expand={ffn_expand}.')
        dw_channels, ffn_channels = dw_expand * channels, ffn_expand * channels
        self.norm1 = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, dw_channels, 1)
        self.conv2 = nn.Conv2d(dw_channels, dw_channels, 3, padding=1, groups=dw_channels)
        self.sg = SimpleGate()
        if attention is None:
            self.sca = SimplifiedChannelAttention(dw_channels // 2)
        self.attention = attention
        self.conv3 = nn.Conv2d(dw_channels // 2, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.conv4 = nn.Conv2d(channels, ffn_channels, 1)
        self.conv5 = nn.Conv2d(ffn_channels // 2, channels, 1)
        self.dropout1 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dropout2 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.mlp = None
        if modulation_dim is not None:
            if modulation_dim < 2 or modulation_dim % 2:
                raise ValueError(f'NAFBlock: modulation_dim must be an even number ≥ 2 (SimpleGate halves it), '
                                 f'got {modulation_dim}.')
            self.mlp = nn.Sequential(SimpleGate(), nn.Linear(modulation_dim // 2, 4 * channels))

    def _scales_and_shifts(self, modulation: Optional[torch.Tensor]) -> Optional[tuple]:
        """(shift_att, scale_att, shift_ffn, scale_ffn), each (B, C, 1, 1), or None without modulation."""
        if modulation is None:
            return None
        if self.mlp is None:
            raise ValueError('NAFBlock: got a modulation vector, but the block was built without modulation_dim.')
        return tuple(self.mlp(modulation)[:, :, None, None].chunk(4, dim=1))

    def forward(self, x: torch.Tensor, modulation: Optional[torch.Tensor] = None,
                context: Optional[torch.Tensor] = None) -> torch.Tensor:
        film = self._scales_and_shifts(modulation)
        y = self.norm1(x)
        if film is not None:
            y = y * (film[1] + 1) + film[0]
        y = self.sg(self.conv2(self.conv1(y)))
        y = y * self.sca(y) if self.attention is None else self.attention(y, context)
        x = x + self.dropout1(self.conv3(y)) * self.beta
        y = self.norm2(x)
        if film is not None:
            y = y * (film[3] + 1) + film[2]
        y = self.conv5(self.sg(self.conv4(y)))
        return x + self.dropout2(y) * self.gamma


class NAFBlocks(nn.ModuleList):
    """A chain of NAFBlocks that passes the same modulation vector and context to each (``encoders.0`` etc.).

    Forward: x (B, C, H, W), modulation (B, D) or None, context or None -> (B, C, H, W).
    """

    def forward(self, x: torch.Tensor, modulation: Optional[torch.Tensor] = None,
                context: Optional[torch.Tensor] = None) -> torch.Tensor:
        for block in self:
            x = block(x, modulation, context)
        return x


def nafnet_downsample(channels: int) -> nn.Conv2d:
    """2×2 stride-2 convolution doubling the channels: (B, C, H, W) -> (B, 2C, H/2, W/2)."""
    return nn.Conv2d(channels, 2 * channels, 2, stride=2)


def nafnet_upsample(channels: int) -> nn.Sequential:
    """1×1 conv to 2C (no bias), then PixelShuffle(2): (B, C, H, W) -> (B, C/2, 2H, 2W)."""
    if channels % 2:
        raise ValueError(f'nafnet_upsample: channels must be even (PixelShuffle(2) needs 4 | 2C), got {channels}.')
    return nn.Sequential(nn.Conv2d(channels, 2 * channels, 1, bias=False), nn.PixelShuffle(2))
