"""DA-CLIP's 10-degradation universal setting: DAClipUniversalDataset, the option files, and IR-SDE restoration
through the Restorer and scripts/inference.py (tiny ConditionalUNet + tiny DACLIP, a handful of steps)."""
import os.path as osp
import random
import shutil

import cv2
import numpy as np
import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet.data.daclip.daclip_universal_dataset import DACLIP_DEGRADATIONS, PAPER_NAMES, DAClipUniversalDataset
from vlunet.inference import Restorer
from vlunet.models.daclip.irsde_sampler import encode_contexts
from vlunet.options import load_option_file

from basicsr.archs import build_network
from basicsr.utils.registry import MODEL_REGISTRY

from helpers import REPO_ROOT, load_script, smooth_image, write_image

TINY_UNET = {'type': 'ConditionalUNet', 'nf': 8, 'ch_mult': [1, 2, 4, 8], 'context_dim': 512}
SIZES = {name: 1 + k % 3 for k, name in enumerate(DACLIP_DEGRADATIONS)}  # pairs per degradation: 1, 2 or 3


def _write_layout(root, split: str = 'train') -> None:
    """<root>/<split>/<degradation>/{LQ,GT}/<i>.png; LQ and GT names differ (pairs go by sorted order)."""
    for k, name in enumerate(DACLIP_DEGRADATIONS):
        for i in range(SIZES[name]):
            write_image(str(root / split / name / 'GT' / f'gt_{i}.png'), smooth_image(10 * k + i, 20, 24))
            write_image(str(root / split / name / 'LQ' / f'lq_{i}.png'), smooth_image(10 * k + i + 5, 20, 24))


def _dataset(root, **extra) -> DAClipUniversalDataset:
    return DAClipUniversalDataset({'name': 'universal', 'dataroot': str(root), 'split': 'train', 'gt_size': 16,
                                   'phase': 'train', **extra})


# --------------------------------------------------------------------------- dataset


def test_every_sample_carries_its_degradation_name_and_label_balanced_over_the_ten(tmp_path):
    _write_layout(tmp_path)
    dataset = _dataset(tmp_path)
    assert len(dataset) == sum(SIZES.values())  # the original's length: all pairs
    random.seed(0)
    for index in range(len(dataset)):
        sample = dataset[index]
        name = DACLIP_DEGRADATIONS[index % 10]  # sample k has degradation k mod 10 (the original's MD mode)
        assert (sample['task'], sample['text'], sample['task_index']) == (name, name, index % 10)
        assert sample['lq'].shape == sample['gt'].shape == (3, 16, 16)
        lq_folder, lq_name = osp.split(sample['lq_path'])
        assert lq_folder == str(tmp_path / 'train' / name / 'LQ')
        assert sample['gt_path'] == str(tmp_path / 'train' / name / 'GT' / lq_name.replace('lq_', 'gt_'))


def test_training_draws_any_image_of_a_degradation_and_validation_fixed_ones(tmp_path):
    _write_layout(tmp_path)
    _write_layout(tmp_path, 'val')
    random.seed(1)
    training = _dataset(tmp_path)
    draws = {training.composition[12] for _ in range(40)}  # jpeg-compressed (3 pairs), drawn anew each time
    assert draws == {(2, 0), (2, 1), (2, 2)}
    validation = _dataset(tmp_path, split='val', phase='val', samples_per_epoch=30)
    assert [validation.composition[k] for k in (2, 12, 22, 0, 10)] == [(2, 0), (2, 1), (2, 2), (0, 0), (0, 0)]
    first, again = validation[12], validation[12]
    assert first['gt_path'].endswith(osp.join('val', 'jpeg-compressed', 'GT', 'gt_1.png'))
    assert torch.equal(first['lq'], again['lq'])  # centre crop, no flips


def test_a_subset_keeps_daclip_labels(tmp_path):
    _write_layout(tmp_path)
    dataset = _dataset(tmp_path, degradations=['noisy', 'snowy'])
    assert len(dataset) == SIZES['noisy'] + SIZES['snowy']
    assert [(dataset[k]['task'], dataset[k]['task_index']) for k in range(3)] == [('noisy', 4), ('snowy', 8),
                                                                                ('noisy', 4)]


