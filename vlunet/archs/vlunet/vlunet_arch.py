"""VLU-Net (CVPR 2025): vision-language guided deep unfolding network for all-in-one restoration.

The network unrolls 8 non-shared iterations of a proximal gradient method over a 4-level U-Net
(paper Sec. 3, Eqs. 7-13). Two feature branches run side by side:

- the *estimate* branch x: every stage is a degradation-guided gradient step (D-GDM,
  :mod:`vlunet.archs.vlunet.gradient_step`) followed by the proximal mapping module (PMM, Restormer
  blocks, :mod:`vlunet.archs.restormer_blocks`);
- the *degraded-input* branch y: a feed-forward chain of convolutions and down/up samplers of the
  input image only, giving each stage the observation term of its gradient step.

It reproduces the official implementation's computation (``net/Final.py`` of xianggkl/VLU-Net),
including its quirks: the y branch reuses the x branch's first downsampler (``down1_2``), so
``unused_degraded_down1_2`` exists (official checkpoints carry it, and it stays in the state dict)
but is never used: its parameters are frozen (``requires_grad=False``);
the D-GDM always has 2 attention heads; key channels are ``C // 10 * stage`` and key sizes
``key_size // stage``; decoder level 1 and the refinement run at 2*dim channels without reduction.

Differences from the official code, none of which change the output for its valid inputs:

- any H, W: the input is mirror-padded to a multiple of 8 and the output cropped back;
- ``degradation=None`` mixes the degradation keys with equal weights (the paper's "w/o CLIP"
  setting, where the official code raises an error);
- 1x1 convolutions run as matrix products on the channels-last activations; the other 4-D weights
  are stored channels-last, like the activations (same values and state-dict keys);
- parameter names say what things are. Official state dicts are renamed by
  :mod:`vlunet.convert.vlunet_checkpoint` (``prompt_param`` -> ``degradation_keys``, ``r`` ->
  ``step_size``, ``phi``/``phit`` -> ``degradation_operator``/``adjoint_operator``, ``linear`` ->
  ``key_logits``, ``gradient_descent`` -> ``gradient_step``, ``denoiser.blocks`` ->
  ``proximal_mapping``, ``*_i``/``*_img`` -> ``degraded_*``, ...); shapes are unchanged. Loading a
  state dict that does not fit raises an error that lists the differing keys and the likely cause.
"""
from typing import Dict, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import nn

from vlunet.archs.padding import crop_to, pad_to_multiple
from vlunet.archs.restormer_blocks import Downsample, TransformerBlocks, Upsample
from vlunet.archs.state_dict_mismatch import state_dict_mismatch_message
from vlunet.archs.vlunet.gradient_step import DegradationGuidedGradientStep
from vlunet.ops.channels_last import pointwise
from vlunet.ops.weight_layout import store_weights_channels_last

from basicsr.utils.registry import ARCH_REGISTRY

SIZE_MULTIPLE = 8  # three 2x downsamplings


class UnfoldingStage(nn.Module):
    """One unrolled iteration: D-GDM gradient step, then the PMM (a stack of Restormer blocks).

    Shapes: x, degraded (B, C, H, W), degradation (B, D) or None -> (B, C, H, W).
    """

    def __init__(self, dim: int, num_blocks: int, heads: int, ffn_expansion_factor: float, stage: int,
                 num_keys: int, key_size: int, degradation_dim: int, gradient_step_heads: int):
        super().__init__()
        self.gradient_step = DegradationGuidedGradientStep(
            dim, num_keys, key_channels=dim // 10 * stage, key_size=key_size // stage,
            degradation_dim=degradation_dim, heads=gradient_step_heads)
        self.proximal_mapping = TransformerBlocks.of(dim, num_blocks, heads, ffn_expansion_factor)

    def forward(self, x: torch.Tensor, degraded: torch.Tensor, degradation: Optional[torch.Tensor],
                overwrite_input: bool = False) -> torch.Tensor:
        """``overwrite_input``: without autograd the stage may work in x's memory (the caller no longer needs x)."""
        stepped = self.gradient_step(x, degraded, degradation, overwrite_input)
        # the step's output: a fresh map, or x when the caller allowed it; the blocks may overwrite it
        return self.proximal_mapping(stepped, overwrite_input=True)


