"""Restormer (Perceive-IR's baseline, medium-quality restorer): official size, any input size, residual, key names."""
import pytest
import torch

import vlunet  # noqa: F401
from vlunet.archs.restormer_arch import Restormer, official_restormer_state_dict

from basicsr.archs import build_network

TINY = {'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1, 'heads': [1, 2, 1, 2]}
OFFICIAL_PARAMETERS = 26_126_644  # official Restormer (dual_pixel_task off), the papers' 26.13 M


def test_default_configuration_has_the_official_parameter_count():
    with torch.device('meta'):
        net = build_network({'type': 'Restormer'})
    assert sum(p.numel() for p in net.parameters()) == OFFICIAL_PARAMETERS
    assert all(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize('size', [(13, 21), (1, 5), (8, 8), (17, 9)])
def test_any_size_gives_the_input_size(size):
    torch.manual_seed(0)
    net = Restormer(**TINY).eval()
    image = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = net(image)
    assert out.shape == image.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, image)


def test_output_is_the_input_plus_the_network_residual():
    net = Restormer(**TINY).eval()
    torch.nn.init.zeros_(net.output.weight)
    image = torch.rand(1, 3, 11, 14)
    with torch.no_grad():
        assert torch.equal(net(image), image)


def test_official_key_names_load():
    net = Restormer(**TINY)
    official = {}
    for key, value in net.state_dict().items():
        key = key.replace('patch_embed.', 'patch_embed.proj.', 1) if key.startswith('patch_embed.') else key
        official[key.replace('.norm1.', '.norm1.body.').replace('.norm2.', '.norm2.body.')] = value.clone()
    assert 'encoder_level1.0.norm1.body.weight' in official and 'patch_embed.proj.weight' in official
    fresh = Restormer(**TINY)
    fresh.load_state_dict(official_restormer_state_dict(official), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))


@pytest.mark.parametrize('options, message', [
    ({'heads': [1, 2, 4]}, '4 levels'),
    ({'dim': 6, 'heads': [4, 1, 1, 1]}, 'not divisible by heads=4'),
    ({'out_channels': 1}, 'must equal'),
    ({'dim': 7}, 'must be even'),
])
def test_bad_configurations_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        Restormer(**{**TINY, **options})
