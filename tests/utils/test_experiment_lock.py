"""One training run per experiment: the lock refuses a second run naming the holder's PID, and a dead holder
(however it died) leaves the experiment free."""
import os
import os.path as osp
import signal
import socket
import time

import pytest
import yaml

from vlunet.utils.experiment_lock import (
    ExperimentLock,
    ExperimentLockedError,
    acquire_training_lock,
    experiment_name,
    lock_file_path,
)

from helpers import run_entry, smooth_image, write_image


def _fork_holder(lock_file: str) -> int:
    """A child process holding the lock of ``lock_file`` until it is killed; returns its PID."""
    ready, signal_ready = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: take the lock, report, wait to be killed
        try:
            held = ExperimentLock(lock_file, 'locked')  # noqa: F841  (held until the process dies)
            os.write(signal_ready, b'held')
            time.sleep(600)
        finally:
            os._exit(0)
    os.close(signal_ready)
    assert os.read(ready, 4) == b'held'
    os.close(ready)
    return pid


def _options(tmp_path, name: str = 'locked') -> str:
    for folder in ('gt', 'lq'):
        write_image(str(tmp_path / 'data' / folder / '0.png'), smooth_image(0, 16, 16))
    opt = {'name': name, 'model_type': 'VLUNetModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
           'datasets': {'train': {'name': 'train', 'type': 'PairedImageDataset', 'dataroot_gt': 'data/gt',
                                  'dataroot_lq': 'data/lq', 'io_backend': {'type': 'disk'}, 'gt_size': 16,
                                  'use_hflip': False, 'use_rot': False, 'num_worker_per_gpu': 0,
                                  'batch_size_per_gpu': 1, 'dataset_enlarge_ratio': 1}},
           'network_g': {'type': 'VLUNet', 'de_dim': 3, 'dim': 16, 'num_blocks': [1, 1, 1, 1],
                         'num_refinement_blocks': 1, 'heads': [1, 1, 1, 1], 'key_size': 8},
           'path': {'pretrain_network_g': None, 'resume_state': None},
           'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3}, 'total_iter': 2,
                     'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                     'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
           'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': True}}
    path = tmp_path / 'train.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return str(path)


def test_a_second_lock_is_refused_with_the_holders_pid_until_released(tmp_path):
    path = lock_file_path(str(tmp_path / 'experiments'), 'demo')
    assert path == str(tmp_path / 'experiments' / '.demo.lock')  # beside the folder BasicSR may archive
    with ExperimentLock(path, 'demo'):
        assert open(path).read() == f'{os.getpid()} {socket.gethostname()}\n'
        with pytest.raises(ExperimentLockedError, match=f"experiment 'demo' is being trained by another process: "
                                                        f"PID {os.getpid()} on host {socket.gethostname()}"):
            ExperimentLock(path, 'demo')
    with ExperimentLock(path, 'demo'):  # released at the end of the with block
        pass
    assert lock_file_path('experiments', 'group/demo') == osp.join('experiments', 'group', '.demo.lock')


def test_the_lock_name_is_the_one_basicsr_uses(tmp_path):
    option_file = tmp_path / 'o.yml'
    option_file.write_text('name: demo\nnum_gpu: 0\n')
    assert experiment_name(str(option_file), ['-opt', str(option_file)]) == 'demo'
    assert experiment_name(str(option_file), ['-opt', 'o.yml', '--debug']) == 'debug_demo'
    assert experiment_name(str(option_file), ['-opt', 'o.yml', '--force_yml', 'num_gpu=1', 'name=other']) == 'other'


def test_only_global_rank_0_takes_the_lock(tmp_path, monkeypatch):
    option_file = tmp_path / 'o.yml'
    option_file.write_text('name: demo\n')
    monkeypatch.setenv('RANK', '1')
    with acquire_training_lock(['-opt', str(option_file), '--launcher', 'pytorch'], str(tmp_path)):
        assert not (tmp_path / 'experiments').exists()
    monkeypatch.setenv('RANK', '0')
    with acquire_training_lock(['-opt', str(option_file), '--launcher', 'pytorch'], str(tmp_path)):
        with pytest.raises(ExperimentLockedError):
            ExperimentLock(str(tmp_path / 'experiments' / '.demo.lock'), 'demo')


@pytest.mark.multiprocess
def test_train_refuses_a_locked_experiment_and_a_dead_holder_frees_it(tmp_path):
    option_file = _options(tmp_path)
    lock_file = str(tmp_path / 'experiments' / '.locked.lock')
    holder = _fork_holder(lock_file)
    try:
        result = run_entry('train', ['-opt', option_file], cwd=str(tmp_path))
        assert result.returncode != 0
        assert f'PID {holder} on host {socket.gethostname()} holds {lock_file}' in result.stderr, result.stderr
        assert os.listdir(tmp_path / 'experiments') == ['.locked.lock']  # BasicSR created nothing
        assert not (tmp_path / 'tb_logger').exists()
    finally:
        os.kill(holder, signal.SIGKILL)  # a crash: the kernel releases the lock
        os.waitpid(holder, 0)
    with ExperimentLock(lock_file, 'locked'):
        assert open(lock_file).read().split()[0] == str(os.getpid())