class DegradedFeatures(NamedTuple):
    """The y-branch features entering each stage (channels at default dim=48, resolution)."""
    level1: torch.Tensor  # encoder_level1: 48, H
    level2: torch.Tensor  # encoder_level2: 96, H/2
    level3: torch.Tensor  # encoder_level3: 192, H/4
    latent: torch.Tensor  # latent: 384, H/8
    decoder3: torch.Tensor  # decoder_level3: 192, H/4
    decoder2: torch.Tensor  # decoder_level2: 96, H/2
    decoder1: torch.Tensor  # decoder_level1 and refinement: 96, H


def _check_config(dim: int, num_blocks: Sequence[int], heads: Sequence[int], gradient_step_heads: int,
                  key_size: int) -> None:
    if len(num_blocks) != 4 or len(heads) != 4:
        raise ValueError(f'VLUNet needs 4 levels: num_blocks={list(num_blocks)} and heads={list(heads)} '
                         f'must each have 4 entries')
    if dim < 10:
        raise ValueError(f'VLUNet dim={dim} is too small: degradation keys have dim // 10 * stage channels, '
                         f'which is 0 below dim=10')
    if key_size < 4:
        raise ValueError(f'VLUNet key_size={key_size} is too small: the latent key is key_size // 4 pixels wide')
    widths = (dim, dim * 2, dim * 4, dim * 8)
    for level, (width, level_heads) in enumerate(zip(widths, heads), start=1):
        if width % level_heads or width % gradient_step_heads:
            raise ValueError(f'VLUNet level {level} has {width} channels, not divisible by heads={level_heads} '
                             f'and gradient_step_heads={gradient_step_heads}')


