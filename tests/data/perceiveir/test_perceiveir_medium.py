"""Perceive-IR medium-quality images: stable two-fold split and scripts/perceiveir_make_medium.py (split, restore)."""
import hashlib
import importlib.util
import os.path as osp
import random

import numpy as np
import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet.archs.restormer_arch import Restormer
from vlunet.data.perceiveir.perceiveir_folds import fold_of_keys, line_key, other_fold_file, split_meta_info_file
from vlunet.data.perceiveir.perceiveir_triplet_dataset import QualityTripletDataset

from helpers import REPO_ROOT, smooth_image, write_image

SCRIPT = osp.join(REPO_ROOT, 'scripts', 'perceiveir_make_medium.py')
RESTORE = ['restore', '--opt', 'fold0.yml', '--weights', 'fold0.pth', '--out', 'medium', '--device', 'cpu']
TINY_RESTORMER = {'type': 'Restormer', 'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
                  'heads': [1, 1, 1, 1]}


def test_fold_split_is_stable_balanced_and_order_free():
    keys = [f'rain/rain-{i:03d}.png' for i in range(201)]
    folds = fold_of_keys(keys)
    assert sorted(folds.count(f) for f in (0, 1)) == [100, 101]  # equal halves (n // 2 in fold 0)
    shuffled = keys[:]
    random.Random(0).shuffle(shuffled)
    assert dict(zip(shuffled, fold_of_keys(shuffled))) == dict(zip(keys, folds))  # independent of the order
    # SHA-1 order, not Python's salted hash: the first half by hex digest is fold 0
    by_digest = sorted(keys, key=lambda k: hashlib.sha1(k.encode('utf-8')).hexdigest())
    assert {k for k, f in zip(keys, folds) if f == 0} == set(by_digest[:100])
    assert folds[:8] == fold_of_keys(keys)[:8]
    with pytest.raises(ValueError, match='distinct'):
        fold_of_keys(['a.png', 'a.png'])


def test_split_files_partition_the_meta_info_lines(tmp_path):
    lines = [f'rain/{i}.png,clean/{i}.png' for i in range(9)]
    (tmp_path / 'derain_train.txt').write_text('\n'.join(lines) + '\n\n')
    fold0, fold1 = split_meta_info_file(str(tmp_path / 'derain_train.txt'), str(tmp_path / 'folds'))
    assert fold0.endswith('folds/derain_train_fold0.txt') and other_fold_file(fold0) == fold1
    parts = [open(p, encoding='utf-8').read().splitlines() for p in (fold0, fold1)]
    assert (len(parts[0]), len(parts[1])) == (4, 5) and sorted(parts[0] + parts[1]) == sorted(lines)
    assert line_key(lines[0]) == 'rain/0.png' and line_key('0001.png (64,64,3)') == '0001.png'
    with pytest.raises(ValueError, match='not a fold file'):
        other_fold_file('derain_train.txt')


def _dataset(root) -> dict:
    """Rain pairs (lq,gt list) and clean images for synthetic denoising under root/datasets."""
    for i in range(4):
        clean = smooth_image(i, 20, 27)
        write_image(str(root / 'datasets/clean' / f'{i}.png'), clean)
        write_image(str(root / 'datasets/rain' / f'rain-{i}.png'),
                    np.clip(clean.astype(int) + 40, 0, 255).astype(np.uint8))
    (root / 'datasets/rain_train.txt').write_text(''.join(f'rain/rain-{i}.png,clean/{i}.png\n' for i in range(4)))
    (root / 'datasets/clean_train.txt').write_text(''.join(f'clean/{i}.png\n' for i in range(4)))
    folds = 'datasets/folds'
    return {'name': 'fold0', 'model_type': 'VLUNetModel', 'network_g': TINY_RESTORMER, 'datasets': {'train': {
        'type': 'MixedDegradationDataset', 'tasks': [
            {'name': 'derain', 'source': {'dataroot_lq': 'datasets', 'dataroot_gt': 'datasets',
                                          'meta_info_file': f'{folds}/rain_train_fold0.txt'}},
            {'name': 'denoise_25', 'source': {'dataroot_gt': 'datasets',
                                              'meta_info_file': f'{folds}/clean_train_fold0.txt'}}]}}}


def _script():
    spec = importlib.util.spec_from_file_location('perceiveir_make_medium', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_medium = _script()


def test_make_medium_restores_the_other_fold_and_writes_a_triplet_meta_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt = _dataset(tmp_path)
    (tmp_path / 'fold0.yml').write_text(yaml.safe_dump(opt))
    torch.manual_seed(0)
    net = Restormer(**{k: v for k, v in TINY_RESTORMER.items() if k != 'type'})
    torch.save({'params': net.state_dict()}, tmp_path / 'fold0.pth')

    make_medium.main(['split', 'datasets/rain_train.txt', 'datasets/clean_train.txt', '--out', 'datasets/folds'])
    held_out = {task: (tmp_path / f'datasets/folds/{task}_train_fold1.txt').read_text().split()
                for task in ('rain', 'clean')}
    assert len(held_out['rain']) == len(held_out['clean']) == 2

    make_medium.main(RESTORE)
    dataset = QualityTripletDataset({'meta_info_file': str(tmp_path / 'medium/meta_info.txt'), 'crop_size': 16,
                                     'phase': 'val'})
    assert len(dataset) == 4  # the fold-1 half of both tasks, nothing of fold 0
    rain = [t for t in dataset.triplets if '/derain/' in t['medium_path']]
    assert sorted(osp.relpath(t['lq_path'], tmp_path / 'datasets') for t in rain) == sorted(
        line.split(',')[0] for line in held_out['rain'])
    noise = [t for t in dataset.triplets if '/denoise_25/' in t['medium_path']]
    assert all('/denoise_25/degraded/clean/' in t['lq_path'] and osp.isfile(t['lq_path']) for t in noise)
    sample = dataset[0]
    assert {k: tuple(sample[k].shape) for k in ('lq', 'medium', 'gt')} == \
        {k: (3, 16, 16) for k in ('lq', 'medium', 'gt')}
    # the medium image is the fold-0 network's restoration of the degraded image
    from vlunet.inference import load_image
    degraded = torch.from_numpy(load_image(rain[0]['lq_path']).transpose(2, 0, 1))[None]
    with torch.no_grad():
        expected = net.eval()(degraded).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(load_image(rain[0]['medium_path']) - expected).max() <= 1 / 255 + 1e-6
    # the noisy input is a fixed, seeded degradation: a second run writes the same files
    first = (tmp_path / 'medium/denoise_25/degraded/clean').iterdir().__next__()
    before = first.read_bytes()
    make_medium.main(RESTORE)
    assert first.read_bytes() == before
    assert len(QualityTripletDataset({'meta_info_file': str(tmp_path / 'medium/meta_info.txt'),
                                      'crop_size': 16}).triplets) == 4  # rerun replaces, never duplicates


def test_restore_needs_the_split_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'fold0.yml').write_text(yaml.safe_dump(_dataset(tmp_path)))
    torch.save({'params': Restormer(**{k: v for k, v in TINY_RESTORMER.items() if k != 'type'}).state_dict()},
               tmp_path / 'fold0.pth')
    with pytest.raises(FileNotFoundError, match='run the split command first'):
        make_medium.main(RESTORE)
