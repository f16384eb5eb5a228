"""MixedDegradationDataset: every source type gives aligned pairs; repeat/weight give the configured mixture."""
import os.path as osp
import pickle
import random

import numpy as np
import pytest
import torch

import vlunet  # noqa: F401

from basicsr.data import build_dataset
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

from helpers import smooth_image, write_image

SIZE = 40


def _make_pairs(root: str, names, lq_name=lambda n: n, size=SIZE) -> dict:
    """gt = a smooth image, lq = its negative: any misalignment of a crop/flip breaks lq == 1 - gt."""
    for i, name in enumerate(names):
        gt = smooth_image(i, size, size + 8)
        write_image(osp.join(root, 'gt', name), gt)
        write_image(osp.join(root, 'lq', lq_name(name)), 255 - gt)
    return {'dataroot_lq': osp.join(root, 'lq'), 'dataroot_gt': osp.join(root, 'gt')}


def _dataset(tasks, **opt):
    return build_dataset({'type': 'MixedDegradationDataset', 'name': 'train', 'phase': 'train', 'tasks': tasks,
                          'gt_size': 16, **opt})


def _dihedral(img: np.ndarray):
    for k in range(4):
        rotated = np.rot90(img, k)
        yield rotated
        yield rotated[:, ::-1]


def _is_crop_of(patch: np.ndarray, full: np.ndarray) -> bool:
    """True if ``patch`` (HWC) is a crop of some flip/rotation of ``full``."""
    size = patch.shape[0]
    for view in _dihedral(full):
        for top in range(view.shape[0] - size + 1):
            for left in range(view.shape[1] - size + 1):
                if np.array_equal(view[top:top + size, left:left + size], patch):
                    return True
    return False


def _assert_aligned(sample: dict, gt_full_bgr: np.ndarray):
    lq, gt = sample['lq'].numpy(), sample['gt'].numpy()
    assert lq.shape == gt.shape == (3, 16, 16) and sample['lq'].dtype == torch.float32
    assert np.allclose(lq, 1 - gt, atol=1e-6)
    gt_rgb_uint8 = (gt.transpose(1, 2, 0) * 255).round().astype(np.uint8)
    assert _is_crop_of(gt_rgb_uint8, gt_full_bgr[..., ::-1])


@pytest.fixture
def folder_pairs(tmp_path):
    return _make_pairs(str(tmp_path / 'pairs'), ['a.png', 'b.png', 'c.png'])


def test_paired_folders_give_aligned_crops_and_the_sample_dict(folder_pairs):
    random.seed(0)
    dataset = _dataset([{'name': 'derain', 'source': folder_pairs}])
    assert len(dataset) == 3
    for index in range(3):
        sample = dataset[index]
        _assert_aligned(sample, smooth_image(index, SIZE, SIZE + 8))
        assert sample['task'] == 'derain' and sample['task_index'] == 0 and sample['text'] == 'image with rain'
        assert sample['gt_path'].endswith('gt/' + 'abc'[index] + '.png')
        assert sample['lq_path'].endswith('lq/' + 'abc'[index] + '.png')


def test_meta_info_sources_basicsr_format_and_pair_list(tmp_path):
    root = str(tmp_path / 'rain')
    source = _make_pairs(root, ['norain-1.png', 'norain-2.png'], lq_name=lambda n: n.replace('norain', 'rain'))
    pair_list = tmp_path / 'pairs.txt'
    pair_list.write_text('rain-2.png,norain-2.png\n')
    dataset = _dataset([{'name': 'derain', 'source': {**source, 'meta_info_file': str(pair_list)}}])
    assert len(dataset) == 1 and dataset[0]['gt_path'].endswith('norain-2.png')
    _assert_aligned(dataset[0], smooth_image(1, SIZE, SIZE + 8))

    same_names = _make_pairs(str(tmp_path / 'same'), ['x.png', 'y.png'])
    basicsr_meta = tmp_path / 'meta.txt'
    basicsr_meta.write_text('y.png (40,48,3)\n')
    dataset = _dataset([{'name': 'dehaze', 'source': {**same_names, 'meta_info_file': str(basicsr_meta)}}])
    assert len(dataset) == 1 and dataset[0]['lq_path'].endswith('lq/y.png')
    _assert_aligned(dataset[0], smooth_image(1, SIZE, SIZE + 8))


