"""Perceive-IR stage 2: the prior-guided restoration network (paper Sec. III-C, Fig. 3, Eqs. 2-8).

A 4-level Restormer U-Net whose latent and decoder levels use ETBs (PGCA cross-attention + MDTA +
GDFN) guided by Y_l = PGM(X_l, F_l, Z): Z (B, 128) is the CFE degradation representation (trained by
the contrastive loss L_cl), F_l (B, 768) the class token of DINO-v2 block 1, 4, 8 or 12 (the latent,
level 4, uses block 12; decoder level 1 uses block 1). Blocks are in
:mod:`vlunet.archs.perceiveir.perceiveir_blocks` and :mod:`vlunet.archs.restormer_blocks`.

``forward(image (B, 3, H, W) in [0, 1]) -> restored (B, 3, H, W)``; with ``return_degradation=True``
``(restored, z)``, z (B, degradation_dim); :meth:`PerceiveIR.degradation_representation` is the CFE
alone (for the contrastive loss on a second crop). Any H and W: the input is mirror-padded to a
multiple of ``size_multiple`` (8) and the output cropped back; CFE and DINO see the unpadded image.
Output = last conv + input (Eq. 4's global residual).

The frozen DINO-v2 (``semantic_encoder``, :class:`FrozenDINOFeatures`) is kept **outside** the module
tree: it is not in ``parameters()`` (so BasicSR's optimiser setup, ``print_network`` and DDP never see
it), not in ``state_dict()`` (checkpoints hold the trainable network only, and strict loading works),
never switched to train mode, and runs under ``no_grad``; :meth:`PerceiveIR._apply` moves and casts it
with the network (``.to(device)``, ``.cuda()``, ``.half()``). Random DINO weights
(``semantic_pretrained: ~``) are seeded, so every build (EMA copy, DDP ranks, a reloaded model) has
the same ones.

Decisions (rule: the paper; where it is silent, the release; the table of docs/perceiveir.md#decisions
has the same rows):

- CFE. Paper (Fig. 3): ResBlocks (Conv-LReLU-Conv), average pool, Linear-LReLU-Linear, Z 1x128;
  counts, widths, strides, slope and normalisation not stated. Release: four stride-2 3x3 convs
  3->32->64->96->128 with GELU, pool, Linear 128->128, L2-normalised. Ours: the paper's form with
  the release's numbers: four ResBlocks (3x3 stride-2 conv, LReLU, 3x3 conv; 1x1 stride-2
  shortcut) of widths 32/64/96/128, pool, Linear-LReLU-Linear (128 -> 128 -> 128), L2-normalised
  (release); LReLU slope 0.1 (AirNet's CBDE, which the figure follows). CFE sees the network input
  (the patch in training), unpadded.
- DINO features. Paper: frozen "DINO-v2 base", F_l = D_i(I_d), i = 1, 4, 8, 12, F_l 1x768; token,
  final norm, input size and normalisation not stated. Release (and ours): the class token of the
  outputs of blocks 1, 4, 8, 12 (HF ``hidden_states[1, 4, 8, 12]``) before the final LayerNorm, input
  bicubic-resized to 224x224 (no antialias), ImageNet mean/std; here through timm
  ``vit_base_patch14_dinov2`` (position embedding resampled to 224 at load), ``semantic_layers`` are
  1-based block numbers.
- PGM. Paper (Eq. 6, Fig. 3): [Z ‖ F_l] -> "Linear, Linear" -> γ, β; "Conv, Conv"; element-wise
  multiplication and addition; arrangement not stated. Release: Linear(896->2C) - GELU -
  Linear(2C->2C) split into γ, β; Y = X(1+γ) + β; no convs. Ours: Y_l = conv_out(conv_in(X_l)(1+γ) + β)
  with the release's MLP and γ/β form, plus the figure's two convs as 3x3 C->C convolutions on the
  feature map before and after the modulation (the figure draws Linear for the vector and Conv for
  maps; the paper calls Y_l "calibrated features").
- PGCA. Paper: Eq. 7 softmax(Q K / α) V with Y_l the query and X_l key and value; Eq. 8
  X^m = MDTA(CrossAtt) + Y_l; projections and norms not stated. Release (and ours): q = 1x1 + 3x3
  depthwise of LN(Y_l); k, v = 1x1 (C->2C) + 3x3 depthwise of LN(x); Restormer's transposed channel
  attention (q, k L2-normalised over space, learnable temperature; the shared ``channel_attention``);
  1x1 output; then Y_l + MDTA(LN(.)), then + GDFN(LN(.)). Bias-free here (Restormer's convs).
- Y_l sharing. Paper (Eq. 6, one Y_l per level from the level input), release and ours: one Y_l per
  level, shared by all its ETBs; X_l^d is the running feature.
- Refinement. Paper: "a similar setting to the original Restormer"; release and ours: 4 TBs.
- Decoder level-1 width and skip fusion. Paper: "similar setting to the original Restormer",
  channels [48, 96, 192, 384]. Release: a 1x1 reduction at every decoder level (decoder level 1 at
  48). Ours: Restormer's: 1x1 reduction at levels 3 and 2 only; decoder level 1 and the refinement
  at 2C = 96 (the paper's larger parameter count points the same way).
- Convolution bias and LayerNorm. Paper: Restormer's (bias-free, WithBias). Release: PyTorch
  defaults (bias). Ours: Restormer's (only ``bias: false`` and ``LayerNorm_type: WithBias`` are
  accepted); the CFE and the PGM MLP keep PyTorch's default bias.

Parameters: 38,615,516 at the defaults (latent 23.12 M, decoder levels 3/2/1 4.81/1.32/1.01 M, of
which PGMs 5.84 M; CFE 0.52 M). Without the PGM convs (3.65 M, 2.65 M of them in the latent) it is
34.97 M, 1.07 M above the release's 33.90 M: decoder level 1 (and its PGM) and the refinement at 96
instead of 48 channels, and the ResBlock CFE (0.52 M instead of 0.20 M), less the release's biases. The
paper's 42.02 M is still 3.4 M more: its network is larger in a way the paper does not describe
(e.g. heavier PGM or PGCA, or one PGM per ETB), or it counts differently. The frozen DINO-v2
ViT-B/14 (85,724,928 parameters at 224) is not counted.

NAFNet backbone (Table XIII, 21.73 M): not provided. The paper gives only the parameter count and the
results; it does not say which NAFNet configuration (widths, blocks per level), where PGM and PGCA
sit in a NAFBlock (NAFNet has no MDTA, so Eq. 8 has no counterpart), or which levels are guided, and
the release (docs/perceiveir.md#decisions) has none. Any variant would be our own design reported
under the paper's name, so ``backbone`` accepts ``restormer`` only.
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from vlunet.archs.padding import crop_to, pad_to_multiple
from vlunet.archs.perceiveir.perceiveir_blocks import CompactFeatureExtraction, FrozenDINOFeatures, GuidedLevel
from vlunet.archs.restormer_blocks import Downsample, TransformerBlocks, Upsample
from vlunet.ops.channels_last import pointwise
from vlunet.ops.weight_layout import store_weights_channels_last

from basicsr.utils.registry import ARCH_REGISTRY

SIZE_MULTIPLE = 8  # three 2x downsamplings
BACKBONES = ('restormer',)


def _check_config(inp_channels: int, out_channels: int, dim: int, num_blocks: Sequence[int],
                  heads: Sequence[int], semantic_layers: Sequence[int], bias: bool, layer_norm_type: str,
                  backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f'PerceiveIR backbone={backbone!r}: only {", ".join(BACKBONES)} is available (the paper '
                         'does not describe how its NAFNet variant of Table XIII places PGM and PGCA).')
    if len(num_blocks) != 4 or len(heads) != 4 or len(semantic_layers) != 4:
        raise ValueError(f'PerceiveIR needs 4 levels: num_blocks={list(num_blocks)}, heads={list(heads)} and '
                         f'semantic_layers={list(semantic_layers)} must each have 4 entries (paper: [4, 6, 6, 8], '
                         '[1, 2, 4, 8], [1, 4, 8, 12]).')
    if inp_channels != 3 or out_channels != 3:
        raise ValueError(f'PerceiveIR restores RGB images (DINO-v2 reads RGB, and the input is added to the output): '
                         f'inp_channels={inp_channels} and out_channels={out_channels} must be 3.')
    if bias or layer_norm_type != 'WithBias':
        raise ValueError(f'PerceiveIR bias={bias!r}, LayerNorm_type={layer_norm_type!r}: only Restormer\'s '
                         'bias-free convolutions with WithBias LayerNorm are available (bias: false, '
                         'LayerNorm_type: WithBias).')
    if dim < 2 or dim % 2:
        raise ValueError(f'PerceiveIR dim={dim} must be even and >= 2 (the samplers halve it).')
    widths = (dim * 2, dim * 2, dim * 4, dim * 8)  # level 1 is 2*dim in the decoder, dim in the encoder
    for level, (width, level_heads) in enumerate(zip(widths, heads), start=1):
        if width % level_heads or (level == 1 and dim % level_heads):
            raise ValueError(f'PerceiveIR level {level}: {width} channels are not divisible by heads={level_heads}.')


@ARCH_REGISTRY.register()
class PerceiveIR(nn.Module):
    """Perceive-IR restoration network (see the module docstring).

    Args:
        inp_channels, out_channels: Image channels; both 3 (RGB).
        dim: Channels at level 1 (doubled at each of the 3 lower levels; decoder level 1 is 2*dim).
        num_blocks: TBs of encoder levels 1-3 and ETBs of the latent; decoder levels 3-1 have
            num_blocks[2], num_blocks[1], num_blocks[0] ETBs.
        num_refinement_blocks: TBs after decoder level 1.
        heads: Attention heads (MDTA and PGCA) at levels 1-4.
        ffn_expansion_factor: GDFN hidden width = int(channels * factor).
        bias: Convolution bias of the Restormer parts; only False (Restormer's).
        LayerNorm_type: Only 'WithBias' (Restormer's).
        degradation_dim: Length of Z, the CFE output.
        semantic_model: timm model name of the frozen DINO-v2 (``vit_base_patch14_dinov2``).
        semantic_pretrained: None (seeded random weights: offline runs and tests), a timm tag of
            ``semantic_model`` (``lvd142m``) or a local weights file (timm ``model.safetensors`` or
            Meta's ``dinov2_vitb14_pretrain.pth``).
        semantic_layers: 1-based DINO block numbers giving F_1..F_4 (levels 1-4).
        semantic_image_size: Side of the square DINO input (bicubic resize).
        semantic_kwargs: Extra ``timm.create_model`` keyword arguments (e.g. a tiny ViT for tests:
            ``{embed_dim: 32, depth: 4, num_heads: 2, patch_size: 8}``); not ``img_size``.
        backbone: Only 'restormer' (see the module docstring for the NAFNet variant).
    """

    size_multiple = SIZE_MULTIPLE

    def __init__(self, inp_channels: int = 3, out_channels: int = 3, dim: int = 48,
                 num_blocks: Sequence[int] = (4, 6, 6, 8), num_refinement_blocks: int = 4,
                 heads: Sequence[int] = (1, 2, 4, 8), ffn_expansion_factor: float = 2.66, bias: bool = False,
                 LayerNorm_type: str = 'WithBias', degradation_dim: int = 128,  # noqa: N803 -- Restormer's name
                 semantic_model: str = 'vit_base_patch14_dinov2', semantic_pretrained: Optional[str] = None,
                 semantic_layers: Sequence[int] = (1, 4, 8, 12), semantic_image_size: int = 224,
                 semantic_kwargs: Optional[Dict] = None, backbone: str = 'restormer'):
        super().__init__()
        _check_config(inp_channels, out_channels, dim, num_blocks, heads, semantic_layers, bias, LayerNorm_type,
                      backbone)
        semantic = FrozenDINOFeatures(semantic_model, semantic_pretrained, semantic_layers, semantic_image_size,
                                      semantic_kwargs)
        object.__setattr__(self, 'semantic_encoder', semantic)  # not a submodule: see the module docstring
        self.random_semantic_encoder = semantic_pretrained is None

        def guided(width: int, count: int, level_heads: int) -> GuidedLevel:
            return GuidedLevel(width, count, level_heads, ffn_expansion_factor, semantic.width, degradation_dim)

        self.cfe = CompactFeatureExtraction(inp_channels, degradation_dim)
        self.patch_embed = nn.Conv2d(inp_channels, dim, 3, padding=1, bias=False)
        self.encoder_level1 = TransformerBlocks.of(dim, num_blocks[0], heads[0], ffn_expansion_factor)
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = TransformerBlocks.of(dim * 2, num_blocks[1], heads[1], ffn_expansion_factor)
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = TransformerBlocks.of(dim * 4, num_blocks[2], heads[2], ffn_expansion_factor)
        self.down3_4 = Downsample(dim * 4)
        self.latent = guided(dim * 8, num_blocks[3], heads[3])
        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=False)
        self.decoder_level3 = guided(dim * 4, num_blocks[2], heads[2])
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=False)
        self.decoder_level2 = guided(dim * 2, num_blocks[1], heads[1])
        self.up2_1 = Upsample(dim * 2)
        self.decoder_level1 = guided(dim * 2, num_blocks[0], heads[0])
        self.refinement = TransformerBlocks.of(dim * 2, num_refinement_blocks, heads[0], ffn_expansion_factor)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=False)
        for name, child in self.named_children():  # DDP: gradients with the parameters' strides
            if name != 'cfe':  # the CFE sees NCHW images; channels-last weights there corrupt torch's heap (2.14.1)
                store_weights_channels_last(child)

    def _apply(self, fn, recurse: bool = True) -> 'PerceiveIR':
        """Moves/casts the unregistered frozen DINO with the network (``.to``, ``.cuda``, ``.half`` ...)."""
        super()._apply(fn, recurse)
        self.semantic_encoder._apply(fn, recurse)
        return self

    def extra_repr(self) -> str:
        vit = self.semantic_encoder.vit
        count = sum(p.numel() for p in vit.parameters())
        return (f'semantic_encoder=frozen {vit.default_cfg["architecture"]} ({count:,} parameters, not in parameters() '
                f'or state_dict()), random={self.random_semantic_encoder}')

    @staticmethod
    def _check_image(image: torch.Tensor) -> None:
        if image.ndim != 4 or image.shape[1] != 3 or not image.is_floating_point():
            raise ValueError(f'PerceiveIR expects float RGB images (B, 3, H, W) in [0, 1], got {tuple(image.shape)} '
                             f'{image.dtype}.')

    def degradation_representation(self, image: torch.Tensor) -> torch.Tensor:
        """Z (B, degradation_dim), unit norm: the CFE of ``image`` (B, 3, H, W) alone (no DINO, no restoration)."""
        self._check_image(image)
        return self.cfe(image)

    def forward(self, image: torch.Tensor,
                return_degradation: bool = False) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Restore ``image`` (B, 3, H, W) of any size; with ``return_degradation`` also Z (B, degradation_dim)."""
        self._check_image(image)
        height, width = image.shape[-2:]
        degradation = self.cfe(image)
        semantic = self.semantic_encoder(image)  # [F_1 .. F_4], each (B, width), no gradient
        padded = pad_to_multiple(image, SIZE_MULTIPLE).contiguous(memory_format=torch.channels_last)
        level1 = self.encoder_level1(self.patch_embed(padded))
        level2 = self.encoder_level2(self.down1_2(level1))
        level3 = self.encoder_level3(self.down2_3(level2))
        latent = self.latent(self.down3_4(level3), semantic[3], degradation)
        decoder3 = pointwise(torch.cat([self.up4_3(latent), level3], dim=1), self.reduce_chan_level3)
        decoder3 = self.decoder_level3(decoder3, semantic[2], degradation)
        decoder2 = pointwise(torch.cat([self.up3_2(decoder3), level2], dim=1), self.reduce_chan_level2)
        decoder2 = self.decoder_level2(decoder2, semantic[1], degradation)
        decoder1 = self.decoder_level1(torch.cat([self.up2_1(decoder2), level1], dim=1), semantic[0], degradation)
        restored = crop_to(self.output(self.refinement(decoder1)) + padded, height, width)
        return (restored, degradation) if return_degradation else restored
