"""BenchmarkPairedDataset: fixed-seed noise, filename mappings (SOTS, Rain100L), official crop to a multiple of 16."""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import vlunet  # noqa: F401
from vlunet.data.benchmark_dataset import stable_seed

from basicsr.data import build_dataset
from basicsr.utils.registry import MODEL_REGISTRY

from helpers import smooth_image, write_image


def _benchmark(**opt):
    return build_dataset({'type': 'BenchmarkPairedDataset', 'name': 'test', 'phase': 'val', **opt})


@pytest.fixture
def clean_folder(tmp_path):
    for i, name in enumerate(['101085.png', '102061.png']):
        write_image(str(tmp_path / 'CBSD68' / name), smooth_image(i, 37, 50))
    return str(tmp_path / 'CBSD68')


def test_fixed_seed_noise_identical_across_instances_different_between_images(clean_folder):
    opt = {'task': 'denoise_25', 'dataroot_gt': clean_folder, 'degradations': [{'type': 'gaussian_noise', 'sigma': 25}]}
    first, second = _benchmark(**opt), _benchmark(**opt)
    a0, b0, a1 = first[0], second[0], first[1]
    assert torch.equal(a0['lq'], b0['lq']) and torch.equal(first[0]['lq'], a0['lq'])
    noise0, noise1 = a0['lq'] - a0['gt'], a1['lq'] - a1['gt']
    assert not torch.allclose(noise0, noise1)
    assert 20 < float(noise0.std()) * 255 < 27
    other_sigma = _benchmark(**{**opt, 'degradations': [{'type': 'gaussian_noise', 'sigma': 15}]})[0]
    assert not torch.allclose((other_sigma['lq'] - other_sigma['gt']) / 15, noise0 / 25, atol=1e-3)
    assert a0['lq'].shape == (3, 37, 50)  # original size without crop_border_base
    assert a0['task'] == 'denoise_25' and a0['text'] == 'image with many noise' and a0['task_index'] == 0


def test_stable_seed_is_a_fixed_function_of_its_parts():
    # Pinned value: the same on every machine and Python process (no salted hash).
    assert stable_seed(0, "a.png", [{"type": "gaussian_noise", "sigma": 25}]) == 7906293989041986900
    assert stable_seed(0, 'a.png', 25) != stable_seed(0, 'b.png', 25)


def test_known_task_default_noise_and_crop_border_base(clean_folder):
    sample = _benchmark(task='denoise_50', task_index=2, dataroot_gt=clean_folder, crop_border_base=16)[1]
    assert sample['lq'].shape == sample['gt'].shape == (3, 32, 48)
    official = smooth_image(1, 37, 50)[2:34, 1:49, ::-1].transpose(2, 0, 1) / 255.0  # official crop_img
    assert np.allclose(sample['gt'].numpy(), official)
    assert 40 < float((sample['lq'] - sample['gt']).std()) * 255 < 50 and sample['task_index'] == 2


@pytest.mark.parametrize('lq_name, gt_name, mapping', [
    ('0001_0.8_0.2.jpg', '0001.png', [r'^(\d+)_.*$', r'\1']),  # SOTS outdoor
    ('rain-001.png', 'norain-001.png', [r'^rain-(.*)$', r'norain-\1']),  # Rain100L
])
def test_filename_mappings_pair_differently_named_files(tmp_path, lq_name, gt_name, mapping):
    gt = smooth_image(0, 20, 20)
    write_image(str(tmp_path / 'gt' / gt_name), gt)
    write_image(str(tmp_path / 'gt' / 'distractor.png'), gt)
    write_image(str(tmp_path / 'lq' / lq_name), 255 - gt)
    dataset = _benchmark(task='dehaze', dataroot_lq=str(tmp_path / 'lq'), dataroot_gt=str(tmp_path / 'gt'),
                         gt_name_from_lq=mapping)
    assert len(dataset) == 1
    sample = dataset[0]
    assert osp.basename(sample['gt_path']) == gt_name and osp.basename(sample['lq_path']) == lq_name
    tolerance = 0.03 if lq_name.endswith('.jpg') else 1e-6  # JPEG is lossy
    assert np.abs(sample['lq'].numpy() - (1 - sample['gt'].numpy())).mean() < tolerance


def test_unmatched_lq_file_is_reported(tmp_path):
    write_image(str(tmp_path / 'gt' / 'norain-001.png'), smooth_image(0, 8, 8))
    write_image(str(tmp_path / 'lq' / 'rain-002.png'), smooth_image(0, 8, 8))
    with pytest.raises(ValueError, match=r'1 lq image\(s\) .* have no gt .*rain-002.png -> norain-002'):
        _benchmark(task='derain', dataroot_lq=str(tmp_path / 'lq'), dataroot_gt=str(tmp_path / 'gt'),
                   gt_name_from_lq=[r'^rain-(.*)$', r'norain-\1'])