def test_gt_name_mapping_for_differently_named_folders(tmp_path):
    source = _make_pairs(str(tmp_path / 'sots'), ['0001.png', '0002.png'],
                         lq_name=lambda n: n.replace('.png', '_0.8_0.2.jpg').replace('.jpg', '.png'))
    dataset = _dataset([{'name': 'dehaze', 'source': {**source, 'gt_name_from_lq': [r'^(\d+)_.*$', r'\1']}}])
    assert [osp.basename(item['gt_path']) for item in dataset.sources[0].items] == ['0001.png', '0002.png']
    _assert_aligned(dataset[1], smooth_image(1, SIZE, SIZE + 8))


def test_lmdb_source_built_in_the_test(tmp_path, folder_pairs):
    for side in ('lq', 'gt'):
        folder = folder_pairs[f'dataroot_{side}']
        make_lmdb_from_imgs(folder, str(tmp_path / f'{side}.lmdb'), ['a.png', 'b.png', 'c.png'], ['a', 'b', 'c'],
                            n_thread=1)
    source = {'dataroot_lq': str(tmp_path / 'lq.lmdb'), 'dataroot_gt': str(tmp_path / 'gt.lmdb'),
              'io_backend': {'type': 'lmdb'}}
    dataset = _dataset([{'name': 'deblur', 'source': source}])
    assert len(dataset) == 3
    for index in range(3):
        sample = dataset[index]
        assert sample['gt_path'] == 'abc'[index]
        _assert_aligned(sample, smooth_image(index, SIZE, SIZE + 8))
    copy = pickle.loads(pickle.dumps(dataset))  # open LMDB handles are not pickled: spawned workers reopen them
    assert copy.file_clients == {} and dataset.file_clients and len(copy) == 3


