"""Every bad input gives its documented outcome: a correct image, or an error naming the file and the problem."""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch

import vlunet  # noqa: F401
from vlunet.data.image_io import ImageReadError, read_image

from basicsr.data import build_dataset
from basicsr.utils import FileClient

from helpers import smooth_image, write_image


def _dataset(tasks, **opt):
    return build_dataset({'type': 'MixedDegradationDataset', 'name': 'train', 'phase': 'train', 'tasks': tasks,
                          'gt_size': 16, **opt})


def _pair_folder(root, gt: np.ndarray, lq: np.ndarray, name='a.png') -> dict:
    write_image(osp.join(root, 'gt', name), gt)
    write_image(osp.join(root, 'lq', name), lq)
    return {'dataroot_lq': osp.join(root, 'lq'), 'dataroot_gt': osp.join(root, 'gt')}


DISK = FileClient('disk')


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = smooth_image(0, 20, 24)[..., 0]
    img = read_image(DISK, write_image(str(tmp_path / 'g.png'), gray))
    assert img.shape == (20, 24, 3) and img.dtype == np.float32
    assert np.array_equal(img[..., 0], img[..., 2]) and np.allclose(img[..., 1], gray / 255.0)


def test_16_bit_is_scaled_to_unit_range(tmp_path):
    deep = np.full((8, 8, 3), 32768, np.uint16)
    deep[0, 0] = (65535, 0, 65535)
    img = read_image(DISK, write_image(str(tmp_path / 'd.png'), deep))
    assert abs(img[1, 1, 0] - 0.5) < 1e-4 and img.max() == 1.0 and img.min() == 0.0


def test_rgba_drops_alpha_keeping_colours(tmp_path):
    bgr = smooth_image(1, 8, 8)
    bgra = np.concatenate([bgr, np.zeros((8, 8, 1), np.uint8)], axis=2)  # fully transparent
    img = read_image(DISK, write_image(str(tmp_path / 'rgba.png'), bgra))
    assert np.allclose(img, bgr[..., ::-1] / 255.0)


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    corrupt = tmp_path / 'broken.png'
    corrupt.write_bytes(b'\x89PNG not really')
    with pytest.raises(ImageReadError, match='broken.png.*corrupt'):
        read_image(DISK, str(corrupt))
    with pytest.raises(ImageReadError, match='cannot read image .*missing.png'):
        read_image(DISK, str(tmp_path / 'missing.png'))


def test_corrupt_image_in_a_dataloader_worker_reports_the_file(tmp_path):
    source = _pair_folder(str(tmp_path), smooth_image(0, 16, 16), smooth_image(1, 16, 16))
    with open(osp.join(source['dataroot_lq'], 'a.png'), 'wb') as f:
        f.write(b'garbage')
    loader = torch.utils.data.DataLoader(_dataset([{'name': 'derain', 'source': source}]), num_workers=1)
    with pytest.raises(ImageReadError, match=r"lq/a.png' is corrupt"):
        next(iter(loader))


def test_size_mismatch_names_both_files(tmp_path):
    source = _pair_folder(str(tmp_path), smooth_image(0, 32, 32), smooth_image(1, 32, 30))
    with pytest.raises(ImageReadError, match=r"size mismatch: lq .*lq/a.png' is 30x32 but gt .*gt/a.png' is 32x32"):
        _dataset([{'name': 'derain', 'source': source}])[0]


def test_small_image_is_padded_or_rejected(tmp_path):
    gt = smooth_image(0, 10, 12)
    source = _pair_folder(str(tmp_path), gt, 255 - gt)
    sample = _dataset([{'name': 'derain', 'source': source}], use_hflip=False, use_rot=False)[0]
    assert sample['gt'].shape == (3, 16, 16)
    assert np.allclose(sample['gt'].numpy()[:, :10, :12], gt[..., ::-1].transpose(2, 0, 1) / 255.0)
    assert np.allclose(sample['lq'].numpy(), 1 - sample['gt'].numpy(), atol=1e-6)  # padded identically
    with pytest.raises(ImageReadError, match=r'gt/a.png.* is 12x10, smaller than the 16x16 crop'):
        _dataset([{'name': 'derain', 'source': source}], small_image='error')[0]
    with pytest.raises(ValueError, match='small_image'):
        _dataset([{'name': 'derain', 'source': source}], small_image='crop')


