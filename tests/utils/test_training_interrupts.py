"""Ctrl-C during training: one line naming the iteration and what was saved, a resume state of that iteration
that --auto_resume continues from; --auto_resume without any state says it starts anew (issue 25, item 6).
The CPU thread count of the entry points (item 5)."""
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet import entry

from helpers import REPO_ROOT, smooth_image, write_image

TINY_VLUNET = {'type': 'VLUNet', 'de_dim': 2, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
               'heads': [1, 1, 1, 1], 'key_size': 8}


def _options(total_iter: int) -> dict:
    paired = {'name': 'train', 'type': 'PairedImageDataset', 'dataroot_gt': 'data/gt', 'dataroot_lq': 'data/lq',
              'io_backend': {'type': 'disk'}}
    return {'name': 'stop', 'model_type': 'VLUNetModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
            'datasets': {'train': dict(paired, gt_size=16, use_hflip=False, use_rot=False, num_worker_per_gpu=0,
                                       batch_size_per_gpu=1)},
            'network_g': TINY_VLUNET, 'path': {'pretrain_network_g': None},
            'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'total_iter': total_iter,
                      'scheduler': {'type': 'MultiStepLR', 'milestones': [10 ** 6], 'gamma': 0.5},
                      'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
            'logger': {'print_freq': 1, 'save_checkpoint_freq': 10 ** 6, 'use_tb_logger': False}}


def _train(cwd, *args) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    return subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, 'vlunet', 'train.py'), '-opt', 'train.yml',
                             '--auto_resume', *args], cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.mark.multiprocess
def test_ctrl_c_saves_the_iteration_done_and_auto_resume_continues(tmp_path):
    for i in range(2):
        write_image(str(tmp_path / 'data' / 'gt' / f'{i}.png'), smooth_image(i, 20, 20))
        write_image(str(tmp_path / 'data' / 'lq' / f'{i}.png'), smooth_image(i + 5, 20, 20))
    (tmp_path / 'train.yml').write_text(yaml.safe_dump(_options(10 ** 6)))
    run = _train(tmp_path)
    lines = []
    for line in run.stdout:  # the iteration log lines come as the loop runs
        lines.append(line)
        if 'iter:       3' in line:
            run.send_signal(signal.SIGINT)
            break
    output = ''.join(lines) + run.communicate(timeout=120)[0]
    assert run.returncode == 130, output[-3000:]
    assert 'no resume state in experiments/stop/training_states; training starts anew at iteration 0' in output
    assert 'Traceback' not in output and 'KeyboardInterrupt' not in output
    last = output.strip().splitlines()[-1]
    stopped = int(last.split('SIGINT at iteration ')[1].split(':')[0])
    assert stopped >= 3 and last.endswith(f': saved experiments/stop/models/net_g_{stopped}.pth and '
                                          f'experiments/stop/training_states/{stopped}.state; continue with '
                                          '--auto_resume.'), last
    assert (tmp_path / 'experiments' / 'stop' / 'models' / f'net_g_{stopped}.pth').is_file()
    state = torch.load(tmp_path / 'experiments' / 'stop' / 'training_states' / f'{stopped}.state', weights_only=True)
    assert state['iter'] == stopped and state['epoch'] == (stopped - 1) // 2  # 2 iterations per epoch

    resumed = _train(tmp_path, '--force_yml', f'train:total_iter={stopped + 1}')
    output = resumed.communicate(timeout=120)[0]
    assert resumed.returncode == 0, output[-3000:]
    assert f'Resuming training from epoch: {state["epoch"]}, iter: {stopped}.' in output
    assert f'iter:{" " * (8 - len(str(stopped + 1)))}{stopped + 1},' in output and 'starts anew' not in output


@pytest.fixture
def entry_in_process(monkeypatch):
    """run_pipeline called in this process (argv without -opt, no CUDA); torch's thread count restored after."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(entry, 'keep_freed_memory_in_entry_point', lambda: None)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(sys, 'argv', ['vlunet/test.py'])
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, 'getloadavg', lambda: (1.3, 1.0, 1.0))
    yield
    torch.set_num_threads(threads)


def test_entry_points_choose_the_cpu_threads_and_say_so(entry_in_process, monkeypatch, capsys):
    seen = []
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    entry.run_pipeline(lambda root: seen.append(torch.get_num_threads()), is_train=False)
    assert 'CPU: 3 thread(s) (4 CPU(s) usable, 1-minute load average 1.30' in capsys.readouterr().out
    monkeypatch.setenv('OMP_NUM_THREADS', '2')
    entry.run_pipeline(lambda root: seen.append(torch.get_num_threads()), is_train=False)
    assert 'CPU: 2 thread(s) (from OMP_NUM_THREADS)' in capsys.readouterr().out
    assert seen == [3, 2]


def test_ctrl_c_in_testing_is_one_line(entry_in_process, capsys):
    def interrupted(root):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stopped:
        entry.run_pipeline(interrupted, is_train=False)
    assert stopped.value.code == 130
    assert capsys.readouterr().err.strip() == ('Interrupted; the results tables and images written so far are kept '
                                               '(complete files).')


class _RecordingModel:
    """What the training loop calls on a model: update_learning_rate each iteration, save on a stop."""

    def __init__(self):
        self.opt = {'path': {'models': 'experiments/x/models', 'training_states': 'experiments/x/training_states'}}
        self.saved = []

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        pass

    def save(self, epoch, current_iter):
        self.saved.append((epoch, current_iter))


def test_sigterm_stops_after_the_iteration_in_progress_and_saves_it():
    from vlunet.utils.training_interrupts import TrainingInterrupted, TrainingStop
    stop, model = TrainingStop(), _RecordingModel()
    with pytest.raises(KeyboardInterrupt):
        stop.handle(signal.SIGTERM, None)  # before the first iteration: at once, nothing to save
    stop.watch_model(model)
    model.update_learning_rate(1)
    model.update_learning_rate(2)
    stop.handle(signal.SIGTERM, None)
    stop.epoch = 1
    with pytest.raises(TrainingInterrupted, match=r'^SIGTERM at iteration 2: saved experiments/x/models/net_g_2\.pth '
                                                  r'and experiments/x/training_states/2\.state; continue with'):
        model.update_learning_rate(3)
    assert model.saved == [(1, 2)]
    with pytest.raises(KeyboardInterrupt):
        stop.handle(signal.SIGTERM, None)  # a second signal: at once