def test_synthetic_source_degrades_the_augmented_gt_crop(tmp_path, folder_pairs):
    source = {'dataroot_gt': folder_pairs['dataroot_gt']}
    dataset = _dataset([{'name': 'denoise_50', 'source': source}], gt_size=32)
    sample = dataset[0]
    residual = (sample['lq'] - sample['gt']).numpy()
    assert 40 < residual.std() * 255 < 55  # σ50 before clipping
    assert sample['lq_path'] == sample['gt_path'] and sample['text'] == 'image with large amount of noise'
    gt_uint8 = (sample['gt'].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    assert _is_crop_of(gt_uint8, smooth_image(0, SIZE, SIZE + 8)[..., ::-1])

    custom = [{'name': 'my_jpeg', 'text': 'compressed image', 'source': {**source, 'degradations': [
        {'type': 'jpeg', 'quality': 5}]}}]
    sample = _dataset(custom)[0]
    assert sample['task'] == 'my_jpeg' and sample['text'] == 'compressed image'
    assert 0 < float((sample['lq'] - sample['gt']).abs().mean()) < 0.2


def test_synthetic_noise_is_reproducible_and_fixed_option_repeats_it(tmp_path):
    for i in range(2):
        write_image(str(tmp_path / 'clean' / f'{i}.png'), smooth_image(i, 16, 16))
    tasks = [{'name': 'denoise_25', 'source': {'dataroot_gt': str(tmp_path / 'clean')}}]
    dataset = _dataset(tasks, use_hflip=False, use_rot=False)  # 16 x 16 images: the crop is the whole image
    random.seed(3)
    first = dataset[0]['lq']
    random.seed(3)
    assert torch.equal(dataset[0]['lq'], first)  # same seeds (BasicSR's manual_seed) -> same sample
    assert not torch.equal(dataset[0]['lq'], first)  # drawn again later in the run -> new noise

    fixed = _dataset(tasks, use_hflip=False, use_rot=False, fixed_degradations=True)
    random.seed(1)
    first = fixed[0]['lq']
    random.seed(2)
    assert torch.equal(fixed[0]['lq'], first)  # the same noisy image in every epoch
    assert not torch.equal(fixed[0]['lq'] - fixed[0]['gt'], fixed[1]['lq'] - fixed[1]['gt'])


def test_validation_phase_gives_the_same_centre_crops_every_time(tmp_path, folder_pairs):
    tasks = [{'name': 'derain', 'source': folder_pairs},
             {'name': 'denoise_50', 'source': {'dataroot_gt': folder_pairs['dataroot_gt']}}]
    val = _dataset(tasks, phase='val', use_hflip=True, use_rot=True)
    random.seed(0)
    first = [val[i] for i in range(len(val))]
    random.seed(1)
    for sample, again in zip(first, [val[i] for i in range(len(val))]):
        assert torch.equal(sample['lq'], again['lq']) and torch.equal(sample['gt'], again['gt'])
    top, left = (SIZE - 16) // 2, (SIZE + 8 - 16) // 2
    for index, sample in enumerate(first):
        centre = smooth_image(index % 3, SIZE, SIZE + 8)[top:top + 16, left:left + 16, ::-1]
        gt_uint8 = (sample['gt'].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
        assert np.array_equal(gt_uint8, centre)  # the centre, neither flipped nor rotated
    assert np.allclose(first[0]['lq'].numpy(), 1 - first[0]['gt'].numpy(), atol=1e-6)
    assert 40 < (first[3]['lq'] - first[3]['gt']).std() * 255 < 55


def test_repeat_gives_the_official_concatenation(folder_pairs):
    tasks = [{'name': 'denoise_15', 'source': {'dataroot_gt': folder_pairs['dataroot_gt']}, 'repeat': 3},
             {'name': 'derain', 'source': folder_pairs, 'repeat': 120},
             {'name': 'dehaze', 'source': folder_pairs}]
    dataset = _dataset(tasks)
    assert dataset.task_counts() == {'denoise_15': 9, 'derain': 360, 'dehaze': 3}
    counts = {}
    for index in range(len(dataset)):
        task, sample_index = dataset.composition[index]
        counts[(task, sample_index)] = counts.get((task, sample_index), 0) + 1
    assert counts[(1, 2)] == 120 and counts[(0, 0)] == 3 and counts[(2, 1)] == 1
    assert [dataset[i]['task_index'] for i in (0, 9, 369)] == [0, 1, 2]


def test_weights_give_the_configured_mixture_over_an_epoch(folder_pairs):
    tasks = [{'name': 'denoise_15', 'source': {'dataroot_gt': folder_pairs['dataroot_gt']}, 'weight': 1},
             {'name': 'derain', 'source': folder_pairs, 'weight': 2},
             {'name': 'dehaze', 'source': folder_pairs, 'weight': 1}]
    dataset = _dataset(tasks, samples_per_epoch=41)
    assert len(dataset) == 41
    tasks_seen = [dataset[i]['task'] for i in range(len(dataset))]
    assert {name: tasks_seen.count(name) for name in set(tasks_seen)} == {'denoise_15': 10, 'derain': 21, 'dehaze': 10}
    per_sample = [dataset.composition.count((1, s)) for s in range(3)]
    assert sorted(per_sample) == [7, 7, 7]  # each task cycles through all its samples evenly


def test_crop_border_base_crops_like_the_official_crop_img(tmp_path):
    gt = smooth_image(7, 37, 50)
    write_image(str(tmp_path / 'gt' / 'a.png'), gt)
    write_image(str(tmp_path / 'lq' / 'a.png'), 255 - gt)
    source = {'dataroot_lq': str(tmp_path / 'lq'), 'dataroot_gt': str(tmp_path / 'gt')}
    dataset = _dataset([{'name': 'dehaze', 'source': source}], gt_size=32, crop_border_base=16,
                       use_hflip=False, use_rot=False)
    official = gt[2:34, 1:49]  # 37 -> 32 rows (5 // 2 = 2 from the top), 50 -> 48 columns (1 from the left)
    for _ in range(5):
        patch = (dataset[0]['gt'].numpy().transpose(1, 2, 0)[..., ::-1] * 255).round().astype(np.uint8)
        assert patch.shape == (32, 32, 3)
        assert any(np.array_equal(official[:, left:left + 32], patch) for left in range(17))


def test_official_augment_never_returns_the_identity_and_keeps_pairs_aligned(tmp_path):
    gt = smooth_image(5, 16, 16)
    write_image(str(tmp_path / 'gt' / 'a.png'), gt)
    write_image(str(tmp_path / 'lq' / 'a.png'), 255 - gt)
    source = {'dataroot_lq': str(tmp_path / 'lq'), 'dataroot_gt': str(tmp_path / 'gt')}
    dataset = _dataset([{'name': 'derain', 'source': source}], official_augment=True)
    original = gt[..., ::-1].transpose(2, 0, 1) / 255.0
    random.seed(0)
    views = set()
    for _ in range(60):
        sample = dataset[0]
        assert not np.allclose(sample['gt'].numpy(), original)
        assert np.allclose(sample['lq'].numpy(), 1 - sample['gt'].numpy(), atol=1e-6)
        views.add(sample['gt'].numpy().tobytes())
    assert len(views) == 7
