"""The option check runs on the options as BasicSR will use them and stops bad runs before anything is created.

Messages name the key, the file or path, and the close match; ``--force_yml`` overrides are applied
first (an override repairs a rejected key, a misspelt override is caught); the data and weight files
a run reads are checked, and the checker itself prints nothing (no BasicSR registry noise).
"""
import copy
import logging
import os
import os.path as osp

import pytest
import yaml

import vlunet  # noqa: F401
from vlunet.options import OptionError, apply_force_yml, check_option_file

from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, MODEL_REGISTRY

from helpers import REPO_ROOT, run_entry, smooth_image, write_image

TINY_VLUNET = {'type': 'VLUNet', 'de_dim': 2, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
               'heads': [1, 1, 1, 1], 'key_size': 8}
CONVERTER = ('python scripts/convert_official_checkpoint.py pretrained_ckpt/5task_vlunet.ckpt '
             'experiments/pretrained_models')


def _options() -> dict:
    """A valid tiny training option dict (paths relative to the data folder made by the ``data`` fixture)."""
    paired = {'dataroot_lq': 'data/lq', 'dataroot_gt': 'data/gt'}
    return {
        'name': 'checked', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': {'name': 'train', 'type': 'MixedDegradationDataset', 'gt_size': 16, 'num_worker_per_gpu': 0,
                      'batch_size_per_gpu': 1,
                      'tasks': [{'name': 'denoise_25', 'source': dict(paired)},
                                {'name': 'dehaze', 'source': {'dataroot_gt': 'data/gt'}}]},
            'val': {'name': 'val', 'type': 'PairedImageDataset', 'io_backend': {'type': 'disk'}, **paired}},
        'network_g': dict(TINY_VLUNET),
        'degradation_encoder': None,
        'path': {'pretrain_network_g': None, 'resume_state': None},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'total_iter': 2,
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [10], 'gamma': 0.5},
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'val': {'val_freq': 2, 'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
    }


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('option_checks')
    for i in range(2):
        write_image(str(root / 'data' / 'gt' / f'{i}.png'), smooth_image(i, 20, 20))
        write_image(str(root / 'data' / 'lq' / f'{i}.png'), smooth_image(i + 5, 20, 20))
    return root


def _check(folder, opt: dict, force_yml=None, is_train: bool = True):
    path = folder / 'opt.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return check_option_file(str(path), is_train, force_yml)


def _problems(folder, opt: dict, force_yml=None, is_train: bool = True) -> str:
    with pytest.raises(OptionError) as err:
        _check(folder, opt, force_yml, is_train)
    return str(err.value)


def test_valid_options_pass_without_warnings_or_output(data, monkeypatch, capsys):
    monkeypatch.chdir(data)
    assert _check(data, _options()) == []
    assert capsys.readouterr() == ('', '')


def test_types_and_constructor_arguments_name_the_key_and_the_close_match(data, monkeypatch, capsys):
    monkeypatch.chdir(data)
    opt = _options()
    opt['degradation_encoder'] = {'type': 'DegradationCLIPP', 'backbone': 'ViT-B-32'}
    opt['network_g']['num_block'] = opt['network_g'].pop('num_blocks')
    opt['train']['pixel_opt']['loss_wieght'] = opt['train']['pixel_opt'].pop('loss_weight')
    message = _problems(data, opt)
    assert "degradation_encoder.type: unknown arch type 'DegradationCLIPP'. Did you mean 'DegradationCLIP'?" in message
    assert "network_g.num_block: VLUNet has no argument 'num_block'. Did you mean 'num_blocks'?" in message
    assert "train.pixel_opt.loss_wieght: L1Loss has no argument 'loss_wieght'. Did you mean 'loss_weight'?" in message
    assert str(data / 'opt.yml') in message
    assert 'is not found, use name' not in capsys.readouterr().out  # no BasicSR registry noise


def test_missing_required_constructor_argument_is_named(data, monkeypatch):
    monkeypatch.chdir(data)
    opt = _options()
    opt['network_g'] = {'type': 'SRVGGNetCompact', 'num_in_ch': 3, 'num_out_ch': 3}
    assert _check(data, opt) == []  # every other argument has a default
    opt['train']['perceptual_opt'] = {'type': 'PerceptualLoss'}
    assert 'train.perceptual_opt.layer_weights: missing (required by PerceptualLoss).' in _problems(data, opt)


