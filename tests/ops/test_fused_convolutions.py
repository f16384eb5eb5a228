"""The CPU inference paths of IR-SDE's U-Net (vlunet/ops/fused_convolutions.py): same values as the release,
taken only where they apply (CPU, float32 channels-last, no autograd, no autocast)."""
import pytest
import torch
import torch.nn.functional as F

import vlunet  # noqa: F401
from vlunet.archs.daclip import irsde_unet_blocks
from vlunet.ops import fused_convolutions
from vlunet.ops.fused_convolutions import conv_modulate_silu, fast_cpu_inference, winograd_conv3x3

from helpers.irsde import assert_relative_close, release_and_ours, unet_inputs


def _map(channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, height, width, generator=generator).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('height, width', [(8, 12), (2, 2), (6, 4)])
def test_winograd_convolution_is_the_direct_convolution(height, width):
    conv = torch.nn.Conv2d(24, 16, 3, padding=1).to(memory_format=torch.channels_last)
    x = _map(24, height, width)
    with torch.no_grad():
        out = winograd_conv3x3(x, conv)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert_relative_close(out, conv(x))
        conv.weight.mul_(-2)  # the cached transformed weight follows the weight
        assert_relative_close(winograd_conv3x3(x, conv), conv(x))


def test_modulation_and_silu_are_fused_per_image():
    conv = torch.nn.Conv2d(8, 12, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    x = _map(8, 10, 14)
    scale, shift = torch.randn(2, 12, 1, 1), torch.randn(2, 12, 1, 1)
    with torch.no_grad():
        expected = F.silu(conv(x) * (scale + 1) + shift)
        assert_relative_close(conv_modulate_silu(x, conv, scale, shift), expected)
        assert_relative_close(conv_modulate_silu(x, conv, scale[:1], shift[:1]), F.silu(conv(x) * (scale[:1] + 1)
                                                                                         + shift[:1]))
        assert_relative_close(conv_modulate_silu(x, conv, None, None), F.silu(conv(x)))


def test_only_float32_channels_last_cpu_inference_takes_the_fast_paths():
    x = _map(4, 6, 6)
    with torch.no_grad():
        assert fast_cpu_inference(x)
        assert not fast_cpu_inference(x.contiguous())  # NCHW
        assert not fast_cpu_inference(x.double())
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert not fast_cpu_inference(x)
    assert not fast_cpu_inference(x)  # autograd


def test_network_with_winograd_levels_matches_the_release(monkeypatch):
    """Winograd on every level of at least 32 input channels (the deep levels and the decoder of the tiny network),
    fused modulation elsewhere: the release's values, one time for the batch and one per image."""
    monkeypatch.setattr(fused_convolutions, 'WINOGRAD_MIN_CHANNELS', 32)
    fused_calls = []
    monkeypatch.setattr(irsde_unet_blocks, 'conv_modulate_silu',
                        lambda *args: fused_calls.append(args[1]) or conv_modulate_silu(*args))
    release, ours = release_and_ours(seed=5)
    xt, cond, text, image = unet_inputs(2, 32, 48)
    with torch.no_grad():
        for time in (17, torch.tensor([3, 61])):
            assert_relative_close(ours(xt, cond, time, text, image), release(xt, cond, time, text, image))
    assert any(hasattr(conv, '_winograd_weight') for conv in fused_calls)
    assert not all(hasattr(conv, '_winograd_weight') for conv in fused_calls)


def test_training_keeps_the_plain_path(monkeypatch):
    monkeypatch.setattr(irsde_unet_blocks, 'conv_modulate_silu', lambda *args: pytest.fail('fast path in training'))
    _, ours = release_and_ours()
    xt, cond, text, image = unet_inputs(1, 16, 16)
    ours.train()(xt, cond, 5, text, image).sum().backward()
