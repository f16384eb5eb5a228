"""IRSDEModel: training step, EMA, frozen DA-CLIP contexts, seeded sampling, and a run of vlunet/train.py.

A tiny ConditionalUNet (8 base channels, 16-d contexts, T = 4 or 6 steps) and a stand-in DA-CLIP encoder
(tests/helpers/context_encoder_stub.py) keep everything on the CPU in seconds.
"""
import glob
import os.path as osp
import re

import numpy as np
import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet.archs.daclip.irsde_unet_arch import ConditionalUNet
from vlunet.models.checkpoint_options import OPTIONS_KEY

from basicsr.utils.registry import MODEL_REGISTRY

from helpers import REPO_ROOT, run_entry, smooth_image, write_image
from helpers.context_encoder_stub import StubDAClipEncoder

TINY_UNET = {'type': 'ConditionalUNet', 'nf': 8, 'ch_mult': [1, 2, 4, 8], 'context_dim': 16}
ENCODER = {'type': 'StubDAClipEncoder', 'dim': 16}
SITECUSTOMIZE = '''
import sys
sys.path.insert(0, {tests!r})
import vlunet
import helpers.context_encoder_stub
'''


def _options(tmp_path, is_train: bool = True, **extra) -> dict:
    opt = {'name': 'irsde', 'model_type': 'IRSDEModel', 'num_gpu': 0, 'is_train': is_train, 'dist': False,
           'network_g': TINY_UNET, 'degradation_encoder': ENCODER, 'sde': {'T': 4, 'seed': 3},
           'path': {'models': str(tmp_path), 'training_states': str(tmp_path), 'results_root': str(tmp_path),
                    'visualization': str(tmp_path / 'vis')},
           'train': {'optim_g': {'type': 'AdamW', 'lr': 3e-3, 'betas': [0.9, 0.99]}, 'total_iter': 100,
                     'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
                     'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
           'val': {'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0}}}}
    for key, value in extra.items():
        opt[key] = {**opt[key], **value} if isinstance(opt.get(key), dict) and isinstance(value, dict) else value
    return opt


def _model(tmp_path, **extra):
    torch.manual_seed(0)
    return MODEL_REGISTRY.get('IRSDEModel')(_options(tmp_path, **extra))


def _batch(size=(2, 3, 16, 16), seed=0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    gt = torch.rand(size, generator=generator)
    lq = (0.6 * gt + 0.2 + 0.05 * torch.randn(size, generator=generator)).clamp(0, 1)
    return {'lq': lq, 'gt': gt, 'lq_path': ['a.png'] * size[0], 'gt_path': ['a.png'] * size[0]}


def _fixed_loss(model) -> float:
    """The training loss of the current batch at fixed steps and noise (a generator, not the global RNG)."""
    net = model.get_bare_model(model.net_g)
    with torch.no_grad():
        expected, optimum = model.sde.training_targets(lambda xt, t: model.predict_noise(net, xt, t), model.gt,
                                                       model.lq, torch.Generator().manual_seed(11))
        return float(model.cri_pix(expected, optimum))


def test_a_short_training_on_one_batch_lowers_the_loss(tmp_path):
    model = _model(tmp_path)
    model.feed_data(_batch())
    before = _fixed_loss(model)
    for iteration in range(1, 31):
        model.optimize_parameters(iteration)
    assert set(model.log_dict) == {'l_pix'} and np.isfinite(model.log_dict['l_pix'])
    assert _fixed_loss(model) < 0.9 * before


def test_contexts_are_computed_once_from_the_lq_frozen_and_outside_the_checkpoint(tmp_path):
    model = _model(tmp_path)
    encoder = model.degradation_encoder
    assert isinstance(encoder, StubDAClipEncoder) and not any(p.requires_grad for p in encoder.parameters())
    batch = _batch()
    model.feed_data(batch)
    assert encoder.calls == 1
    content, degradation = encoder.encode(batch['lq'])
    torch.testing.assert_close(model.degradation.image_context, content)
    torch.testing.assert_close(model.degradation.text_context, degradation)
    assert not model.degradation.image_context.requires_grad and not model.degradation.text_context.requires_grad
    model.optimize_parameters(1)
    model.test()  # T = 4 network evaluations, one encoding
    assert encoder.calls == 2  # the call above; feed_data's only
    assert all(p.grad is None for p in encoder.parameters())
    net = model.get_bare_model(model.net_g)
    assert net.prompt.grad is not None and net.text_mlp[0].weight.grad.abs().sum() > 0  # the prompt is trained
    model.save_network(model.net_g, 'net_g', 1)
    saved = torch.load(osp.join(tmp_path, 'net_g_1.pth'), weights_only=True)
    assert set(saved['params']) == set(ConditionalUNet(**{k: v for k, v in TINY_UNET.items() if k != 'type'})
                                       .state_dict())


def test_sampling_is_seeded_per_image_returns_the_input_size_and_uses_the_ema_net(tmp_path):
    model = _model(tmp_path, train={'ema_decay': 0.9})
    model.feed_data(_batch((1, 3, 13, 19)))
    model.optimize_parameters(1)
    model.test()
    first = model.output
    assert first.shape == (1, 3, 13, 19) and torch.isfinite(first).all()
    model.test()
    torch.testing.assert_close(model.output, first, rtol=0, atol=0)
    torch.manual_seed(123)  # the global RNG plays no part
    model.test()
    torch.testing.assert_close(model.output, first, rtol=0, atol=0)
    model.sampling_seed = 4
    model.test()
    assert (model.output - first).abs().max() > 1e-4
    model.sampling_seed = 3
    with torch.no_grad():  # the EMA net restores; a changed net_g does not change the output
        for parameter in model.get_bare_model(model.net_g).parameters():
            parameter.add_(1.0)
    model.test()
    torch.testing.assert_close(model.output, first, rtol=0, atol=0)


def test_ema_is_updated_every_n_iterations(tmp_path):
    model = _model(tmp_path, train={'ema_decay': 0.5, 'ema_update_every': 2})
    model.feed_data(_batch())
    ema_before = model.net_g_ema.final_conv.weight.detach().clone()
    model.optimize_parameters(1)
    torch.testing.assert_close(model.net_g_ema.final_conv.weight, ema_before, rtol=0, atol=0)
    model.optimize_parameters(2)
    current = model.get_bare_model(model.net_g).final_conv.weight.detach()
    torch.testing.assert_close(model.net_g_ema.final_conv.weight, 0.5 * ema_before + 0.5 * current)


def test_posterior_and_sde_modes_differ_and_plain_ir_sde_needs_no_encoder(tmp_path):
    model = _model(tmp_path, sde={'sampling_mode': 'sde'})
    model.feed_data(_batch((1, 3, 16, 16)))
    model.test()
    euler = model.output
    model.sampling_mode = 'posterior'
    model.test()
    assert (model.output - euler).abs().max() > 1e-4
    plain = _model(tmp_path, network_g={**TINY_UNET, 'use_degra_context': False, 'use_image_context': False},
                   degradation_encoder=None)
    plain.feed_data(_batch((1, 3, 16, 16)))
    assert plain.degradation == (None, None)
    plain.optimize_parameters(1)
    plain.test()
    assert plain.output.shape == (1, 3, 16, 16)


def test_bf16_autocast_trains_and_samples_in_fp32_outputs(tmp_path):
    reference = _model(tmp_path)
    mixed = _model(tmp_path, amp={'enabled': True, 'dtype': 'bf16'})
    for model in (reference, mixed):
        model.feed_data(_batch())
    assert abs(_fixed_loss(mixed) - _fixed_loss(reference)) < 0.05 * _fixed_loss(reference)
    mixed.optimize_parameters(1)
    assert np.isfinite(mixed.log_dict['l_pix'])
    mixed.test()
    assert mixed.output.dtype == torch.float32 and torch.isfinite(mixed.output).all()


@pytest.mark.parametrize('extra, message', [
    ({'sde': {'sampling_mode': 'ode'}}, 'sde.sampling_mode'),
    ({'sde': {'steps': 10}}, "sde: unknown keys \\['steps'\\]"),
    ({'sde': {'seed': 'x'}}, 'sde.seed'),
    ({'tile': {'size': 64}}, 'tile: IRSDEModel restores whole images'),
    ({'train': {'ema_update_every': 0}}, 'train.ema_update_every'),
    ({'degradation_encoder': None}, 'use_image_context on'),
    ({'degradation_encoder': None, 'network_g': {'use_image_context': False}}, 'use_degra_context on'),
])
def test_bad_options_name_the_key(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        _model(tmp_path, **extra)


# --------------------------------------------------------------------------- through vlunet/train.py


def _write_pairs(root, count: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        gt = smooth_image(seed * 10 + i, size, size + i)
        lq = np.clip(0.7 * gt + 30 + rng.normal(0, 10, gt.shape), 0, 255).astype(np.uint8)
        write_image(osp.join(root, 'gt', f'{i}.png'), gt)
        write_image(osp.join(root, 'lq', f'{i}.png'), lq)


def _train_file(workdir, total_iter: int) -> str:
    paired = {'type': 'PairedImageDataset', 'io_backend': {'type': 'disk'}}
    opt = {
        'name': 'irsde_tiny', 'model_type': 'IRSDEModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': {**paired, 'name': 'train', 'dataroot_gt': 'data/train/gt', 'dataroot_lq': 'data/train/lq',
                      'gt_size': 16, 'use_hflip': True, 'use_rot': True, 'num_worker_per_gpu': 0,
                      'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 1},
            'val': {**paired, 'name': 'val', 'dataroot_gt': 'data/val/gt', 'dataroot_lq': 'data/val/lq'}},
        'network_g': TINY_UNET, 'degradation_encoder': ENCODER, 'sde': {'T': 3, 'seed': 0},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.9, 'ema_update_every': 2, 'total_iter': total_iter,
                  'optim_g': {'type': 'AdamW', 'lr': 2e-4, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [6], 'eta_min': 1e-6},
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'val': {'val_freq': 2, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': False}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False, 'wandb': {'project': None}},
    }
    path = osp.join(workdir, f'train_{total_iter}.yml')
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return path


@pytest.mark.multiprocess
def test_training_entry_point_trains_validates_saves_and_resumes(tmp_path):
    _write_pairs(str(tmp_path / 'data' / 'train'), 2, 16, seed=1)
    _write_pairs(str(tmp_path / 'data' / 'val'), 1, 18, seed=2)
    site = tmp_path / 'site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(SITECUSTOMIZE.format(tests=osp.join(REPO_ROOT, 'tests')))
    env = {'PYTHONPATH': str(site)}
    first = run_entry('train', ['-opt', _train_file(tmp_path, 2)], str(tmp_path), env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    resumed = run_entry('train', ['-opt', _train_file(tmp_path, 4), '--auto_resume'], str(tmp_path), env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    experiment = tmp_path / 'experiments' / 'irsde_tiny'
    log = ''.join(open(p, encoding='utf-8').read() for p in sorted(glob.glob(str(experiment / '*.log'))))
    losses = [float(v) for v in re.findall(r'l_pix: ([0-9.e+-]+)', log)]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert len(re.findall(r'# psnr: ([0-9.]+)', log)) >= 2
    assert 'Resuming training from epoch' in log and 'iter: 2' in log
    checkpoint = torch.load(experiment / 'models' / 'net_g_4.pth', weights_only=True)
    assert set(checkpoint) == {'params', 'params_ema', OPTIONS_KEY}  # options: plain values, no tensors
    assert checkpoint[OPTIONS_KEY]['network_g']['type'] == 'ConditionalUNet'
    assert not [k for k in checkpoint['params'] if k.startswith(('content', 'degradation'))]
    ConditionalUNet(**{k: v for k, v in TINY_UNET.items() if k != 'type'}).load_state_dict(checkpoint['params_ema'])


def test_option_files_carry_the_original_settings():
    """The network, SDE and encoder of the universal files (their data, schedule and metrics: test_irsde_universal)."""
    from vlunet.options import load_option_file
    folder = osp.join(REPO_ROOT, 'options', 'daclip')
    for name in ('train_irsde_universal.yml', 'test_irsde_universal.yml', 'test_universal_ir_released.yml'):
        opt = load_option_file(osp.join(folder, name))
        assert opt['model_type'] == 'IRSDEModel' and opt['degradation_encoder']['type'] == 'DACLIP'
        assert opt['sde'] == {'max_sigma': 50, 'T': 100, 'schedule': 'cosine', 'eps': 0.005,
                              'sampling_mode': 'posterior', 'seed': 0}
        network = {k: v for k, v in opt['network_g'].items() if k != 'type'}
        with torch.device('meta'):
            assert sum(p.numel() for p in ConditionalUNet(**network).parameters()) == 48_975_747
    train = load_option_file(osp.join(folder, 'train_irsde_universal.yml'))['train']
    assert (train['pixel_opt']['type'], train['ema_decay'], train['ema_update_every']) == ('L1Loss', 0.995, 10)
