"""IR-SDE's conditional noise-prediction U-Net with DA-CLIP guidance (``ConditionalUNet`` of DA-CLIP).

``net(xt, cond, time, text_context=None, image_context=None)`` predicts the noise of the SDE state
``xt`` (B, 3, H, W) given the low-quality image ``cond`` = μ (B, 3, H, W) at diffusion step ``time``;
the sampler lives in :mod:`vlunet.models.daclip.irsde`. The released DA-CLIP configuration (the defaults:
``nf 64, ch_mult [1, 2, 4, 8], context_dim 512``, both contexts on) has 48,975,747 parameters; with
``use_degra_context`` and ``use_image_context`` false (or ``context_dim <= 0``) it is plain IR-SDE's
network, 36,236,419 parameters.

Data flow (blocks in :mod:`vlunet.archs.daclip.irsde_unet_blocks`):

- input ``[xt − cond, cond]`` (6 channels), mirror-padded at the bottom/right to a multiple of
  2^len(ch_mult) (16) and cropped back at the end; a 7×7 conv gives x₀ (kept for the last skip);
- time: sinusoidal embedding of the raw step (1…T, not normalised) -> Linear -> GELU -> Linear
  (4·nf channels). ``text_context`` (B, context_dim), DA-CLIP's degradation embedding, becomes a
  prompt added to it: ``prompt_mlp(softmax(text_mlp(d)) ⊙ prompt)`` (softmax over the channels);
- encoder level i: ResBlock, [skip], ResBlock, attention, [skip], downsample (a plain 3×3 conv at
  the last level); middle: ResBlock, attention, ResBlock; decoder: the mirror image with skip
  concatenations; every ResBlock is scaled/shifted by the (time + prompt) embedding;
- attention: linear attention, except at levels ≥ 3, the middle and the matching decoder level when
  ``use_image_context``: a spatial transformer whose cross-attention attends to ``image_context``
  (B, context_dim), DA-CLIP's content embedding, as one token;
- output: concat with x₀ -> ResBlock -> 3×3 conv = predicted noise (B, out_nc, H, W).

Differences from the release, none of which changes an output the release computes:

- ``time`` may also be a 0-d or (B, 1, 1, 1) tensor or a numpy number (the release crashes on a
  0-d tensor, i.e. training with batch 1); its sinusoid is computed in fp32 and cast to the
  network's dtype (the release's fp32 sinusoid fails in an fp64/fp16 network);
- any H, W: a side shorter than its padding is mirrored repeatedly (the release's reflect padding
  raises an error there); the values are those of reflect padding whenever that applies;
- ``use_image_context`` without an ``image_context`` is a clear error (the release fails inside the
  attention with a shape mismatch);
- computed faster, the same function to float rounding (max relative error ~1e-6 against a literal
  re-implementation, ``benchmarks/reimplementations/daclip_release.py``; measured by ``benchmarks/benchmark_irsde.py``):
  channels-last maps and 1x1 convolutions as matrix products, merged linear attention, sub-pixel
  nearest-upsampling convolutions, in-place modulation without autograd, one-token cross-attention
  as a broadcast (:mod:`vlunet.archs.daclip.irsde_unet_blocks`); no gradient checkpointing; CPU
  inference also folds the time modulation into the 3x3 weights with SiLU as a oneDNN post-op and runs
  the deep levels' 3x3 convolutions as Winograd F(2x2, 3x3) (:mod:`vlunet.ops.fused_convolutions`).
  The output is contiguous NCHW, as the release's.

Parameter names are the release's: a released ``universal-ir.pth`` loads as it is
(:mod:`vlunet.convert.irsde_checkpoint` only wraps it as ``{'params': state_dict}``).
"""
import numbers
from typing import Optional, Sequence, Union

import torch
from torch import nn

