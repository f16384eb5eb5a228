"""Building blocks of IR-SDE's conditional U-Net (:mod:`vlunet.archs.daclip.irsde_unet_arch`).

Each block computes what the DA-CLIP release's block of the same role computes (``module_util.py``
and ``attention.py`` of ``universal-image-restoration``), and its parameters carry the release's
state-dict names (``mlp.1``, ``block1.proj``, ``fn.norm.g``, ``to_qkv``, ``transformer_blocks.0.attn2.to_v``,
``ff.net.0.proj``, ...), so a released state dict loads without renaming.

Differences that leave the numbers unchanged (to float rounding):

- attention uses ``F.scaled_dot_product_attention``;
- no gradient checkpointing in the transformer block (the release's default, which only trades
  memory for time).

Shapes: feature maps (B, C, H, W); the time embedding (B, T) or (1, T); a context (B, L, D).
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer position encoding of the diffusion step: (N,) steps -> (N, dim), sin half then cos half."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        frequencies = torch.exp(torch.arange(half, device=steps.device) * -(math.log(10000) / (half - 1)))
        angles = steps[:, None] * frequencies[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channels of (B, C, H, W), gain ``g`` only, biased variance, eps 1e-5 (1e-3 below fp32)."""

    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.g


class PreNorm(nn.Module):
    """``fn(ChannelLayerNorm(x), context)``."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = ChannelLayerNorm(dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.fn(self.norm(x), context)


class Residual(nn.Module):
    """``fn(x, context) + x``."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.fn(x, context) + x


def conv(dim_in: int, dim_out: int, kernel_size: int = 3, bias: bool = False) -> nn.Conv2d:
    """Same-size convolution, no bias by default (the release's ``default_conv``)."""
    return nn.Conv2d(dim_in, dim_out, kernel_size, padding=kernel_size // 2, bias=bias)


def downsample(dim_in: int, dim_out: int) -> nn.Conv2d:
    """4×4 stride-2 convolution (with bias): (B, dim_in, H, W) -> (B, dim_out, H/2, W/2)."""
    return nn.Conv2d(dim_in, dim_out, 4, 2, 1)


def upsample(dim_in: int, dim_out: int) -> nn.Sequential:
    """Nearest ×2, then a 3×3 convolution (with bias): (B, dim_in, H, W) -> (B, dim_out, 2H, 2W)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode='nearest'), nn.Conv2d(dim_in, dim_out, 3, padding=1))


class ConvBlock(nn.Module):
    """3×3 conv (no bias), optional ``x·(scale+1)+shift`` modulation, SiLU (the release's ``Block``)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = conv(dim_in, dim_out)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None,
                shift: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.proj(x)
        if scale is not None:
            x = x * (scale + 1) + shift
        return self.act(x)


class TimeConditionedResBlock(nn.Module):
    """Two conv blocks, the first modulated by the (time + prompt) embedding; 1×1 conv shortcut if C changes.

    Shapes: x (B, dim_in, H, W), embedding (B or 1, time_dim) -> (B, dim_out, H, W).
    """

    def __init__(self, dim_in: int, dim_out: int, time_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, dim_out * 2))
        self.block1 = ConvBlock(dim_in, dim_out)
        self.block2 = ConvBlock(dim_out, dim_out)
        self.res_conv = conv(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mlp(embedding)[:, :, None, None].chunk(2, dim=1)
        return self.block2(self.block1(x, scale, shift)) + self.res_conv(x)


class DegradationPrompt(nn.Module):
    """DA-CLIP's prompt module: ``prompt_mlp(softmax(text_mlp(d)) ⊙ prompt)``, the softmax over the channels.

    Shapes: degradation embedding d (B, context_dim) -> (B, dim). ``prompt`` (1, dim) starts uniform in
    [0, 1). ConditionalUNet holds the same three parameters itself (the release's state-dict names) and
    adds the result to its time embedding; NAFNetDACLIP uses this module.
    """

    def __init__(self, context_dim: int, dim: int):
        super().__init__()
        self.prompt = nn.Parameter(torch.rand(1, dim))
        self.text_mlp = nn.Sequential(nn.Linear(context_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.prompt_mlp = nn.Linear(dim, dim)

    def forward(self, degradation: torch.Tensor) -> torch.Tensor:
        return self.prompt_mlp(torch.softmax(self.text_mlp(degradation), dim=1) * self.prompt)


class LinearAttention(nn.Module):
    """Linear attention (softmax over channels for q, over positions for k), 4 heads × 32; ``context`` is ignored.

    Shapes: (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden_dim, dim, 1), ChannelLayerNorm(dim))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        height, width = x.shape[-2:]
        q, k, v = (rearrange(t, 'b (h c) x y -> b h c (x y)', h=self.heads) for t in self.to_qkv(x).chunk(3, dim=1))
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        v = v / (height * width)
        summary = torch.einsum('b h d n, b h e n -> b h d e', k, v)
        out = torch.einsum('b h d e, b h d n -> b h e n', summary, q)
        return self.to_out(rearrange(out, 'b h c (x y) -> b (h c) x y', x=height, y=width))


class MultiHeadAttention(nn.Module):
    """Attention of (B, N, dim) queries on a (B, L, context_dim) context (itself when None): the release's
    ``CrossAttention``. With DA-CLIP's single context token every weight is 1, so the output is
    ``to_out(to_v(context))`` at every position."""

    def __init__(self, query_dim: int, context_dim: Optional[int], heads: int, dim_head: int):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (rearrange(t, 'b n (h d) -> b h n d', h=self.heads)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(rearrange(out, 'b h n d -> b n (h d)'))


class GEGLU(nn.Module):
    """``Linear(dim_in, 2·dim_out)`` split into (x, gate) -> ``x·GELU(gate)``: (B, N, dim_in) -> (B, N, dim_out)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class GEGLUFeedForward(nn.Module):
    """GEGLU to ``mult·dim``, then ``Linear(mult·dim, dim)``: (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention on the context, GEGLU feed-forward, each pre-LayerNorm and residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = MultiHeadAttention(dim, None, heads, dim_head)
        self.ff = GEGLUFeedForward(dim)
        self.attn2 = MultiHeadAttention(dim, context_dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GroupNorm(32) -> 1×1 conv -> transformer block on the H·W tokens -> zero-initialised 1×1 conv, plus the input.

    Shapes: x (B, dim, H, W), context (B, L, context_dim) -> (B, dim, H, W). Without a context the
    cross-attention attends to the tokens themselves (which needs context_dim == dim, as in the release).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        inner_dim = heads * dim_head
        self.norm = nn.GroupNorm(32, dim, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(dim, inner_dim, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(inner_dim, heads, dim_head, context_dim)])
        self.proj_out = nn.Conv2d(inner_dim, dim, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        height, width = x.shape[-2:]
        tokens = rearrange(self.proj_in(self.norm(x)), 'b c h w -> b (h w) c')
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return self.proj_out(rearrange(tokens, 'b (h w) c -> b c h w', h=height, w=width)) + x