def test_missing_folders_and_unknown_names_are_clear_errors(tmp_path):
    _write_layout(tmp_path)
    shutil.rmtree(tmp_path / 'train' / 'hazy' / 'LQ')
    expected = f"degradation 'hazy': LQ folder '{tmp_path / 'train' / 'hazy' / 'LQ'}' does not exist"
    with pytest.raises(ValueError, match='incomplete') as error:
        _dataset(tmp_path)
    assert expected in str(error.value) and 'rainy' not in str(error.value)
    assert DAClipUniversalDataset.check_options({'dataroot': str(tmp_path), 'split': 'train'}) == [
        f'dataroot: {expected}']
    assert len(_dataset(tmp_path, degradations=['rainy', 'uncompleted'])) == SIZES['rainy'] + SIZES['uncompleted']
    with pytest.raises(ValueError, match=r"\['blurry'\] are not DA-CLIP degradations; use some of motion-blurry"):
        _dataset(tmp_path, degradations=['blurry'])


# --------------------------------------------------------------------------- option files


def _header(path: str) -> str:
    with open(path, encoding='utf-8') as f:
        return ''.join(line for line in f if line.startswith('#'))


def test_option_files_carry_the_original_settings_and_the_papers_numbers():
    folder = osp.join(REPO_ROOT, 'options', 'daclip')
    train = load_option_file(osp.join(folder, 'train_irsde_universal.yml'))
    dataset = train['datasets']['train']
    assert (dataset['type'], dataset['gt_size'], dataset['batch_size_per_gpu']) == ('DAClipUniversalDataset', 256, 16)
    assert dataset['use_hflip'] and dataset['use_rot'] and dataset['degradations'] is None
    settings = train['train']
    assert settings['optim_g'] == {'type': 'AdamW', 'lr': 2e-4, 'betas': [0.9, 0.99], 'weight_decay': 0}
    assert (settings['total_iter'], settings['scheduler']['periods'], settings['scheduler']['eta_min']) == (
        700000, [700000], 1e-6)
    assert (settings['ema_decay'], settings['ema_update_every'], settings['warmup_iter']) == (0.995, 10, -1)
    per_epoch = 52801 // 16  # paper Table 1 training pairs / batch 16
    assert f'{per_epoch:,} iterations per epoch' in _header(osp.join(folder, 'train_irsde_universal.yml'))
    for name in ('test_irsde_universal.yml', 'test_universal_ir_released.yml'):
        test = load_option_file(osp.join(folder, name))
        sets = [test['datasets'][key] for key in sorted(test['datasets'])]
        assert [(d['task'], d['name'], d['task_index']) for d in sets] == [
            (degradation, PAPER_NAMES[degradation], k) for k, degradation in enumerate(DACLIP_DEGRADATIONS)]
        assert all(d['crop_border_base'] is None and d['pair_by'] == 'sorted_order' for d in sets)
        metrics = test['val']['metrics']
        assert {metrics[name]['crop_border'] for name in ('psnr', 'ssim', 'psnr_y', 'ssim_y')} == {4}
        assert metrics['lpips']['net'] == 'alex' and 'crop_border' not in metrics['lpips']  # whole image
        assert metrics['fid']['type'] == 'calculate_fid'
        assert test['sde']['T'] == 100 and test['network_g'] == train['network_g']
        assert 'PSNR 27.01, SSIM 0.794, LPIPS 0.127, FID 34.89' in _header(osp.join(folder, name))
    assert load_option_file(osp.join(folder, 'test_universal_ir_released.yml'))['path'][
        'pretrain_network_g'].endswith('universal-ir_net.pth')


# --------------------------------------------------------------------------- Restorer and scripts/inference.py


