"""Checkpoints written by vlunet's training carry their network and guidance options (issue 25, item 3):
``scripts/inference.py photo.jpg --net-weights experiments/X/models/net_g_latest.pth`` restores with them alone,
``-opt <training file> --net-weights W`` works, BasicSR's own ``load_network`` still reads the file, and a random
(offline demo) encoder is the same in training and inference."""
import os

import numpy as np
import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet.archs.daclip.daclip_arch import DACLIP
from vlunet.inference import Restorer, load_image
from vlunet.models.checkpoint_options import OPTIONS_KEY

from basicsr.archs import build_network
from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import MODEL_REGISTRY

from helpers import load_script, smooth_image, write_image
from helpers.networks import register_tiny_daclip, trained_like

GUIDED = {'type': 'NAFNetDACLIP', 'width': 8, 'enc_blk_nums': [1, 1], 'middle_blk_num': 1, 'dec_blk_nums': [1, 1],
          'context_dim': 512}


def _saved_checkpoint(folder, encoder_weights) -> str:
    """A VLUNetModel with a NAFNetDACLIP and a DACLIP encoder saves net_g_latest.pth; relative paths in its options."""
    torch.manual_seed(0)
    encoder = {'type': 'DACLIP', 'backbone': os.path.relpath(register_tiny_daclip(str(folder))), 'pretrained': None}
    opt = {'name': 'carried', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'is_train': False, 'dist': False,
           'network_g': GUIDED, 'degradation_encoder': encoder,
           'path': {'models': 'models', 'pretrain_network_degradation_encoder': encoder_weights},
           'val': {'save_img': False, 'metrics': {}}}
    os.makedirs('models', exist_ok=True)
    model = MODEL_REGISTRY.get('VLUNetModel')(opt)
    with torch.no_grad():
        for parameter in model.net_g.parameters():  # zero-initialised blocks would ignore the guidance
            parameter.normal_(0, 0.2)
    model.save_network(model.net_g, 'net_g', -1)
    return os.path.abspath(os.path.join('models', 'net_g_latest.pth'))


def test_a_training_checkpoint_restores_with_its_weight_file_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    daclip = trained_like(DACLIP(backbone=register_tiny_daclip(str(tmp_path))))
    torch.save({'params': daclip.state_dict()}, 'daclip.pth')
    checkpoint_path = _saved_checkpoint(tmp_path, 'daclip.pth')
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    assert checkpoint[OPTIONS_KEY]['network_g'] == GUIDED
    assert checkpoint[OPTIONS_KEY]['path']['pretrain_network_degradation_encoder'] == str(tmp_path / 'daclip.pth')

    net = build_network(dict(GUIDED))
    SRModel.load_network(MODEL_REGISTRY.get('VLUNetModel').__new__(SRModel), net, checkpoint_path)  # BasicSR's
    assert all(torch.equal(net.state_dict()[key], value) for key, value in checkpoint['params'].items())

    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative option paths were stored absolute
    image = smooth_image(0, 24, 20)[..., ::-1].astype(np.float32) / 255
    carried = Restorer.from_weights_file(checkpoint_path)
    explicit = Restorer(checkpoint_path, clip_weights=str(tmp_path / 'daclip.pth'), network_options=dict(GUIDED),
                        encoder_options={'type': 'DACLIP', 'backbone': register_tiny_daclip(str(tmp_path))})
    np.testing.assert_array_equal(carried.restore(image), explicit.restore(image))
    untrained_encoder = Restorer.from_weights_file(checkpoint_path, clip_weights=None)
    assert not np.array_equal(untrained_encoder.restore(image), carried.restore(image))  # the encoder file was used

    write_image('./photo.png', smooth_image(1, 20, 16))
    status = load_script('inference').main(['photo.png', '--net-weights', checkpoint_path, '-o', 'out'])
    assert status == 0
    np.testing.assert_allclose(load_image('out/photo.png'), carried.restore(load_image('photo.png')), atol=1 / 255)
    os.remove(tmp_path / 'daclip.pth')  # moved away: the message names the file and the flags
    with pytest.raises(FileNotFoundError, match=r'trained with the degradation-encoder weights .*daclip\.pth, which do '
                                                r'not exist here: give them with --clip-weights'):
        Restorer.from_weights_file(checkpoint_path)


def test_net_weights_replace_the_missing_weights_of_a_training_option_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint_path = _saved_checkpoint(tmp_path, None)
    training = {'name': 'x', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'network_g': GUIDED,
                'degradation_encoder': {'type': 'DACLIP', 'backbone': register_tiny_daclip(str(tmp_path))},
                'path': {'pretrain_network_g': None}}
    (tmp_path / 'train.yml').write_text(yaml.safe_dump(training))
    restorer = Restorer.from_option_file('train.yml', net_weights=checkpoint_path)
    carried = Restorer.from_weights_file(checkpoint_path)
    for first, second in ((restorer.net, carried.net), (restorer.encoder, carried.encoder)):
        assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    write_image('./photo.png', smooth_image(1, 20, 16))
    assert load_script('inference').main(['photo.png', '-opt', 'train.yml', '--net-weights', checkpoint_path,
                                          '-o', 'out']) == 0


def test_a_random_encoder_is_the_same_in_training_and_inference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint_path = _saved_checkpoint(tmp_path, None)
    torch.manual_seed(123)  # another global seed: the random encoder must not depend on it
    first = Restorer.from_weights_file(checkpoint_path).encoder.state_dict()
    second = Restorer.from_weights_file(checkpoint_path).encoder.state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
