"""Restormer (Zamir et al., CVPR 2022): the plain 4-level transformer U-Net, from :mod:`vlunet.archs.restormer_blocks`.

It is the baseline row of the Perceive-IR tables (26.13 M parameters) and the restorer that makes
Perceive-IR's medium-quality images (stage 1, two-fold cross-validation). The structure and the
defaults are the official ``basicsr/models/archs/restormer_arch.py`` (``dual_pixel_task`` off):
dim 48, blocks [4, 6, 6, 8], 4 refinement blocks, heads [1, 2, 4, 8], GDFN expansion 2.66,
bias-free convolutions, WithBias LayerNorm, PixelUnshuffle/PixelShuffle samplers, a 1x1 channel
reduction after the skip concatenations of decoder levels 3 and 2, decoder level 1 and the
refinement at 2*dim channels, and the input added to the output. At the defaults it has
26,126,644 parameters, the official count (the paper's 26.13 M). Attribute names are the official
ones except two wrappers the shared blocks do not have; :func:`official_restormer_state_dict` renames
an official ``params`` dict (``patch_embed.proj.*`` -> ``patch_embed.*``, ``norm*.body.*`` -> ``norm*.*``).

Differences from the official code, none of which change the output for its valid inputs:
any H, W (the input is mirror-padded to a multiple of 8 and the output cropped back) and
channels-last activations (the blocks' fast layout).

``forward(image (B, in_channels, H, W)) -> (B, out_channels, H, W)``.
"""
import re
from typing import Dict, Sequence

import torch
from torch import nn

from vlunet.archs.padding import crop_to, pad_to_multiple
from vlunet.archs.restormer_blocks import Downsample, TransformerBlocks, Upsample
from vlunet.ops.channels_last import pointwise
from vlunet.ops.weight_layout import store_weights_channels_last

from basicsr.utils.registry import ARCH_REGISTRY

SIZE_MULTIPLE = 8  # three 2x downsamplings
OFFICIAL_RENAMES = ((re.compile(r'^patch_embed\.proj\.'), 'patch_embed.'),
                    (re.compile(r'\.(norm[12])\.body\.'), r'.\1.'))


def official_restormer_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """An official Restormer ``params`` dict under :class:`Restormer`'s names (tensors unchanged)."""
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in OFFICIAL_RENAMES:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    return renamed


def _check_config(in_channels: int, out_channels: int, dim: int, num_blocks: Sequence[int],
                  heads: Sequence[int]) -> None:
    if len(num_blocks) != 4 or len(heads) != 4:
        raise ValueError(f'Restormer needs 4 levels: num_blocks={list(num_blocks)} and heads={list(heads)} must '
                         'each have 4 entries (official: [4, 6, 6, 8] and [1, 2, 4, 8])')
    if in_channels != out_channels:
        raise ValueError(f'Restormer adds the input to the output: in_channels={in_channels} must equal '
                         f'out_channels={out_channels}')
    if dim < 2 or dim % 2:
        raise ValueError(f'Restormer dim={dim} must be even and >= 2 (the samplers halve it)')
    widths = (dim, dim * 2, dim * 4, dim * 8)
    for level, (width, level_heads) in enumerate(zip(widths, heads), start=1):
        if width % level_heads:
            raise ValueError(f'Restormer level {level} has {width} channels, not divisible by heads={level_heads}')


@ARCH_REGISTRY.register()
class Restormer(nn.Module):
    """Restormer restoration network (see the module docstring).

    Args:
        in_channels, out_channels: Image channels (equal: the input is added to the output).
        dim: Channels at level 1 (doubled at each of the 3 lower levels).
        num_blocks: Transformer blocks of encoder levels 1-3 and the latent (decoders mirror 3-1).
        num_refinement_blocks: Transformer blocks after decoder level 1.
        heads: Attention heads at levels 1-4.
        ffn_expansion_factor: GDFN hidden width = int(channels * factor).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, dim: int = 48,
                 num_blocks: Sequence[int] = (4, 6, 6, 8), num_refinement_blocks: int = 4,
                 heads: Sequence[int] = (1, 2, 4, 8), ffn_expansion_factor: float = 2.66):
        super().__init__()
        _check_config(in_channels, out_channels, dim, num_blocks, heads)
        self.patch_embed = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)
        self.encoder_level1 = TransformerBlocks.of(dim, num_blocks[0], heads[0], ffn_expansion_factor)
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = TransformerBlocks.of(dim * 2, num_blocks[1], heads[1], ffn_expansion_factor)
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = TransformerBlocks.of(dim * 4, num_blocks[2], heads[2], ffn_expansion_factor)
        self.down3_4 = Downsample(dim * 4)
        self.latent = TransformerBlocks.of(dim * 8, num_blocks[3], heads[3], ffn_expansion_factor)
        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=False)
        self.decoder_level3 = TransformerBlocks.of(dim * 4, num_blocks[2], heads[2], ffn_expansion_factor)
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=False)
        self.decoder_level2 = TransformerBlocks.of(dim * 2, num_blocks[1], heads[1], ffn_expansion_factor)
        self.up2_1 = Upsample(dim * 2)
        self.decoder_level1 = TransformerBlocks.of(dim * 2, num_blocks[0], heads[0], ffn_expansion_factor)
        self.refinement = TransformerBlocks.of(dim * 2, num_refinement_blocks, heads[0], ffn_expansion_factor)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=False)
        store_weights_channels_last(self)  # DDP: gradients with the parameters' strides

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Restore ``image`` (B, C, H, W) of any size."""
        height, width = image.shape[-2:]
        padded = pad_to_multiple(image, SIZE_MULTIPLE).contiguous(memory_format=torch.channels_last)
        level1 = self.encoder_level1(self.patch_embed(padded))
        level2 = self.encoder_level2(self.down1_2(level1))
        level3 = self.encoder_level3(self.down2_3(level2))
        latent = self.latent(self.down3_4(level3))
        decoder3 = self.decoder_level3(pointwise(torch.cat([self.up4_3(latent), level3], dim=1),
                                                 self.reduce_chan_level3))
        decoder2 = self.decoder_level2(pointwise(torch.cat([self.up3_2(decoder3), level2], dim=1),
                                                 self.reduce_chan_level2))
        decoder1 = self.decoder_level1(torch.cat([self.up2_1(decoder2), level1], dim=1))
        return crop_to(self.output(self.refinement(decoder1)) + padded, height, width)
