"""Every shipped option file passes the option checker, BasicSR's parse_options, and builds its datasets and model.

Each file is used as shipped except for sizes: its data paths (``datasets/...`` meta-info files and
folders) are created in a temporary working directory with tiny generated images, its weight files
are written there for a tiny network of the same ``de_dim``, ``network_g`` is shrunk and the CLIP
backbone is the tiny test config.
"""
import glob
import json
import os
import os.path as osp
import sys

import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet.data.daclip.daclip_universal_dataset import universal_tasks
from vlunet.options import check_option_file, load_option_file

from basicsr.archs import build_network
from basicsr.data import build_dataset
from basicsr.models import build_model
from basicsr.utils.options import parse_options

from helpers import REPO_ROOT, smooth_image, write_image

OPTION_FILES = sorted(osp.relpath(p, REPO_ROOT) for p in glob.glob(osp.join(REPO_ROOT, 'options', '**', '*.yml'),
                                                                    recursive=True))
TINY_SIZES = {'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1, 'heads': [1, 1, 1, 1],
              'key_size': 8}
IMAGE_SIZE = 24
TINY_PERCEIVEIR = {'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1, 'heads': [1, 1, 1, 1],
                   'degradation_dim': 16, 'semantic_pretrained': None, 'semantic_layers': [1, 2, 3, 4],
                   'semantic_image_size': 32, 'semantic_kwargs': {'embed_dim': 32, 'depth': 4, 'num_heads': 2,
                                                                  'patch_size': 8}}
FLOAT_AND_UINT8_METRICS = {'calculate_psnr', 'calculate_ssim', 'calculate_psnr_float_rgb', 'calculate_ssim_float_rgb'}
NHRBL_TASKS = ['denoise_15', 'denoise_25', 'denoise_50', 'derain', 'dehaze', 'deblur', 'delowlight']
NHRBL_TESTS = ['CBSD68-sigma15', 'CBSD68-sigma25', 'CBSD68-sigma50', 'SOTS-outdoor', 'Rain100L', 'GoPro', 'LOL',
               'CBSD68-random-sigma', 'Urban100-random-sigma', 'Urban100-sigma15', 'Urban100-sigma25',
               'Urban100-sigma50']
# Paper settings: (tasks, repeats, validation sets, de_dim, batch per GPU, GPUs).
TRAIN_SETTINGS = {
    'options/train_nhrbl.yml': (NHRBL_TASKS, [3, 3, 3, 120, 1, 1, 1], 7, 7, 4, 8),
    'options/train_nhr.yml': (NHRBL_TASKS[:5], [3, 3, 3, 120, 1], 5, 7, 4, 8),
    'options/train_denoise.yml': (NHRBL_TASKS[:3], [3, 3, 3], 3, 7, 8, 1),
    'options/train_derain.yml': (['derain'], [120], 1, 5, 8, 1),
    'options/train_dehaze.yml': (['dehaze'], [1], 1, 5, 8, 1),
}
# Training-set sizes (clean images or pairs per task: BSD400 + WED per sigma, Rain100L train, RESIDE-beta OTS,
# GoPro train, LOL our485) and the official schedule in epochs, from which every iteration count follows.
TRAIN_SET_SIZES = {'denoise_15': 400 + 4744, 'denoise_25': 400 + 4744, 'denoise_50': 400 + 4744, 'derain': 200,
                   'dehaze': 72135, 'deblur': 2103, 'delowlight': 485}
EPOCHS, WARMUP_EPOCHS, VALIDATION_EPOCHS = 200, 15, 5
TEST_SETTINGS = {  # test set names, de_dim
    'options/test_nhrbl.yml': (NHRBL_TESTS, 7),
    'options/test_nhr.yml': ([n for n in NHRBL_TESTS if n not in ('GoPro', 'LOL')], 7),
    'options/test_official_5task.yml': (NHRBL_TESTS, 7),
    'options/test_official_3task.yml': ([n for n in NHRBL_TESTS if n not in ('GoPro', 'LOL')], 7),
    'options/test_official_single_noise.yml': ([n for n in NHRBL_TESTS if 'sigma1' in n or 'sigma2' in n
                                                or 'sigma5' in n], 7),
    'options/test_official_single_haze.yml': (['SOTS-outdoor'], 5),
    'options/test_official_single_rain.yml': (['Rain100L'], 5),
    'options/test_official_single_blur.yml': (['GoPro'], 5),
    'options/test_official_single_lowlight.yml': (['LOL'], 5),
}


