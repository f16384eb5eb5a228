"""Perceive-IR stage 2: PerceiveIRRestorationDataset (second crop, labels, proxies), the difficulty probe, and
PerceiveIRModel training with all four losses through ``vlunet/train.py`` (tiny PerceiveIR, tiny CLIP and DINO,
random VGG-16), its checkpoints and resume."""
import glob
import json
import os.path as osp
import re

import cv2
import numpy as np
import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet.data.perceiveir.perceiveir_restoration_dataset import PerceiveIRRestorationDataset
from vlunet.losses.perceiveir.perceiveir_perceptual_loss import difficulty_weights
from vlunet.models.checkpoint_options import OPTIONS_KEY
from vlunet.models.perceiveir.perceiveir_difficulty_probe import DifficultyProbe, psnr_per_image

from helpers import TINY_CLIP_CONFIG, TINY_CLIP_NAME, run_entry, smooth_image, write_image

SIZE = (40, 44)  # height, width of the generated images
PROXY_SCALE = 0.5  # proxies are gt * 0.5: a pixel-wise relation that survives identical crops and flips
TINY_PERCEIVEIR = {'type': 'PerceiveIR', 'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
                   'heads': [1, 1, 1, 1], 'degradation_dim': 16, 'semantic_pretrained': None,
                   'semantic_layers': [1, 2, 3, 4], 'semantic_image_size': 32,
                   'semantic_kwargs': {'embed_dim': 32, 'depth': 4, 'num_heads': 2, 'patch_size': 8}}


def _write_task(root, name: str, count: int, paired: bool, proxies_for=()) -> None:
    """``root/<name>/{lq,gt}/<name>-<i>.png`` (lq only when paired) and proxies ``root/proxies/<name>/...``."""
    rng = np.random.default_rng(len(name))
    for i in range(count):
        gt = smooth_image(i + 10 * len(name), *SIZE)
        write_image(str(root / name / 'gt' / f'{name}-{i}.png'), gt)
        if paired:
            lq = np.clip(gt * 0.7 + rng.normal(0, 8, gt.shape), 0, 255).round().astype(np.uint8)
            write_image(str(root / name / 'lq' / f'{name}-{i}.png'), lq)
        if i in proxies_for:  # nested folder: proxies are found recursively, by file stem
            proxy = (gt * PROXY_SCALE).round().astype(np.uint8)
            write_image(str(root / 'proxies' / name / 'sub' / f'{name}-{i}.png'), proxy)


def _dataset_options(root, **extra) -> dict:
    tasks = [{'name': 'derain', 'source': {'dataroot_lq': str(root / 'derain' / 'lq'),
                                           'dataroot_gt': str(root / 'derain' / 'gt')}},
             {'name': 'denoise_15', 'source': {'dataroot_gt': str(root / 'denoise_15' / 'gt')}},
             {'name': 'denoise_25', 'source': {'dataroot_gt': str(root / 'denoise_15' / 'gt')}}]
    return {'name': 'stage2', 'type': 'PerceiveIRRestorationDataset', 'tasks': tasks, 'gt_size': 16,
            'use_hflip': True, 'use_rot': True, 'phase': 'train',
            'proxies': [{'name': 'half', 'dataroot': str(root / 'proxies' / '{task}')}], **extra}


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('perceiveir_data')
    _write_task(root, 'derain', 3, paired=True, proxies_for=(0, 2))
    _write_task(root, 'denoise_15', 2, paired=False, proxies_for=(1,))
    return root


