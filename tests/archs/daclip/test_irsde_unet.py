"""ConditionalUNet (DA-CLIP's IR-SDE noise network) and the conversion of its released weights.

Facts of the release (docs/daclip.md#the-conditional-u-net): parameter counts, state-dict names and shapes,
the meaning of ``time``, reflect padding to a multiple of 16, one-token cross-attention, zero-initialised
transformer outputs. Tiny configurations for everything that runs a forward pass.
"""
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vlunet  # noqa: F401
from benchmarks.reimplementations.daclip_release import OfficialConditionalUNet
from vlunet.archs.daclip.irsde_unet_arch import ConditionalUNet
from vlunet.archs.daclip.irsde_unet_blocks import SinusoidalTimeEmbedding, SpatialTransformer
from vlunet.convert.irsde_checkpoint import is_irsde_unet_file, network_config
from vlunet.ops import bands

from basicsr.utils.registry import ARCH_REGISTRY

from helpers import load_script
from helpers.irsde import TINY_UNET, assert_relative_close, randomised_unet, release_and_ours, unet_inputs

# 8 base channels: widths 8, 8, 16, 32, 64 (transformers at 32 and 64 channels), 16-d contexts.
TINY = TINY_UNET


def _parameter_count(**config) -> int:
    with torch.device('meta'):
        return sum(p.numel() for p in ConditionalUNet(**config).parameters())


@pytest.mark.slow
def test_released_configuration_has_the_published_parameter_counts():
    assert ARCH_REGISTRY.get('ConditionalUNet') is ConditionalUNet
    assert _parameter_count() == 48_975_747
    assert _parameter_count(in_nc=3, out_nc=3, nf=64, ch_mult=[1, 2, 4, 8], context_dim=512,
                            use_degra_context=True, use_image_context=True) == 48_975_747
    assert _parameter_count(use_degra_context=False, use_image_context=False) == 36_236_419
    assert _parameter_count(context_dim=None) == _parameter_count(context_dim=0) == 36_236_419
    with torch.device('meta'):
        assert len(ConditionalUNet().state_dict()) == 224


@pytest.mark.slow
def test_state_dict_uses_the_release_names_and_shapes():
    with torch.device('meta'):
        shapes = {key: tuple(value.shape) for key, value in ConditionalUNet().state_dict().items()}
    expected = {
        'prompt': (1, 256), 'text_mlp.0.weight': (256, 512), 'text_mlp.2.weight': (256, 256),
        'prompt_mlp.weight': (256, 256), 'init_conv.weight': (64, 6, 7, 7), 'time_mlp.1.weight': (256, 64),
        'time_mlp.3.weight': (256, 256), 'downs.0.0.mlp.1.weight': (128, 256),
        'downs.0.0.block1.proj.weight': (64, 64, 3, 3), 'downs.0.2.fn.norm.g': (1, 64, 1, 1),
        'downs.0.2.fn.fn.to_qkv.weight': (384, 64, 1, 1), 'downs.0.2.fn.fn.to_out.1.g': (1, 64, 1, 1),
        'downs.0.3.weight': (64, 64, 4, 4), 'downs.1.3.weight': (128, 64, 4, 4), 'downs.3.3.weight': (512, 256, 3, 3),
        'downs.3.2.fn.fn.norm.weight': (256,), 'downs.3.2.fn.fn.proj_in.weight': (256, 256, 1, 1),
        'downs.3.2.fn.fn.transformer_blocks.0.attn2.to_k.weight': (256, 512),
        'downs.3.2.fn.fn.transformer_blocks.0.attn2.to_q.weight': (256, 256),
        'downs.3.2.fn.fn.transformer_blocks.0.ff.net.0.proj.weight': (2048, 256),
        'downs.3.2.fn.fn.transformer_blocks.0.ff.net.2.weight': (256, 1024),
        'mid_attn.fn.fn.transformer_blocks.0.ff.net.0.proj.weight': (4096, 512),
        'mid_attn.fn.fn.proj_out.weight': (512, 512, 1, 1), 'ups.0.2.fn.fn.transformer_blocks.0.attn2.to_v.weight':
        (512, 512), 'ups.0.0.block1.proj.weight': (512, 768, 3, 3), 'ups.0.0.res_conv.weight': (512, 768, 1, 1),
        'ups.0.3.1.weight': (256, 512, 3, 3), 'ups.3.3.weight': (64, 64, 3, 3),
        'final_res_block.block1.proj.weight': (64, 128, 3, 3), 'final_conv.weight': (3, 64, 3, 3),
        'final_conv.bias': (3,),
    }
    assert {key: shapes.get(key) for key in expected} == expected
    no_bias = ('init_conv.bias', 'downs.3.3.bias', 'ups.3.3.bias', 'downs.0.0.block1.proj.bias',
               'downs.0.2.fn.fn.to_qkv.bias', 'downs.3.2.fn.fn.transformer_blocks.0.attn1.to_q.bias')
    assert not set(no_bias) & set(shapes)
    assert not [key for key in shapes if 'transformer_blocks' in key and key.startswith(('downs.2', 'ups.1'))]


