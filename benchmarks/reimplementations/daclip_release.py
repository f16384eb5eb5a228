"""An independent, literal re-implementation of DA-CLIP's released IR-SDE ``ConditionalUNet``.

Written from the description of the release (docs/daclip.md#the-conditional-u-net), not from the
plugin's code, to check that :class:`vlunet.archs.daclip.irsde_unet_arch.ConditionalUNet` computes
the same function and to be the baseline of ``benchmarks/benchmark_irsde.py``. It follows the release's
operations literally: ``x * (scale + 1) + shift`` then SiLU as separate tensors, concatenated skips,
attention as explicit ``einsum`` + softmax with ``(b h)`` folded heads, the transformer block under
gradient checkpointing when gradients are on, reflect padding to a multiple of 2^depth.

Module names equal the release's, so ``OfficialConditionalUNet(...).state_dict()`` has the keys of
``universal-ir.pth`` and loads strictly into the plugin's network (and back).
Its limits are the release's: H, W at least the padding, ``time`` a Python number or a (B,) tensor.
"""
import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import einsum, nn
from torch.utils.checkpoint import checkpoint


class NonLinearity(nn.Module):
    def forward(self, x):
        return F.silu(x)


class ChannelLayerNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x):
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.g


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.fn = fn
        self.norm = ChannelLayerNorm(dim)

    def forward(self, x, *args, **kwargs):
        return self.fn(self.norm(x), *args, **kwargs)


class Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, *args, **kwargs):
        return self.fn(x, *args, **kwargs) + x


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        half_dim = self.dim // 2
        emb = math.log(10000) / (half_dim - 1)
        emb = torch.exp(torch.arange(half_dim, device=x.device) * -emb)
        emb = x[:, None] * emb[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


def default_conv(dim_in, dim_out, kernel_size=3, bias=False):
    return nn.Conv2d(dim_in, dim_out, kernel_size, padding=kernel_size // 2, bias=bias)


class Block(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = default_conv(dim_in, dim_out)
        self.act = NonLinearity()

    def forward(self, x, scale_shift=None):
        x = self.proj(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResBlock(nn.Module):
    def __init__(self, dim_in, dim_out, time_emb_dim):
        super().__init__()
        self.mlp = nn.Sequential(NonLinearity(), nn.Linear(time_emb_dim, dim_out * 2))
        self.block1 = Block(dim_in, dim_out)
        self.block2 = Block(dim_out, dim_out)
        self.res_conv = default_conv(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x, time_emb):
        scale_shift = rearrange(self.mlp(time_emb), 'b c -> b c 1 1').chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift=scale_shift))
        return h + self.res_conv(x)


class LinearAttention(nn.Module):
    def __init__(self, dim, heads=4, dim_head=32):
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        hidden_dim = dim_head * heads
        self.to_qkv = nn.Conv2d(dim, hidden_dim * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(hidden_dim, dim, 1), ChannelLayerNorm(dim))

    def forward(self, x, context=None):
        b, c, h, w = x.shape
        qkv = self.to_qkv(x).chunk(3, dim=1)
        q, k, v = map(lambda t: rearrange(t, 'b (h c) x y -> b h c (x y)', h=self.heads), qkv)
        q = q.softmax(dim=-2)
        k = k.softmax(dim=-1)
        q = q * self.scale
        v = v / (h * w)
        context = torch.einsum('b h d n, b h e n -> b h d e', k, v)
        out = torch.einsum('b h d e, b h d n -> b h e n', context, q)
        out = rearrange(out, 'b h c (x y) -> b (h c) x y', h=self.heads, x=h, y=w)
        return self.to_out(out)


class CrossAttention(nn.Module):
    def __init__(self, query_dim, context_dim=None, heads=8, dim_head=64):
        super().__init__()
        inner_dim = dim_head * heads
        context_dim = context_dim or query_dim
        self.scale = dim_head ** -0.5
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(0.0))

    def forward(self, x, context=None):
        h = self.heads
        q = self.to_q(x)
        context = x if context is None else context
        k = self.to_k(context)
        v = self.to_v(context)
        q, k, v = map(lambda t: rearrange(t, 'b n (h d) -> (b h) n d', h=h), (q, k, v))
        sim = einsum('b i d, b j d -> b i j', q, k) * self.scale
        attn = sim.softmax(dim=-1)
        out = einsum('b i j, b j d -> b i d', attn, v)
        out = rearrange(out, '(b h) n d -> b n (h d)', h=h)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Dropout(0.0), nn.Linear(inner_dim, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, n_heads, d_head, context_dim=None):
        super().__init__()
        self.attn1 = CrossAttention(query_dim=dim, heads=n_heads, dim_head=d_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(query_dim=dim, context_dim=context_dim, heads=n_heads, dim_head=d_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x, context=None):
        if torch.is_grad_enabled():
            return checkpoint(self._forward, x, context, use_reentrant=False)
        return self._forward(x, context)

    def _forward(self, x, context=None):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context=context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, in_channels, n_heads, d_head, depth=1, context_dim=None):
        super().__init__()
        inner_dim = n_heads * d_head
        self.norm = nn.GroupNorm(32, in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(in_channels, inner_dim, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner_dim, n_heads, d_head, context_dim=context_dim) for _ in range(depth)])
        self.proj_out = nn.Conv2d(inner_dim, in_channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x, context=None):
        b, c, h, w = x.shape
        x_in = x
        x = rearrange(self.proj_in(self.norm(x)), 'b c h w -> b (h w) c')
        for block in self.transformer_blocks:
            x = block(x, context=context)
        x = rearrange(x, 'b (h w) c -> b c h w', h=h, w=w)
        return self.proj_out(x) + x_in


