"""Building blocks of IR-SDE's conditional U-Net (:mod:`vlunet.archs.daclip.irsde_unet_arch`).

Each block computes what the DA-CLIP release's block of the same role computes (``module_util.py``
and ``attention.py`` of ``universal-image-restoration``), and its parameters carry the release's
state-dict names (``mlp.1``, ``block1.proj``, ``fn.norm.g``, ``to_qkv``, ``transformer_blocks.0.attn2.to_v``,
``ff.net.0.proj``, ...), so a released state dict loads without renaming.

Differences that leave the numbers unchanged (to float rounding), for speed on CPU and GPU:

- feature maps are channels-last (a (B, C, H, W) map is a (B, H, W, C) array): 3x3 convolutions run
  oneDNN's faster NHWC kernels, the channel layer norm is one ``F.layer_norm`` over the last axis,
  and 1x1 convolutions are matrix products on the (B, H*W, C) view, the shortcut's sum fused in;
- the time modulation ``x·(scale+1)+shift`` is one ``addcmul``; without autograd it, SiLU, GELU and
  the residual sums work in place (large fresh tensors cost page faults on CPU);
- linear attention: q, kᵀ and vᵀ come from three matrix products; the 1/√d scale and the 1/(H·W)
  of v move onto the small (d, e) summary, which is merged with the output projection into one
  (B, heads·d, C) matrix, so the output is a single product of softmax(q) (no einsum outputs);
- attention uses ``F.scaled_dot_product_attention``; with one context token (DA-CLIP's) every
  cross-attention weight is exactly 1, so without autograd its output is ``to_out(to_v(context))`` broadcast;
- no gradient checkpointing in the transformer block (the release's default, which only trades
  memory for time).

Shapes: feature maps (B, C, H, W); the time embedding (B, T) or (1, T); a context (B, L, D).
"""
import math
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vlunet.ops.bands import row_bands
from vlunet.ops.channels_last import as_map, pixel_rows, pointwise
from vlunet.ops.dispatch import bands_allowed
from vlunet.ops.fused_convolutions import conv_modulate_silu, fast_cpu_inference