def test_proxies_are_matched_by_name_cropped_and_flipped_like_the_ground_truth(data_root):
    dataset = PerceiveIRRestorationDataset(_dataset_options(data_root))
    assert dataset.proxy_names == ['half'] and len(dataset) == 3 + 2 + 2
    expected_mask = {('derain', 0): True, ('derain', 1): False, ('derain', 2): True, ('denoise_15', 0): False,
                     ('denoise_15', 1): True, ('denoise_25', 0): False, ('denoise_25', 1): False}  # no folder
    for index in range(len(dataset)):
        for _ in range(4):  # random crops, flips and rotations
            sample = dataset[index]
            key = (sample['task'], int(osp.splitext(sample['gt_path'])[0].rsplit('-', 1)[1]))
            assert sample['proxies'].shape == (1, 3, 16, 16) and sample['proxy_mask'].tolist() == [expected_mask[key]]
            if expected_mask[key]:  # the same crop and flip: proxy = gt * 0.5 at every pixel
                assert float((sample['proxies'][0] - PROXY_SCALE * sample['gt']).abs().max()) < 1.5 / 255, key
            else:
                assert not sample['proxies'].any()
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    assert batch['proxies'].shape == (2, 1, 3, 16, 16) and batch['proxy_mask'].dtype == torch.bool


def test_noise_levels_share_a_degradation_label_unless_told_otherwise(data_root):
    dataset = PerceiveIRRestorationDataset(_dataset_options(data_root))
    assert dataset.degradation_names == ['derain', 'denoise'] and dataset.degradation_labels == [0, 1, 1]
    assert [dataset[i]['degradation_label'] for i in (0, 3, 5)] == [0, 1, 1]
    split = PerceiveIRRestorationDataset(_dataset_options(data_root, degradation_types={'denoise_25': 'strong_noise'}))
    assert split.degradation_labels == [0, 1, 2]


def test_positive_is_another_crop_of_the_same_degraded_image(data_root):
    opt = _dataset_options(data_root, use_hflip=False, use_rot=False)
    dataset = PerceiveIRRestorationDataset(opt)
    lq_image = torch.from_numpy(np.ascontiguousarray(cv2.imread(str(data_root / 'derain/lq/derain-0.png'))[..., ::-1]))
    windows = lq_image.permute(2, 0, 1).float().unfold(1, 16, 1).unfold(2, 16, 1) / 255  # (3, 25, 29, 16, 16)
    offsets = set()
    for _ in range(6):
        sample = dataset[0]
        for crop in ('lq', 'lq_positive'):
            error = (windows - sample[crop][:, None, None]).abs().amax(dim=(0, 3, 4))
            assert float(error.min()) < 1e-6, crop  # a window of the degraded image
        offsets.add(divmod(int(error.argmin()), error.shape[1]))
    assert len(offsets) > 1  # the positive crop moves independently
    # Synthetic noise: 40x40 crops of a 40x44 image overlap in >= 36 columns, where they are equal (up to the
    # horizontal shift) only if the two crops share one noise realisation.
    full = PerceiveIRRestorationDataset({**opt, 'gt_size': 40})
    for _ in range(3):
        sample = full[3]
        lq, positive = sample['lq'], sample['lq_positive']
        pairs = ((lq, positive), (positive, lq))
        assert any(torch.equal(a[..., d:], b[..., :40 - d]) for d in range(5) for a, b in pairs)
    assert not any(torch.equal(lq[..., d:], sample['gt'][..., :40 - d]) for d in range(5))  # it is noisy