def _write_images(root: str, names, seed: int) -> None:
    for i, name in enumerate(names):
        if not osp.exists(osp.join(root, name)):
            write_image(osp.join(root, name), smooth_image(seed + i, IMAGE_SIZE, IMAGE_SIZE + i))


def _create_source(source: dict) -> None:
    """Create the folders / meta-info file a dataset source names, with two tiny images (pairs)."""
    paired = 'dataroot_lq' in source
    names = ['a.png', 'b.png']
    meta = source.get('meta_info_file')
    if meta:
        lines = [f'lq/{n},gt/{n}' if paired else f'gt/{n}' for n in names]
        os.makedirs(osp.dirname(meta), exist_ok=True)
        with open(meta, 'w', encoding='utf-8') as f:
            f.write('\n'.join(lines) + '\n')
        _write_images(osp.join(source['dataroot_gt'], 'gt'), names, 0)
        if paired:
            _write_images(osp.join(source['dataroot_lq'], 'lq'), names, 10)
    else:
        _write_images(source['dataroot_gt'], names, 0)
        if paired:
            _write_images(source['dataroot_lq'], names, 10)


def _create_captions(opt: dict) -> None:
    """A one-row DA-CLIP captions CSV for every task that names one."""
    for dataset in opt['datasets'].values():
        for task in dataset.get('tasks', []):
            if task.get('captions') and not osp.exists(task['captions']):
                os.makedirs(osp.dirname(task['captions']) or '.', exist_ok=True)
                with open(task['captions'], 'w', encoding='utf-8') as f:
                    f.write('filepath\ttitle\na.png\ta photo: noisy\n')


def _create_triplets(opt: dict) -> None:
    """One triplet (degraded, medium, gt) for every QualityTripletDataset: a meta-info file, or its three folders."""
    for dataset in opt['datasets'].values():
        meta = dataset.get('meta_info_file') if dataset.get('type') == 'QualityTripletDataset' else None
        if dataset.get('type') == 'QualityTripletDataset' and not meta:
            folders = [dataset[f'dataroot_{kind}'] for kind in ('lq', 'medium', 'gt')]
            present = {name for folder in folders if osp.isdir(folder) for name in os.listdir(folder)}
            names = sorted(present or {'a.png'})
            for folder in folders:
                _write_images(folder, names, 0)
        if meta and not osp.exists(meta):
            for kind in ('lq', 'medium', 'gt'):
                _write_images(osp.join(osp.dirname(meta), kind), ['a.png'], 0)
            with open(meta, 'w', encoding='utf-8') as f:
                f.write('lq/a.png,medium/a.png,gt/a.png\n')


def _create_proxies(opt: dict) -> None:
    """A proxy image named like the first image of every task a PerceiveIRRestorationDataset proxy serves."""
    for dataset in opt['datasets'].values():
        names = [task['name'] for task in dataset.get('tasks', [])]
        for proxy in dataset.get('proxies') or []:
            for name in proxy.get('tasks') or names:
                _write_images(proxy['dataroot'].replace('{task}', name), ['a.png'], 0)


