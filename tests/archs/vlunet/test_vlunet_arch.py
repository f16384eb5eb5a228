"""VLUNet: shapes at any size, gradients, official parameter layout and counts, exactness against an
independent re-implementation of the official forward pass, degradation handling, load errors."""
import copy
import csv
import json
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

import vlunet  # noqa: F401  (compat shim before basicsr)
from benchmarks.reimplementations.vlunet_release import official_forward
from vlunet.archs.padding import pad_to_multiple
from vlunet.archs.vlunet.vlunet_arch import VLUNet
from vlunet.convert.vlunet_checkpoint import official_to_plugin_key, plugin_to_official_state_dict
from vlunet.utils.safe_load import safe_torch_load

from basicsr.models.base_model import BaseModel
from basicsr.utils.registry import ARCH_REGISTRY

from helpers import FIXTURES
from helpers.networks import TINY_VLUNET, relative_error, tiny_net

MANIFEST = osp.join(FIXTURES, 'vlunet_official_state_dict.tsv')
TINY = TINY_VLUNET


def read_manifest():
    with open(MANIFEST, newline='', encoding='utf-8') as f:
        rows = list(csv.DictReader(f, delimiter='\t'))
    return [(row['key'], json.loads(row['shape']), json.loads(row['shape_de_dim5'])) for row in rows]


def test_registered_in_basicsr():
    assert ARCH_REGISTRY.get('VLUNet') is VLUNet


@pytest.mark.parametrize('height, width', [(37, 53), (5, 7), (1, 2), (16, 8)])
def test_output_shape_equals_input_shape_at_any_size(height, width):
    net = tiny_net()
    image = torch.rand(2, 3, height, width)
    with torch.no_grad():
        out = net(image, torch.randn(2, 512))
    assert out.shape == image.shape
    assert torch.isfinite(out).all()


def test_padding_mirrors_and_repeats_reflection_for_tiny_sides():
    x = torch.arange(2.).view(1, 1, 1, 2).expand(1, 1, 3, 2)
    padded = pad_to_multiple(x, 8)
    assert padded.shape == (1, 1, 8, 8)
    assert padded[0, 0, 0].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    one_pixel = pad_to_multiple(torch.full((1, 3, 1, 1), 0.25), 8)
    assert one_pixel.shape == (1, 3, 8, 8) and torch.all(one_pixel == 0.25)
    aligned = torch.rand(1, 3, 16, 8)
    assert torch.equal(pad_to_multiple(aligned, 8), aligned)
    odd = torch.rand(2, 3, 13, 21)
    assert torch.equal(pad_to_multiple(odd, 8), F.pad(odd, (0, 3, 0, 3), mode='reflect'))


@pytest.mark.parametrize('de_dim', [3, 5])
def test_gradients_reach_every_trainable_parameter_and_the_unused_downsampler_is_frozen(de_dim):
    net = tiny_net(de_dim=de_dim).train()
    frozen = [name for name, p in net.named_parameters() if not p.requires_grad]
    assert frozen == ['unused_degraded_down1_2.body.0.weight']
    net(torch.rand(2, 3, 16, 16), torch.randn(2, 512)).square().mean().backward()
    without = sorted(name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0)
    assert without == frozen


def test_without_degradation_every_trainable_parameter_is_still_in_the_graph():
    """DDP (no find_unused_parameters) needs a gradient for every trainable parameter; key_logits get zeros."""
    net = tiny_net().train()
    net(torch.rand(2, 3, 16, 16)).square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    key_logits = [p.grad for name, p in net.named_parameters() if '.key_logits.' in name]
    assert len(key_logits) == 16 and all(torch.count_nonzero(grad) == 0 for grad in key_logits)


@pytest.mark.slow
def test_channels_last_weights_give_the_same_fp32_outputs_and_gradients_bit_for_bit():
    torch.manual_seed(3)
    net = VLUNet().train()  # official size (tiny widths take other depthwise kernels: last-bit differences)
    weights = [p for p in net.parameters() if p.dim() == 4]
    layout = {True: torch.contiguous_format, False: torch.channels_last}  # 1x1 weights: matrix products
    assert all(p.stride() == torch.empty_like(p, memory_format=layout[p.shape[-2:] == (1, 1)]).stride()
               for p in weights)
    contiguous = copy.deepcopy(net)
    for parameter in contiguous.parameters():
        parameter.data = torch.empty(parameter.shape).copy_(parameter.data)  # the layout before: contiguous
    image, degradation = torch.rand(1, 3, 16, 24), torch.randn(1, 512)
    out, reference = net(image, degradation), contiguous(image, degradation)
    assert torch.equal(out, reference)
    out.square().mean().backward()
    reference.square().mean().backward()
    for (name, p), q in zip(net.named_parameters(), contiguous.parameters()):
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), name
        if p.grad is not None:
            assert p.grad.stride() == p.stride(), name  # what DDP's gradient buckets need


def test_state_dict_round_trips_through_files_official_names_and_ema(tmp_path):
    net = tiny_net(seed=4)
    path = str(tmp_path / 'net.pth')
    torch.save({'params': net.state_dict()}, path)
    loaded = VLUNet(**TINY)
    loaded.load_state_dict(safe_torch_load(path)['params'])
    official = VLUNet(**TINY)
    official.load_state_dict({official_to_plugin_key(k): v for k, v in
                              plugin_to_official_state_dict(net.state_dict()).items()})
    image, degradation = torch.rand(1, 3, 16, 16), torch.randn(1, 512)
    with torch.no_grad():
        expected = net(image, degradation)
        assert torch.equal(loaded.eval()(image, degradation), expected)
        assert torch.equal(official.eval()(image, degradation), expected)
    assert not loaded.unused_degraded_down1_2.body[0].weight.requires_grad
    model = BaseModel({'num_gpu': 0, 'is_train': True, 'dist': False})
    model.net_g, model.net_g_ema = net, VLUNet(**TINY)
    with torch.no_grad():
        for parameter in model.net_g_ema.parameters():
            parameter.zero_()
    model.model_ema(decay=0.5)  # BasicSR's EMA update: ema * 0.5 + net * 0.5
    for (name, p), q in zip(net.named_parameters(), model.net_g_ema.parameters()):
        assert torch.equal(q, p * 0.5), name