def test_proxy_sizes_and_names_are_checked(data_root, tmp_path):
    with pytest.raises(ValueError, match=r"proxies\[0\]\.dataroot: .*nowhere.* does not exist"):
        PerceiveIRRestorationDataset({**_dataset_options(data_root),
                                      'proxies': [{'name': 'x', 'dataroot': str(tmp_path / 'nowhere')}]})
    write_image(str(tmp_path / 'other' / 'unrelated.png'), smooth_image(0, 8, 8))
    with pytest.raises(ValueError, match=r'proxies\[0\] \(x\): no image .* has the name of a training image'):
        PerceiveIRRestorationDataset({**_dataset_options(data_root),
                                      'proxies': [{'name': 'x', 'dataroot': str(tmp_path / 'other')}]})
    write_image(str(tmp_path / 'twice' / 'a' / 'derain-0.png'), smooth_image(0, 8, 8))
    write_image(str(tmp_path / 'twice' / 'b' / 'derain-0.jpg'), smooth_image(0, 8, 8))
    with pytest.raises(ValueError, match="the name 'derain-0' appears twice"):
        PerceiveIRRestorationDataset({**_dataset_options(data_root),
                                      'proxies': [{'name': 'x', 'dataroot': str(tmp_path / 'twice')}]})
    # A proxy of the size after crop_border_base (32x32 of 40x44) is accepted; another size names the file.
    write_image(str(tmp_path / 'cropped' / 'derain-1.png'), smooth_image(0, 32, 32))
    write_image(str(tmp_path / 'cropped' / 'derain-2.png'), smooth_image(0, 30, 30))
    dataset = PerceiveIRRestorationDataset({**_dataset_options(data_root), 'crop_border_base': 16,
                                            'proxies': [{'name': 'x', 'dataroot': str(tmp_path / 'cropped'),
                                                         'tasks': ['derain']}]})
    assert dataset[1]['proxy_mask'].tolist() == [True]
    with pytest.raises(ValueError, match=r'proxy .*derain-2.png.* is 30x30, but its degraded image is 44x40'):
        dataset[2]


# ------------------------------------------------------------------ the difficulty probe


def test_probe_weighs_each_proxy_against_the_network_on_the_same_images(data_root):
    dataset = PerceiveIRRestorationDataset({**_dataset_options(data_root), 'phase': 'probe'})
    probe = DifficultyProbe(dataset, every=3, per_task=2, weigh=difficulty_weights)
    assert probe.samples == [(0, 0), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert probe.due(1) and probe.weights is None
    samples = [dataset.load(0, t, s) for t, s in probe.samples]
    text = probe.update(lambda lq: lq, torch.device('cpu'))  # a "network" that returns its input
    for t in range(2):  # per task: the proxy's mean PSNR against the network's on the images that have the proxy
        with_proxy = [s for s in samples if s['task_index'] == t and s['proxy_mask'][0]]
        network = float(torch.cat([psnr_per_image(s['lq'][None], s['gt'][None]) for s in with_proxy]).mean())
        proxy = float(torch.cat([psnr_per_image(s['proxies'][:1], s['gt'][None]) for s in with_proxy]).mean())
        assert probe.weights[t, 0] == (1.25 if network >= proxy else 0.75), (t, network, proxy)
    assert probe.weights[2, 0] == 1  # denoise_25 has no proxy
    assert re.search(r'derain: network [0-9.]+ dB; half [0-9.]+ dB \(network [0-9.]+\) -> 1.25', text), text
    probe.update(lambda lq: lq * 0.1, torch.device('cpu'))  # a network darker than the proxies (gt * 0.5)
    assert probe.weights.tolist() == [[0.75], [0.75], [1.0]]  # very hard negatives
    ground_truths = {s['lq'].numpy().tobytes(): s['gt'] for s in samples}  # the network improves: returns the gt
    probe.update(lambda lq: torch.stack([ground_truths[x.numpy().tobytes()] for x in lq]), torch.device('cpu'))
    assert probe.weights.tolist() == [[1.25], [1.25], [1.0]]  # hard negatives
    assert not probe.due(2) and not probe.due(3) and probe.due(4) and probe.due(7)


def _in_process_model(tmp_path, train_set: dict, **losses):
    from basicsr.utils.registry import MODEL_REGISTRY
    torch.manual_seed(0)
    return MODEL_REGISTRY.get('PerceiveIRModel')({
        'name': 'pir', 'model_type': 'PerceiveIRModel', 'num_gpu': 0, 'is_train': True, 'dist': False,
        'network_g': TINY_PERCEIVEIR, 'datasets': {'train': train_set},
        'path': {'models': str(tmp_path), 'training_states': str(tmp_path), 'visualization': str(tmp_path)},
        'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3}, 'total_iter': 10,
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}, **losses},
        'val': {'save_img': False, 'metrics': {}}})