def _shrink_perceiveir_losses(train: dict, tiny_clip_name: str) -> None:
    """Perceive-IR's L_clip on the tiny CLIP with a prompts file written for it; L_dpl with a random VGG-16."""
    if (train.get('clip_opt') or {}).get('type') == 'QualityPromptLoss':
        prompts = build_network({'type': 'QualityPrompts', 'backbone': tiny_clip_name, 'num_vectors': 4})
        path = train['clip_opt']['prompts_path']
        os.makedirs(osp.dirname(path), exist_ok=True)
        torch.save({'params': prompts.prompt_state_dict(), 'words': prompts.words, 'num_vectors': 4,
                    'backbone': prompts.backbone_name, 'logit_scale': 1.0}, path)
        train['clip_opt'].update(clip_backbone=tiny_clip_name, clip_pretrained=None)
    if train.get('dpl_opt'):
        train['dpl_opt']['vgg_weights'] = 'random'


def _sources(opt: dict):
    for dataset in opt['datasets'].values():
        for task in dataset.get('tasks', []):
            yield task['source']
        if dataset.get('type') == 'DAClipUniversalDataset':
            yield from (task['source'] for task in universal_tasks(dataset))
        if 'dataroot_gt' in dataset:
            yield dataset


def _save_weights(path: str, module: torch.nn.Module) -> None:
    os.makedirs(osp.dirname(path) or '.', exist_ok=True)
    torch.save({'params': module.state_dict()}, path)


def _shrink(opt: dict, tiny_clip_name: str) -> dict:
    """The option dict with a tiny network and CLIP; weight files it names are created to fit."""
    opt = json.loads(json.dumps(opt))  # plain dicts, aliases resolved
    networks = {f'pretrain_{key}': key for key in opt if key.startswith('network_')}
    networks['pretrain_network_degradation_encoder'] = 'degradation_encoder'
    for key in [k for k in networks.values() if opt.get(k)]:
        if opt[key]['type'] == 'VLUNet':
            opt[key].update(TINY_SIZES)
        elif opt[key]['type'] == 'Restormer':
            opt[key].update({k: v for k, v in TINY_SIZES.items() if k != 'key_size'})
        elif opt[key]['type'] in ('DegradationCLIP', 'DACLIP', 'QualityPrompts'):
            opt[key].update(backbone=tiny_clip_name, pretrained=None)
        elif opt[key]['type'] == 'ConditionalUNet':
            opt[key].update(nf=8)
        elif opt[key]['type'] in ('NAFNetDACLIP', 'NAFNet'):
            opt[key].update(width=8, enc_blk_nums=[1, 1], middle_blk_num=1, dec_blk_nums=[1, 1])
        elif opt[key]['type'] == 'PerceiveIR':
            opt[key].update(TINY_PERCEIVEIR)
    _shrink_perceiveir_losses(opt.get('train') or {}, tiny_clip_name)
    for path_key, network_key in networks.items():
        if opt.get('path', {}).get(path_key):
            _save_weights(opt['path'][path_key], build_network(dict(opt[network_key])))
    return opt


def _parsed(path: str, opt: dict, is_train: bool, monkeypatch) -> dict:
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    check_option_file(path, is_train)  # raises OptionError listing every problem
    monkeypatch.setattr(sys, 'argv', ['vlunet', '-opt', path])
    parsed, _ = parse_options(os.getcwd(), is_train=is_train)
    return parsed