def works_in_place(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether ``x`` (a fresh result) may be overwritten: no autograd graph, and ``others`` of x's dtype
    (under autocast an out-of-place op would promote, as the release's does)."""
    return not torch.is_grad_enabled() and all(other.dtype == x.dtype for other in others)


def _bands(tokens: torch.Tensor, channels: int) -> Iterator[Tuple[int, int, torch.Tensor]]:
    """(start, length, band) of consecutive positions of tokens (B, N, C) whose ``channels``-wide results fit
    :data:`~vlunet.archs.restormer_blocks.BAND_BYTES` (:func:`~vlunet.archs.restormer_blocks.row_bands`)."""
    for start, stop in row_bands(tokens.shape[1], tokens.shape[0] * channels * tokens.element_size()):
        yield start, stop - start, tokens[:, start:stop]


def linear_1x1(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 ``conv`` (with its bias) as a matrix product on the rows of x: (B, C, H, W) -> (B, H*W, C_out)."""
    return F.linear(pixel_rows(x), conv.weight.flatten(1), conv.bias)


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
    """Layer norm over the channels of (B, C, H, W), gain ``g`` only, biased variance, eps 1e-5 (1e-3 below fp32,
    as in the release). One ``F.layer_norm`` on the (B, H, W, C) view (free on channels-last maps)."""

    def __init__(self, dim: int):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        normalized = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.g.view(-1), None, eps)
        return normalized.permute(0, 3, 1, 2)


class PreNorm(nn.Module):
    """``fn(ChannelLayerNorm(x), context)``."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = ChannelLayerNorm(dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.fn(self.norm(x), context)


class Residual(nn.Module):
    """``fn(x, context) + x``; ``fn`` returns a new tensor (without autograd the sum is taken in it)."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.fn(x, context)
        return out.add_(x) if works_in_place(out, x) else out + x


def conv(dim_in: int, dim_out: int, kernel_size: int = 3, bias: bool = False) -> nn.Conv2d:
    """Same-size convolution, no bias by default (the release's ``default_conv``)."""
    return nn.Conv2d(dim_in, dim_out, kernel_size, padding=kernel_size // 2, bias=bias)


def downsample(dim_in: int, dim_out: int) -> nn.Conv2d:
    """4×4 stride-2 convolution (with bias): (B, dim_in, H, W) -> (B, dim_out, H/2, W/2)."""
    return nn.Conv2d(dim_in, dim_out, 4, 2, 1)


# Which of a 3x3 kernel's rows (columns) fall on low-resolution rows (i-1+p, i+p) for output row 2i+p.
_PHASE_TAPS = ((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1))


class NearestUpsampleConv(nn.Sequential):
    """Nearest ×2, then a 3×3 convolution (with bias): (B, dim_in, H, W) -> (B, dim_out, 2H, 2W), channels-last.

    Parameters as the release's ``Sequential(Upsample, Conv2d)`` (``1.weight``, ``1.bias``). Computed
    without the 4x larger upsampled map: the 3x3 kernel seen by each of the four output phases
    (row/column parity) covers a 2x2 low-resolution window, so one 2x2 convolution of the
    zero-padded input to 4·dim_out channels gives all phases, interleaved into the output
    (16 instead of 36 multiply-adds per low-resolution pixel and output channel).
    """

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__(nn.Upsample(scale_factor=2, mode='nearest'), nn.Conv2d(dim_in, dim_out, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self[1]
        batch, _, height, width = x.shape
        dim_out = conv.out_channels
        taps = torch.tensor(_PHASE_TAPS, dtype=conv.weight.dtype, device=x.device)  # (phase, 2, 3)
        phase_weights = torch.einsum('pik,ockl,qjl->pqocij', taps, conv.weight, taps).reshape(4 * dim_out, -1, 2, 2)
        phases = F.conv2d(x, phase_weights.contiguous(memory_format=torch.channels_last),
                          conv.bias.repeat(4), padding=1)  # (B, 4·dim_out, H+1, W+1)
        out = torch.empty(batch, dim_out, 2 * height, 2 * width, dtype=phases.dtype, device=x.device,
                          memory_format=torch.channels_last)
        for index, (row, column) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            out[:, :, row::2, column::2] = phases[:, index * dim_out:(index + 1) * dim_out,
                                                  row:row + height, column:column + width]
        return out


def upsample(dim_in: int, dim_out: int) -> NearestUpsampleConv:
    """Nearest ×2, then a 3×3 convolution (with bias): (B, dim_in, H, W) -> (B, dim_out, 2H, 2W)."""
    return NearestUpsampleConv(dim_in, dim_out)


class ConvBlock(nn.Module):
    """3×3 conv (no bias), optional ``x·(scale+1)+shift`` modulation, SiLU (the release's ``Block``)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = conv(dim_in, dim_out)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None,
                shift: Optional[torch.Tensor] = None) -> torch.Tensor:
        if fast_cpu_inference(x):
            return conv_modulate_silu(x, self.proj, scale, shift)
        x = self.proj(x)
        in_place = works_in_place(x) if scale is None else works_in_place(x, scale, shift)
        if scale is not None:
            x = torch.addcmul(shift, x, scale + 1, out=x) if in_place else torch.addcmul(shift, x, scale + 1)
        return F.silu(x, inplace=in_place)


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
        out = self.block2(self.block1(x, scale, shift))
        if isinstance(self.res_conv, nn.Conv2d):
            return pointwise(x, self.res_conv, residual=out)
        return out.add_(x) if works_in_place(out, x) else out + x


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

    Per head, with N = H·W: out = to_out(summaryᵀ · softmax(q)·scale), summary = softmax(k) · (v/N)ᵀ.
    Computed as softmax(q) (B, N, heads·d) times one (B, heads·d, dim) matrix that merges the
    summaries, both scales and the output projection. Without autograd, q, v and the output are
    computed in bands of positions (:data:`~vlunet.archs.restormer_blocks.BAND_BYTES`) and k's
    exponentials in place, with the softmax's normalisation applied to the small summary: no
    full-size q, v or softmax copies.
    Shapes: (B, dim, H, W) -> (B, dim, H, W).
    """

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32):
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden_dim, dim, 1), ChannelLayerNorm(dim))

    def _query(self, tokens: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
        """softmax over each head's channels of q: (B, n, dim) -> (B, n, heads·d)."""
        return (tokens @ w_q.t()).unflatten(-1, (self.heads, -1)).softmax(dim=-1).flatten(2)

    def _head_products(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """k (B, heads·d, n) and v (B, n, heads·e) -> per head k·v (B, heads, d, e)."""
        return torch.stack([k_head @ v_head for k_head, v_head in zip(k.chunk(self.heads, 1), v.chunk(self.heads, -1))],
                           dim=1)

    def _summary(self, tokens: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor) -> torch.Tensor:
        """softmax(k) · vᵀ per head over all N positions: (B, N, dim) -> (B, heads, d, e)."""
        k = torch.bmm(w_k.expand(tokens.shape[0], -1, -1), tokens.transpose(1, 2))  # (B, heads·d, N)
        if not bands_allowed(tokens):
            return self._head_products(k.softmax(dim=-1), tokens @ w_v.t())
        k = k.sub_(k.amax(dim=-1, keepdim=True)).exp_()
        products = sum(self._head_products(k[:, :, start:start + len_band], band @ w_v.t())
                       for start, len_band, band in _bands(tokens, w_v.shape[0]))
        return products / k.sum(dim=-1).unflatten(1, (self.heads, -1)).unsqueeze(-1)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, dim, height, width = x.shape
        tokens = pixel_rows(x)  # (B, N, dim)
        w_q, w_k, w_v = self.to_qkv.weight.flatten(1).chunk(3)  # (heads·d, dim) each
        summary = self._summary(tokens, w_k, w_v) * (self.scale / (height * width))  # (B, heads, d, e)
        projection = self.to_out[0].weight.flatten(1).t().unflatten(0, (self.heads, -1))  # (heads, e, dim)
        merged = (summary @ projection).flatten(1, 2)  # (B, heads·d, dim)
        bias = self.to_out[0].bias.to(merged.dtype).expand(batch, 1, dim)
        if not bands_allowed(x):
            out = torch.baddbmm(bias, self._query(tokens, w_q), merged)
        else:
            out = torch.cat([torch.baddbmm(bias, self._query(band, w_q), merged)
                             for _, _, band in _bands(tokens, w_q.shape[0])], dim=1)
        return self.to_out[1](as_map(out, x))


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
        if context is not None and context.shape[1] == 1 and not torch.is_grad_enabled():
            # softmax over one key: every weight is exactly 1 (with autograd, the full product gives to_q and
            # to_k their zero gradients, which DDP expects from every parameter)
            return self.to_out(self.to_v(context)).expand(-1, x.shape[1], -1)
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
        if works_in_place(gate):
            return torch.ops.aten.gelu_(gate).mul_(hidden)
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
        tokens = linear_1x1(self.norm(x), self.proj_in)  # (B, H*W, C)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        out = as_map(F.linear(tokens, self.proj_out.weight.flatten(1), self.proj_out.bias), x)
        return out.add_(x) if works_in_place(out, x) else out + x
