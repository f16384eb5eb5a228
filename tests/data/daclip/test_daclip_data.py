"""DA-CLIP data: captions files (DA-CLIP CSV and per-task), captions in MixedDegradationDataset samples,
and DA-CLIP's folder layout paired by sorted order."""
import os.path as osp

import pytest
from torch.utils.data import DataLoader

import vlunet  # noqa: F401
from vlunet.data.daclip.daclip_captions import read_captions
from vlunet.data.mixed_degradation_dataset import MixedDegradationDataset
from vlunet.data.pair_sources import resolve_source

from helpers import smooth_image, write_image


def test_daclip_csv_captions_split_at_the_last_separator_and_match_by_path_tail(tmp_path):
    path = tmp_path / 'daclip_train.csv'
    path.write_text('filepath\ttitle\n'
                    '/elsewhere/universal/train/noisy/LQ/1.png\ta sign: stop here: noisy\n'
                    '/elsewhere/universal/train/hazy/LQ/1.png\ta foggy street: hazy\n'
                    'datasets/universal/train/hazy/LQ/2.png\ta boat on a lake: hazy\n')
    captions = read_captions(str(path))
    assert len(captions) == 3
    assert captions.caption('datasets/universal/train/noisy/LQ/1.png') == 'a sign: stop here'
    assert captions.caption('/data/train/hazy/LQ/1.png') == 'a foggy street'
    assert captions.caption('1.png') == ''  # two files are named 1.png: ambiguous
    assert captions.caption('2.png') == 'a boat on a lake'
    assert captions.caption('/data/train/hazy/LQ/3.png') == ''


def test_per_task_captions_file_and_bad_rows(tmp_path):
    path = tmp_path / 'captions.tsv'
    path.write_text('a.png\ta red car\n\nsub/b.png\ta tree\n')
    captions = read_captions(str(path))
    assert captions.caption(str(tmp_path / 'x' / 'a.png')) == 'a red car'
    assert captions.caption('other/sub/b.png') == 'a tree'
    bad = tmp_path / 'bad.csv'
    bad.write_text('filepath\ttitle\nx.png\tno degradation part\n')
    with pytest.raises(ValueError, match=r'bad.csv:2: title .* is not "<caption>: <degradation name>"'):
        read_captions(str(bad))
    with pytest.raises(FileNotFoundError, match='missing.csv'):
        read_captions(str(tmp_path / 'missing.csv'))


def test_samples_carry_captions_and_empty_ones_where_missing(tmp_path):
    for i in range(2):
        write_image(str(tmp_path / 'clean' / f'{i}.png'), smooth_image(i, 20, 20))
    (tmp_path / 'captions.tsv').write_text('0.png\ta striped pattern\n')
    source = {'dataroot_gt': str(tmp_path / 'clean'), 'degradations': [{'type': 'gaussian_noise', 'sigma': 50}]}
    tasks = [{'name': 'noisy', 'text': 'noisy', 'source': source, 'captions': str(tmp_path / 'captions.tsv')},
             {'name': 'hazy', 'text': 'hazy', 'source': {**source, 'degradations': [{'type': 'haze'}]}}]
    dataset = MixedDegradationDataset({'tasks': tasks, 'gt_size': 16, 'phase': 'val'})
    assert [dataset[i]['caption'] for i in range(4)] == ['a striped pattern', '', '', '']
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch['caption'] == ['a striped pattern', '', '', ''] and batch['text'] == ['noisy', 'noisy', 'hazy', 'hazy']
    without = MixedDegradationDataset({'tasks': tasks[1:], 'gt_size': 16, 'phase': 'val'})
    assert 'caption' not in without[0]


def test_daclip_layout_pairs_by_sorted_order(tmp_path):
    lq, gt = tmp_path / 'rainy' / 'LQ', tmp_path / 'rainy' / 'GT'
    for i in range(3):
        write_image(str(lq / f'rain-{i:03d}.png'), smooth_image(i, 16, 16))
        write_image(str(gt / f'norain-{i:03d}.png'), smooth_image(i, 16, 16))
    source = resolve_source('tasks[0].source', 'rainy', {'dataroot_lq': str(lq), 'dataroot_gt': str(gt),
                                                         'pair_by': 'sorted_order'})
    assert [(osp.basename(i['lq_path']), osp.basename(i['gt_path'])) for i in source.items] == [
        (f'rain-{i:03d}.png', f'norain-{i:03d}.png') for i in range(3)]
    write_image(str(gt / 'norain-003.png'), smooth_image(3, 16, 16))
    with pytest.raises(ValueError, match='3 images in .* but 4 in'):
        resolve_source('tasks[0].source', 'rainy', {'dataroot_lq': str(lq), 'dataroot_gt': str(gt),
                                                     'pair_by': 'sorted_order'})
    with pytest.raises(ValueError, match='pair_by: .by_size.; use name'):
        resolve_source('tasks[0].source', 'rainy', {'dataroot_lq': str(lq), 'dataroot_gt': str(gt),
                                                     'pair_by': 'by_size'})