def Upsample(dim, dim_out):
    return nn.Sequential(nn.Upsample(scale_factor=2, mode='nearest'), nn.Conv2d(dim, dim_out, 3, 1, 1))


def Downsample(dim, dim_out):
    return nn.Conv2d(dim, dim_out, 4, 2, 1)


class OfficialConditionalUNet(nn.Module):
    """The release's ``ConditionalUNet(in_nc, out_nc, nf, ch_mult, context_dim, use_degra_context,
    use_image_context)``; forward ``(xt, cond, time, text_context=None, image_context=None)``."""

    def __init__(self, in_nc=3, out_nc=3, nf=64, ch_mult: List[int] = (1, 2, 4, 8), context_dim=512,
                 use_degra_context=True, use_image_context=True):
        super().__init__()
        self.depth = len(ch_mult)
        self.context_dim = -1 if context_dim is None else context_dim
        self.use_image_context = use_image_context
        self.use_degra_context = use_degra_context
        dim_head = 32
        self.init_conv = default_conv(in_nc * 2, nf, 7)
        time_dim = nf * 4
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(nf), nn.Linear(nf, time_dim), nn.GELU(),
                                      nn.Linear(time_dim, time_dim))
        if self.context_dim > 0 and use_degra_context:
            self.prompt = nn.Parameter(torch.rand(1, time_dim))
            self.text_mlp = nn.Sequential(nn.Linear(context_dim, time_dim), NonLinearity(),
                                          nn.Linear(time_dim, time_dim))
            self.prompt_mlp = nn.Linear(time_dim, time_dim)

        self.downs = nn.ModuleList([])
        self.ups = nn.ModuleList([])
        ch_mult = [1] + list(ch_mult)
        for i in range(self.depth):
            dim_in = nf * ch_mult[i]
            dim_out = nf * ch_mult[i + 1]
            if use_image_context and self.context_dim > 0:
                att_down = LinearAttention(dim_in) if i < 3 else \
                    SpatialTransformer(dim_in, dim_in // dim_head, dim_head, depth=1, context_dim=context_dim)
                att_up = LinearAttention(dim_out) if i < 3 else \
                    SpatialTransformer(dim_out, dim_out // dim_head, dim_head, depth=1, context_dim=context_dim)
            else:
                att_down = LinearAttention(dim_in)
                att_up = LinearAttention(dim_out)
            self.downs.append(nn.ModuleList([
                ResBlock(dim_in, dim_in, time_dim),
                ResBlock(dim_in, dim_in, time_dim),
                Residual(PreNorm(dim_in, att_down)),
                Downsample(dim_in, dim_out) if i != self.depth - 1 else default_conv(dim_in, dim_out)]))
            self.ups.insert(0, nn.ModuleList([
                ResBlock(dim_out + dim_in, dim_out, time_dim),
                ResBlock(dim_out + dim_in, dim_out, time_dim),
                Residual(PreNorm(dim_out, att_up)),
                Upsample(dim_out, dim_in) if i != 0 else default_conv(dim_out, dim_in)]))

        mid_dim = nf * ch_mult[-1]
        self.mid_block1 = ResBlock(mid_dim, mid_dim, time_dim)
        if use_image_context and self.context_dim > 0:
            self.mid_attn = Residual(PreNorm(mid_dim, SpatialTransformer(
                mid_dim, mid_dim // dim_head, dim_head, depth=1, context_dim=context_dim)))
        else:
            self.mid_attn = Residual(PreNorm(mid_dim, LinearAttention(mid_dim)))
        self.mid_block2 = ResBlock(mid_dim, mid_dim, time_dim)
        self.final_res_block = ResBlock(nf * 2, nf, time_dim)
        self.final_conv = nn.Conv2d(nf, out_nc, 3, 1, 1)

    def check_image_size(self, x, h, w):
        s = int(math.pow(2, self.depth))
        mod_pad_h = (s - h % s) % s
        mod_pad_w = (s - w % s) % s
        return F.pad(x, (0, mod_pad_w, 0, mod_pad_h), 'reflect')

    def forward(self, xt, cond, time, text_context: Optional[torch.Tensor] = None,
                image_context: Optional[torch.Tensor] = None):
        if isinstance(time, (int, float)):
            time = torch.tensor([time]).to(xt.device)
        x = torch.cat([xt - cond, cond], dim=1)
        H, W = x.shape[2:]
        x = self.init_conv(self.check_image_size(x, H, W))
        x_ = x.clone()

        t = self.time_mlp(time)
        if self.context_dim > 0:
            if self.use_degra_context and text_context is not None:
                prompt_embedding = torch.softmax(self.text_mlp(text_context), dim=1) * self.prompt
                t = t + self.prompt_mlp(prompt_embedding)
            if self.use_image_context and image_context is not None:
                image_context = image_context.unsqueeze(1)

        h = []
        for b1, b2, attn, downsample in self.downs:
            x = b1(x, t)
            h.append(x)
            x = attn(b2(x, t), context=image_context)
            h.append(x)
            x = downsample(x)

        x = self.mid_block1(x, t)
        x = self.mid_attn(x, context=image_context)
        x = self.mid_block2(x, t)

        for b1, b2, attn, upsample in self.ups:
            x = b1(torch.cat([x, h.pop()], dim=1), t)
            x = b2(torch.cat([x, h.pop()], dim=1), t)
            x = upsample(attn(x, context=image_context))

        x = self.final_conv(self.final_res_block(torch.cat([x, x_], dim=1), t))
        return x[..., :H, :W].contiguous()
