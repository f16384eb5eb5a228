"""Inference in bands of rows (no autograd): Restormer's GDFN and MDTA compute their full-size hidden maps band
by band (``vlunet.ops.bands.BAND_BYTES``). Tiny bands force many bands (uneven last band, two
images) and must give the values of the whole-map computation: the autograd path, the official forward and
the attention formulas. Real sizes use one band below 8 MB of hidden map per band.
"""
import pytest
import torch

import vlunet  # noqa: F401  (compat shim before basicsr)
from benchmarks.reimplementations.vlunet_release import official_forward
from vlunet.archs.restormer_blocks import GatedFeedForward, TransposedSelfAttention
from vlunet.convert.vlunet_checkpoint import plugin_to_official_state_dict
from vlunet.ops import bands, dispatch
from vlunet.ops.bands import row_bands
from vlunet.ops.fast_blocks import vector_aligned_weights

from helpers.networks import channels_last_tensor, randomised, relative_error, tiny_net


def test_row_bands_cover_the_rows_once_within_the_budget():
    assert row_bands(10, row_bytes=bands.BAND_BYTES // 3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert row_bands(5, row_bytes=bands.BAND_BYTES * 2) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert row_bands(256, row_bytes=1000) == [(0, 256)]


@pytest.mark.parametrize('module, with_residual', [
    (GatedFeedForward(8, 2.66), True), (GatedFeedForward(8, 2.66), False),
    (TransposedSelfAttention(8, heads=2), True), (TransposedSelfAttention(8, heads=2), False)])
def test_blocks_in_bands_equal_the_whole_map_computation(monkeypatch, module, with_residual):
    module = randomised(module)
    x, residual = channels_last_tensor(2, 8, 13, 11, seed=0), channels_last_tensor(2, 8, 13, 11, seed=1)
    residual = residual if with_residual else None
    expected = module(x, residual)  # autograd on: one band, the whole maps
    expanded = module.project_in.out_channels if isinstance(module, GatedFeedForward) else module.qkv.out_channels
    row_bytes = expanded * 11 * 4  # one image's expanded row
    monkeypatch.setattr(bands, 'BAND_BYTES', 3 * row_bytes)  # bands of 3 rows: 5 bands, the last of 1
    with torch.no_grad():
        banded = module(x, residual)
    assert banded.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(banded, expected.detach()) < 1e-6


def test_scaled_attention_in_bands_equals_the_whole_map_computation(monkeypatch):
    attention = randomised(TransposedSelfAttention(8, heads=2))
    x, residual = channels_last_tensor(1, 8, 9, 14, seed=2), channels_last_tensor(1, 8, 9, 14, seed=3)
    scale = torch.tensor([0.37])
    expected = attention(x, residual, scale).detach()
    monkeypatch.setattr(bands, 'BAND_BYTES', 1)  # one row per band
    with torch.no_grad():
        assert relative_error(attention(x, residual, scale), expected) < 1e-6


def test_vlunet_inference_in_bands_matches_the_official_forward(monkeypatch):
    net = tiny_net(seed=3)
    image, degradation = torch.rand(2, 3, 40, 24), torch.randn(2, 512)
    expected = official_forward(plugin_to_official_state_dict(net.state_dict()), image, degradation)
    monkeypatch.setattr(bands, 'BAND_BYTES', 4096)  # a few rows per band at every level
    with torch.no_grad():
        assert relative_error(net(image, degradation), expected) < 1e-5


def test_bands_need_at_least_min_bands_and_whole_maps_turns_them_off(monkeypatch):
    ffn = randomised(GatedFeedForward(8, 2.66))
    x = channels_last_tensor(1, 8, 12, 5, seed=4)
    calls = []
    original = bands.depthwise_bands
    monkeypatch.setattr(bands, 'depthwise_bands', lambda *args: calls.append(args[-2]) or original(*args))
    row_bytes = ffn.project_in.out_channels * 5 * 4
    assert bands.MIN_BANDS == 4
    with torch.no_grad():
        monkeypatch.setattr(bands, 'BAND_BYTES', 4 * row_bytes)  # 3 bands: whole maps use less memory
        ffn(x)
        assert not calls
        monkeypatch.setattr(bands, 'BAND_BYTES', 3 * row_bytes)  # 4 bands
        ffn(x)
        assert calls == [[(0, 3), (3, 6), (6, 9), (9, 12)]]
        with dispatch.whole_maps():  # what the memory planner measures
            ffn(x)
        assert len(calls) == 1
        ffn(x)
    assert len(calls) == 2


@pytest.mark.parametrize('band_bytes', [1, 1 << 40])  # one row per band / whole maps
def test_gdfn_inference_pads_its_hidden_width_to_whole_vectors_with_the_same_values(monkeypatch, band_bytes):
    ffn = randomised(GatedFeedForward(8, 2.66))  # hidden width 21 -> 32
    expand, depthwise, project = vector_aligned_weights(ffn.project_in, ffn.dwconv, ffn.project_out)
    assert (expand.shape, depthwise.shape, project.shape) == ((8, 64), (64, 1, 3, 3), (32, 8))
    for half in range(2):  # gate, content: the module's weights, then zeros
        columns = expand[:, 32 * half:32 * (half + 1)]
        assert torch.equal(columns[:, :21], ffn.project_in.weight[21 * half:21 * (half + 1)].flatten(1).t())
        assert not columns[:, 21:].any() and not depthwise[32 * half + 21:32 * (half + 1)].any()
    assert not project[21:].any()
    x, residual = channels_last_tensor(2, 8, 9, 6, seed=5), channels_last_tensor(2, 8, 9, 6, seed=6)
    expected = ffn(x, residual).detach()  # autograd: the module's own weights
    monkeypatch.setattr(bands, 'BAND_BYTES', band_bytes)
    with torch.no_grad():
        assert relative_error(ffn(x, residual), expected) < 1e-6


def test_an_aligned_hidden_width_uses_the_modules_weights():
    ffn = GatedFeedForward(8, 2.0)  # hidden width 16
    expand, depthwise, project = vector_aligned_weights(ffn.project_in, ffn.dwconv, ffn.project_out)
    assert expand.data_ptr() == ffn.project_in.weight.data_ptr() and expand.shape == (8, 32)
    assert depthwise.data_ptr() == ffn.dwconv.weight.data_ptr()
    assert project.data_ptr() == ffn.project_out.weight.data_ptr() and project.shape == (16, 8)
