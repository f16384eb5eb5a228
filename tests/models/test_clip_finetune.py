"""CLIPFinetuneModel: adapter-only training, train/resume via vlunet/train.py, accuracy metric, heat-maps, report."""
import csv
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet.guidance.degradation_classification import OFFICIAL_PROMPTS, check_labels, parse_prompts
from vlunet.models.clip_finetune_model import CLIPFinetuneModel

from helpers import REPO_ROOT, TINY_CLIP_CONFIG, TINY_CLIP_NAME, run_entry, smooth_image, write_image

TASKS = ('denoise_50', 'dehaze', 'delowlight')
PROMPTS = ['image with large amount of noise', 'image with haze', 'image with low light']


def _options(root) -> dict:
    tasks = [{'name': name, 'source': {'dataroot_gt': str(root / 'clean')}} for name in TASKS]
    return {
        'name': 'clip_tiny', 'model_type': 'CLIPFinetuneModel', 'num_gpu': 0, 'manual_seed': 0,
        'network_clip': {'type': 'DegradationCLIP', 'backbone': str(root / f'{TINY_CLIP_NAME}.json'),
                         'pretrained': None},
        'degradation_prompts': PROMPTS,
        'datasets': {
            'train': {'name': 'train', 'type': 'MixedDegradationDataset', 'tasks': tasks, 'gt_size': 32,
                      'use_shuffle': True, 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 12,
                      'dataset_enlarge_ratio': 1},
            'val': {'name': 'val', 'type': 'MixedDegradationDataset', 'tasks': tasks, 'gt_size': 32,
                    'fixed_degradations': True, 'use_hflip': False, 'use_rot': False}},
        'path': {'pretrain_network_clip': None, 'resume_state': None},
        'train': {'clip_opt': {'type': 'MultiPositiveContrastiveLoss'}, 'optim_clip': {'type': 'Adam', 'lr': 1e-3},
                  'total_iter': 12},
        'val': {'val_freq': 12, 'save_img': False,
                'metrics': {'accuracy': {'type': 'calculate_degradation_accuracy'},
                            'accuracy_haze': {'type': 'calculate_degradation_accuracy', 'label': 1}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 12, 'use_tb_logger': True},
    }


def _write_yaml(path, opt: dict) -> str:
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return str(path)


def _log(root) -> str:
    return ''.join(open(p, encoding='utf-8').read()
                   for p in sorted(glob.glob(str(root / 'experiments/clip_tiny/*.log'))))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp('clip_finetune')
    for i in range(4):
        write_image(str(root / 'clean' / f'{i}.png'), smooth_image(i, 40, 40))
    (root / f'{TINY_CLIP_NAME}.json').write_text(json.dumps(TINY_CLIP_CONFIG))
    result = run_entry('train', ['-opt', _write_yaml(root / 'train.yml', _options(root))], str(root))
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.multiprocess
def test_training_lowers_the_loss_and_logs_the_accuracy_metric(trained):
    log = _log(trained)
    losses = [float(v) for v in re.findall(r'l_clip: ([0-9.e+-]+)', log)]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert 'Validation val (iteration 0)' in log and 'Validation val (iteration 12)' in log
    assert re.search(r'# accuracy: [0-9.]+\tBest', log) and re.search(r'# accuracy_haze: [0-9.]+', log)
    assert '| dehaze | 4 |' in log and '| all | 12 |' in log
    assert glob.glob(str(trained / 'tb_logger/clip_tiny/events.*'))


@pytest.mark.multiprocess
def test_heatmaps_before_and_after_fine_tuning(trained):
    folder = trained / 'experiments/clip_tiny/visualization/val'
    images, matrices = {}, {}
    for iteration in (0, 12):
        images[iteration] = cv2.imread(str(folder / f'similarity_{iteration}.png'))
        assert images[iteration] is not None and images[iteration].shape[0] > 3 * 72
        with open(folder / f'similarity_{iteration}.csv', encoding='utf-8') as f:
            rows = list(csv.reader(f))
        assert rows[0] == ['true \\ prompt', *PROMPTS] and [r[0] for r in rows[1:]] == list(TASKS)
        matrices[iteration] = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
        np.testing.assert_allclose(matrices[iteration].sum(axis=1), 1.0, atol=1e-5)
    # Fine-tuning moved the probabilities towards the true prompts, and the drawn maps show it.
    assert np.abs(matrices[12] - matrices[0]).max() > 0.05
    assert np.trace(matrices[12]) > np.trace(matrices[0]) + 0.1, (matrices[0], matrices[12])
    assert images[12].shape != images[0].shape or np.mean(images[12] != images[0]) > 0.01


@pytest.mark.multiprocess
def test_checkpoint_holds_adapters_and_temperature_only(trained):
    models = trained / 'experiments/clip_tiny/models'
    checkpoint = torch.load(models / 'net_clip_12.pth', weights_only=True)
    assert set(checkpoint) == {'params', 'loss', 'scorer'}  # scorer: what inference detects with
    assert checkpoint['scorer'] == {'name': 'cosine', 'temperature': float(checkpoint['loss']['log_temperature'].exp())}
    assert len(checkpoint['params']) == 24 and all(k.startswith(('image_adapter.', 'text_adapter.'))
                                                   for k in checkpoint['params'])
    assert set(checkpoint['loss']) == {'log_temperature'}
    state = torch.load(trained / 'experiments/clip_tiny/training_states/12.state', weights_only=False)
    assert len(state['optimizers'][0]['state']) == 24 + 1  # adapter tensors + the temperature, no backbone


@pytest.mark.multiprocess
def test_resume_continues_from_the_adapter_checkpoint(trained):
    opt = _options(trained)
    opt['train']['total_iter'] = 14
    result = run_entry('train', ['-opt', _write_yaml(trained / 'resume.yml', opt), '--auto_resume'], str(trained))
    assert result.returncode == 0, result.stderr[-3000:]
    log = _log(trained)
    assert 'Resuming training from epoch' in log
    assert re.search(r'Loaded the CLIP adapters and loss state from .*net_clip_12\.pth', log)
    assert re.search(r'iter:\s+13,', log) and re.search(r'iter:\s+14,', log)
    assert osp.isfile(trained / 'experiments/clip_tiny/models/net_clip_latest.pth')
    assert log.count('Validation val (iteration 0)') == 1  # no "before training" evaluation on resume


@pytest.mark.multiprocess
def test_clip_report_prints_accuracy_and_writes_heatmap(trained):
    result = subprocess.run(
        [sys.executable, osp.join(REPO_ROOT, 'scripts', 'clip_report.py'), '-opt', str(trained / 'train.yml'),
         '--weights', 'experiments/clip_tiny/models/net_clip_12.pth', '--out', 'report'],
        cwd=trained, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stderr[-3000:]
    assert '| Degradation | Images | Accuracy (%) |' in result.stdout and '| all | 12 |' in result.stdout
    assert cv2.imread(str(trained / 'report/similarity.png')) is not None
    assert osp.isfile(trained / 'report/similarity.csv')


def test_backbone_gets_no_gradient_and_no_optimiser_state(tmp_path, tiny_clip_name):
    opt = {'name': 'unit', 'model_type': 'CLIPFinetuneModel', 'num_gpu': 0, 'is_train': True, 'dist': False,
           'network_clip': {'type': 'DegradationCLIP', 'backbone': tiny_clip_name},
           'path': {}, 'train': {'clip_opt': {'type': 'DegradationContrastiveLoss'},
                                 'optim_clip': {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 0.01}}}
    model = CLIPFinetuneModel(opt)
    assert model.prompts == list(OFFICIAL_PROMPTS)
    model.feed_data({'lq': torch.rand(4, 3, 32, 32), 'task_index': torch.tensor([0, 3, 3, 6]),
                     'text': [OFFICIAL_PROMPTS[i] for i in (0, 3, 3, 6)]})
    model.optimize_parameters(1)
    assert all(p.grad is None for p in model.clip.backbone.parameters())
    optimised = {id(p) for group in model.optimizer_clip.param_groups for p in group['params']}
    assert not optimised & {id(p) for p in model.clip.backbone.parameters()}
    assert set(map(id, model.optimizer_clip.state)) == optimised
    assert len(optimised) == 24 + 1
    assert model.optimizer_clip.param_groups[1]['weight_decay'] == 0.0  # the temperature
    assert not model.clip.backbone.training


def test_labels_must_match_the_prompts():
    check_labels(PROMPTS, torch.tensor([0, 2]), [PROMPTS[0], PROMPTS[2]], ['denoise_50', 'delowlight'])
    with pytest.raises(ValueError, match='dehaze: its text .image with haze. differs from degradation_prompts'):
        check_labels(PROMPTS, torch.tensor([2]), ['image with haze'], ['dehaze'])
    with pytest.raises(ValueError, match='task_index 3 has no degradation prompt'):
        check_labels(PROMPTS, torch.tensor([3]))
    with pytest.raises(ValueError, match='distinct'):
        parse_prompts(['a', 'a'])
    with pytest.raises(ValueError, match='non-empty list'):
        parse_prompts('image with haze')