def test_missing_lmdb_key_names_the_key(tmp_path):
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    write_image(str(tmp_path / 'imgs' / 'a.png'), smooth_image(0, 8, 8))
    make_lmdb_from_imgs(str(tmp_path / 'imgs'), str(tmp_path / 'x.lmdb'), ['a.png'], ['a'], n_thread=1,
                        map_size=1 << 20)
    client = FileClient('lmdb', db_paths=[str(tmp_path / 'x.lmdb')], client_keys=['gt'])
    assert read_image(client, 'a', 'gt').shape == (8, 8, 3)
    with pytest.raises(ImageReadError, match="'b' is not in the gt LMDB"):
        read_image(client, 'b', 'gt')


@pytest.mark.parametrize('task, message', [
    ({'name': 'desnow', 'source': {'degradations': [{'type': 'gaussian_noise'}]}},
     r"tasks\[0\]: task 'desnow' is not a known task, so it needs `text`; known tasks .*denoise_15"),
    ({'name': 'desnow', 'text': 'snowy'},
     r"tasks\[0\]\.source: missing"),
    ({'name': 'desnow', 'text': 'snowy', 'source': {}},
     r"tasks\[0\]\.source: task 'desnow' is not a known task, so it needs `degradations.*derain"),
    ({'name': 'x', 'text': 't', 'source': {'degradations': [{'type': 'snow'}]}},
     r"tasks\[0\]\.source\.degradations\[0\]\.type: unknown degradation 'snow'; valid names: gaussian_noise, rain"),
    ({'name': 'derain', 'source': {'dataroot_gt': '/nonexistent/gt'}},
     r"tasks\[0\]\.source\.dataroot_gt: '/nonexistent/gt' does not exist"),
    ({'name': 'derain', 'source': {'dataroot_gt': '.', 'dataroot_lq': '.', 'degradations': [{'type': 'rain'}]}},
     r'either dataroot_lq .* or degradations'),
    ({'name': 'derain', 'source': {'dataroot_gt': '.', 'dataroot_gq': '.'}},
     r"tasks\[0\]\.source\.dataroot_gq: unknown source key"),
    ({'name': 'derain', 'source': {'dataroot_gt': '.'}, 'repeat': 0},
     r"tasks\[0\]\.repeat: 0 must be an integer >= 1"),
    ({'name': 'derain', 'source': {'dataroot_gt': '.'}, 'weight': 1, 'repeat': 2},
     r'tasks\[0\]: give repeat or weight, not both'),
    ({'name': 'derain', 'source': {'dataroot_gt': '.', 'dataroot_lq': '.', 'gt_name_from_lq': ['(', 'x']}},
     r"tasks\[0\]\.source\.gt_name_from_lq: invalid regular expression '\('"),
    ({'name': 'derain', 'source': {'dataroot_gt': '.', 'dataroot_lq': '.', 'gt_name_from_lq': 'rain'}},
     r"tasks\[0\]\.source\.gt_name_from_lq: expected \[regex, replacement\]"),
    ({'name': 'derain', 'source': {'dataroot_gt': '.'}, 'weigth': 1},
     r"tasks\[0\]\.weigth: unknown task key"),
])
def test_malformed_task_options_name_the_key(task, message):
    if 'source' in task and 'dataroot_gt' not in task['source'] and task['source']:
        task['source']['dataroot_gt'] = '.'
    with pytest.raises(ValueError, match=message):
        _dataset([task])


def test_mixed_repeat_and_weight_and_duplicate_names_are_rejected(tmp_path):
    source = {'dataroot_gt': '.'}
    with pytest.raises(ValueError, match='either every task gives a weight or none'):
        _dataset([{'name': 'derain', 'source': source, 'weight': 1}, {'name': 'dehaze', 'source': source}])
    with pytest.raises(ValueError, match="task name 'derain' appears more than once"):
        _dataset([{'name': 'derain', 'source': source}, {'name': 'derain', 'source': source}])
    with pytest.raises(ValueError, match='tasks: expected a non-empty list'):
        _dataset([])


def test_empty_folder_and_unpaired_folder(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match="no images found in .*empty"):
        _dataset([{'name': 'derain', 'source': {'dataroot_gt': str(tmp_path / 'empty')}}])
    source = _pair_folder(str(tmp_path / 'p'), smooth_image(0, 8, 8), smooth_image(0, 8, 8))
    cv2.imwrite(osp.join(source['dataroot_lq'], 'extra.png'), smooth_image(0, 8, 8))
    with pytest.raises(ValueError, match=r'tasks\[0\]\.source: cannot list the image pairs: .*different number'):
        _dataset([{'name': 'derain', 'source': source}])
