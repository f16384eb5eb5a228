"""Every bad file gets one clear line naming it, never a traceback (issue 24: one test per numbered defect).

Each test gives a damaged or wrong file to a loader or a command and asserts the error class (or the exit
status), that the one line names the file, and that nothing was written.
"""
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import load_script, run_entry, smooth_image, write_image

import vlunet  # noqa: F401
from basicsr.utils.registry import MODEL_REGISTRY
from vlunet.utils.safe_load import (BadFileError, DamagedFileError, MissingFileError, UnsafeCheckpointError,
                                    WrongContentsError, WrongKindError, safe_torch_load)

TINY_VLUNET = {'type': 'VLUNet', 'de_dim': 3, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
               'heads': [1, 1, 1, 1], 'key_size': 8}
STATES = osp.join('experiments', 'resumed', 'training_states')


def training_options(total_iter: int = 4, **train) -> dict:
    return {'name': 'resumed', 'model_type': 'VLUNetModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
            'datasets': {'train': {'name': 'train', 'type': 'PairedImageDataset', 'dataroot_gt': 'data/gt',
                                   'dataroot_lq': 'data/lq', 'io_backend': {'type': 'disk'}, 'gt_size': 16,
                                   'use_hflip': False, 'use_rot': False, 'num_worker_per_gpu': 0,
                                   'batch_size_per_gpu': 1, 'dataset_enlarge_ratio': 1}},
            'network_g': TINY_VLUNET, 'path': {'pretrain_network_g': None, 'resume_state': None},
            'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3}, 'total_iter': total_iter,
                      'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                      'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}, **train},
            'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False}}


def write_options(folder, opt: dict) -> None:
    (folder / 'train.yml').write_text(yaml.safe_dump(opt, sort_keys=False))


def one_error_line(stderr: str, path: str) -> str:
    """The single ``error:`` line of ``stderr``, which names ``path``; no traceback."""
    assert 'Traceback' not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith('error:')]
    assert len(lines) == 1 and path in lines[0], stderr
    return lines[0]


