"""Reduced precision: the channel attention and the official-size VLUNet stay finite and close to fp32 under
fp16 and bf16 autocast at sizes where q·kᵀ (a sum over H·W products) passes fp16's 65,504; fp32 is
bit-identical to the per-head definition computed the fast way."""
import pytest
import torch

import vlunet  # noqa: F401  (compat shim before basicsr)
from vlunet.archs.vlunet.vlunet_arch import VLUNet
from vlunet.ops.attention import attention_weights, channel_attention

from helpers import smooth_image
from helpers.networks import relative_error

REDUCED = {'fp16': torch.float16, 'bf16': torch.bfloat16}
TOLERANCE = 1e-2  # max |low - fp32| / max |fp32|


def _correlated_maps(channels: int, size: int) -> tuple:
    """q, k, v (1, C, size, size), channels-last, positive and correlated like features after a conv."""
    generator = torch.Generator().manual_seed(size)
    maps = (torch.rand(1, 3 * channels, size, size, generator=generator) + 0.5).contiguous(
        memory_format=torch.channels_last)
    return maps.chunk(3, dim=1)


@pytest.mark.parametrize('precision', sorted(REDUCED))
def test_attention_kernel_is_finite_and_close_at_720(precision):
    query, key, value = _correlated_maps(channels=8, size=720)  # q·kᵀ ≈ 518,400 · 1.1, beyond fp16
    temperature = torch.tensor([[[0.7]], [[1.3]]])
    expected = channel_attention(query, key, value, temperature, heads=2)
    dtype = REDUCED[precision]
    with torch.autocast('cpu', dtype=dtype):
        low = channel_attention(*(t.to(dtype) for t in (query, key, value)), temperature, heads=2)
    assert low.dtype == dtype  # it did run in reduced precision
    assert torch.isfinite(low).all()
    assert relative_error(low.float(), expected) < TOLERANCE


@pytest.mark.parametrize('precision', sorted(REDUCED))
def test_attention_kernel_is_close_for_large_activations(precision):
    # |x| ~ 1000: the squares in the norms (~1e6) pass fp16's largest value; the norms must not be inf.
    # q = k with a high temperature: each channel attends to itself (inf norms would make it uniform)
    generator = torch.Generator().manual_seed(0)
    query = (torch.randn(1, 8, 32, 32, generator=generator) * 1000).contiguous(memory_format=torch.channels_last)
    key, value = query, torch.randn(1, 8, 32, 32, generator=generator).contiguous(memory_format=torch.channels_last)
    temperature = torch.tensor([[[10.0]], [[10.0]]])
    expected = channel_attention(query, key, value, temperature, heads=2)
    dtype = REDUCED[precision]
    low = channel_attention(*(t.to(dtype) for t in (query, key, value)), temperature, heads=2)
    assert torch.isfinite(low).all()
    assert relative_error(low.float(), expected) < TOLERANCE


def test_bf16_attention_weights_are_the_float32_computation_of_the_bf16_maps():
    """Under bf16 autocast on the CPU the grams, norms and softmax read q and k converted to float32 (bf16 products
    would copy the strided head matrices first): exactly the float32 weights of the bf16-rounded maps."""
    query, key, _ = _correlated_maps(channels=8, size=64)
    query, key = query.bfloat16(), key.bfloat16()
    temperature = torch.tensor([[[0.7]], [[1.3]]])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        weights = attention_weights(query, key, temperature, heads=2)
    assert weights.dtype == torch.float32
    assert torch.equal(weights, attention_weights(query.float(), key.float(), temperature, heads=2))
    with vlunet.ops.plain(), torch.autocast('cpu', dtype=torch.bfloat16):  # as on unmeasured devices: the official
        official = attention_weights(query, key, temperature, heads=2)  # order, bf16 q and k normalised first
    assert not torch.equal(official, weights) and relative_error(official, weights) < TOLERANCE


