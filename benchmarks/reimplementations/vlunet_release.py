"""An independent, straightforward re-implementation of the official VLU-Net forward pass.

Written from the description of the official computation (docs/vlunet.md#the-official-computation), not from the
plugin's code, to check that :class:`vlunet.archs.vlunet.vlunet_arch.VLUNet` computes the same function.
It follows the official code's operations literally (einops rearranges, explicit mean/variance
layer norm, the prompt repeated over the batch, ...) and is also the baseline of the benchmark.

Usage: ``official_forward(state, image, degradation)`` with ``state`` a state dict under the
*official* key names (``plugin_to_official_state_dict(net.state_dict())``); every size, including
head counts (from the ``temperature`` shapes), is read from the state dict. H and W must be
multiples of 8 and ``degradation`` must be a (B, 512) tensor, as in the official code.
``OfficialVLUNet(state)`` is the same computation as a trainable module (training-step baseline).
"""
from typing import Dict

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

State = Dict[str, torch.Tensor]


def _conv(state: State, name: str, x: torch.Tensor, groups: int = 1) -> torch.Tensor:
    weight = state[name]
    return F.conv2d(x, weight, padding=weight.shape[-1] // 2, groups=groups)


def _depthwise(state: State, name: str, x: torch.Tensor) -> torch.Tensor:
    return _conv(state, name, x, groups=x.shape[1])


def _layer_norm(state: State, prefix: str, x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    x = rearrange(x, 'b c h w -> b (h w) c')
    mu = x.mean(-1, keepdim=True)
    sigma = x.var(-1, keepdim=True, unbiased=False)
    x = (x - mu) / torch.sqrt(sigma + 1e-5) * state[prefix + '.body.weight'] + state[prefix + '.body.bias']
    return rearrange(x, 'b (h w) c -> b c h w', h=h, w=w)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    heads = temperature.shape[0]
    _, _, h, w = q.shape
    q = rearrange(q, 'b (head c) h w -> b head c (h w)', head=heads)
    k = rearrange(k, 'b (head c) h w -> b head c (h w)', head=heads)
    v = rearrange(v, 'b (head c) h w -> b head c (h w)', head=heads)
    q = torch.nn.functional.normalize(q, dim=-1)
    k = torch.nn.functional.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1)) * temperature
    attn = attn.softmax(dim=-1)
    out = attn @ v
    return rearrange(out, 'b head c (h w) -> b (head c) h w', head=heads, h=h, w=w)


def _mdta(state: State, prefix: str, x: torch.Tensor) -> torch.Tensor:
    qkv = _depthwise(state, prefix + '.qkv_dwconv.weight', _conv(state, prefix + '.qkv.weight', x))
    q, k, v = qkv.chunk(3, dim=1)
    out = _attend(q, k, v, state[prefix + '.temperature'])
    return _conv(state, prefix + '.project_out.weight', out)