def random_bytes(path, seed: int, size: int = 100) -> str:
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return str(path)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A 4-iteration training with states at 2 and 4 (the folder to copy)."""
    folder = tmp_path_factory.mktemp('trained')
    for sub in ('gt', 'lq'):
        write_image(str(folder / 'data' / sub / '0.png'), smooth_image(0, 16, 16))
    write_options(folder, training_options())
    result = run_entry('train', ['-opt', 'train.yml'], cwd=str(folder))
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture
def experiment(trained, tmp_path):
    folder = tmp_path / 'run'
    shutil.copytree(trained, folder)
    return folder


# ------------------------------------------------------------------ 1. IndexError inside torch's unpickler

def test_1_random_bytes_that_make_torch_raise_index_error_are_one_bad_file_error(tmp_path):
    for seed in (17, 21):  # 'pop from empty list', 'list index out of range'
        path = random_bytes(tmp_path / f'r{seed}.pth', seed)
        with pytest.raises(WrongKindError) as error:
            safe_torch_load(path, 'network weights (--net-weights)')
        assert str(error.value).startswith(f'network weights (--net-weights) {path} is not a file written by')
        assert '\n' not in str(error.value)
    converter = load_script('convert_official_checkpoint')
    assert converter.main([str(tmp_path / 'r17.pth'), str(tmp_path / 'out')]) == 1
    assert not (tmp_path / 'out').exists()


# ------------------------------------------------------------------ 5. BasicSR's load_network

@pytest.mark.parametrize('contents, error_class', [(b'', DamagedFileError), (None, WrongKindError),
                                                   (b'PK\x03\x04' + bytes(60), DamagedFileError)])
def test_5_basicsr_load_network_names_the_file_and_its_option(tmp_path, contents, error_class):
    path = tmp_path / 'net_g.pth'
    path.write_bytes(contents) if contents is not None else random_bytes(path, 3, 5000)
    opt = {'name': 'bad', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'is_train': False, 'dist': False,
           'network_g': TINY_VLUNET, 'path': {'pretrain_network_g': str(path), 'results_root': str(tmp_path)}}
    with pytest.raises(error_class) as error:
        MODEL_REGISTRY.get('VLUNetModel')(opt)
    assert f'path.pretrain_network_g (VLUNet weights) {path}' in str(error.value)
    assert 'unsafe' not in str(error.value) and '\n' not in str(error.value)


# ------------------------------------------------------------------ 6. resume states through vlunet/train.py

def test_6_auto_resume_falls_back_from_a_damaged_newest_state_naming_both(experiment):
    newest = experiment / STATES / '4.state'
    newest.write_bytes(newest.read_bytes()[:3000])  # an interrupted copy
    result = run_entry('train', ['-opt', 'train.yml', '--auto_resume'], cwd=str(experiment))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith('warning: --auto_resume')]
    assert len(warnings) == 1 and osp.join(STATES, '4.state') in warnings[0] and osp.join(STATES, '2.state') in \
        warnings[0], result.stderr
    assert 'Traceback' not in result.stderr
    assert torch.load(str(newest), weights_only=True)['iter'] == 4  # trained 3..4 again, saved whole


def test_6_a_resume_state_that_is_no_training_state_is_one_line(experiment):
    for name, contents in (('list.state', [1, 2]), ('noiter.state', {'epoch': 0, 'optimizers': [], 'schedulers': []})):
        path = osp.join('experiments', name)
        torch.save(contents, str(experiment / path))
        write_options(experiment, {**training_options(), 'path': {'resume_state': path}})
        result = run_entry('train', ['-opt', 'train.yml'], cwd=str(experiment))
        assert result.returncode == 1
        line = one_error_line(result.stderr, path)
        assert 'is not a training state' in line or 'not a training state' in line
    assert sorted(os.listdir(experiment / STATES)) == ['2.state', '4.state']


# ------------------------------------------------------------------ 15. scheduler periods against total_iter

def test_15_cosine_periods_shorter_than_total_iter_are_refused_before_training(experiment):
    write_options(experiment, training_options(30, scheduler={'type': 'CosineAnnealingRestartLR', 'periods': [10, 10],
                                                              'restart_weights': [1, 1]}))
    shutil.rmtree(experiment / 'experiments')
    result = run_entry('train', ['-opt', 'train.yml'], cwd=str(experiment))
    assert result.returncode != 0
    assert 'train.scheduler.periods: [10, 10] add up to 20 iterations, fewer than train.total_iter (30)' in \
        result.stderr
    assert 'Traceback' not in result.stderr and not (experiment / 'experiments').exists()


# ------------------------------------------------------------------ 16. optimiser tensors of the wrong shape

def test_16_a_resume_state_with_wrong_optimizer_shapes_is_refused_naming_it(experiment):
    path = experiment / STATES / '4.state'
    state = torch.load(str(path), weights_only=True)
    moments = state['optimizers'][0]['state'][0]
    moments['exp_avg'] = torch.zeros(3, 3)
    torch.save(state, str(path))
    result = run_entry('train', ['-opt', 'train.yml', '--auto_resume'], cwd=str(experiment))
    assert result.returncode == 1
    line = one_error_line(result.stderr, osp.join(STATES, '4.state'))
    assert 'exp_avg: [3, 3] instead of' in line
    assert sorted(os.listdir(experiment / STATES)) == ['2.state', '4.state']


# ------------------------------------------------------------------ 17. world size of the resumed state

def test_17_a_state_written_by_more_processes_resumes_to_total_iter(experiment):
    path = experiment / STATES / '4.state'
    state = torch.load(str(path), weights_only=True)
    state['epoch'] = 100  # as written by many processes (fewer iterations per epoch each)
    torch.save(state, str(path))
    write_options(experiment, training_options(6))
    result = run_entry('train', ['-opt', 'train.yml', '--auto_resume'], cwd=str(experiment))
    assert result.returncode == 0, result.stderr
    assert '6.state' in os.listdir(experiment / STATES), result.stderr
