"""scripts/prepare_datasets.py on a fake download tree, and scripts/make_demo_data.py."""
import os.path as osp

import numpy as np
import pytest

import vlunet  # noqa: F401

from basicsr.data import build_dataset

from helpers import load_script, smooth_image, write_image


def _pair(root, lq_rel: str, gt_rel: str, seed: int):
    gt = smooth_image(seed, 24, 24)
    write_image(osp.join(root, gt_rel), gt)
    write_image(osp.join(root, lq_rel), 255 - gt)


@pytest.fixture
def download_tree(tmp_path):
    root = str(tmp_path / 'datasets')
    for i in range(3):
        _pair(root, f'Rain100L/train/rainy/rain-{i}.png', f'Rain100L/train/norain/norain-{i}.png', i)
    write_image(osp.join(root, 'Rain100L/train/rainy/rain-9.png'), smooth_image(9, 24, 24))  # no clean partner
    _pair(root, 'Rain100L/test/rainy/rain-001.png', 'Rain100L/test/norain/norain-001.png', 4)
    _pair(root, 'SOTS/outdoor/hazy/0001_0.8_0.2.png', 'SOTS/outdoor/gt/0001.png', 5)
    _pair(root, 'LOL/our485/low/2.png', 'LOL/our485/high/2.png', 6)
    _pair(root, 'GoPro/train/GOPR0372_07_00/blur/000047.png', 'GoPro/train/GOPR0372_07_00/sharp/000047.png', 7)
    write_image(osp.join(root, 'BSD400/test001.png'), smooth_image(8, 24, 24))
    write_image(osp.join(root, 'WED/00001.png'), smooth_image(10, 24, 24))
    write_image(osp.join(root, 'CBSD68/original_png/0000.png'), smooth_image(11, 24, 24))
    with open(osp.join(root, 'CBSD68/original_png/broken.png'), 'wb') as f:
        f.write(b'not a png')
    return root


def test_prepare_writes_meta_files_the_datasets_read_and_reports_problems(download_tree, capsys):
    status = load_script('prepare_datasets').main(['--root', download_tree, '--lmdb'])
    output = capsys.readouterr().out
    assert status == 1  # problems were found
    assert 'missing pair: ' in output and 'rain-9.png -> norain-9.*' in output
    assert 'unreadable image: ' in output and 'broken.png' in output
    assert '[rain100l] derain_rain100l_train: 3 pairs' in output
    assert f'[ots] not found at {download_tree}/OTS (or give --ots PATH); download: RESIDE-beta' in output
    meta = osp.join(download_tree, 'meta_info')
    with open(osp.join(meta, 'derain_rain100l_train.txt')) as f:
        assert f.read().splitlines()[0] == 'Rain100L/train/rainy/rain-0.png,Rain100L/train/norain/norain-0.png'
    with open(osp.join(meta, 'denoise_train.txt')) as f:
        assert f.read().splitlines() == ['BSD400/test001.png', 'WED/00001.png']  # BSD400 + WED together

    train = build_dataset({'type': 'MixedDegradationDataset', 'name': 't', 'phase': 'train', 'gt_size': 16, 'tasks': [
        {'name': 'derain', 'repeat': 2, 'source': {
            'dataroot_lq': download_tree, 'dataroot_gt': download_tree,
            'meta_info_file': osp.join(meta, 'derain_rain100l_train.txt')}},
        {'name': 'denoise_25', 'source': {
            'dataroot_gt': download_tree, 'meta_info_file': osp.join(meta, 'denoise_train.txt')}},
        {'name': 'deblur', 'source': {'dataroot_lq': osp.join(meta, 'deblur_gopro_train_lq.lmdb'),
                                      'dataroot_gt': osp.join(meta, 'deblur_gopro_train_gt.lmdb'),
                                      'io_backend': {'type': 'lmdb'}}}]})
    assert train.task_counts() == {'derain': 6, 'denoise_25': 2, 'deblur': 1}
    for index in (0, 7, 8):
        sample = train[index]
        if sample['task'] != 'denoise_25':
            assert np.allclose(sample['lq'].numpy(), 1 - sample['gt'].numpy(), atol=1e-6)

    test = build_dataset({'type': 'BenchmarkPairedDataset', 'name': 'sots', 'phase': 'val', 'task': 'dehaze',
                          'dataroot_lq': download_tree, 'dataroot_gt': download_tree,
                          'meta_info_file': osp.join(meta, 'dehaze_sots_outdoor_test.txt')})
    assert test[0]['gt_path'].endswith('SOTS/outdoor/gt/0001.png')
    cbsd = build_dataset({'type': 'BenchmarkPairedDataset', 'name': 'cbsd', 'phase': 'val', 'task': 'denoise_15',
                          'dataroot_gt': download_tree, 'meta_info_file': osp.join(meta, 'denoise_cbsd68_test.txt')})
    assert len(cbsd) == 1  # the unreadable image was left out


def test_prepare_reports_a_requested_missing_download(tmp_path, capsys):
    status = load_script('prepare_datasets').main(['--root', str(tmp_path), '--lol', str(tmp_path / 'nowhere')])
    assert status == 1 and 'MISSING' in capsys.readouterr().out


def test_prepare_without_any_data_says_where_each_set_comes_from_and_fails(tmp_path, capsys):
    status = load_script('prepare_datasets').main(['--root', str(tmp_path / 'datasets')])
    captured = capsys.readouterr()
    assert status == 1
    assert f'error: no dataset found under {tmp_path / "datasets"}' in captured.err
    assert 'datasets/README.md' in captured.err and 'make_demo_data.py' in captured.err
    lines = captured.out.splitlines()
    assert len(lines) == 9 and all(' not found at ' in line and '; download: ' in line for line in lines)
    assert any('[gopro]' in line and 'seungjunnah.github.io/Datasets/gopro' in line for line in lines)
    assert not (tmp_path / 'datasets').exists()  # no empty meta_info folder


def test_make_demo_data_is_deterministic_and_loadable(tmp_path):
    demo = load_script('make_demo_data')
    demo.main(['--out', str(tmp_path / 'a'), '--crops', '1', '--size', '48'])
    demo.main(['--out', str(tmp_path / 'b'), '--crops', '1', '--size', '48'])
    for task in demo.DEMO_TASKS:
        for split in ('train', 'val'):
            for side in ('lq', 'gt'):
                folder_a = tmp_path / 'a' / split / task / side
                names = sorted(p.name for p in folder_a.iterdir())
                assert names and names == sorted(p.name for p in (tmp_path / 'b' / split / task / side).iterdir())
                assert all((folder_a / n).read_bytes() == (tmp_path / 'b' / split / task / side / n).read_bytes()
                           for n in names)
    tasks = [{'name': task, 'source': {'dataroot_lq': str(tmp_path / 'a' / 'train' / task / 'lq'),
                                       'dataroot_gt': str(tmp_path / 'a' / 'train' / task / 'gt')}}
             for task in demo.DEMO_TASKS]
    dataset = build_dataset({'type': 'MixedDegradationDataset', 'name': 'demo', 'phase': 'train', 'tasks': tasks,
                             'gt_size': 32})
    sample = dataset[len(dataset) - 1]
    assert sample['task'] == 'delowlight' and float(sample['lq'].mean()) < float(sample['gt'].mean())