def _cross_attention(state: State, prefix: str, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    qv = _depthwise(state, prefix + '.qv_dwconv.weight', _conv(state, prefix + '.qv.weight', x))
    q, v = qv.chunk(2, dim=1)
    k = _depthwise(state, prefix + '.k_dwconv.weight', _conv(state, prefix + '.k.weight', prompt))
    out = _attend(q, k, v, state[prefix + '.temperature'])
    return _conv(state, prefix + '.project_out.weight', out)


def _gdfn(state: State, prefix: str, x: torch.Tensor) -> torch.Tensor:
    x = _depthwise(state, prefix + '.dwconv.weight', _conv(state, prefix + '.project_in.weight', x))
    x1, x2 = x.chunk(2, dim=1)
    return _conv(state, prefix + '.project_out.weight', F.gelu(x1) * x2)


def _gdm(state: State, prefix: str, x: torch.Tensor, img: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    weights = F.linear(d, state[prefix + '.linear.weight'], state[prefix + '.linear.bias'])
    weights = F.softmax(weights, dim=1)
    prompt_param = state[prefix + '.prompt_param']
    prompt = weights.unsqueeze(-1).unsqueeze(-1).unsqueeze(-1) * prompt_param.repeat(b, 1, 1, 1, 1)
    prompt = torch.sum(prompt, dim=1)
    prompt = F.interpolate(prompt, (h, w), mode='bilinear')
    residual = _cross_attention(state, prefix + '.phi', x, prompt) - img
    return x - state[prefix + '.r'] * _mdta(state, prefix + '.phit', residual)


def _dun_block(state: State, prefix: str, x: torch.Tensor, img: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    x = _gdm(state, prefix + '.gradient_descent', x, img, d)
    i = 0
    while f'{prefix}.denoiser.blocks.{i}.norm1.body.weight' in state:
        block = f'{prefix}.denoiser.blocks.{i}'
        x = x + _mdta(state, block + '.attn', _layer_norm(state, block + '.norm1', x))
        x = x + _gdfn(state, block + '.ffn', _layer_norm(state, block + '.norm2', x))
        i += 1
    return x


def _down(state: State, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.pixel_unshuffle(_conv(state, name + '.body.0.weight', x), 2)


def _up(state: State, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.pixel_shuffle(_conv(state, name + '.body.0.weight', x), 2)


@torch.no_grad()
def official_forward(state: State, inp_img: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
    """The official ``VLUNet.forward(inp_img, degradation)`` on official-named weights ``state``."""
    return _official_forward(state, inp_img, degradation)


class OfficialVLUNet(nn.Module):
    """A trainable stand-in for the official network (the training-step baseline of the benchmark).

    Holds a copy of ``state`` (official key names) as parameters and runs the same literal official
    computation as :func:`official_forward`, with autograd enabled.
    """

    def __init__(self, state: State):
        super().__init__()
        self.names = list(state)
        self.weights = nn.ParameterList(nn.Parameter(value.detach().clone()) for value in state.values())

    def forward(self, inp_img: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
        return _official_forward(dict(zip(self.names, self.weights)), inp_img, degradation)


def _official_forward(state: State, inp_img: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
    inp_enc_level1 = _conv(state, 'patch_embed.proj.weight', inp_img)
    img_level1 = _conv(state, 'patch_embed_i.proj.weight', inp_img)
    out_enc_level1 = _dun_block(state, 'encoder_level1', inp_enc_level1, img_level1, degradation)

    inp_enc_level2 = _down(state, 'down1_2', out_enc_level1)
    img_level2 = _down(state, 'down1_2', img_level1)  # the official y branch reuses down1_2
    out_enc_level2 = _dun_block(state, 'encoder_level2', inp_enc_level2, img_level2, degradation)

    inp_enc_level3 = _down(state, 'down2_3', out_enc_level2)
    img_level3 = _down(state, 'down2_3_i', img_level2)
    out_enc_level3 = _dun_block(state, 'encoder_level3', inp_enc_level3, img_level3, degradation)

    inp_enc_level4 = _down(state, 'down3_4', out_enc_level3)
    img_level4 = _down(state, 'down3_4_i', img_level3)
    latent = _dun_block(state, 'latent', inp_enc_level4, img_level4, degradation)

    inp_dec_level3 = torch.cat([_up(state, 'up4_3', latent), out_enc_level3], 1)
    inp_dec_level3 = _conv(state, 'reduce_chan_level3.weight', inp_dec_level3)
    img_dec_level3 = torch.cat([_up(state, 'up4_3_i', img_level4), img_level3], 1)
    img_dec_level3 = _conv(state, 'reduce_chan_level3_img.weight', img_dec_level3)
    out_dec_level3 = _dun_block(state, 'decoder_level3', inp_dec_level3, img_dec_level3, degradation)

    inp_dec_level2 = torch.cat([_up(state, 'up3_2', out_dec_level3), out_enc_level2], 1)
    inp_dec_level2 = _conv(state, 'reduce_chan_level2.weight', inp_dec_level2)
    img_dec_level2 = torch.cat([_up(state, 'up3_2_i', img_dec_level3), img_level2], 1)
    img_dec_level2 = _conv(state, 'reduce_chan_level2_img.weight', img_dec_level2)
    out_dec_level2 = _dun_block(state, 'decoder_level2', inp_dec_level2, img_dec_level2, degradation)

    inp_dec_level1 = torch.cat([_up(state, 'up2_1', out_dec_level2), out_enc_level1], 1)
    img_dec_level1 = torch.cat([_up(state, 'up2_1_i', img_dec_level2), img_level1], 1)
    out_dec_level1 = _dun_block(state, 'decoder_level1', inp_dec_level1, img_dec_level1, degradation)

    out_dec_level1 = _dun_block(state, 'refinement', out_dec_level1, img_dec_level1, degradation)
    return _conv(state, 'output.weight', out_dec_level1) + inp_img
