"""Fidelity decisions of issue 25 (items 10-14; docs/perceiveir.md#decisions): Perceive-IR stage 1 samples its triplets
task-balanced by default, its prompt file says one thing about logit_scale, Perceive-IR trains with flips only,
the IR-SDE files attribute the EMA to us and state the validation crops, and training inputs degraded on the fly
are quantised to 8 bits like the test inputs."""
import os.path as osp
import random
from collections import Counter

import numpy as np
import pytest
import yaml

import vlunet  # noqa: F401
from vlunet.data.perceiveir.perceiveir_triplet_dataset import QualityTripletDataset
from vlunet.options import load_option_file

from basicsr.data import build_dataset

from helpers import REPO_ROOT, smooth_image, write_image


def _triplets(root, sizes: dict) -> str:
    """A meta-info file with ``sizes[task]`` triplets per task, laid out as scripts/perceiveir_make_medium.py does."""
    lines = ['# degraded,medium,gt']
    for task, count in sizes.items():
        for i in range(count):
            for kind in ('degraded', 'medium', 'gt'):
                write_image(str(root / task / kind / f'{i}.png'), smooth_image(i, 8, 8))
            lines.append(f'{task}/degraded/{i}.png,{task}/medium/{i}.png,{task}/gt/{i}.png')
    (root / 'meta_info.txt').write_text('\n'.join(lines) + '\n')
    return str(root / 'meta_info.txt')


def _task_counts(dataset: QualityTripletDataset, epochs: int) -> Counter:
    return Counter(dataset[index]['medium_path'].split('/')[-3] for _ in range(epochs) for index in range(len(dataset)))


def test_stage1_triplets_are_task_balanced_by_default_and_uniform_on_request(tmp_path):
    meta = _triplets(tmp_path, {'dehaze': 18, 'derain': 1, 'denoise': 5})
    random.seed(0)
    balanced = _task_counts(QualityTripletDataset({'meta_info_file': meta, 'crop_size': 8, 'phase': 'train'}), 10)
    assert sum(balanced.values()) == 240 and balanced == {'dehaze': 80, 'derain': 80, 'denoise': 80}
    uniform = _task_counts(QualityTripletDataset({'meta_info_file': meta, 'crop_size': 8, 'phase': 'train',
                                                  'sampling': 'uniform'}), 10)
    assert uniform == {'dehaze': 180, 'derain': 10, 'denoise': 50}
    validation = QualityTripletDataset({'meta_info_file': meta, 'crop_size': 8, 'phase': 'val'})
    assert [validation[i]['medium_path'] for i in range(3)] == [osp.join(str(tmp_path), 'dehaze', 'medium', f'{i}.png')
                                                                for i in range(3)]  # in order
    assert QualityTripletDataset.check_options({'meta_info_file': meta, 'crop_size': 8, 'sampling': 'even'}) == [
        "sampling: 'even'; use one of task_balanced, uniform."]


def test_the_prompt_option_file_says_one_thing_about_logit_scale():
    path = osp.join(REPO_ROOT, 'options', 'perceiveir', 'train_perceiveir_prompts.yml')
    opt = load_option_file(path)
    with open(path, encoding='utf-8') as f:
        text = f.read()
    assert opt['train']['logit_scale'] == 100 and 'logits x100 (logit_scale: 100)' in text
    assert 'logit_scale: 1 ' not in text and opt['datasets']['train']['sampling'] == 'task_balanced'


@pytest.mark.parametrize('name', ['perceiveir/train_perceiveir_3task.yml', 'perceiveir/train_perceiveir_5task.yml',
                                  'demo/train_perceiveir_demo.yml'])
def test_perceiveir_trains_with_flips_only(name):
    train = load_option_file(osp.join(REPO_ROOT, 'options', name))['datasets']['train']
    assert (train['use_hflip'], train['use_vflip'], train['use_rot']) == (True, True, False)


def test_vertical_flips_without_rotations(tmp_path):
    image = smooth_image(0, 12, 12)
    write_image(str(tmp_path / 'gt' / 'a.png'), image)
    write_image(str(tmp_path / 'lq' / 'a.png'), 255 - image)
    dataset = build_dataset({'type': 'MixedDegradationDataset', 'name': 'train', 'phase': 'train', 'gt_size': 12,
                             'use_hflip': False, 'use_rot': False, 'use_vflip': True,
                             'tasks': [{'name': 'derain', 'source': {'dataroot_gt': str(tmp_path / 'gt'),
                                                                     'dataroot_lq': str(tmp_path / 'lq')}}]})
    rgb = image[..., ::-1].astype(np.float32) / 255
    seen = set()
    random.seed(0)
    for _ in range(30):
        gt = dataset[0]['gt'].numpy().transpose(1, 2, 0)
        matches = [name for name, view in (('identity', rgb), ('vflip', rgb[::-1])) if np.allclose(gt, view, atol=1e-6)]
        assert len(matches) == 1  # never a rotation or a horizontal flip
        seen.add(matches[0])
    assert seen == {'identity', 'vflip'}
    problems = dataset.check_options({'tasks': [{'name': 'derain', 'source': {'dataroot_gt': 'x'}}],
                                      'use_vflip': True})
    assert any(problem.startswith('use_vflip: use_rot already flips vertically') for problem in problems)


def test_irsde_files_attribute_the_ema_to_us_and_state_the_validation_crops():
    with open(osp.join(REPO_ROOT, 'options', 'daclip', 'test_irsde_universal.yml'), encoding='utf-8') as f:
        test_text = f.read()
    assert 'the original tests its EMA' not in test_text
    assert 'by the EMA network of our run (our\n# choice; the original loads universal-ir.pth into the plain model' in \
        test_text
    train_path = osp.join(REPO_ROOT, 'options', 'daclip', 'train_irsde_universal.yml')
    with open(train_path, encoding='utf-8') as f:
        train_text = f.read()
    train = yaml.safe_load(train_text)
    assert train['datasets']['val']['gt_size'] == 256 and train['val']['metrics']['psnr']['crop_border'] == 4
    assert 'validation restores centre 256x256 crops (PSNR/SSIM without a 4-pixel border)' in train_text


def test_training_inputs_degraded_on_the_fly_are_quantised_like_the_test_inputs(tmp_path):
    write_image(str(tmp_path / 'gt' / 'a.png'), smooth_image(0, 16, 16))
    options = {'type': 'MixedDegradationDataset', 'name': 'train', 'phase': 'train', 'gt_size': 16,
               'use_hflip': False, 'use_rot': False, 'fixed_degradations': True,  # the same noise in both
               'tasks': [{'name': 'denoise_25', 'source': {
                   'dataroot_gt': str(tmp_path / 'gt'), 'degradations': [{'type': 'gaussian_noise', 'sigma': 25}]}}]}
    quantised = build_dataset(options)[0]
    floats = build_dataset(dict(options, noise_quantize='none'))[0]
    levels = quantised['lq'].numpy() * 255
    assert np.allclose(levels, np.round(levels), atol=1e-3)  # on the 8-bit levels
    assert not np.allclose(floats['lq'].numpy() * 255, np.round(floats['lq'].numpy() * 255), atol=1e-3)
    truncated = np.floor(np.clip(floats['lq'].numpy(), 0, 1) * 255 + 1e-4) / 255  # the same noise, truncated
    np.testing.assert_allclose(quantised['lq'].numpy(), truncated, atol=1e-6)
