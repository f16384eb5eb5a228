"""NAFNet + DA-CLIP outside training: the Restorer gives the network both DA-CLIP embeddings of the whole
image (whole and tiled: every forward, with stacked tiles, gets the same values), scripts/inference.py
restores a folder with it, plain NAFNet restores unguided, the errors for a missing or unfit encoder,
scripts/model_stats.py counts both, and scripts/export.py names the input it cannot export."""
import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import vlunet  # noqa: F401
from vlunet.archs.daclip.daclip_arch import DACLIP
from vlunet.data.daclip.daclip_universal_dataset import DACLIP_DEGRADATIONS
from vlunet.inference import Restorer, load_image

from basicsr.archs import build_network

from helpers import load_script, smooth_image, write_image
from helpers.networks import register_tiny_daclip, trained_like

SIZES = {'width': 8, 'enc_blk_nums': [1, 1], 'middle_blk_num': 1, 'dec_blk_nums': [1, 1]}  # middle: 32 channels
GUIDED = {'type': 'NAFNetDACLIP', **SIZES, 'context_dim': 512}  # the tiny DA-CLIP's embedding size
PLAIN = {'type': 'NAFNet', **SIZES}
TILES = {'size': 24, 'overlap': 8, 'batch': 2}


def _randomised(net: nn.Module, seed: int) -> nn.Module:
    """Every parameter random (zero beta/gamma and output projections would make the blocks identities)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return net


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> dict:
    """Weight files of a tiny NAFNetDACLIP, a tiny NAFNet and a tiny DA-CLIP (trained-like controls), and the
    DACLIP encoder options that fit them."""
    root = tmp_path_factory.mktemp('nafnet_daclip_inference')
    config = register_tiny_daclip(str(root))
    torch.manual_seed(0)
    torch.save({'params': trained_like(DACLIP(backbone=config)).state_dict()}, str(root / 'daclip.pth'))
    for name, network in (('guided', GUIDED), ('plain', PLAIN)):
        net = _randomised(build_network(dict(network)), seed=1)
        torch.save({'params': net.state_dict()}, str(root / f'{name}.pth'))
    return {'root': root, 'daclip': str(root / 'daclip.pth'), 'guided': str(root / 'guided.pth'),
            'plain': str(root / 'plain.pth'), 'encoder': {'type': 'DACLIP', 'backbone': config, 'pretrained': None}}


def _restorer(files, tile=None, **kwargs) -> Restorer:
    return Restorer(files['guided'], clip_weights=files['daclip'], network_options=dict(GUIDED),
                    encoder_options=files['encoder'], tile=tile, **kwargs)


def _image(seed: int, height: int, width: int) -> np.ndarray:
    return smooth_image(seed, height, width)[..., ::-1].astype(np.float32) / 255


def _recording(restorer: Restorer) -> list:
    """Record the (tiles, degradation, content) of every forward of the restorer's network."""
    calls, forward = [], restorer.net.forward

    def recorded(tiles, degradation=None, content=None):
        calls.append((tiles.shape, degradation, content))
        return forward(tiles, degradation=degradation, content=content)
    restorer.net.forward = recorded
    return calls


def test_whole_image_restoration_gets_both_embeddings_of_the_image(files):
    restorer = _restorer(files)
    assert restorer.guidance_inputs == ('degradation', 'content') and isinstance(restorer.encoder, DACLIP)
    image = _image(0, 37, 29)
    tensor = torch.from_numpy(image.transpose(2, 0, 1).copy()).unsqueeze(0)
    content, degradation = restorer.encoder.encode(tensor)
    with torch.no_grad():
        expected = restorer.net(tensor, degradation=degradation, content=content).clamp(0, 1)
        other_content = restorer.net(tensor, degradation=degradation, content=content.roll(1, dims=1)).clamp(0, 1)
    restored, guess = restorer.restore_and_detect(image)
    assert restored.shape == image.shape
    assert np.array_equal(restored, expected[0].permute(1, 2, 0).numpy())
    assert np.abs(restored - other_content[0].permute(1, 2, 0).numpy()).max() > 1e-3  # c changes the output
    assert np.array_equal(restorer.restore(image), restored)
    assert guess.prompt in DACLIP_DEGRADATIONS and sum(guess.probabilities.values()) == pytest.approx(1)


def test_every_tile_gets_the_whole_images_embeddings(files):
    restorer = _restorer(files, tile=TILES)
    calls = _recording(restorer)
    image = _image(1, 40, 52)  # 2 x 3 tiles of 24 px, 2 per forward: 3 forwards
    tensor = torch.from_numpy(image.transpose(2, 0, 1).copy()).unsqueeze(0)
    content, degradation = restorer.encoder.encode(tensor)
    encodings, encode = [], restorer.encoder.encode
    restorer.encoder.encode = lambda images: encodings.append(images.shape) or encode(images)
    tiled = restorer.restore(image)
    assert encodings == [(1, 3, 40, 52)]  # once, from the whole image
    assert tiled.shape == image.shape and len(calls) == 3
    for shape, tile_degradation, tile_content in calls:
        assert shape == (2, 3, 24, 24)
        assert torch.equal(tile_degradation, degradation.repeat(2, 1))
        assert torch.equal(tile_content, content.repeat(2, 1))
    whole = _restorer(files).restore(image)
    # NAFNet's channel attention and the middle self-attention see the whole input, so tiles differ from the
    # whole image by more than rounding, but the same guidance keeps them close
    assert 1e-4 < np.abs(tiled - whole).mean() < 0.1


