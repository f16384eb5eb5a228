"""NAFNet + DA-CLIP: a direct (single-pass) NAFNet guided by the frozen DA-CLIP embeddings of its input.

``net(lq, degradation=d, content=c)`` restores ``lq`` (B, 3, H, W) of any size; d and c are DA-CLIP's
degradation and content embeddings of ``lq`` (B, context_dim each, un-normalised, as the IR-SDE
restoration uses them), computed by :class:`~vlunet.models.guided_restoration_model.GuidedRestorationModel` with
``degradation_encoder: {type: DACLIP}``. With both guidance switches off (``use_degra_context`` and
``use_image_context`` false) it is plain NAFNet and takes no embeddings: the paper's "NAFNet" row,
also registered as ``NAFNet``.

The DA-CLIP paper (Table 3 row "NAFNet + DA-CLIP") says only "we add the prompt module to all blocks and
use cross-attention in the bottom layers"; no code was published. The author's issue comments
(docs/daclip.md#nafnet--da-clip) show a NAFBlock whose ``mlp`` (SimpleGate -> Linear(emb_dim/2, 4C)) turns an
embedding into scale/shift pairs for the outputs of its two layer norms, and whose simplified channel
attention is replaced by ``att(x, context)`` where there is cross-attention, "similar to the denoising
U-Net". Data flow here (blocks: :mod:`vlunet.archs.nafnet_blocks`, :mod:`vlunet.archs.daclip.irsde_unet_blocks`):

- d -> :class:`DegradationPrompt` (the U-Net's prompt module, docs/daclip.md) -> p (B, prompt_dim), shared by
  every block; each NAFBlock maps p to its own (shift, scale) pairs for LN1 and LN2: x·(1 + scale) + shift;
- c -> one context token (B, 1, context_dim); in every middle block a SpatialTransformer (GroupNorm,
  self-attention, cross-attention on the token, GEGLU feed-forward, zero-initialised output
  projection, residual; 32 channels per head as in the U-Net) takes the place of the SCA;
- NAFNet otherwise unchanged: 3×3 intro conv, encoder levels (NAFBlocks, 2×2 stride-2 conv doubling
  the channels), middle blocks, decoder levels (1×1 conv + PixelShuffle halving them, additive skip,
  NAFBlocks), 3×3 ending conv, plus the input; mirror-padded to a multiple of 2^levels and cropped back.

Decisions on the open points (docs/daclip.md#decisions; the uncertain ones are constructor options):

1. **Size** (unknown): NAFNet's width-32 configuration with 1, 1, 1, 28 encoder blocks, 1 middle block
   and 1, 1, 1, 1 decoder blocks (NAFNet's deblurring setting; the unanswered follow-up in issue #108
   speaks of "28 blocks" at the last encoder level). At width 32 the middle blocks have 512 channels
   and 16 heads, exactly the U-Net's bottom transformer. Options: ``width``, ``enc_blk_nums``,
   ``middle_blk_num``, ``dec_blk_nums``.
2. **What feeds the block mlps** (p or raw d; emb_dim): the prompt module's output p, because the
   paper names the prompt module and the author says the embeddings "are obtained the same way as in
   the U-Net"; one prompt module shared by all blocks, as the U-Net's single prompt reaches every
   ResBlock through the time embedding. emb_dim = ``prompt_dim``, default 4·width (the time-embedding
   size of the author's ConditionalNAFNet, as 4·nf in the U-Net). Option ``degradation_input:
   embedding`` feeds raw d to the block mlps instead (no prompt module).
3. **Which blocks are "bottom layers"**: the middle blocks, the only blocks at the lowest resolution
   (the U-Net's cross-attention sits at its lowest resolution too). Option
   ``content_attention_levels: k`` adds it to the blocks of the k deepest encoder and decoder levels.
4. **SpatialTransformer or bare cross-attention**: the SpatialTransformer, which the author linked
   ("similar to the denoising U-Net"); it replaces the SCA, as ``att(x, context)`` does in issue #108.
   Option ``content_attention: cross_attention`` uses only a pre-norm residual cross-attention instead.
   With DA-CLIP's single context token the cross-attention adds the same learned projection of c at
   every position either way.
5. **Input**: the LQ image, with NAFNet's global residual (ConditionalNAFNet's [x − μ, μ] input is
   the SDE state's; a direct regressor has none). Padding mirrors (the NAFNet release zero-pads;
   the results differ only near the border of sizes that are not multiples of 2^levels).
6. **Loss and schedule** (unknown; not the network's): the option files train with the MSE loss (an
   earlier paper version called the model "an MSE-based network") on DA-CLIP's universal IR-SDE
   schedule (docs/daclip.md: batch 16 of 256² crops, AdamW 2e-4, cosine decay over 700,000 iterations).

Weight layout: a NAFBlock's layer norm returns a channels-last map (it normalises the (B, H, W, C) view), so
the block's convolutions run on channels-last maps; with contiguous weights their gradients came out
channels-last (the depthwise conv2 always; the 1×1 convs as the CPU backend chose, e.g. with 2 threads and
batch 2), and DDP copied them into its buckets with the warning "Grad strides do not match bucket view
strides". The blocks' convolution weights are therefore stored channels-last
(:func:`~vlunet.ops.weight_layout.store_weights_channels_last`), which makes every backend compute
in that layout and return gradients with the parameters' strides. These weights are all 1×1 or depthwise,
so only the strides of their size-1 dimensions change (the memory order, ``is_contiguous()``, values,
outputs and state-dict keys do not).

Parameter names follow the NAFNet release (``intro``, ``encoders``, ``downs``, ``middle_blks``, ``ups``,
``decoders``, ``ending``, inside blocks ``conv1`` … ``sca.1``); the guidance adds
``degradation_prompt.*``, the blocks' ``mlp.1`` and ``attention.*``.
"""
from typing import Optional, Sequence, Tuple