from vlunet.archs.daclip.irsde_unet_blocks import (
    LinearAttention,
    PreNorm,
    Residual,
    SinusoidalTimeEmbedding,
    SpatialTransformer,
    TimeConditionedResBlock,
    conv,
    downsample,
    upsample,
)
from vlunet.archs.padding import pad_to_multiple
from vlunet.ops.weight_layout import store_weights_channels_last

from basicsr.utils.registry import ARCH_REGISTRY

HEAD_CHANNELS = 32  # channels per head of the spatial transformers
FIRST_TRANSFORMER_LEVEL = 3  # levels below this one use linear attention

TimeStep = Union[torch.Tensor, numbers.Real]


def _level_attention(dim: int, use_transformer: bool, context_dim: int) -> Residual:
    block = SpatialTransformer(dim, dim // HEAD_CHANNELS, HEAD_CHANNELS, context_dim) if use_transformer \
        else LinearAttention(dim)
    return Residual(PreNorm(dim, block))


@ARCH_REGISTRY.register()
class ConditionalUNet(nn.Module):
    """DA-CLIP's IR-SDE noise network (see the module docstring).

    Args:
        in_nc: Image channels of ``xt`` and ``cond`` (the input has 2·in_nc channels).
        out_nc: Channels of the predicted noise.
        nf: Base width; the time embedding has 4·nf channels.
        ch_mult: Width multipliers of the encoder levels (a leading 1 is prepended, as in the release).
        context_dim: Size of the DA-CLIP embeddings; ``None`` or ≤ 0 disables both contexts.
        use_degra_context: Add the degradation prompt (from ``text_context``) to the time embedding.
        use_image_context: Spatial transformers with cross-attention on ``image_context``.
    """

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, ch_mult: Sequence[int] = (1, 2, 4, 8),
                 context_dim: Optional[int] = 512, use_degra_context: bool = True, use_image_context: bool = True):
        super().__init__()
        if nf % 2 or nf < 4:
            raise ValueError(f'ConditionalUNet: nf must be an even number ≥ 4 (the time embedding), got {nf}.')
        self.depth = len(ch_mult)
        self.context_dim = -1 if context_dim is None else context_dim
        self.use_degra_context = use_degra_context and self.context_dim > 0
        self.use_image_context = use_image_context and self.context_dim > 0
        widths = [nf * m for m in [1, *ch_mult]]
        if self.use_image_context and any(w % HEAD_CHANNELS for w in widths[FIRST_TRANSFORMER_LEVEL:]):
            raise ValueError(f'ConditionalUNet: with use_image_context the widths nf·ch_mult from level '
                             f'{FIRST_TRANSFORMER_LEVEL} on ({widths[FIRST_TRANSFORMER_LEVEL:]}) must be multiples of '
                             f'{HEAD_CHANNELS}; choose nf and ch_mult accordingly.')

        time_dim = nf * 4
        self.init_conv = conv(in_nc * 2, nf, 7)
        self.time_mlp = nn.Sequential(SinusoidalTimeEmbedding(nf), nn.Linear(nf, time_dim), nn.GELU(),
                                      nn.Linear(time_dim, time_dim))
        if self.use_degra_context:
            self.prompt = nn.Parameter(torch.rand(1, time_dim))
            self.text_mlp = nn.Sequential(nn.Linear(self.context_dim, time_dim), nn.SiLU(),
                                          nn.Linear(time_dim, time_dim))
            self.prompt_mlp = nn.Linear(time_dim, time_dim)

        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        for level in range(self.depth):
            dim_in, dim_out = widths[level], widths[level + 1]
            transformer = self.use_image_context and level >= FIRST_TRANSFORMER_LEVEL
            last = level == self.depth - 1
            self.downs.append(nn.ModuleList([
                TimeConditionedResBlock(dim_in, dim_in, time_dim),
                TimeConditionedResBlock(dim_in, dim_in, time_dim),
                _level_attention(dim_in, transformer, self.context_dim),
                conv(dim_in, dim_out) if last else downsample(dim_in, dim_out)]))
            self.ups.insert(0, nn.ModuleList([
                TimeConditionedResBlock(dim_out + dim_in, dim_out, time_dim),
                TimeConditionedResBlock(dim_out + dim_in, dim_out, time_dim),
                _level_attention(dim_out, transformer, self.context_dim),
                conv(dim_out, dim_in) if level == 0 else upsample(dim_out, dim_in)]))

        mid_dim = widths[-1]
        self.mid_block1 = TimeConditionedResBlock(mid_dim, mid_dim, time_dim)
        self.mid_attn = _level_attention(mid_dim, self.use_image_context, self.context_dim)
        self.mid_block2 = TimeConditionedResBlock(mid_dim, mid_dim, time_dim)
        self.final_res_block = TimeConditionedResBlock(nf * 2, nf, time_dim)
        self.final_conv = nn.Conv2d(nf, out_nc, 3, 1, 1)
        for child in self.children():  # the maps are channels-last; DDP: gradients with the parameters' strides
            if child is not self.init_conv:  # it convolves the NCHW input (its NCHW kernel is also faster there)
                store_weights_channels_last(child)

    def _time_embedding(self, time: TimeStep, batch: int, device: torch.device,
                        text_context: Optional[torch.Tensor]) -> torch.Tensor:
        """(B or 1, 4·nf) embedding of the step(s), plus the degradation prompt when enabled and given."""
        steps = torch.as_tensor(time, device=device).reshape(-1).float()
        if len(steps) not in (1, batch):
            raise ValueError(f'ConditionalUNet: time must be one step or one per image ({batch}), got '
                             f'{len(steps)} values.')
        sinusoid, mlp = self.time_mlp[0], self.time_mlp[1:]
        embedding = mlp(sinusoid(steps).to(self.init_conv.weight.dtype))
        if self.use_degra_context and text_context is not None:
            embedding = embedding + self.prompt_mlp(torch.softmax(self.text_mlp(text_context), dim=1) * self.prompt)
        return embedding

    def forward(self, xt: torch.Tensor, cond: torch.Tensor, time: TimeStep, text_context: Optional[torch.Tensor] = None,
                image_context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predicted noise (B, out_nc, H, W).

        Args:
            xt: SDE state x_t (B, in_nc, H, W).
            cond: The condition μ, i.e. the low-quality image (B, in_nc, H, W).
            time: Diffusion step(s) 1…T: a Python/numpy number, a 0-d or (B,) tensor (int or float).
            text_context: DA-CLIP degradation embedding (B, context_dim), or None for no prompt.
            image_context: DA-CLIP content embedding (B, context_dim); required with ``use_image_context``.
        """
        if self.use_image_context and image_context is None:
            raise ValueError('ConditionalUNet: use_image_context is on, so image_context (B, context_dim), the '
                             'DA-CLIP content embedding, is required.')
        height, width = xt.shape[-2:]
        t = self._time_embedding(time, xt.shape[0], xt.device, text_context)
        context = image_context.unsqueeze(1) if self.use_image_context else None

        x = self.init_conv(pad_to_multiple(torch.cat([xt - cond, cond], dim=1), 2 ** self.depth))
        x = first = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for block1, block2, attention, down in self.downs:
            x = block1(x, t)
            skips.append(x)
            x = attention(block2(x, t), context)
            skips.append(x)
            x = down(x)

        x = self.mid_block2(self.mid_attn(self.mid_block1(x, t), context), t)

        for block1, block2, attention, up in self.ups:
            x = block1(torch.cat([x, skips.pop()], dim=1), t)
            x = block2(torch.cat([x, skips.pop()], dim=1), t)
            x = up(attention(x, context))

        x = self.final_conv(self.final_res_block(torch.cat([x, first], dim=1), t))
        return x[..., :height, :width].contiguous()