def test_each_auxiliary_loss_is_optional_and_l_dpl_gets_the_probe_weights(data_root, tmp_path):
    train_set = _dataset_options(data_root)
    dataset = PerceiveIRRestorationDataset(train_set)
    batch = torch.utils.data.default_collate([dataset[i] for i in (0, 1, 3, 4)])  # derain 0, 1; denoise_15 0, 1
    plain = _in_process_model(tmp_path, train_set)
    plain.feed_data(batch)
    plain.optimize_parameters(1)
    assert list(plain.log_dict) == ['l_pix'] and plain.difficulty_probe is None
    model = _in_process_model(tmp_path, train_set, difficulty_probe={'every': 2, 'per_task': 1},
                              dpl_opt={'type': 'DifficultyAdaptivePerceptualLoss', 'vgg_weights': 'random'})
    model.feed_data(batch)
    model.optimize_parameters(1)
    assert list(model.log_dict) == ['l_pix', 'l_dpl'] and model.difficulty_probe.weights.shape == (3, 1)
    model.difficulty_probe.weights = torch.tensor([[0.75], [1.25], [1.0]])  # as a probe would set them
    negatives, weights, mask = model._dpl_negatives()
    assert negatives.shape == (4, 2, 3, 16, 16) and torch.equal(negatives[:, 0], batch['lq'])
    assert torch.equal(negatives[:, 1], batch['proxies'][:, 0])
    assert weights[:, 1].tolist() == [0.75, 0.75, 1.25, 1.25]  # each sample's task row
    assert mask.tolist() == [[True, True], [True, False], [True, False], [True, True]]


def test_option_problems_name_the_key():
    from vlunet.models.perceiveir.perceiveir_model import PerceiveIRModel
    opt = {'datasets': {'train': {'type': 'MixedDegradationDataset'}},
           'degradation_encoder': {'type': 'DegradationCLIP'},
           'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3}, 'contrastive_opt': {'type': 'X'},
                     'dpl_opt': {'type': 'Y'}, 'clip_opt': {'type': 'Z', 'prompts_path': 'missing.pth'}}}
    problems = '\n'.join(PerceiveIRModel.check_options(opt, is_train=True))
    for expected in ('degradation_encoder: PerceiveIRModel is guided by its own CFE',
                     'train.contrastive_opt: needs datasets.train.type PerceiveIRRestorationDataset',
                     "train.clip_opt.prompts_path: 'missing.pth' does not exist. It is the output of stage 1",
                     'train.difficulty_probe.every: missing'):
        assert expected in problems, problems
    opt['train']['difficulty_probe'] = {'every': 0, 'gamma': 1.5}
    problems = '\n'.join(PerceiveIRModel.check_options(opt, is_train=True))
    assert 'difficulty_probe.every: 0 must be a positive integer' in problems
    assert 'difficulty_probe.gamma: 1.5 must be in [0, 1)' in problems


# ------------------------------------------------------------------ training through vlunet/train.py

CROP = 24


def _write_prompts(root) -> str:
    """A stage-1 prompts file for the tiny CLIP (what QualityPromptModel saves)."""
    from vlunet.archs.perceiveir.perceiveir_prompts_arch import QualityPrompts
    prompts = QualityPrompts(backbone=str(root / f'{TINY_CLIP_NAME}.json'), num_vectors=4)
    torch.save({'params': prompts.prompt_state_dict(), 'words': prompts.words, 'num_vectors': 4,
                'backbone': prompts.backbone_name, 'logit_scale': 1.0}, root / 'net_prompts.pth')
    return 'net_prompts.pth'


