"""DACLIPModel: controller training through vlunet/train.py (captions, accuracy, heat-maps, resume), the
optimiser rules, the 2-process gathered loss, clip_report, and VLU-Net guided by DA-CLIP."""
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys

import cv2
import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet.losses.daclip.daclip_loss import DACLIPLoss
from vlunet.models.daclip.daclip_model import WarmupCosineSchedule

from basicsr.utils.registry import MODEL_REGISTRY

from helpers import REPO_ROOT, run_entry, smooth_image, write_image
from helpers.networks import TINY_DACLIP_CONFIG, TINY_DACLIP_NAME

NAMES = ['noisy', 'hazy', 'low-light']
DEGRADATIONS = [{'type': 'gaussian_noise', 'sigma': 50}, {'type': 'haze'}, {'type': 'low_light'}]
TINY_VLUNET = {'type': 'VLUNet', 'de_dim': 3, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
               'heads': [1, 1, 1, 1], 'key_size': 8}
ENV = {'PYTHONPATH': REPO_ROOT}


def _tasks(root) -> list:
    return [{'name': name, 'text': name, 'captions': str(root / 'captions.tsv'),
             'source': {'dataroot_gt': str(root / 'clean'), 'degradations': [degradation]}}
            for name, degradation in zip(NAMES, DEGRADATIONS)]