@pytest.fixture(scope='module')
def official_size_outputs():
    """The default (official-size) VLUNet, seeded random weights, on a 320x320 image: fp32 and autocast outputs."""
    torch.manual_seed(0)
    net = VLUNet().eval()
    image = torch.from_numpy(smooth_image(0, 320, 320)).permute(2, 0, 1).unsqueeze(0).float() / 255
    degradation = torch.randn(1, 512, generator=torch.Generator().manual_seed(0))
    outputs = {}
    with torch.inference_mode():
        outputs['fp32'] = net(image, degradation)
        for precision, dtype in REDUCED.items():
            with torch.autocast('cpu', dtype=dtype):
                outputs[precision] = net(image, degradation).float()
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize('precision', sorted(REDUCED))
def test_official_size_vlunet_is_finite_and_close_at_320(official_size_outputs, precision):
    low, expected = official_size_outputs[precision], official_size_outputs['fp32']
    assert torch.isfinite(low).all()
    assert 0 < relative_error(low, expected) < TOLERANCE  # reduced precision did run, and stays close


@pytest.mark.parametrize('heads', [1, 2])
def test_fp32_attention_is_the_fast_fp32_computation_bit_for_bit(heads):
    """fp32 forms q·kᵀ first and divides by the norms afterwards (no normalised copies of q and k)."""
    query, key, value = _correlated_maps(channels=4, size=9)
    temperature = torch.rand(heads, 1, 1) + 0.5
    q, k, v = (t.flatten(2) for t in (query, key, value))
    q_norm, k_norm = (t.square().sum(dim=-1, dtype=torch.float32).sqrt().clamp_min(1e-12) for t in (q, k))
    outputs = []
    for head, (qh, kh, vh, qn, kn) in enumerate(zip(q.chunk(heads, 1), k.chunk(heads, 1), v.chunk(heads, 1),
                                                    q_norm.chunk(heads, 1), k_norm.chunk(heads, 1))):
        cosine = (qh @ kh.transpose(1, 2)) / (qn.unsqueeze(2) * kn.unsqueeze(1))
        outputs.append(vh.transpose(1, 2) @ (cosine * temperature[head]).softmax(dim=-1).transpose(1, 2))
    expected = torch.cat(outputs, dim=2).view(1, 9, 9, 4).permute(0, 3, 1, 2)
    assert torch.equal(channel_attention(query, key, value, temperature, heads), expected)


@pytest.fixture(scope='module')
def irsde_unet_outputs():
    """A 16-channel ConditionalUNet (seeded initialisation) at 256x256 and the release's computation of it:
    fp32 and fp16/bf16 autocast outputs of both."""
    from benchmarks.reimplementations.daclip_release import OfficialConditionalUNet
    from vlunet.archs.daclip.irsde_unet_arch import ConditionalUNet
    torch.manual_seed(0)
    ours = ConditionalUNet(nf=16, context_dim=32).eval()
    release = OfficialConditionalUNet(nf=16, context_dim=32).eval()
    release.load_state_dict(ours.state_dict())
    generator = torch.Generator().manual_seed(0)
    cond = torch.from_numpy(smooth_image(0, 256, 256)).permute(2, 0, 1).unsqueeze(0).float() / 255
    xt = cond + 0.5 * torch.randn(cond.shape, generator=generator)  # a state at the last step (largest noise)
    inputs = (xt, cond, 100.0, torch.randn(1, 32, generator=generator), torch.randn(1, 32, generator=generator))
    outputs = {}
    with torch.inference_mode():
        for name, net in (('ours', ours), ('release', release)):
            outputs[name, 'fp32'] = net(*inputs)
            for precision, dtype in REDUCED.items():
                with torch.autocast('cpu', dtype=dtype):
                    outputs[name, precision] = net(*inputs)
    return outputs


@pytest.mark.parametrize('precision', sorted(REDUCED))
def test_irsde_unet_is_finite_at_256_and_as_close_as_the_release(irsde_unet_outputs, precision):
    low, expected = irsde_unet_outputs['ours', precision], irsde_unet_outputs['ours', 'fp32']
    assert low.dtype == REDUCED[precision] and torch.isfinite(low).all()
    error = relative_error(low.float(), expected)
    release_error = relative_error(irsde_unet_outputs['release', precision].float(),
                                   irsde_unet_outputs['release', 'fp32'])
    assert 0 < error <= 1.5 * release_error and error < 0.1  # ~6 % for both: the release's own autocast error