def _train_options(total_iter: int) -> dict:
    train_set = {'name': 'stage2', 'type': 'PerceiveIRRestorationDataset', 'gt_size': CROP, 'use_hflip': False,
                 'use_rot': False, 'fixed_degradations': True,  # the same batch at every iteration: L_rec must fall
                 'tasks': [{'name': 'derain',
                            'source': {'dataroot_lq': 'data/derain/lq', 'dataroot_gt': 'data/derain/gt'}},
                           {'name': 'denoise_50', 'source': {'dataroot_gt': 'data/denoise/gt'}}],
                 'proxies': [{'name': 'half', 'dataroot': 'data/proxies/{task}'}],
                 'use_shuffle': True, 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 1}
    return {
        'name': 'perceiveir_tiny', 'model_type': 'PerceiveIRModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {'train': train_set,
                     'val': {'name': 'val', 'type': 'PairedImageDataset', 'dataroot_lq': 'data/derain/lq',
                             'dataroot_gt': 'data/derain/gt', 'io_backend': {'type': 'disk'}}},
        'network_g': TINY_PERCEIVEIR,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': 0.5, 'optim_g': {'type': 'AdamW', 'lr': 3e-3, 'betas': [0.9, 0.999], 'weight_decay': 1e-4},
            'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [100], 'eta_min': 1e-4},
            'total_iter': total_iter, 'warmup_iter': -1,
            'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
            'contrastive_opt': {'type': 'DegradationPatchContrastiveLoss', 'loss_weight': 0.1, 'temperature': 0.1},
            'clip_opt': {'type': 'QualityPromptLoss', 'loss_weight': 0.05, 'prompts_path': 'net_prompts.pth',
                         'clip_backbone': f'{TINY_CLIP_NAME}.json', 'clip_pretrained': None},
            'dpl_opt': {'type': 'DifficultyAdaptivePerceptualLoss', 'loss_weight': 0.1, 'vgg_weights': 'random'},
            'difficulty_probe': {'every': 4, 'per_task': 1}},
        'val': {'val_freq': 3, 'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr_float_rgb'}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 3, 'use_tb_logger': False},
    }


def _training_log(root) -> str:
    return ''.join(open(p, encoding='utf-8').read()
                   for p in sorted(glob.glob(str(root / 'experiments/perceiveir_tiny/*.log'))))


def _train(root, total_iter: int, *args: str) -> None:
    path = root / 'train.yml'
    path.write_text(yaml.safe_dump(_train_options(total_iter), sort_keys=False))
    result = run_entry('train', ['-opt', str(path), *args], str(root))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp('perceiveir_training')
    data = root / 'data'
    rng = np.random.default_rng(0)
    gt = smooth_image(1, CROP, CROP)
    write_image(str(data / 'derain/gt/rain-1.png'), gt)
    write_image(str(data / 'derain/lq/rain-1.png'), np.clip(gt * 0.6 + rng.normal(0, 10, gt.shape), 0, 255)
                .round().astype(np.uint8))
    write_image(str(data / 'proxies/derain/rain-1.png'), (gt * PROXY_SCALE).round().astype(np.uint8))
    write_image(str(data / 'denoise/gt/clean-1.png'), smooth_image(2, CROP, CROP))  # no proxy
    (root / f'{TINY_CLIP_NAME}.json').write_text(json.dumps(TINY_CLIP_CONFIG))
    _write_prompts(root)
    _train(root, 6)
    return root


def test_training_with_the_four_losses_lowers_l_rec_and_probes_each_epoch(trained):
    log = _training_log(trained)
    values = {name: [float(v) for v in re.findall(rf'{name}: ([0-9.e+-]+)', log)]
              for name in ('l_pix', 'l_cl', 'l_clip', 'l_dpl')}
    assert all(len(v) == 6 for v in values.values()), values
    assert np.mean(values['l_pix'][-2:]) < 0.8 * np.mean(values['l_pix'][:2]), values['l_pix']
    assert all(0 < v < 0.05 for v in values['l_clip']) and all(v > 0 for v in values['l_dpl'] + values['l_cl'])
    probes = re.findall(r'L_dpl difficulty probe before iteration (\d+)', log)
    assert probes == ['1', '5']  # every 4 iterations ("epochs")
    assert re.search(r'derain: network [0-9.]+ dB; half [0-9.]+ dB \(network [0-9.]+\) -> (0\.75|1\.25)', log)
    assert 'will not be optimized' not in log and 'Perceive-IR losses: l_pix (L_rec), l_cl' in log
    assert len(re.findall(r'# psnr: [0-9.]+', log)) == 2