import torch
from einops import rearrange
from torch import nn

from vlunet.archs.daclip.irsde_unet_blocks import DegradationPrompt, MultiHeadAttention, SpatialTransformer
from vlunet.archs.nafnet_blocks import NAFBlock, NAFBlocks, nafnet_downsample, nafnet_upsample
from vlunet.archs.padding import crop_to, pad_to_multiple
from vlunet.ops.weight_layout import store_weights_channels_last

from basicsr.utils.registry import ARCH_REGISTRY

HEAD_CHANNELS = 32  # channels per attention head, as in the IR-SDE U-Net
DEGRADATION_INPUTS = ('prompt', 'embedding')
CONTENT_ATTENTIONS = ('spatial_transformer', 'cross_attention')


class ContentCrossAttention(nn.Module):
    """Pre-norm residual cross-attention of the pixels on the context: ``x + attn(LN(x), context)``.

    Shapes: x (B, C, H, W), context (B, L, context_dim) -> (B, C, H, W); C/32 heads of 32 channels.
    """

    def __init__(self, channels: int, context_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = MultiHeadAttention(channels, context_dim, channels // HEAD_CHANNELS, HEAD_CHANNELS)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        tokens = rearrange(x, 'b c h w -> b (h w) c')
        attended = self.attn(self.norm(tokens), context)
        return x + rearrange(attended, 'b (h w) c -> b c h w', h=height, w=width)


def _content_attention(kind: str, channels: int, context_dim: int) -> nn.Module:
    if kind == 'spatial_transformer':
        return SpatialTransformer(channels, channels // HEAD_CHANNELS, HEAD_CHANNELS, context_dim)
    return ContentCrossAttention(channels, context_dim)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f'NAFNetDACLIP: {name} must be one of {", ".join(choices)}, got {value!r}.')


@ARCH_REGISTRY.register()
class NAFNetDACLIP(nn.Module):
    """NAFNet whose blocks are modulated by the DA-CLIP degradation prompt and whose middle blocks attend to
    the DA-CLIP content embedding (see the module docstring for the design and its decisions).

    Args:
        img_channel: Image channels (input and output).
        width: Channels of the first level; level i has width·2^i, the middle blocks width·2^levels.
        middle_blk_num: NAFBlocks at the lowest resolution.
        enc_blk_nums: NAFBlocks per encoder level (the number of levels is its length).
        dec_blk_nums: NAFBlocks per decoder level, deepest first (same length as ``enc_blk_nums``).
        context_dim: Size of the DA-CLIP embeddings (512 for ViT-B-32); ``None`` or ≤ 0 turns both guidances off.
        use_degra_context: Modulate every block by the degradation embedding (``degradation=``).
        use_image_context: Cross-attention on the content embedding (``content=``) in the middle blocks.
        prompt_dim: Size of the prompt fed to the block mlps (even); default 4·width.
        degradation_input: ``prompt`` (the prompt module's output) or ``embedding`` (raw d) into the block mlps.
        content_attention: ``spatial_transformer`` or ``cross_attention`` in place of the SCA.
        content_attention_levels: The deepest encoder and decoder levels whose blocks also attend (0: middle only).
    """

    def __init__(self, img_channel: int = 3, width: int = 32, middle_blk_num: int = 1,
                 enc_blk_nums: Sequence[int] = (1, 1, 1, 28), dec_blk_nums: Sequence[int] = (1, 1, 1, 1),
                 context_dim: Optional[int] = 512, use_degra_context: bool = True, use_image_context: bool = True,
                 prompt_dim: Optional[int] = None, degradation_input: str = 'prompt',
                 content_attention: str = 'spatial_transformer', content_attention_levels: int = 0):
        super().__init__()
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise ValueError(f'NAFNetDACLIP: enc_blk_nums {list(enc_blk_nums)} and dec_blk_nums {list(dec_blk_nums)} '
                             'must have the same length (one entry per level).')
        _check_choice('degradation_input', degradation_input, DEGRADATION_INPUTS)
        _check_choice('content_attention', content_attention, CONTENT_ATTENTIONS)
        levels = len(enc_blk_nums)
        if not 0 <= content_attention_levels <= levels:
            raise ValueError(f'NAFNetDACLIP: content_attention_levels must be in 0..{levels} (the number of levels), '
                             f'got {content_attention_levels}.')
        self.context_dim = context_dim if context_dim and context_dim > 0 else 0
        self.use_degra_context = bool(use_degra_context and self.context_dim)
        self.use_image_context = bool(use_image_context and self.context_dim)
        self.levels = levels
        attending = [width * 2 ** i for i in range(levels - content_attention_levels, levels + 1)]
        if self.use_image_context and any(c % HEAD_CHANNELS for c in attending):
            raise ValueError(f'NAFNetDACLIP: with use_image_context the attending widths {attending} must be '
                             f'multiples of {HEAD_CHANNELS} (heads of 32 channels); choose width accordingly.')

        modulation_dim = None
        self.degradation_prompt = None
        if self.use_degra_context:
            modulation_dim = self.context_dim if degradation_input == 'embedding' else (prompt_dim or 4 * width)
            if degradation_input == 'prompt':
                self.degradation_prompt = DegradationPrompt(self.context_dim, modulation_dim)

        def blocks(count: int, channels: int, attends: bool) -> NAFBlocks:
            return NAFBlocks(NAFBlock(channels, modulation_dim=modulation_dim, attention=_content_attention(
                content_attention, channels, self.context_dim) if attends and self.use_image_context else None)
                for _ in range(count))

        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        channels = width
        for level, count in enumerate(enc_blk_nums):
            self.encoders.append(blocks(count, channels, level >= levels - content_attention_levels))
            self.downs.append(nafnet_downsample(channels))
            channels *= 2
        self.middle_blks = blocks(middle_blk_num, channels, True)
        self.middle_channels = channels
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for depth, count in enumerate(dec_blk_nums):
            self.ups.append(nafnet_upsample(channels))
            channels //= 2
            self.decoders.append(blocks(count, channels, depth < content_attention_levels))
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self._store_block_weights_channels_last()

    def _store_block_weights_channels_last(self) -> None:
        """Every NAFBlock's own convolution weights (conv1 … conv5, sca.1) in the channels-last layout of the maps
        they convolve, so their gradients have the parameters' strides (see the module docstring). Intro, downs,
        ups and ending see contiguous maps and stay contiguous; the content attention modules keep their own
        layout (their 1×1 projections run as matrix products, whose weight gradients are contiguous)."""
        for block in self.modules():
            if isinstance(block, NAFBlock):
                attention = set(block.attention.modules()) if block.attention is not None else set()
                convolutions = [module for module in block.modules()
                                if isinstance(module, nn.Conv2d) and module not in attention]
                store_weights_channels_last(nn.ModuleList(convolutions), convolutions)

    @property
    def guidance_inputs(self) -> Tuple[str, ...]:
        """The keyword inputs forward needs: ``degradation`` and/or ``content`` (none for plain NAFNet)."""
        return (('degradation',) if self.use_degra_context else ()) + (('content',) if self.use_image_context else ())

    def _embedding(self, name: str, value: Optional[torch.Tensor], used: bool, batch: int) -> Optional[torch.Tensor]:
        """``value`` checked against the switch and shape (B, context_dim); None when unused."""
        switch = 'use_degra_context' if name == 'degradation' else 'use_image_context'
        if not used:
            if value is not None:
                raise ValueError(f'NAFNetDACLIP: got {name}= but {switch} is off; leave it out or turn {switch} on.')
            return None
        if value is None:
            raise ValueError(f'NAFNetDACLIP: {switch} is on, so {name}= (B, {self.context_dim}), the DA-CLIP '
                             f'{name} embedding of the input, is required (degradation_encoder: {{type: DACLIP}}).')
        if value.shape != (batch, self.context_dim):
            raise ValueError(f'NAFNetDACLIP: {name} must be (B, context_dim) = ({batch}, {self.context_dim}), '
                             f'got {tuple(value.shape)}.')
        return value

    def forward(self, x: torch.Tensor, degradation: Optional[torch.Tensor] = None,
                content: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Restored image (B, img_channel, H, W) of ``x`` (B, img_channel, H, W), any H and W.

        Args:
            degradation: DA-CLIP degradation embedding (B, context_dim); required iff ``use_degra_context``.
            content: DA-CLIP content embedding (B, context_dim); required iff ``use_image_context``.
        """
        batch, _, height, width = x.shape
        modulation = self._embedding('degradation', degradation, self.use_degra_context, batch)
        if modulation is not None and self.degradation_prompt is not None:
            modulation = self.degradation_prompt(modulation)
        content = self._embedding('content', content, self.use_image_context, batch)
        context = None if content is None else content.unsqueeze(1)  # one token (B, 1, context_dim)

        image = pad_to_multiple(x, 2 ** self.levels)
        if context is not None and self.middle_channels == HEAD_CHANNELS and max(image.shape[-2:]) == 2 ** self.levels:
            # the middle GroupNorm(32) of 32 channels needs 2 values per group: a 2x1 middle, not 1x1
            image = torch.cat([image, image.flip(-1)], dim=-1)
        features = self.intro(image)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            features = encoder(features, modulation, context)
            skips.append(features)
            features = down(features)
        features = self.middle_blks(features, modulation, context)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            features = decoder(up(features) + skip, modulation, context)
        return crop_to(self.ending(features) + image, height, width)


@ARCH_REGISTRY.register()
class NAFNet(NAFNetDACLIP):
    """Plain NAFNet (Chen et al. 2022): :class:`NAFNetDACLIP` with the DA-CLIP guidance off, ``net(lq)``.

    The baseline row "NAFNet" of DA-CLIP's Table 3; same arguments as the NAFNet release, same defaults
    as :class:`NAFNetDACLIP` (width 32; 1, 1, 1, 28 encoder, 1 middle and 1, 1, 1, 1 decoder blocks).
    """

    def __init__(self, img_channel: int = 3, width: int = 32, middle_blk_num: int = 1,
                 enc_blk_nums: Sequence[int] = (1, 1, 1, 28), dec_blk_nums: Sequence[int] = (1, 1, 1, 1)):
        super().__init__(img_channel, width, middle_blk_num, enc_blk_nums, dec_blk_nums, context_dim=None)