@pytest.fixture(scope='module')
def weights(tmp_path_factory, tiny_clip_name):
    """A tiny ConditionalUNet and a tiny DACLIP weight file, and a test option file naming them."""
    root = tmp_path_factory.mktemp('irsde_weights')
    torch.manual_seed(0)
    torch.save({'params': build_network(dict(TINY_UNET)).state_dict()}, str(root / 'net.pth'))
    encoder = {'type': 'DACLIP', 'backbone': tiny_clip_name, 'pretrained': None}
    torch.save({'params': build_network(dict(encoder)).state_dict()}, str(root / 'daclip.pth'))
    option_file = root / 'test.yml'
    option_file.write_text(yaml.safe_dump({
        'name': 'tiny', 'model_type': 'IRSDEModel', 'num_gpu': 0, 'network_g': TINY_UNET,
        'degradation_encoder': encoder, 'sde': {'T': 100, 'seed': 0}, 'tile': None,
        'path': {'pretrain_network_g': str(root / 'net.pth'),
                 'pretrain_network_degradation_encoder': str(root / 'daclip.pth')}}))
    return {'net': str(root / 'net.pth'), 'daclip': str(root / 'daclip.pth'), 'encoder': encoder,
            'option_file': str(option_file)}


def _image(seed: int = 0, height: int = 21, width: int = 30) -> np.ndarray:
    return smooth_image(seed, height, width)[..., ::-1].astype(np.float32) / 255


def _restorer(weights, **settings) -> Restorer:
    return Restorer(weights['net'], clip_weights=weights['daclip'], network_options=TINY_UNET,
                    encoder_options=weights['encoder'], tile=settings.pop('tile', None), **settings)


def test_restorer_samples_reproducibly_with_a_seed_and_returns_the_input_size(weights):
    image = _image()
    restorer = _restorer(weights, sde_steps=3, seed=1)
    first, guess = restorer.restore_and_detect(image)
    assert first.shape == image.shape and np.isfinite(first).all()
    assert np.array_equal(restorer.restore(image), first)
    assert guess.prompt in DACLIP_DEGRADATIONS and list(guess.probabilities) == list(DACLIP_DEGRADATIONS)
    other = _restorer(weights, sde_steps=3, seed=2).restore(image)
    assert np.abs(other - first).max() > 1e-3
    tiled = _restorer(weights, sde_steps=3, seed=1, tile={'size': 16, 'overlap': 4})
    assert np.array_equal(tiled.restore(image), tiled.restore(image))
    assert tiled.restore(image).shape == image.shape


def test_auto_tiles_are_planned_once_per_image_and_progress_counts_each_pixel_once(weights):
    whole = _restorer(weights, sde_steps=3, tile='auto').tile_plan(40, 56)
    assert whole.size is None  # the memory model of one sampling step on [x_t, mu], measured on first use
    restorer = _restorer(weights, sde_steps=3, tile={'size': 'auto', 'max_memory': whole.predicted_bytes // 2,
                                                     'min_size': 16, 'overlap': 4})
    plan = restorer.tile_plan(40, 56)
    assert plan.size is not None and plan.tiles > 1
    plans, pixels = [], []
    restorer.on_plan, restorer.on_progress = plans.append, pixels.append
    image = _image(5, 40, 56)
    first = restorer.restore(image)
    assert plans == [plan] and sum(pixels) == pytest.approx(plan.pixels)  # 3 steps, one plan, one image's pixels
    assert first.shape == image.shape and np.array_equal(restorer.restore(image), first)


def test_fewer_steps_call_the_network_at_its_training_times(weights):
    restorer = _restorer(weights, sde_steps=4)
    times = []
    restorer.net.register_forward_pre_hook(lambda module, args: times.append(args[2]))
    restorer.restore(_image(height=16, width=16))
    assert times == pytest.approx([100.0, 75.0, 50.0, 25.0])  # t * T / steps, T = 100 (trained)


