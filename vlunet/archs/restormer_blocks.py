"""Restormer building blocks used by VLU-Net's proximal mapping module (PMM).

Channel layer norm, transposed (channel) self-attention (MDTA), gated feed-forward (GDFN), the
transformer block that chains them, and the 2x down/up samplers. All convolutions are bias-free,
as in the official VLU-Net release. Feature maps are (B, C, H, W) throughout.
"""
import torch
import torch.nn.functional as F
from torch import nn


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map, at every pixel (eps 1e-5, biased variance).

    On a channels-last map the (B, H, W, C) permute is a free view, so this is one fused kernel
    with no copies (the official code computes mean and variance on a rearranged copy).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = x.permute(0, 2, 3, 1)
        normalized = F.layer_norm(channels_last, self.normalized_shape, self.weight, self.bias, self.eps)
        return normalized.permute(0, 3, 1, 2)


REDUCED_PRECISION = (torch.float16, torch.bfloat16)


def _normalized(x: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """x (B, C, N) in fp16/bf16 divided by its float32 row norms (B, C): one multiplication in x's dtype.

    The reciprocal is capped at the dtype's largest value, so an all-zero row stays zero.
    """
    reciprocal = norm.reciprocal().clamp_max(torch.finfo(x.dtype).max).to(x.dtype)
    return x * reciprocal.unsqueeze(-1)


def channel_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, temperature: torch.Tensor,
                      heads: int) -> torch.Tensor:
    """Attention across channels ("transposed" attention) of Restormer.

    Args:
        query, key, value: (B, C, H, W) maps; channels are grouped head-major into ``heads`` heads.
        temperature: (heads, 1, 1) learnable scale of the logits.
        heads: Number of heads; must divide C.

    Returns:
        (B, C, H, W), channels-last: per head, softmax(normalize(q) @ normalize(k)^T * temperature) @ v,
        where q, k, v are (C/heads, H*W) matrices and normalize is L2 over the spatial axis.

    Written for channels-last maps, where every (C/heads, H*W) head matrix is a strided view that the
    matrix products read directly (no per-head copies), and the output is produced as (B, H*W, C).
    In float32, instead of normalising the large q and k, the small (C/heads)^2 logits are divided by
    the outer product of their norms (same value; saves two full-size divisions). In fp16/bf16 (autocast)
    q and k are normalised first, as in the official code: q @ k^T sums H*W products and would pass
    fp16's largest value (65,504) from about 256x256 on. Norms, logits and softmax are float32.
    """
    b, c, h, w = query.shape
    q, k, v = (t.flatten(2) for t in (query, key, value))  # (B, C, H*W)
    normalize_first = q.dtype in REDUCED_PRECISION
    if normalize_first:  # fp16 squares overflow from |x| > 255: vector_norm accumulates in float32
        q_norm, k_norm = (torch.linalg.vector_norm(t, dim=-1, dtype=torch.float32).clamp_min(1e-12) for t in (q, k))
    else:  # square().sum() reads strided memory ~3x faster than linalg.vector_norm on channels-last maps
        q_norm, k_norm = (t.square().sum(dim=-1, dtype=torch.float32).sqrt().clamp_min(1e-12) for t in (q, k))
    if normalize_first:
        q, k = _normalized(q, q_norm), _normalized(k, k_norm)
    outputs = []
    for head, (q_head, k_head, v_head, q_head_norm, k_head_norm) in enumerate(zip(
            q.chunk(heads, 1), k.chunk(heads, 1), v.chunk(heads, 1), q_norm.chunk(heads, 1), k_norm.chunk(heads, 1))):
        cosine = (q_head @ k_head.transpose(1, 2)).float()
        if not normalize_first:
            cosine = cosine / (q_head_norm.unsqueeze(2) * k_head_norm.unsqueeze(1))
        attention = (cosine * temperature[head]).softmax(dim=-1).to(v_head.dtype)
        outputs.append(v_head.transpose(1, 2) @ attention.transpose(1, 2))  # (B, H*W, C/heads)
    out = outputs[0] if heads == 1 else torch.cat(outputs, dim=2)
    return out.view(b, h, w, c).permute(0, 3, 1, 2)


class TransposedSelfAttention(nn.Module):
    """MDTA: multi-Dconv head transposed self-attention of Restormer, (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query, key, value = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        return self.project_out(channel_attention(query, key, value, self.temperature, self.heads))


class GatedFeedForward(nn.Module):
    """GDFN: 1x1 expand to 2 x hidden, 3x3 depthwise, GELU(first half) * second half, 1x1 back to dim."""

    def __init__(self, dim: int, expansion_factor: float):
        super().__init__()
        hidden = int(dim * expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, content = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * content)


class TransformerBlock(nn.Module):
    """Restormer block: x + MDTA(LN(x)), then x + GDFN(LN(x)); (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, heads: int, ffn_expansion_factor: float):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = TransposedSelfAttention(dim, heads)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GatedFeedForward(dim, ffn_expansion_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


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