@pytest.mark.slow
def test_default_parameter_counts_are_the_official_ones():
    with torch.device('meta'):
        assert sum(p.numel() for p in VLUNet().parameters()) == 35_353_028
        assert sum(p.numel() for p in VLUNet(de_dim=5).parameters()) == 34_364_852


@pytest.mark.parametrize('de_dim, column', [(7, 1), (5, 2)])
def test_state_dict_matches_official_manifest_through_the_key_mapping(de_dim, column):
    manifest = read_manifest()
    with torch.device('meta'):
        state = VLUNet(de_dim=de_dim).state_dict()
    official = plugin_to_official_state_dict(state)
    assert list(official) == [row[0] for row in manifest]
    assert [list(value.shape) for value in official.values()] == [row[column] for row in manifest]
    assert [official_to_plugin_key(row[0]) for row in manifest] == list(state)


def test_matches_official_forward_on_tiny_config():
    net = tiny_net(seed=1)
    official_state = plugin_to_official_state_dict(net.state_dict())
    image, degradation = torch.rand(2, 3, 24, 16), torch.randn(2, 512)
    with torch.no_grad():
        actual = net(image, degradation)
    expected = official_forward(official_state, image, degradation)
    assert relative_error(actual, expected) < 1e-5


@pytest.mark.slow
def test_matches_official_forward_at_default_size():
    torch.manual_seed(2)
    net = VLUNet().eval()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    image, degradation = torch.rand(1, 3, 32, 32), torch.randn(1, 512)
    with torch.no_grad():
        actual = net(image, degradation)
    expected = official_forward(plugin_to_official_state_dict(net.state_dict()), image, degradation)
    assert relative_error(actual, expected) < 1e-5


def test_no_degradation_means_equal_mixture_of_the_keys():
    net = tiny_net()
    image = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        without = net(image)
        for module in net.modules():
            if hasattr(module, 'key_logits'):
                module.key_logits.weight.zero_()
                module.key_logits.bias.zero_()
        uniform = net(image, torch.randn(2, 512))
    assert torch.isfinite(without).all()
    torch.testing.assert_close(without, uniform, rtol=1e-5, atol=1e-6)


def test_different_degradations_give_different_outputs():
    net = tiny_net()
    image = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        first, second = net(image, torch.randn(1, 512)), net(image, torch.randn(1, 512))
    assert (first - second).abs().max() > 1e-4


def test_one_degradation_vector_is_shared_by_the_batch():
    net = tiny_net()
    image, degradation = torch.rand(2, 3, 8, 8), torch.randn(1, 512)
    with torch.no_grad():
        torch.testing.assert_close(net(image, degradation), net(image, degradation.expand(2, -1)))


@pytest.mark.parametrize('shape', [(512,), (3, 512), (2, 256)])
def test_wrong_degradation_shape_is_a_clear_error(shape):
    with pytest.raises(ValueError, match=r'degradation must have shape \(2, 512\)'):
        tiny_net()(torch.rand(2, 3, 8, 8), torch.randn(*shape))


@pytest.mark.parametrize('overrides, message', [
    (dict(dim=8), 'dim=8 is too small'),
    (dict(heads=(1, 3, 1, 1)), 'not divisible by heads=3'),
    (dict(num_blocks=(1, 1, 1)), 'must each have 4 entries'),
    (dict(key_size=2), 'key_size=2 is too small'),
])
def test_invalid_config_is_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        VLUNet(**{**TINY, **overrides})


def test_wrong_de_dim_checkpoint_names_the_fix():
    state = VLUNet(**{**TINY, 'de_dim': 5}).state_dict()
    with pytest.raises(RuntimeError) as error:
        VLUNet(**TINY).load_state_dict(state)
    message = str(error.value)
    assert 'encoder_level1.gradient_step.degradation_keys: checkpoint [1, 5, 1, 8, 8], network [1, 3, 1, 8, 8]' \
        in message
    assert 'the checkpoint has 5 degradation keys, this VLUNet has de_dim=3: set network_g.de_dim: 5' in message


def test_basicsr_load_network_gives_the_same_clear_error(tmp_path):
    path = str(tmp_path / 'net.pth')
    torch.save({'params': VLUNet(**{**TINY, 'de_dim': 5}).state_dict()}, path)
    model = BaseModel({'num_gpu': 0, 'is_train': False, 'dist': False})
    with pytest.raises(RuntimeError, match='set network_g.de_dim: 5'):
        model.load_network(VLUNet(**TINY), path, strict=True)


def test_official_names_and_other_widths_are_explained():
    net = VLUNet(**TINY)
    with pytest.raises(RuntimeError, match='convert_official_checkpoint.py'):
        net.load_state_dict(plugin_to_official_state_dict(net.state_dict()))
    with pytest.raises(RuntimeError, match='set network_g.dim: 24'):
        net.load_state_dict(VLUNet(**{**TINY, 'dim': 24}).state_dict())
    with pytest.raises(RuntimeError, match=r'missing from the checkpoint \(1\)'):
        net.load_state_dict({k: v for k, v in net.state_dict().items() if k != 'output.weight'})
    net.load_state_dict({k: v for k, v in net.state_dict().items() if k != 'output.weight'}, strict=False)