@pytest.mark.multiprocess
def test_checkpoints_hold_the_trainable_network_only_and_training_resumes(trained):
    from vlunet.archs.perceiveir.perceiveir_arch import PerceiveIR
    net = PerceiveIR(**{k: v for k, v in TINY_PERCEIVEIR.items() if k != 'type'})
    net_keys = set(net.state_dict())
    assert not [k for k in net_keys if 'semantic' in k or 'vit' in k or 'clip' in k or 'vgg' in k]
    checkpoint = torch.load(trained / 'experiments/perceiveir_tiny/models/net_g_6.pth', weights_only=True)
    assert set(checkpoint) == {'params', 'params_ema', OPTIONS_KEY} and set(checkpoint['params']) == net_keys
    assert checkpoint[OPTIONS_KEY]['network_g']['type'] == 'PerceiveIR'  # options: plain values, no tensors
    state = torch.load(trained / 'experiments/perceiveir_tiny/training_states/6.state', weights_only=False)
    assert len(state['optimizers'][0]['state']) == len(list(net.parameters()))  # no DINO, CLIP or VGG tensor
    _train(trained, 7, '--auto_resume')
    resumed = _training_log(trained)
    resumed = resumed[resumed.index('Resuming training from epoch'):]
    assert re.search(r'iter:\s+7,', resumed) and not re.search(r'iter:\s+6,', resumed)
    assert 'L_dpl difficulty probe before iteration 7' in resumed  # not an epoch start: re-measured on resume


# ------------------------------------------------------------------ shipped option files

TRAIN_SET_SIZES = {'denoise_15': 400 + 4744, 'denoise_25': 400 + 4744, 'denoise_50': 400 + 4744, 'derain': 200,
                   'dehaze': 72135, 'deblur': 2103, 'delowlight': 485}  # BSD400 + WED, Rain100L, OTS, GoPro, LOL
RELEASE_REPEATS = {'denoise_15': 4, 'denoise_25': 4, 'denoise_50': 4, 'derain': 360, 'dehaze': 1, 'deblur': 30,
                   'delowlight': 140}


@pytest.mark.parametrize('setting, tasks, validation_sets', [
    ('3task', ['denoise_15', 'denoise_25', 'denoise_50', 'derain', 'dehaze'], 5),
    ('5task', ['denoise_15', 'denoise_25', 'denoise_50', 'derain', 'dehaze', 'deblur', 'delowlight'], 7)])
def test_paper_settings_and_epoch_arithmetic_of_the_stage_2_files(setting, tasks, validation_sets):
    from helpers import REPO_ROOT
    path = osp.join(REPO_ROOT, 'options', 'perceiveir', f'train_perceiveir_{setting}.yml')
    with open(path, encoding='utf-8') as f:
        text = f.read()
    opt = yaml.safe_load(text)
    train_set, train = opt['datasets']['train'], opt['train']
    assert [t['name'] for t in train_set['tasks']] == tasks
    assert [t.get('repeat', 1) for t in train_set['tasks']] == [RELEASE_REPEATS[t] for t in tasks]
    assert (train_set['gt_size'], train_set['batch_size_per_gpu'], train['total_iter']) == (128, 6, 400000)
    optimizer = train['optim_g']
    assert (optimizer['type'], optimizer['lr'], optimizer['betas']) == ('AdamW', 2e-4, [0.9, 0.999])
    weights = [train[key]['loss_weight'] for key in ('pixel_opt', 'contrastive_opt', 'clip_opt', 'dpl_opt')]
    assert weights == [1.0, 0.1, 0.05, 0.1] and train['dpl_opt']['easy_weight'] == 2
    assert train['difficulty_probe']['gamma'] == 0.25 and train['clip_opt']['logit_scale'] == 1
    per_epoch = sum(TRAIN_SET_SIZES[t] * RELEASE_REPEATS[t] for t in tasks) // 6
    assert train['difficulty_probe']['every'] == per_epoch and f'{per_epoch:,} iterations per epoch' in text
    assert sum(key.startswith('val') for key in opt['datasets']) == validation_sets
