"""Residual sums accumulated in place (no autograd): a block writes ``x + f(x)`` into x's memory only when its
caller allows it (``overwrite_input``/``in_place``), the values are those of the out-of-place computation, a
caller's tensor is never changed without that permission, and autograd always keeps the out-of-place path.
"""
import pytest
import torch

import vlunet  # noqa: F401  (compat shim before basicsr)
from vlunet.archs.restormer_blocks import GatedFeedForward, TransformerBlock, TransformerBlocks, TransposedSelfAttention
from vlunet.archs.vlunet.gradient_step import DegradationGuidedGradientStep
from vlunet.ops import bands

from helpers.networks import channels_last_tensor, randomised, relative_error, tiny_net

# BAND_BYTES: at width 11, 2-row bands of the MDTA's 24 expanded channels and 1-row bands of the GDFN's 42; no bands
BANDED = {'bands': 2 * 24 * 11 * 4, 'whole maps': 1 << 40}


@pytest.fixture(params=sorted(BANDED))
def band_bytes(request, monkeypatch):
    """Runs the test in bands and with whole maps, and checks that bands were (not) used."""
    monkeypatch.setattr(bands, 'BAND_BYTES', BANDED[request.param])
    calls = []
    original = bands.depthwise_bands
    monkeypatch.setattr(bands, 'depthwise_bands', lambda *args: calls.append(args) or original(*args))
    yield
    assert bool(calls) == (request.param == 'bands')


@pytest.mark.parametrize('module', [GatedFeedForward(8, 2.66), TransposedSelfAttention(8, heads=2)])
@pytest.mark.parametrize('batch', [1, 2])
def test_in_place_sum_is_written_into_the_residual_with_the_out_of_place_values(band_bytes, module, batch):
    module = randomised(module)
    x, residual = channels_last_tensor(batch, 8, 13, 11, seed=0), channels_last_tensor(batch, 8, 13, 11, seed=1)
    with torch.no_grad():
        expected = module(x, residual)
        kept = residual.clone()
        assert torch.equal(residual, kept), 'without in_place the residual is read only'
        written = module(x, residual, in_place=True)
    assert written.data_ptr() == residual.data_ptr() and written.shape == residual.shape
    assert torch.equal(written, expected)


@pytest.mark.parametrize('module', [GatedFeedForward(8, 2.66), TransposedSelfAttention(8, heads=2)])
def test_the_residual_may_be_the_input_itself(band_bytes, module):
    module = randomised(module)
    x = channels_last_tensor(1, 8, 13, 11, seed=2)
    with torch.no_grad():
        expected = module(x, x)
        written = module(x, x, in_place=True)
    assert written.data_ptr() == x.data_ptr()
    assert torch.equal(written, expected)


def test_a_block_overwrites_its_input_only_when_allowed(band_bytes):
    block = randomised(TransformerBlock(8, heads=2, ffn_expansion_factor=2.66))
    x = channels_last_tensor(1, 8, 13, 11, seed=3)
    original = x.clone()
    with torch.no_grad():
        expected = block(x)
        assert torch.equal(x, original)
        overwritten = block(x, overwrite_input=True)
    assert overwritten.data_ptr() == x.data_ptr()
    assert torch.equal(overwritten, expected)


def test_a_chain_keeps_its_callers_input_and_equals_the_blocks_one_by_one(band_bytes):
    chain = randomised(TransformerBlocks.of(8, count=3, heads=2, ffn_expansion_factor=2.66))
    x = channels_last_tensor(2, 8, 13, 11, seed=4)
    original = x.clone()
    with torch.no_grad():
        expected = x
        for block in chain:
            expected = block(expected)
        assert torch.equal(x, original)
        assert torch.equal(chain(x), expected)
        assert torch.equal(x, original), 'the first block must not overwrite the caller\'s input by default'
    assert list(chain.state_dict()) == list(torch.nn.Sequential(*chain).state_dict())
    assert isinstance(chain[1:], TransformerBlocks) and len(chain[1:]) == 2


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])  # the CPU training path / autograd's (as on CUDA)
def test_autograd_keeps_the_input_and_its_gradients(dtype):
    block = randomised(TransformerBlock(8, heads=2, ffn_expansion_factor=2.66)).to(dtype)
    x = channels_last_tensor(1, 8, 13, 11, seed=5).to(dtype).requires_grad_()
    original = x.detach().clone()
    reference = x.detach().clone().requires_grad_()
    out = block(x, overwrite_input=True)
    assert out.data_ptr() != x.data_ptr() and torch.equal(x.detach(), original)
    out.square().sum().backward()
    block(reference).square().sum().backward()
    assert relative_error(x.grad, reference.grad) < 1e-6


def test_gradient_step_keeps_the_degraded_features_and_overwrites_x_only_when_allowed(band_bytes):
    step = DegradationGuidedGradientStep(8, num_keys=3, key_channels=2, key_size=6, degradation_dim=5, heads=2)
    step = randomised(step)
    x, degraded = channels_last_tensor(1, 8, 13, 11, seed=6), channels_last_tensor(1, 8, 13, 11, seed=7)
    degradation = torch.randn(1, 5, generator=torch.Generator().manual_seed(8))
    x_kept, degraded_kept = x.clone(), degraded.clone()
    with torch.no_grad():
        expected = step(x, degraded, degradation)
        assert torch.equal(x, x_kept)
        overwritten = step(x, degraded, degradation, overwrite_input=True)
    assert overwritten.data_ptr() == x.data_ptr() and torch.equal(overwritten, expected)
    assert torch.equal(degraded, degraded_kept)


def test_vlunet_inference_leaves_its_input_unchanged_and_is_deterministic():
    net = tiny_net(seed=9)
    image, degradation = torch.rand(1, 3, 24, 16), torch.randn(1, 512)
    image_kept = image.clone()
    with torch.inference_mode():
        first, second = net(image, degradation), net(image, degradation)
    with torch.enable_grad():
        reference = net(image, degradation).detach()  # autograd: no in-place sums anywhere
    assert torch.equal(image, image_kept) and torch.equal(first, second)
    assert relative_error(first, reference) < 1e-6