def test_paired_crop_border_base_crops_both(tmp_path):
    gt = smooth_image(3, 33, 40)
    write_image(str(tmp_path / 'gt' / 'a.png'), gt)
    write_image(str(tmp_path / 'lq' / 'a.png'), 255 - gt)
    sample = _benchmark(task='delowlight', dataroot_lq=str(tmp_path / 'lq'), dataroot_gt=str(tmp_path / 'gt'),
                        crop_border_base=16)[0]
    assert sample['gt'].shape == (3, 32, 32)
    assert np.allclose(sample['gt'].numpy(), gt[0:32, 4:36, ::-1].transpose(2, 0, 1) / 255.0)
    assert np.allclose(sample['lq'].numpy(), 1 - sample['gt'].numpy(), atol=1e-6)


def test_unknown_task_needs_text(clean_folder):
    with pytest.raises(ValueError, match="task 'desnow' is not a known task, so it needs `text`"):
        _benchmark(task='desnow', dataroot_gt=clean_folder)


# ---------------------------------------------------------------- inputs quantised like the official files

NOISE_25 = [{'type': 'gaussian_noise', 'sigma': 25}]


def _float_noisy(clean_folder, name='101085.png'):
    """The unquantised noisy image, computed independently: the dataset's seeded N(0, 25/255) on the clean file."""
    gt = cv2.imread(osp.join(clean_folder, name))[..., ::-1].astype(np.float32) / 255
    rng = np.random.default_rng(stable_seed(0, name, NOISE_25))
    return np.clip(gt + rng.normal(0.0, 25 / 255, size=gt.shape), 0, 1).astype(np.float32).transpose(2, 0, 1)


def test_noisy_inputs_are_truncated_to_uint8_levels_like_the_official_files(clean_folder):
    sample = _benchmark(task='denoise_25', dataroot_gt=clean_folder, degradations=NOISE_25)[0]
    levels = sample['lq'].numpy().astype(np.float64) * 255
    assert np.abs(levels - np.round(levels)).max() < 1e-3  # on the 8-bit levels k / 255
    expected = np.floor(_float_noisy(clean_folder).astype(np.float64) * 255 + 1e-4) / 255  # astype(uint8)
    np.testing.assert_allclose(sample['lq'].numpy(), expected, atol=1e-6)
    assert len(np.unique(np.round(levels))) > 100


def test_noise_quantize_round_and_none(clean_folder):
    opt = {'task': 'denoise_25', 'dataroot_gt': clean_folder, 'degradations': NOISE_25}
    truncated = _benchmark(**opt)[0]['lq'].numpy().astype(np.float64)
    rounded = _benchmark(**opt, noise_quantize='uint8_round')[0]['lq'].numpy().astype(np.float64)
    floating = _benchmark(**opt, noise_quantize='none')[0]['lq'].numpy()
    np.testing.assert_array_equal(floating, _float_noisy(clean_folder))
    np.testing.assert_allclose(rounded, np.round(floating.astype(np.float64) * 255) / 255, atol=1e-6)
    step = np.round((rounded - truncated) * 255)
    assert set(np.unique(step)) == {0, 1} and 0.4 < step.mean() < 0.6  # rounding is half a level brighter on average
    assert np.all(truncated <= floating + 1e-6) and np.all(floating < truncated + 1 / 255 + 1e-6)


def test_bad_noise_quantize_is_a_clear_error(clean_folder):
    with pytest.raises(ValueError, match=r"datasets.test.noise_quantize: expected one of uint8_truncate, uint8_round, "
                                         r"none, got 'uint16'"):
        _benchmark(task='denoise_25', dataroot_gt=clean_folder, noise_quantize='uint16')


def test_results_table_states_how_the_inputs_were_made(clean_folder, tmp_path):
    noisy = _benchmark(task='denoise_25', dataroot_gt=clean_folder, degradations=NOISE_25)
    assert noisy.protocol == ('clean images degraded on the fly (type gaussian_noise sigma 25; seed 0), quantised to '
                              'uint8 by truncation, like the official noisy test files')
    assert 'kept in float' in _benchmark(task='denoise_25', dataroot_gt=clean_folder, noise_quantize='none').protocol
    paired = _benchmark(task='denoise_25', dataroot_gt=clean_folder, dataroot_lq=clean_folder)
    assert paired.protocol is None  # stored files are used as they are
    opt = {'name': 'protocol', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'is_train': False, 'dist': False,
           'network_g': {'type': 'SRVGGNetCompact', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 4, 'num_conv': 1,
                         'upscale': 1, 'act_type': 'relu'},
           'path': {'results_root': str(tmp_path), 'visualization': str(tmp_path / 'vis')},
           'val': {'save_img': False, 'metrics': {'psnr_float': {'type': 'calculate_psnr_float_rgb'}}}}
    model = MODEL_REGISTRY.get('VLUNetModel')(opt)
    for name, dataset in (('noisy', noisy), ('paired', paired)):
        dataset.opt['name'] = name
        model.validation(DataLoader(dataset), 0, None)
    lines = (tmp_path / 'results.md').read_text().splitlines()
    assert lines[-1] == f'Protocol, noisy: {noisy.protocol}.' and lines[-2] == ''
    assert not any('paired:' in line for line in lines)