@pytest.mark.parametrize('option_file', OPTION_FILES)
def test_option_file_builds_its_datasets_and_model(option_file, tmp_path, monkeypatch, tiny_clip_name):
    shipped = load_option_file(osp.join(REPO_ROOT, option_file))
    is_train = 'train' in shipped
    monkeypatch.chdir(tmp_path)
    for source in _sources(shipped):
        _create_source(source)
    _create_captions(shipped)
    _create_triplets(shipped)
    _create_proxies(shipped)
    opt = _parsed(str(tmp_path / 'opt.yml'), _shrink(shipped, tiny_clip_name), is_train, monkeypatch)
    datasets = {phase: build_dataset(dataset_opt) for phase, dataset_opt in opt['datasets'].items()}
    for phase, dataset in datasets.items():
        sample = dataset[0]
        assert sample['lq'].shape[0] == 3 and sample['lq'].shape == sample['gt'].shape, phase
    model = build_model(opt)
    assert model.opt['name'] == shipped['name']
    if shipped['model_type'] == 'VLUNetModel':
        assert opt['scale'] == 1
        assert FLOAT_AND_UINT8_METRICS <= {m['type'] for m in shipped['val']['metrics'].values()}
        assert (model.degradation_encoder is not None) == bool(shipped.get('degradation_encoder'))
        if is_train and shipped['network_g']['type'] == 'VLUNet':  # the official warm-up + cosine schedule
            _check_training_schedule(shipped, model)
            assert 'find_unused_parameters' not in shipped  # every trainable VLUNet parameter is used (DDP)
        crop = shipped['datasets'].get('train', {}).get('gt_size')
        if crop and not option_file.startswith(('options/demo/', 'options/daclip/')):  # DA-CLIP's setting: 256
            assert crop == 128 and datasets['train'][0]['lq'].shape == (3, 128, 128)
    # every pair once per epoch, as the original's CSV of all pairs
    if option_file == 'options/daclip/train_daclip.yml':
        assert sorted(datasets['train'].composition) == [(t, s) for t in range(10) for s in range(2)]
        assert 'caption' in datasets['train'][0] and len(datasets['train']) == 20
    if option_file in TRAIN_SETTINGS:
        _check_paper_training_setting(option_file, shipped, model, datasets)
    if option_file in TEST_SETTINGS:
        names, de_dim = TEST_SETTINGS[option_file]
        assert [d['name'] for _, d in sorted(shipped['datasets'].items())] == names
        assert all(d['crop_border_base'] == 16 for d in shipped['datasets'].values())
        assert shipped['network_g']['de_dim'] == de_dim and shipped['val']['save_img'] is True


def _check_training_schedule(shipped: dict, model) -> None:
    train = shipped['train']
    periods = train['scheduler']['periods']
    assert periods[0] == train['warmup_iter'] - 2 and sum(periods) == train['total_iter']
    assert type(model.schedulers[0]).__name__ == 'CosineAnnealingRestartLR'


def _check_paper_training_setting(option_file: str, shipped: dict, model, datasets) -> None:
    tasks, repeats, val_sets, de_dim, batch, gpus = TRAIN_SETTINGS[option_file]
    train_set = shipped['datasets']['train']
    assert [t['name'] for t in train_set['tasks']] == tasks and [t.get('repeat', 1) for t in train_set['tasks']] \
        == repeats
    assert datasets['train'].texts[0] == {'denoise_15': 'image with noise', 'derain': 'image with rain',
                                          'dehaze': 'image with haze'}[tasks[0]]
    assert sum(k.startswith('val') for k in shipped['datasets']) == val_sets
    assert shipped['network_g']['de_dim'] == de_dim and train_set['batch_size_per_gpu'] == batch
    assert train_set['official_augment'] is True and train_set['crop_border_base'] == 16
    # Iterations derived from the dataset sizes and the global batch (last partial batch dropped), as each header says.
    per_epoch = sum(TRAIN_SET_SIZES[task] * repeat for task, repeat in zip(tasks, repeats)) // (batch * gpus)
    assert (shipped['train']['total_iter'], shipped['train']['warmup_iter']) == (EPOCHS * per_epoch,
                                                                                 WARMUP_EPOCHS * per_epoch)
    assert shipped['val']['val_freq'] == shipped['logger']['save_checkpoint_freq'] == VALIDATION_EPOCHS * per_epoch
    with open(osp.join(REPO_ROOT, option_file), encoding='utf-8') as f:
        header = ''.join(line for line in f if line.startswith('#'))
    assert f'{per_epoch:,} iterations per epoch' in header and f'{EPOCHS * per_epoch:,} iterations' in header
    optimizer = model.optimizer_g
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert (group['initial_lr'], group['betas'], group['weight_decay']) == (2e-4, (0.9, 0.999), 0.01)
    assert shipped['train']['pixel_opt']['type'] == 'L1Loss'
    assert shipped['path']['pretrain_network_degradation_encoder'].endswith('clip_tuned_clip.pth')