def test_inference_script_restores_a_folder_with_nafnet_daclip(files, tmp_path, capsys):
    inputs = tmp_path / 'photos'
    write_image(str(inputs / 'a.png'), smooth_image(2, 33, 45))
    write_image(str(inputs / 'sub' / 'b.png'), smooth_image(3, 20, 26))
    options = {'name': 'nafnet_daclip_inference', 'model_type': 'VLUNetModel', 'num_gpu': 0,
               'network_g': dict(GUIDED), 'degradation_encoder': files['encoder'], 'tile': TILES,
               'path': {'pretrain_network_g': files['guided'], 'pretrain_network_degradation_encoder': files['daclip']}}
    option_file = tmp_path / 'test.yml'
    option_file.write_text(yaml.safe_dump(options))
    output = tmp_path / 'out'
    status = load_script('inference').main([str(inputs), '-opt', str(option_file), '-o', str(output)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert 'Restored 2 of 2 images' in captured.out
    assert sum(f"detected '{name}'" in captured.out for name in DACLIP_DEGRADATIONS) >= 1
    restorer = _restorer(files, tile=TILES)
    for source, written in ((inputs / 'a.png', output / 'a.png'), (inputs / 'sub' / 'b.png', output / 'sub' / 'b.png')):
        source_image, restored = load_image(str(source)), load_image(str(written))
        assert restored.shape == source_image.shape
        assert np.abs(restored - restorer.restore(source_image)).max() <= 0.5 / 255 + 1e-6  # 8-bit rounding


def test_plain_nafnet_restores_unguided_with_a_daclip_encoder_for_detection(files):
    restorer = Restorer(files['plain'], clip_weights=files['daclip'], network_options=dict(PLAIN),
                        encoder_options={'backbone': files['encoder']['backbone']}, tile=None)
    assert isinstance(restorer.encoder, DACLIP) and restorer.guidance_inputs == ()  # DA-CLIP's default encoder
    image = _image(4, 21, 30)
    tensor = torch.from_numpy(image.transpose(2, 0, 1).copy()).unsqueeze(0)
    restored, guess = restorer.restore_and_detect(image)
    with torch.no_grad():
        expected = restorer.net(tensor).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(restored, expected) and guess.prompt in DACLIP_DEGRADATIONS


def test_a_missing_or_unfit_encoder_is_named(files, tiny_clip_name):
    with pytest.raises(ValueError, match=r'NAFNetDACLIP takes degradation and content embeddings .* --clip-weights'):
        Restorer(files['guided'], network_options=dict(GUIDED))
    with pytest.raises(TypeError, match=r'DegradationCLIP has no encode\(images\) -> \(content, degradation\)'):
        Restorer(files['guided'], network_options=dict(GUIDED),
                 encoder_options={'type': 'DegradationCLIP', 'backbone': tiny_clip_name, 'pretrained': None})


def _linear_weights(net: nn.Module) -> int:
    return sum(module.weight.numel() for module in net.modules() if isinstance(module, nn.Linear))


def test_model_stats_counts_the_guidance(capsys):
    model_stats = load_script('model_stats')
    degradation_only = dict(GUIDED, use_image_context=False)
    plain, prompted, guided = (model_stats.count_macs(dict(network), 32)
                               for network in (PLAIN, degradation_only, GUIDED))
    assert plain['total'] > 0 and prompted['conv'] == plain['conv']
    # batch 1: each Linear of the prompt module and of the blocks' modulation mlps costs its weight count
    assert prompted['matmul'] - plain['matmul'] == _linear_weights(build_network(degradation_only)) > 0
    assert guided['matmul'] > prompted['matmul']  # the middle block's self- and cross-attention
    assert model_stats.main(['--arch-json', json.dumps(GUIDED), '--sizes', '16', '--runs', '1']) == 0
    out = capsys.readouterr().out
    assert f'parameters: {sum(p.numel() for p in build_network(dict(GUIDED)).parameters()):,}' in out
    assert 'latency: median of 1 runs on cpu' in out


def test_export_names_the_content_input_and_exports_plain_nafnet(files, tmp_path, capsys):
    export = load_script('export')
    status = export.main(['--net-weights', files['guided'], '--arch-json', json.dumps(GUIDED), '-o', str(tmp_path),
                          '--formats', 'pt2'])
    assert status == 2 and 'NAFNetDACLIP takes the content embedding (content=)' in capsys.readouterr().err
    assert export.main(['--net-weights', files['plain'], '--arch-json', json.dumps(PLAIN), '-o', str(tmp_path),
                        '--formats', 'pt2', '--check-sizes', '1x19x30', '2x16x16']) == 0
    reloaded = torch.export.load(str(tmp_path / 'plain.pt2')).module()
    net = _randomised(build_network(dict(PLAIN)), seed=1).eval()
    image = torch.rand(1, 3, 23, 37)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(image), net(image), rtol=1e-5, atol=1e-5)