def _options(root, total_iter: int = 12) -> dict:
    return {
        'name': 'daclip_tiny', 'model_type': 'DACLIPModel', 'num_gpu': 0, 'manual_seed': 0,
        'network_clip': {'type': 'DACLIP', 'backbone': str(root / f'{TINY_DACLIP_NAME}.json'), 'pretrained': None},
        'degradation_prompts': NAMES,
        'datasets': {
            'train': {'name': 'train', 'type': 'MixedDegradationDataset', 'tasks': _tasks(root), 'gt_size': 32,
                      'use_shuffle': True, 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 12,
                      'dataset_enlarge_ratio': 1},
            'val': {'name': 'val', 'type': 'MixedDegradationDataset', 'tasks': _tasks(root), 'gt_size': 32}},
        'path': {'pretrain_network_clip': None, 'resume_state': None},
        'train': {'clip_opt': {'type': 'DACLIPLoss'},
                  'optim_clip': {'type': 'AdamW', 'lr': 3e-3, 'weight_decay': 0.05, 'betas': [0.9, 0.98],
                                 'eps': 1e-6},
                  'scheduler': {'type': 'WarmupCosineLR', 'warmup': 1}, 'total_iter': total_iter, 'warmup_iter': -1},
        'val': {'val_freq': 12, 'save_img': False, 'metrics': {'accuracy': {'type': 'calculate_degradation_accuracy'}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 12, 'use_tb_logger': False},
    }


def _write_yaml(path, opt: dict) -> str:
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return str(path)


def _log(root) -> str:
    return ''.join(open(p, encoding='utf-8').read()
                   for p in sorted(glob.glob(str(root / 'experiments/daclip_tiny/*.log'))))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp('daclip_training')
    captions = []
    for i in range(4):
        write_image(str(root / 'clean' / f'{i}.png'), smooth_image(i, 40, 40))
        if i < 3:  # image 3 has no caption: the content loss skips it
            captions.append(f'{i}.png\ta smooth pattern number {i}, with stripes')
    (root / 'captions.tsv').write_text('\n'.join(captions) + '\n')
    (root / f'{TINY_DACLIP_NAME}.json').write_text(json.dumps(TINY_DACLIP_CONFIG))
    result = run_entry('train', ['-opt', _write_yaml(root / 'train.yml', _options(root))], str(root), ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.multiprocess
def test_training_lowers_the_loss_and_reports_accuracy_and_heatmaps(trained):
    log = _log(trained)
    total = [float(v) for v in re.findall(r'l_total: ([0-9.e+-]+)', log)]
    degradation = [float(v) for v in re.findall(r'l_degradation: ([0-9.e+-]+)', log)]
    assert len(total) == len(degradation) == 12 and re.search(r'l_content: [1-9]', log)
    assert sum(total[-3:]) / 3 < sum(total[:3]) / 3 - 0.2, total
    assert sum(degradation[-3:]) / 3 < 0.85 * sum(degradation[:3]) / 3, degradation
    before, after = (float(re.search(rf'Validation val \(iteration {i}\)\n(?:.*\n)*?\s+# accuracy: ([0-9.]+)', log)[1])
                     for i in (0, 12))
    assert after > before + 10, (before, after)
    assert '| hazy | 4 |' in log and '| all | 12 |' in log
    for iteration in (0, 12):
        assert cv2.imread(str(trained / f'experiments/daclip_tiny/visualization/val/similarity_{iteration}.png')) \
            is not None


@pytest.mark.multiprocess
def test_checkpoint_and_state_hold_only_the_trainable_parts(trained):
    from vlunet.archs.daclip.daclip_arch import DACLIP
    model = DACLIP(backbone=str(trained / f'{TINY_DACLIP_NAME}.json'))
    checkpoint = torch.load(trained / 'experiments/daclip_tiny/models/net_clip_12.pth', weights_only=True)
    assert set(checkpoint['params']) == set(model.trainable_state_dict())
    assert not any(k.startswith('backbone.') for k in checkpoint['params'])
    state = torch.load(trained / 'experiments/daclip_tiny/training_states/12.state', weights_only=False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(state['optimizers'][0]['state']) == len(trainable)
    groups = state['optimizers'][0]['param_groups']
    assert [g['weight_decay'] for g in groups] == [0.0, 0.05] and groups[0]['betas'] == (0.9, 0.98)
    assert 0 <= checkpoint['params']['logit_scale'] <= torch.log(torch.tensor(100.0)) + 1e-6
    assert model.load_weights(str(trained / 'experiments/daclip_tiny/models/net_clip_12.pth')) == \
        'controller, zero linears and temperature'
    assert any(torch.count_nonzero(p) for p in model.control_linears.parameters())


@pytest.mark.multiprocess
def test_resume_continues_from_the_controller_checkpoint(trained):
    opt = _options(trained, total_iter=14)
    result = run_entry('train', ['-opt', _write_yaml(trained / 'resume.yml', opt), '--auto_resume'], str(trained), ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    log = _log(trained)
    assert re.search(r'Loaded the DA-CLIP controller, zero linears and temperature from .*net_clip_12\.pth', log)
    assert re.search(r'iter:\s+13,', log) and re.search(r'iter:\s+14,', log)
    assert log.count('Validation val (iteration 0)') == 1


@pytest.mark.multiprocess
def test_clip_report_prints_table4_layout_for_daclip(trained):
    result = subprocess.run(
        [sys.executable, osp.join(REPO_ROOT, 'scripts', 'clip_report.py'), '-opt', str(trained / 'train.yml'),
         '--weights', 'experiments/daclip_tiny/models/net_clip_12.pth', '--out', 'report'],
        cwd=trained, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1', **ENV))
    assert result.returncode == 0, result.stderr[-3000:]
    assert '| Model | noisy | hazy | low-light | Average |' in result.stdout
    assert re.search(r'\| net_clip_12\.pth( \| [0-9.]+){4} \|', result.stdout)
    assert cv2.imread(str(trained / 'report/similarity.png')) is not None


def _unit_model(config_path: str, **extra):
    opt = {'name': 'unit', 'model_type': 'DACLIPModel', 'num_gpu': 0, 'is_train': True, 'dist': False,
           'network_clip': {'type': 'DACLIP', 'backbone': config_path}, 'degradation_prompts': NAMES, 'path': {},
           'train': {'clip_opt': {'type': 'DACLIPLoss'}, 'total_iter': 10,
                     'optim_clip': {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 0.05}}, **extra}
    return MODEL_REGISTRY.get('DACLIPModel')(opt)


def test_backbone_gets_no_gradient_no_optimiser_state_and_the_temperature_is_clamped(tmp_path):
    config = tmp_path / f'{TINY_DACLIP_NAME}.json'
    config.write_text(json.dumps(TINY_DACLIP_CONFIG))
    model = _unit_model(str(config))
    with torch.no_grad():
        model.clip.logit_scale.fill_(4.6)
    model.optimizer_clip.param_groups[0]['lr'] = 1.0  # the temperature would overshoot ln 100 without the clamp
    model.feed_data({'lq': torch.rand(4, 3, 32, 32), 'task_index': torch.tensor([0, 1, 1, 2]),
                     'text': [NAMES[i] for i in (0, 1, 1, 2)], 'caption': ['a cat', '', 'a dog', 'a tree']})
    model.optimize_parameters(1)
    assert all(p.grad is None for p in model.clip.backbone.parameters())
    assert all(p.grad is not None for p in model.clip.control_linears.parameters())
    optimised = {id(p) for group in model.optimizer_clip.param_groups for p in group['params']}
    assert not optimised & {id(p) for p in model.clip.backbone.parameters()}
    no_decay = {id(p) for p in model.optimizer_clip.param_groups[0]['params']}
    assert id(model.clip.logit_scale) in no_decay and id(model.clip.control_linears[0].bias) in no_decay
    assert id(model.clip.controller.transformer.resblocks[0].ln_1.weight) in no_decay
    assert id(model.clip.control_linears[0].weight) not in no_decay
    assert id(model.clip.controller.positional_embedding) not in no_decay  # 2-d: decayed, as open_clip
    assert model.clip.logit_scale.item() <= torch.log(torch.tensor(100.0)).item() + 1e-6
    assert not model.clip.backbone.training and model.clip.controller.training


def test_warmup_cosine_schedule_is_open_clips():
    schedule = WarmupCosineSchedule(warmup=4, total=12)
    assert [schedule(k) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule(8) == pytest.approx(0.5) and schedule(12) == pytest.approx(0.0)


DISTRIBUTED_SCRIPT = '''
import sys, torch
from torch import distributed
distributed.init_process_group('gloo')
from vlunet.losses.daclip.daclip_loss import DACLIPLoss
rank = distributed.get_rank()
generator = torch.Generator().manual_seed(0)
features = [torch.randn(8, 16, generator=generator) for _ in range(4)]
has_caption = torch.tensor([True, False, True, True, False, True, True, True])
part = slice(4 * rank, 4 * rank + 4)
content, degradation = (f[part].clone().requires_grad_(True) for f in features[:2])
losses = DACLIPLoss()(content, degradation, features[2][part], features[3][part], torch.tensor(7.0), has_caption[part])
sum(losses).backward()
torch.save({'losses': torch.stack(losses).detach(), 'grads': [content.grad, degradation.grad]}, sys.argv[1] % rank)
'''


@pytest.mark.multiprocess
def test_two_process_gathered_loss_equals_the_one_process_loss(tmp_path):
    script = tmp_path / 'ddp_loss.py'
    script.write_text(DISTRIBUTED_SCRIPT)
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                             str(script), str(tmp_path / 'rank%d.pt')], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS='1', **ENV))
    assert result.returncode == 0, result.stderr[-3000:]
    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(8, 16, generator=generator) for _ in range(4)]
    has_caption = torch.tensor([True, False, True, True, False, True, True, True])
    content, degradation = (f.clone().requires_grad_(True) for f in features[:2])
    losses = DACLIPLoss()(content, degradation, features[2], features[3], torch.tensor(7.0), has_caption)
    sum(losses).backward()
    for rank in (0, 1):
        saved = torch.load(tmp_path / f'rank{rank}.pt', weights_only=True)
        assert torch.allclose(saved['losses'], torch.stack(losses).detach(), atol=1e-6)
        part = slice(4 * rank, 4 * rank + 4)  # each rank's gradient is that of its own features
        assert torch.allclose(saved['grads'][0], content.grad[part], atol=1e-6)
        assert torch.allclose(saved['grads'][1], degradation.grad[part], atol=1e-6)


@pytest.mark.multiprocess
def test_vlunet_guided_by_daclip_trains_a_step(trained, tmp_path):
    weights = str(trained / 'experiments/daclip_tiny/models/net_clip_12.pth')
    opt = {'name': 'guided', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'is_train': True, 'dist': False,
           'network_g': TINY_VLUNET,
           'degradation_encoder': {'type': 'DACLIP', 'backbone': str(trained / f'{TINY_DACLIP_NAME}.json')},
           'path': {'models': str(tmp_path), 'training_states': str(tmp_path),
                    'pretrain_network_degradation_encoder': weights},
           'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3}, 'total_iter': 2,
                     'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                     'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}}}
    model = MODEL_REGISTRY.get('VLUNetModel')(opt)
    encoder = model.degradation_encoder
    lq = torch.rand(2, 3, 24, 24)
    model.feed_data({'lq': lq, 'gt': lq.clamp(0.2, 0.8)})
    with torch.no_grad():
        assert torch.equal(model.degradation, encoder.encode(lq)[1])
    model.optimize_parameters(1)
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())
    assert any(p.grad is not None for p in model.net_g.parameters())
    optimised = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert not optimised & {id(p) for p in encoder.parameters()}
    model.save_network(model.net_g, 'net_g', 1)
    saved = torch.load(tmp_path / 'net_g_1.pth', weights_only=True)['params']
    assert not any(k.startswith(('backbone.', 'controller.', 'control_linears.')) for k in saved)


@pytest.mark.parametrize('dtype', ['bf16', 'fp16'])
def test_mixed_precision_training_step(tmp_path, dtype):
    config = tmp_path / f'{TINY_DACLIP_NAME}.json'
    config.write_text(json.dumps(TINY_DACLIP_CONFIG))
    model = _unit_model(str(config), amp={'enabled': True, 'dtype': dtype})
    assert (model.grad_scaler is not None) == (dtype == 'fp16')  # fp16 needs the GradScaler (CUDA in practice)
    model.feed_data({'lq': torch.rand(3, 3, 32, 32), 'task_index': torch.tensor([0, 1, 2]), 'text': NAMES,
                     'caption': ['a cat', 'a dog', 'a tree']})  # the zero linears learn through the content loss
    before = model.clip.control_linears[0].weight.detach().clone()
    model.optimize_parameters(1)
    assert all(torch.isfinite(torch.tensor(v)) for v in model.log_dict.values())
    assert not torch.equal(model.clip.control_linears[0].weight, before)
    assert model.clip.control_linears[0].weight.dtype == torch.float32