@pytest.mark.parametrize('height, width', [(17, 23), (5, 3), (48, 80), (33, 1)])
def test_any_size_gives_the_input_size(height, width):
    net = randomised_unet(ConditionalUNet(**TINY))
    xt, cond, text, image = unet_inputs(2, height, width)
    with torch.no_grad():
        out = net(xt, cond, 5, text, image)
    assert out.shape == (2, 3, height, width) and torch.isfinite(out).all()


def test_padding_is_reflect_at_the_bottom_right_to_a_multiple_of_16():
    net = randomised_unet(ConditionalUNet(**TINY))
    xt, cond, text, image = unet_inputs(1, 50, 75)
    padded = [F.pad(x, (0, 5, 0, 14), mode='reflect') for x in (xt, cond)]  # 64 x 80
    with torch.no_grad():
        out = net(xt, cond, 9, text, image)
        reference = net(*padded, 9, text, image)[..., :50, :75]
    assert_relative_close(out, reference)


def test_time_as_int_tensor_python_int_python_float_and_0d_tensor_agree():
    net = randomised_unet(ConditionalUNet(**TINY))
    xt, cond, text, image = unet_inputs(2, 20, 24)
    with torch.no_grad():
        by_tensor = net(xt, cond, torch.tensor([7, 7]), text, image)
        outputs = [net(xt, cond, time, text, image) for time in (7, 7.0, torch.tensor(7), np.int64(7))]
        per_image = net(xt, cond, torch.tensor([7, 30]), text, image)
        later = net(xt, cond, 30, text, image)
    for out in outputs:
        assert_relative_close(out, by_tensor)
    assert_relative_close(per_image[0], by_tensor[0])
    assert_relative_close(per_image[1], later[1])
    assert (later - by_tensor).abs().max() > 1e-2 * by_tensor.abs().max()
    with pytest.raises(ValueError, match='one step or one per image'):
        net(xt, cond, torch.tensor([1, 2, 3]), text, image)