def test_force_yml_is_applied_before_the_check(data, monkeypatch):
    monkeypatch.chdir(data)
    opt = _options()
    opt['network_g']['type'] = 'VLUNett'
    opt['train']['total_iter'] = -5
    message = _problems(data, opt)
    assert 'network_g.type' in message and 'train.total_iter: -5 must be a positive integer.' in message
    # Overrides repair both keys.
    assert _check(data, opt, ['network_g:type=VLUNet', 'train:total_iter=3']) == []
    # A misspelt override is caught: a new key nobody reads, a missing section, a bad value.
    message = _problems(data, _options(), ['train:totl_iter=3'])
    assert ("train.totl_iter: unknown key, ignored by BasicSR and vlunet. Did you mean 'total_iter'? "
            "(set by --force_yml)") in message
    assert "--force_yml 'trian:total_iter=3': the option file has no key 'trian'. Did you mean 'train'?" in _problems(
        data, _options(), ['trian:total_iter=3'])
    assert 'train.total_iter: 0 must be a positive integer.' in _problems(data, _options(), ['train:total_iter=0'])
    assert 'expected key:subkey=value' in _problems(data, _options(), ['train:total_iter'])


def test_force_yml_parses_values_like_basicsr():
    opt = {'train': {'total_iter': 1, 'scheduler': {'periods': [1]}}, 'path': {}}
    created = apply_force_yml(opt, ['train:total_iter=7', 'train:scheduler:periods=[3, 4]', 'path:resume_state=~',
                                    'train:lr=!!float 2e-4'])
    assert opt == {'train': {'total_iter': 7, 'scheduler': {'periods': [3, 4]}, 'lr': 2e-4},
                   'path': {'resume_state': None}}
    assert created == ['path.resume_state', 'train.lr']


def test_unknown_keys_in_sections(data, monkeypatch):
    monkeypatch.chdir(data)
    opt = _options()
    opt['datasets']['train']['gt_szie'] = opt['datasets']['train'].pop('gt_size')
    assert ("datasets.train.gt_szie: unknown MixedDegradationDataset option. Did you mean 'gt_size'?"
            in _problems(data, opt))
    opt = _options()
    opt['datasets']['val']['dataroot_lqq'] = 'data/lq'
    assert "datasets.val.dataroot_lqq: unknown PairedImageDataset option. Did you mean 'dataroot_lq'?" in _problems(
        data, opt)
    opt = _options()
    opt['train']['ema_dacay'] = 0.999
    opt['val']['val_frequency'] = 2
    opt['logger']['print_frq'] = 1
    opt['path']['pretrain_network_gg'] = None
    assert _check(data, opt) == [
        "train.ema_dacay: unknown key, ignored by BasicSR and vlunet. Did you mean 'ema_decay'?",
        "val.val_frequency: unknown key, ignored by BasicSR and vlunet. Did you mean 'val_freq'?",
        "logger.print_frq: unknown key, ignored by BasicSR and vlunet. Did you mean 'print_freq'?",
        "path.pretrain_network_gg: no network_gg in the file, so it is ignored. Did you mean 'pretrain_network_g'?"]


def test_misspelt_top_level_key(data, monkeypatch):
    monkeypatch.chdir(data)
    opt = _options()
    opt['loger'] = opt.pop('logger')
    assert "logger: missing (print_freq, save_checkpoint_freq, use_tb_logger). Is 'loger' a misspelling of 'logger'?" \
        in _problems(data, opt)


def test_what_basicsr_models_read_in_training(data, monkeypatch):
    monkeypatch.chdir(data)
    opt = _options()
    del opt['train']['scheduler']
    opt['train']['optim_g']['type'] = 'Adamw'
    message = _problems(data, opt)
    assert 'train.scheduler: missing (required by VLUNetModel' in message
    assert "train.optim_g.type: 'Adamw'; supported optimizers: Adam, AdamW, SGD" in message
    opt = _options()
    opt['train']['scheduler'] = {'type': 'CosineAnnealingLR', 'periods': [2]}
    assert ("train.scheduler.type: 'CosineAnnealingLR' is not one of the schedulers (MultiStepLR, "
            "MultiStepRestartLR, CosineAnnealingRestartLR). Did you mean 'CosineAnnealingRestartLR'?") in _problems(
                data, opt)
    opt['train']['scheduler'] = {'type': 'CosineAnnealingRestartLR', 'period': [2]}
    message = _problems(data, opt)
    assert ("train.scheduler.period: CosineAnnealingRestartLR has no argument 'period'. "
            "Did you mean 'periods'?") in message
    assert 'train.scheduler.periods: missing (required by CosineAnnealingRestartLR).' in message