@ARCH_REGISTRY.register()
class VLUNet(nn.Module):
    """VLU-Net restoration network.

    Args:
        de_dim: Number of degradation keys per D-GDM (7 for the official 3-task, 5-task and
            single-noise checkpoints; 5 for single haze/rain/blur/low-light).
        in_channels, out_channels: Image channels (the global residual needs them equal).
        dim: Channels at level 1 (doubled at each of the 3 lower levels).
        num_blocks: Restormer blocks of encoder levels 1-3 and the latent (decoders mirror them).
        num_refinement_blocks: Restormer blocks of the refinement stage.
        heads: Attention heads of the Restormer blocks at levels 1-4.
        ffn_expansion_factor: GDFN hidden width = int(channels * factor).
        degradation_dim: Length of the degradation vector d (512 for CLIP ViT-B/32).
        key_size: Spatial size of the level-1 degradation keys (stage s uses key_size // s).
        gradient_step_heads: Attention heads of every D-GDM (2 in the official network).

    ``forward(image (B, in, H, W), degradation (B, degradation_dim) or None) -> (B, out, H, W)``.
    """

    def __init__(self, de_dim: int = 7, in_channels: int = 3, out_channels: int = 3, dim: int = 48,
                 num_blocks: Sequence[int] = (4, 6, 6, 8), num_refinement_blocks: int = 4,
                 heads: Sequence[int] = (1, 2, 4, 8), ffn_expansion_factor: float = 2.66,
                 degradation_dim: int = 512, key_size: int = 96, gradient_step_heads: int = 2):
        super().__init__()
        _check_config(dim, num_blocks, heads, gradient_step_heads, key_size)
        if not isinstance(de_dim, int) or isinstance(de_dim, bool) or de_dim < 1:
            raise ValueError(f'VLUNet de_dim={de_dim!r} must be an integer >= 1: the number of degradation keys '
                             '(7 for the official all-in-one checkpoints, 5 for the single-task ones)')
        if in_channels != out_channels:
            raise ValueError(f'VLUNet adds the input to the output: in_channels={in_channels} must equal '
                             f'out_channels={out_channels}')
        self.config = dict(de_dim=de_dim, dim=dim, key_size=key_size, degradation_dim=degradation_dim)

        def stage(width: int, blocks: int, level_heads: int, stage_index: int) -> UnfoldingStage:
            return UnfoldingStage(width, blocks, level_heads, ffn_expansion_factor, stage_index, de_dim, key_size,
                                  degradation_dim, gradient_step_heads)

        self.embed = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)
        self.degraded_embed = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)
        self.encoder_level1 = stage(dim, num_blocks[0], heads[0], 1)
        self.down1_2 = Downsample(dim)
        self.unused_degraded_down1_2 = Downsample(dim)
        self.encoder_level2 = stage(dim * 2, num_blocks[1], heads[1], 2)
        self.down2_3 = Downsample(dim * 2)
        self.degraded_down2_3 = Downsample(dim * 2)
        self.encoder_level3 = stage(dim * 4, num_blocks[2], heads[2], 3)
        self.down3_4 = Downsample(dim * 4)
        self.degraded_down3_4 = Downsample(dim * 4)
        self.latent = stage(dim * 8, num_blocks[3], heads[3], 4)
        self.up4_3 = Upsample(dim * 8)
        self.degraded_up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=False)
        self.degraded_reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=False)
        self.decoder_level3 = stage(dim * 4, num_blocks[2], heads[2], 3)
        self.up3_2 = Upsample(dim * 4)
        self.degraded_up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=False)
        self.degraded_reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=False)
        self.decoder_level2 = stage(dim * 2, num_blocks[1], heads[1], 2)
        self.up2_1 = Upsample(dim * 2)
        self.degraded_up2_1 = Upsample(dim * 2)
        self.decoder_level1 = stage(dim * 2, num_blocks[0], heads[0], 1)
        self.refinement = stage(dim * 2, num_refinement_blocks, heads[0], 1)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=False)
        # The quirk's weights never get a gradient: not trainable (DDP needs every trainable parameter used).
        self.unused_degraded_down1_2.requires_grad_(False)
        store_weights_channels_last(self)

    def degraded_features(self, image: torch.Tensor) -> DegradedFeatures:
        """The y branch: features of the (padded) input image for every stage; independent of d."""
        level1 = self.degraded_embed(image)
        level2 = self.down1_2(level1)  # official quirk: the estimate branch's downsampler
        level3 = self.degraded_down2_3(level2)
        latent = self.degraded_down3_4(level3)
        decoder3 = pointwise(torch.cat([self.degraded_up4_3(latent), level3], dim=1),
                             self.degraded_reduce_chan_level3)
        decoder2 = pointwise(torch.cat([self.degraded_up3_2(decoder3), level2], dim=1),
                             self.degraded_reduce_chan_level2)
        decoder1 = torch.cat([self.degraded_up2_1(decoder2), level1], dim=1)
        return DegradedFeatures(level1, level2, level3, latent, decoder3, decoder2, decoder1)

    def _checked_degradation(self, degradation: Optional[torch.Tensor], batch: int) -> Optional[torch.Tensor]:
        if degradation is None:
            return None
        expected = self.config['degradation_dim']
        if degradation.dim() != 2 or degradation.shape[1] != expected or degradation.shape[0] not in (1, batch):
            raise ValueError(f'VLUNet degradation must have shape ({batch}, {expected}) (or (1, {expected}) for '
                             f'the whole batch), got {tuple(degradation.shape)}')
        return degradation.expand(batch, -1)

    def forward(self, image: torch.Tensor, degradation: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Restore ``image`` (B, C, H, W) of any size, guided by ``degradation`` (B, D) or None."""
        height, width = image.shape[-2:]
        degradation = self._checked_degradation(degradation, image.shape[0])
        # Channels-last features make every convolution run without layout reorders (the official
        # NCHW layout spends most of its time there) and the layer norms and attention copy-free.
        padded = pad_to_multiple(image, SIZE_MULTIPLE).contiguous(memory_format=torch.channels_last)
        y = self.degraded_features(padded)

        # Every stage's input is a fresh map that nothing else reads: the stages may overwrite it (no autograd).
        level1 = self.encoder_level1(self.embed(padded), y.level1, degradation, overwrite_input=True)
        level2 = self.encoder_level2(self.down1_2(level1), y.level2, degradation, overwrite_input=True)
        level3 = self.encoder_level3(self.down2_3(level2), y.level3, degradation, overwrite_input=True)
        latent = self.latent(self.down3_4(level3), y.latent, degradation, overwrite_input=True)

        decoder3 = pointwise(torch.cat([self.up4_3(latent), level3], dim=1), self.reduce_chan_level3)
        decoder3 = self.decoder_level3(decoder3, y.decoder3, degradation, overwrite_input=True)
        decoder2 = pointwise(torch.cat([self.up3_2(decoder3), level2], dim=1), self.reduce_chan_level2)
        decoder2 = self.decoder_level2(decoder2, y.decoder2, degradation, overwrite_input=True)
        decoder1 = torch.cat([self.up2_1(decoder2), level1], dim=1)
        decoder1 = self.decoder_level1(decoder1, y.decoder1, degradation, overwrite_input=True)
        refined = self.refinement(decoder1, y.decoder1, degradation, overwrite_input=True)

        return crop_to(self.output(refined) + padded, height, width)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` that names mismatched keys and the likely cause (e.g. wrong de_dim)."""
        expected: Dict[str, torch.Size] = {key: value.shape for key, value in self.state_dict().items()}
        message = state_dict_mismatch_message(expected, state_dict, self.config, strict)
        if message:
            raise RuntimeError(message)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