def test_restorer_equals_the_basicsr_model_test(weights, tmp_path):
    """With steps = sde.T and the same seed, the Restorer samples exactly what IRSDEModel.test does."""
    opt = {'name': 'irsde', 'model_type': 'IRSDEModel', 'num_gpu': 0, 'is_train': False, 'dist': False,
           'network_g': TINY_UNET, 'degradation_encoder': weights['encoder'], 'sde': {'T': 5, 'seed': 7},
           'path': {'pretrain_network_g': weights['net'], 'strict_load_g': True, 'results_root': str(tmp_path),
                    'pretrain_network_degradation_encoder': weights['daclip']},
           'val': {'save_img': False}}
    model = MODEL_REGISTRY.get('IRSDEModel')(opt)
    restorer = _restorer(weights, sde={'T': 5, 'seed': 7})
    lq = torch.from_numpy(_image(3, 18, 22)).permute(2, 0, 1)[None].contiguous()
    model.feed_data({'lq': lq})
    model.test()
    torch.testing.assert_close(restorer.restore_tensor(lq), model.output.clamp(0, 1), rtol=0, atol=1e-6)
    with torch.no_grad():  # unclamped too (random weights: the samples leave [0, 1] by far)
        sampled = restorer.sde.restore(restorer.net, lq, encode_contexts(restorer.encoder, lq))
    torch.testing.assert_close(sampled, model.output, rtol=1e-5, atol=1e-5)


def test_steps_and_seed_are_checked(weights, tmp_path):
    with pytest.raises(ValueError, match='steps: the number of IR-SDE sampling steps must be a positive integer'):
        _restorer(weights, sde_steps=0)
    with pytest.raises(ValueError, match="sde: unknown keys \\['steps'\\]"):
        _restorer(weights, sde={'steps': 5})
    vlunet_net = {'type': 'VLUNet', 'de_dim': 3, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
                  'heads': [1, 1, 1, 1], 'key_size': 8}
    torch.save({'params': build_network(dict(vlunet_net)).state_dict()}, str(tmp_path / 'vlunet.pth'))
    with pytest.raises(ValueError, match='only IR-SDE networks'):
        Restorer(str(tmp_path / 'vlunet.pth'), network_options=vlunet_net, sde_steps=10)
    with pytest.raises(ValueError, match='needs the DA-CLIP encoder'):
        Restorer(weights['net'], network_options=TINY_UNET)


def _inference_script():
    return load_script('inference')


def test_inference_script_restores_with_steps_and_seed(weights, tmp_path, capsys):
    write_image(str(tmp_path / 'in' / 'photo.png'), smooth_image(4, 19, 26))
    script = _inference_script()

    def run(output: str, seed: str) -> np.ndarray:
        status = script.main([str(tmp_path / 'in'), '-o', str(tmp_path / output), '-opt', weights['option_file'],
                              '--device', 'cpu', '--steps', '3', '--seed', seed])
        assert status == 0
        return cv2.imread(str(tmp_path / output / 'photo.png'))

    first = run('a', '5')
    out = capsys.readouterr().out
    assert first.shape == (19, 26, 3)
    detected = out.split('detected ')[1].split(' (')[0].strip("'")
    assert detected in DACLIP_DEGRADATIONS
    assert np.array_equal(run('b', '5'), first)
    assert not np.array_equal(run('c', '6'), first)
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / 'in'), '-opt', weights['option_file'], '--steps', '0'])
    assert '--steps: 0 is not allowed' in capsys.readouterr().err


def test_bf16_sampling_of_a_256_image_is_finite_and_agrees_with_fp32(weights, monkeypatch):
    """Each step's network runs under bf16 and the sample stays finite; random weights predict no real noise, so
    most samples clip to 0 or 1 and the comparison counts pixels (the network's own bf16 error at 256² is
    tested in tests/archs/test_precision.py)."""
    monkeypatch.setattr('vlunet.utils.precision.native_bf16', lambda device: True)  # any CPU can emulate it
    image = _image(4, 256, 256)
    low = _restorer(weights, sde_steps=2, seed=0, precision='bf16')
    noise_dtypes = set()
    low.net.register_forward_hook(lambda module, inputs, output: noise_dtypes.add(output.dtype))
    restored = low.restore(image)
    reference = _restorer(weights, sde_steps=2, seed=0).restore(image)
    assert noise_dtypes == {torch.bfloat16}
    assert restored.dtype == np.float32 and np.isfinite(restored).all()
    differing = np.abs(restored - reference) > 0.1
    assert 0 < differing.mean() < 0.05