def test_time_embedding_is_sin_then_cos_of_the_raw_step():
    steps = torch.tensor([1.0, 37.0])
    frequencies = [math.exp(-i * math.log(10000) / 3) for i in range(4)]
    expected = [[math.sin(s * f) for f in frequencies] + [math.cos(s * f) for f in frequencies] for s in (1, 37)]
    torch.testing.assert_close(SinusoidalTimeEmbedding(8)(steps), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_contexts_change_the_output_text_context_is_optional_and_image_context_is_required():
    net = randomised_unet(ConditionalUNet(**TINY))
    xt, cond, text, image = unet_inputs(2, 16, 16)
    with torch.no_grad():
        both = net(xt, cond, 3, text, image)
        without_prompt = net(xt, cond, 3, None, image)
        other_content = net(xt, cond, 3, text, image.flip(0))
    assert (both - without_prompt).abs().max() > 1e-2 * both.abs().max()
    assert (both[0] - other_content[0]).abs().max() > 1e-2 * both.abs().max()
    with pytest.raises(ValueError, match='image_context'):
        net(xt, cond, 3, text, None)
    plain = randomised_unet(ConditionalUNet(**{**TINY, 'use_degra_context': False, 'use_image_context': False}))
    assert not hasattr(plain, 'prompt')
    with torch.no_grad():
        assert plain(xt, cond, 3).shape == (2, 3, 16, 16)
        torch.testing.assert_close(plain(xt, cond, 3, text, image), plain(xt, cond, 3))


def test_spatial_transformer_starts_as_identity_and_one_token_cross_attention_is_position_independent():
    transformer = SpatialTransformer(32, heads=1, dim_head=32, context_dim=16)
    x, context = torch.randn(2, 32, 5, 7), torch.randn(2, 1, 16)
    torch.testing.assert_close(transformer(x, context), x)  # zero-initialised proj_out
    attention = transformer.transformer_blocks[0].attn2
    tokens = torch.randn(2, 35, 32)
    expected = attention.to_out(attention.to_v(context)).expand(2, 35, 32)
    torch.testing.assert_close(attention(tokens, context), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('height, width, time', [
    (32, 48, torch.tensor([9, 9])), (21, 37, 9), (48, 16, 9.0), (17, 33, torch.tensor([3, 61]))])
def test_matches_the_release_computation(height, width, time):
    """Every optimisation (channels-last maps, merged linear attention, sub-pixel upsampling, in-place
    modulation, one-token cross-attention) computes the release's function: sizes that are and are not
    multiples of 16, ``time`` as a (B,) int tensor, a Python int and a Python float."""
    release, ours = release_and_ours()
    xt, cond, text, image = unet_inputs(2, height, width)
    with torch.no_grad():
        expected = release(xt, cond, time, text, image)
        assert_relative_close(ours(xt, cond, time, text, image), expected)
        assert_relative_close(ours(xt, cond, time, None, image), release(xt, cond, time, None, image))


def test_inference_in_bands_of_positions_matches_the_release(monkeypatch):
    """Without autograd the linear attention works in bands of positions; tiny bands (a few rows, uneven last
    band, two images) still give the release's values."""
    monkeypatch.setattr(bands, 'BAND_BYTES', 3000)
    release, ours = release_and_ours(seed=2)
    xt, cond, text, image = unet_inputs(2, 21, 37)
    with torch.no_grad():
        assert_relative_close(ours(xt, cond, 12, text, image), release(xt, cond, 12, text, image))


def test_context_free_configuration_matches_the_release():
    release, ours = release_and_ours(use_degra_context=False, use_image_context=False)
    xt, cond, _, _ = unet_inputs(1, 40, 24)
    with torch.no_grad():
        assert_relative_close(ours(xt, cond, 50), release(xt, cond, 50))


def test_training_forward_and_gradients_match_the_release():
    """With autograd nothing works in place: the output, the input gradient and every weight gradient agree."""
    release, ours = release_and_ours(seed=4)
    xt, cond, text, image = unet_inputs(2, 24, 40)
    results = []
    for net in (release, ours):
        state = xt.clone().requires_grad_()
        out = net.train()(state, cond, torch.tensor([5, 70]), text, image)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), state.grad, {name: p.grad for name, p in net.named_parameters()}))
    (out_release, grad_release, weights_release), (out_ours, grad_ours, weights_ours) = results
    assert_relative_close(out_ours, out_release)
    assert_relative_close(grad_ours, grad_release)
    assert weights_ours.keys() == weights_release.keys()
    scale = max(grad.abs().max().item() for grad in weights_release.values())
    for name, grad in weights_release.items():  # some are exactly 0 (one-token attention's to_q, to_k)
        torch.testing.assert_close(weights_ours[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_weights_have_the_layout_of_their_gradients():
    """k x k weights are channels-last like the maps (the input convolution's stay contiguous: its input is
    NCHW); after a backward pass every gradient has its parameter's strides (DDP's buckets: no copy, no warning)."""
    net = randomised_unet(ConditionalUNet(**TINY))
    assert net.init_conv.weight.is_contiguous()
    assert net.downs[0][0].block1.proj.weight.is_contiguous(memory_format=torch.channels_last)
    assert not net.downs[0][0].block1.proj.weight.is_contiguous()
    xt, cond, text, image = unet_inputs(2, 24, 20)
    net.train()(xt, cond, torch.tensor([1, 2]), text, image).mean().backward()
    mismatched = [name for name, p in net.named_parameters() if p.grad is not None and p.grad.stride() != p.stride()]
    assert not mismatched


def test_bad_configurations_are_rejected_with_the_fix():
    with pytest.raises(ValueError, match='multiples of 32'):
        ConditionalUNet(nf=4, context_dim=16)
    with pytest.raises(ValueError, match='nf'):
        ConditionalUNet(nf=7)


# --------------------------------------------------------------------------- conversion of released weights


def _convert_script():
    return load_script('convert_official_checkpoint')


def _convert(tmp_path, state, name='universal-ir.pth') -> int:
    """Save ``state`` as the release does (torch.save of the state dict) and run the converter's main()."""
    src = tmp_path / name
    torch.save(state, src)
    return _convert_script().main([str(src), str(tmp_path / 'out')])


@pytest.mark.parametrize('layout', ['bare', 'ddp', 'ema_pytorch'])
def test_conversion_writes_params_that_load_strictly_and_reproduce_the_outputs(tmp_path, capsys, layout):
    original = randomised_unet(OfficialConditionalUNet(**TINY), seed=3)  # the release's module tree
    state = OrderedDict(original.state_dict())  # the release saves the bare state dict
    if layout == 'ddp':
        state = OrderedDict((f'module.{k}', v) for k, v in state.items())
    if layout == 'ema_pytorch':
        state = OrderedDict([('initted', torch.tensor(True)), ('step', torch.tensor(50)),
                             *((f'ema_model.{k}', v) for k, v in state.items())])
    assert _convert(tmp_path, state) == 0
    assert 'universal-ir_net.pth' in capsys.readouterr().out
    converted = torch.load(tmp_path / 'out' / 'universal-ir_net.pth', weights_only=True)
    assert list(converted) == ['params']
    config = network_config(converted['params'])
    assert config == {'type': 'ConditionalUNet', 'in_nc': 3, 'out_nc': 3, **TINY,
                      'use_degra_context': True, 'use_image_context': True}
    net = ConditionalUNet(**{k: v for k, v in config.items() if k != 'type'})
    net.load_state_dict(converted['params'], strict=True)
    xt, cond, text, image = unet_inputs(1, 21, 18)
    with torch.no_grad():
        assert_relative_close(net.eval()(xt, cond, 4.0, text, image), original(xt, cond, 4.0, text, image))


def test_conversion_infers_the_released_and_context_free_configurations():
    for config in ({}, {'use_degra_context': False, 'use_image_context': False}):
        with torch.device('meta'):
            state = ConditionalUNet(**config).state_dict()
        inferred = network_config(state)
        assert inferred['nf'] == 64 and inferred['ch_mult'] == [1, 2, 4, 8]
        assert inferred['use_degra_context'] == inferred['use_image_context'] == (not config)
        assert inferred['context_dim'] == (512 if not config else -1)


def test_conversion_rejects_files_that_are_not_a_conditional_unet(tmp_path, capsys):
    state = randomised_unet(ConditionalUNet(**TINY)).state_dict()
    state['downs.0.0.block1.proj.weight'] = torch.zeros(8, 8, 5, 5)
    assert _convert(tmp_path, state) == 1
    assert 'downs.0.0.block1.proj.weight: (8, 8, 5, 5) instead of (8, 8, 3, 3)' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()
    assert not is_irsde_unet_file(str(tmp_path / 'missing.pth'))
    torch.save({'something': torch.zeros(1)}, tmp_path / 'other.pth')
    assert not is_irsde_unet_file(str(tmp_path / 'other.pth'))
