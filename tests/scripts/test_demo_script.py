"""scripts/demo.py: its CPU thread count on a busy machine and progress from the first iterations."""
import importlib.util
import os
import os.path as osp

import pytest

from vlunet.options import load_option_file
from vlunet.utils.cpu_threads import choose_threads, cpu_threads

from helpers import REPO_ROOT


@pytest.fixture(scope='module')
def demo():
    spec = importlib.util.spec_from_file_location('demo_script', osp.join(REPO_ROOT, 'scripts', 'demo.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('cpus, load, threads', [
    (2, 0.1, 2), (2, 0.6, 1), (2, 1.2, 1), (2, 9.0, 1),  # one busy core already costs a thread
    (16, 3.0, 13), (4, 1.5, 3), (1, 0.0, 1), (8, 0.0, 8),
])
def test_threads_are_the_idle_cpus(cpus, load, threads):
    assert choose_threads(cpus, load) == threads


def test_thread_count_from_the_environment_or_the_load(monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    assert cpu_threads() == (3, 'from OMP_NUM_THREADS')
    monkeypatch.delenv('OMP_NUM_THREADS')
    monkeypatch.setattr(os, 'getloadavg', lambda: (1.3, 0.0, 0.0))
    threads, reason = cpu_threads()
    cpus = len(os.sched_getaffinity(0))
    assert threads == choose_threads(cpus, 1.3) and f'{cpus} CPU(s) usable, 1-minute load average 1.30' in reason


def test_every_step_runs_with_the_chosen_threads(demo):
    check = ('import os, sys; sys.exit(0 if os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "{}" '
             'else 3)')
    demo.run_step('threads', ['-c', check.format(1)], threads=1)
    with pytest.raises(SystemExit, match='step "threads" failed'):
        demo.run_step('threads', ['-c', check.format(2)], threads=1)


def test_demo_training_logs_progress_within_its_first_ten_iterations():
    for name in ('train_clip_demo.yml', 'train_demo.yml'):
        opt = load_option_file(osp.join(REPO_ROOT, 'options', 'demo', name))
        assert opt['logger']['print_freq'] <= 10 < opt['train']['total_iter'], name


def test_every_demo_that_trains_a_restoration_network_has_a_test_option_file():
    """Its checkpoint, network, encoder and sde are those of the training file (issue 25, item 3)."""
    demo_folder = osp.join(REPO_ROOT, 'options', 'demo')
    tests = [load_option_file(osp.join(demo_folder, name)) for name in os.listdir(demo_folder)
             if name.startswith('test_')]
    trainings = [load_option_file(osp.join(demo_folder, name)) for name in sorted(os.listdir(demo_folder))
                 if name.startswith('train_')]
    restoring = [train for train in trainings if 'network_g' in train]
    assert {train['network_g']['type'] for train in restoring} == {'VLUNet', 'NAFNetDACLIP', 'PerceiveIR',
                                                                   'ConditionalUNet'}
    for train in restoring:
        checkpoint = f'experiments/{train["name"]}/models/net_g_latest.pth'
        matching = [test for test in tests if test['path'].get('pretrain_network_g') == checkpoint]
        assert len(matching) == 1, train['name']
        for key in ('model_type', 'network_g', 'degradation_encoder', 'sde'):
            assert matching[0].get(key) == train.get(key), (train['name'], key)


def test_the_irsde_demo_trains_tests_and_restores_with_the_checkpoint_alone(demo, monkeypatch, tmp_path):
    steps = []
    monkeypatch.setattr(demo, 'run_step', lambda title, args, threads: steps.append(args))
    monkeypatch.chdir(REPO_ROOT)  # main() changes into it; restored after the test
    (tmp_path / 'val' / 'denoise_50' / 'lq').mkdir(parents=True)
    (tmp_path / 'val' / 'denoise_50' / 'lq' / 'a.png').write_bytes(b'')
    monkeypatch.setattr(demo, 'DEMO_DATA', str(tmp_path))  # the demo data, as step 1 writes it
    demo.main(['--irsde'])
    train, test, inference = steps[-3:]
    assert train[-2:] == ['-opt', demo.IRSDE_TRAIN_OPTIONS] and test[-2:] == ['-opt', demo.IRSDE_TEST_OPTIONS]
    assert inference[0].endswith('inference.py') and '-opt' not in inference
    assert inference[inference.index('--net-weights') + 1] == 'experiments/IRSDE_demo/models/net_g_latest.pth'
    assert inference[inference.index('--steps') + 1] == '10'
    with pytest.raises(SystemExit, match=r'usage: python scripts/demo.py \[--irsde\]'):
        demo.main(['--irsd'])
