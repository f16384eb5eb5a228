"""Inference: the Restorer API (weights, CLIP guidance, detection, input checks) and scripts/inference.py.

Tiled vs whole-image agreement is tested once, in test_vlunet_model.py (the API calls the same
``vlunet.utils.tiling.restore``).
"""
import importlib.util
import json
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_ROOT, smooth_image, write_image

import vlunet  # noqa: F401
from basicsr.archs import build_network
from vlunet.inference import DEFAULT_PROMPTS, Restorer, load_image

TINY_SIZES = {'type': 'VLUNet', 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
               'heads': [1, 1, 1, 1], 'key_size': 8}
TINY_VLUNET = dict(TINY_SIZES, de_dim=3)


def _inference_script():
    spec = importlib.util.spec_from_file_location('inference_script', osp.join(REPO_ROOT, 'scripts', 'inference.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def weights(tmp_path_factory, tiny_clip_name):
    """Tiny network and encoder weight files, and the encoder options that fit them."""
    root = tmp_path_factory.mktemp('inference_weights')
    torch.manual_seed(0)
    torch.save({'params': build_network(dict(TINY_VLUNET)).state_dict()}, str(root / 'net.pth'))
    encoder_options = {'type': 'DegradationCLIP', 'backbone': tiny_clip_name, 'pretrained': None}
    torch.save({'params': build_network(dict(encoder_options)).state_dict()}, str(root / 'clip.pth'))
    return {'net': str(root / 'net.pth'), 'clip': str(root / 'clip.pth'), 'encoder': encoder_options}


def _restorer(weights, **kwargs) -> Restorer:
    return Restorer(weights['net'], clip_weights=weights['clip'], encoder_options=weights['encoder'],
                    network_options=TINY_SIZES, **kwargs)


@pytest.fixture(scope='module')
def restorer(weights):
    return _restorer(weights)


def _rgb(seed: int, height: int, width: int) -> np.ndarray:
    return smooth_image(seed, height, width)[..., ::-1].astype(np.float32) / 255


def test_restorer_reads_de_dim_from_the_weights_and_restores_any_size(restorer):
    assert restorer.net.config['de_dim'] == 3  # not in network_options: read from the weights
    output = restorer.restore(_rgb(0, 21, 34))
    assert output.shape == (21, 34, 3) and output.dtype == np.float32 and 0 <= output.min() <= output.max() <= 1


def test_restorer_guides_the_network_with_the_encoder(restorer, weights):
    image = _rgb(1, 24, 24)
    unguided = Restorer(weights['net'], network_options=TINY_SIZES)  # no clip_weights, no encoder_options: "w/o CLIP"
    assert unguided.encoder is None
    assert not np.array_equal(restorer.restore(image), unguided.restore(image))  # d changes the output
    with pytest.raises(RuntimeError, match='needs the degradation encoder'):
        unguided.detect_degradation(image)


def test_detect_degradation_returns_a_prompt_and_probabilities(restorer, weights):
    guess = restorer.detect_degradation(_rgb(2, 32, 32))
    assert list(guess.probabilities) == list(DEFAULT_PROMPTS) and guess.prompt in DEFAULT_PROMPTS
    assert np.isclose(sum(guess.probabilities.values()), 1) and guess.probabilities[guess.prompt] == max(
        guess.probabilities.values())
    custom = _restorer(weights, prompts=['a rainy photo', 'a sharp photo'])
    restored, guess = custom.restore_and_detect(_rgb(2, 32, 32))
    assert set(guess.probabilities) == {'a rainy photo', 'a sharp photo'}
    np.testing.assert_allclose(restored, custom.restore(_rgb(2, 32, 32)), atol=1e-6)


def test_restorer_rejects_bad_inputs_with_clear_messages(restorer, weights, tmp_path):
    with pytest.raises(ValueError, match='float \\(H, W, 3\\) RGB image.*load_image'):
        restorer.restore(smooth_image(0, 8, 8))  # uint8 BGR straight from cv2.imread
    with pytest.raises(ValueError, match='half precision needs a CUDA device'):
        _restorer(weights, half=True)
    with pytest.raises(FileNotFoundError, match='convert_official_checkpoint'):
        Restorer(str(tmp_path / 'missing.pth'))
    torch.save({'state_dict': {'net.x': torch.zeros(1)}}, str(tmp_path / 'official.ckpt'))
    with pytest.raises(ValueError, match='Lightning checkpoint; convert it'):
        Restorer(str(tmp_path / 'official.ckpt'))
    with pytest.raises(ValueError, match='tile.overlap'):
        _restorer(weights, tile={'size': 16, 'overlap': 16})


def test_restorer_from_option_file(weights, tmp_path):
    options = {'name': 'x', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'network_g': TINY_VLUNET,
               'degradation_encoder': weights['encoder'], 'tile': {'size': 16, 'overlap': 4},
               'path': {'pretrain_network_g': weights['net'], 'pretrain_network_degradation_encoder': weights['clip']}}
    path = tmp_path / 'test.yml'
    path.write_text(yaml.safe_dump(options))
    restorer = Restorer.from_option_file(str(path))
    assert restorer.device.type == 'cpu' and restorer.tile.size == 16 and restorer.encoder is not None
    assert Restorer.from_option_file(str(path), clip_weights=None, encoder_options=None).encoder is None
    options['path'].pop('pretrain_network_g')
    path.write_text(yaml.safe_dump(options))
    with pytest.raises(ValueError, match='path.pretrain_network_g is not set'):
        Restorer.from_option_file(str(path))


def test_inference_script_restores_a_folder_and_reports_bad_files(weights, tmp_path, capsys):
    inputs = tmp_path / 'photos'
    write_image(str(inputs / 'odd.png'), smooth_image(0, 37, 53))
    write_image(str(inputs / 'sub' / 'gray.jpg'), cv2.cvtColor(smooth_image(1, 30, 28), cv2.COLOR_BGR2GRAY))
    (inputs / 'broken.png').write_bytes(b'not a png')
    (inputs / 'notes.txt').write_text('not an image')
    output = tmp_path / 'out'
    status = _inference_script().main([
        str(inputs), str(tmp_path / 'missing.png'), '-o', str(output), '--net-weights', weights['net'],
        '--clip-weights', weights['clip'], '--clip-backbone', weights['encoder']['backbone'],
        '--network-json', json.dumps(TINY_SIZES), '--tile', '16', '--tile-overlap', '4'])
    captured = capsys.readouterr()
    assert status == 1
    assert cv2.imread(str(output / 'odd.png')).shape == (37, 53, 3)
    assert cv2.imread(str(output / 'sub' / 'gray.png')).shape == (30, 28, 3)
    assert not (output / 'broken.png').exists() and not list(output.rglob('.*'))  # no temporary leftovers
    assert "detected 'image with" in captured.out and 'Restored 2 of 3 images' in captured.out
    assert 'broken.png' in captured.err and 'corrupt or not an image' in captured.err
    assert 'missing.png: no such file or folder' in captured.err and 'notes.txt' not in captured.err
    restored = load_image(str(output / 'odd.png'))
    assert restored.shape == (37, 53, 3)


def test_inference_script_stops_when_there_is_nothing_to_restore(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'notes.txt').write_text('x')
    status = _inference_script().main([str(tmp_path / 'empty'), str(tmp_path / 'notes.txt'),
                                       '--net-weights', 'unused.pth'])
    err = capsys.readouterr().err
    assert status == 2 and 'folder has no images' in err and 'unsupported format' in err
    assert 'no images to restore' in err