def test_numbers_and_phases(data, monkeypatch):
    monkeypatch.chdir(data)
    opt = _options()
    opt['logger']['print_freq'] = 0
    opt['val']['val_freq'] = 2.5
    opt['datasets']['valid'] = opt['datasets'].pop('val')
    message = _problems(data, opt)
    assert 'logger.print_freq: 0 must be a positive integer.' in message
    assert 'val.val_freq: 2.5 must be a positive integer.' in message
    assert "datasets.valid: BasicSR training accepts the phases train and val, val_<x> only. Did you mean 'val'?" \
        in message


def test_training_sources_and_meta_info_files(data, monkeypatch):
    monkeypatch.chdir(data)
    opt = _options()
    opt['datasets']['train']['tasks'] = [
        {'name': name, 'source': {'dataroot_gt': 'data/gt', 'meta_info_file': 'meta/denoise_train.txt'}}
        for name in ('denoise_15', 'denoise_25', 'denoise_50')]
    opt['datasets']['train']['tasks'].append({'name': 'derain', 'source': {'dataroot_gt': 'data/gt',
                                                                           'dataroot_lq': 'data/rainy'}})
    message = _problems(data, opt)
    # The shared missing file is listed once, naming every key that needs it.
    assert message.count('denoise_train.txt') == 1
    assert ("datasets.train.tasks[0].source.meta_info_file: 'meta/denoise_train.txt' does not exist: folder 'meta' is "
            "missing (also datasets.train.tasks[1].source.meta_info_file, datasets.train.tasks[2].source."
            "meta_info_file). scripts/prepare_datasets.py") in message
    assert "datasets.train.tasks[3].source.dataroot_lq: 'data/rainy' does not exist." in message
    opt['datasets']['train']['tasks'] = [{'name': 'derain', 'source': {'dataroot_gt': 'data/gt', 'dataroot_l': 'x'}}]
    assert 'datasets.train.tasks[0].source.dataroot_l: unknown source key' in _problems(data, opt)


def test_missing_weights_name_the_key_and_where_they_come_from(data, monkeypatch):
    monkeypatch.chdir(data)
    opt = _options()
    opt['path']['pretrain_network_g'] = 'experiments/pretrained_models/5task_vlunet_net.pth'
    opt['degradation_encoder'] = {'type': 'DegradationCLIP', 'backbone': 'ViT-B-32', 'pretrained': None}
    opt['path']['pretrain_network_degradation_encoder'] = 'experiments/pretrained_models/5task_vlunet_clip.pth'
    message = _problems(data, opt)
    assert ("path.pretrain_network_g: weight file 'experiments/pretrained_models/5task_vlunet_net.pth' does not exist. "
            "It is converted from the official release file 5task_vlunet.ckpt") in message
    assert message.count(CONVERTER) == 1
    assert ("path.pretrain_network_degradation_encoder: weight file "
            "'experiments/pretrained_models/5task_vlunet_clip.pth'"
            " does not exist. It is written by the same command as path.pretrain_network_g.") in message
    opt['path']['pretrain_network_g'] = 'experiments/other_run/models/net_g_latest.pth'
    opt['degradation_encoder']['pretrained'] = 'weights/open_clip_pytorch_model.bin'
    message = _problems(data, opt)
    assert "checkpoint of the training run named 'other_run'" in message
    assert "degradation_encoder.pretrained: file 'weights/open_clip_pytorch_model.bin' does not exist." in message


@pytest.mark.multiprocess
def test_test_entry_without_converted_weights_creates_nothing(tmp_path):
    """``vlunet/test.py -opt options/test_official_5task.yml`` before the converter: the message, no traceback."""
    result = run_entry('test', ['-opt', osp.join(REPO_ROOT, 'options', 'test_official_5task.yml')], cwd=str(tmp_path))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "path.pretrain_network_g: weight file 'experiments/pretrained_models/5task_vlunet_net.pth' does not exist" \
        in result.stderr and CONVERTER in result.stderr
    assert 'Traceback' not in result.stderr and 'is not found, use name' not in result.stdout
    assert os.listdir(tmp_path) == []


@pytest.mark.multiprocess
def test_train_entry_checks_the_overridden_options_and_creates_nothing(tmp_path):
    opt = _options()
    opt['degradation_encoder'] = {'type': 'DegradationCLIPP'}
    opt['network_g']['num_block'] = opt['network_g'].pop('num_blocks')
    opt['train']['total_iter'] = -5
    opt['path']['pretrain_network_g'] = 'missing_net.pth'
    options = tmp_path / 'options'
    options.mkdir()
    (options / 'bad.yml').write_text(yaml.safe_dump(opt, sort_keys=False))
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    result = run_entry('train', ['-opt', str(options / 'bad.yml'), '--force_yml', 'train:total_iter=4',
                                 'logger:print_frq=1'], cwd=str(run_dir))
    assert result.returncode == 1
    for expected in ("degradation_encoder.type: unknown arch type 'DegradationCLIPP'. Did you mean 'DegradationCLIP'?",
                     "network_g.num_block: VLUNet has no argument 'num_block'. Did you mean 'num_blocks'?",
                     "datasets.train.tasks[0].source.dataroot_lq: 'data/lq' does not exist",
                     "path.pretrain_network_g: weight file 'missing_net.pth' does not exist.",
                     "logger.print_frq: unknown key, ignored by BasicSR and vlunet. Did you mean 'print_freq'? "
                     "(set by --force_yml)"):
        assert expected in result.stderr, result.stderr
    assert 'total_iter' not in result.stderr  # repaired by --force_yml
    assert 'Traceback' not in result.stderr and 'is not found, use name' not in result.stdout
    assert os.listdir(run_dir) == []  # no experiments/, tb_logger/ or results/


def test_vlunet_rejects_de_dim_zero():
    with pytest.raises(ValueError, match=r'de_dim=0 must be an integer >= 1'):
        ARCH_REGISTRY.get('VLUNet')(**dict({k: v for k, v in TINY_VLUNET.items() if k != 'type'}, de_dim=0))


def test_clip_finetune_model_rejects_ema_decay(data, monkeypatch):
    monkeypatch.chdir(data)
    opt = {'name': 'clip', 'model_type': 'CLIPFinetuneModel', 'num_gpu': 0,
           'network_clip': {'type': 'DegradationCLIP', 'backbone': 'ViT-B-32', 'pretrained': None},
           'degradation_prompts': ['image with noise', 'image with haze'],
           'datasets': {'train': copy.deepcopy(_options()['datasets']['train'])}, 'path': {},
           'train': {'clip_opt': {'type': 'PromptCrossEntropyLoss'}, 'optim_clip': {'type': 'Adam', 'lr': 1e-3},
                     'total_iter': 2, 'ema_decay': 0.999},
           'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False}}
    assert 'train.ema_decay: 0.999 is not supported by CLIPFinetuneModel' in _problems(data, opt)
    opt['train']['ema_decay'] = 0
    assert _check(data, opt) == []
    with pytest.raises(ValueError, match='train.ema_decay'):
        MODEL_REGISTRY.get('CLIPFinetuneModel')(dict(opt, is_train=True, train=dict(opt['train'], ema_decay=0.9)))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_mixed_dataset_logs_the_source_of_each_task(data, monkeypatch):
    monkeypatch.chdir(data)
    handler = _Records()
    logger = get_root_logger()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        DATASET_REGISTRY.get('MixedDegradationDataset')(dict(_options()['datasets']['train'], phase='train'))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    [message] = [r.getMessage() for r in handler.records if 'tasks[0]' in r.getMessage()]
    assert 'tasks[0] denoise_25: 2 images, degraded images from dataroot_lq data/lq' in message
    assert ('tasks[1] dehaze: 2 images, synthetic degradations (haze; no dataroot_lq) on clean images from data/gt'
            in message)


def test_resuming_checks_the_state_not_the_weights_basicsr_replaces(data, monkeypatch):
    """A resumed run reads models/net_g_<iter>.pth instead of path.pretrain_network_g (BasicSR's check_resume)."""
    monkeypatch.chdir(data)
    opt = _options()
    opt['path']['pretrain_network_g'] = 'gone.pth'
    assert "path.pretrain_network_g: weight file 'gone.pth' does not exist." in _problems(data, opt)
    opt['path']['resume_state'] = 'states/2.state'
    message = _problems(data, opt)
    assert "path.resume_state: 'states/2.state' does not exist." in message and 'gone.pth' not in message
    os.makedirs(data / 'states', exist_ok=True)
    (data / 'states' / '2.state').write_bytes(b'')
    assert _check(data, opt) == []
