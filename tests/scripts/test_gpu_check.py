"""scripts/gpu_check.py --device cpu --tiny: the same steps as on a GPU (one training run, the tiled restoration,
the timings) on tiny configurations, the report written; the log parsing and the option overrides."""
import json
import os.path as osp
import sys

import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO_ROOT, 'scripts'))
import gpu_check  # noqa: E402

LOG = ('2026-12-07 INFO: [gpucheck..][epoch:  0, iter:       1, lr:(2.000e-04,)] '
       '[eta: 0:00:01, time (data): 0.5 (0.1)] l_pix: 2.0000e-01\n'
       '2026-12-07 INFO: Saving models and training states.\n'
       '2026-12-07 INFO: [gpucheck..][epoch:  0, iter:       2, lr:(2.000e-04,)] '
       '[eta: 0:00:00, time (data): 0.5 (0.1)] l_pix: 1.0000e-01 l_aux: 1.0e-02\n'
       '2026-12-07 INFO: [gpucheck..][epoch:  0, iter:   1,003, lr:(2.000e-04,)] '
       '[eta: 0:00:00, time (data): 0.5 (0.1)] l_pix: nan\n')


def test_losses_are_read_from_the_training_log_and_summarised():
    losses = gpu_check.parse_losses(LOG)
    assert losses == {1: {'l_pix': 0.2}, 2: {'l_pix': 0.1, 'l_aux': 0.01}, 1003: {'l_pix': float('nan')}} or (
        list(losses) == [1, 2, 1003] and losses[1003]['l_pix'] != losses[1003]['l_pix'])
    summary = gpu_check.loss_summary({1: losses[1], 2: losses[2]})
    assert summary['finite'] and summary['trend'] == 'one iteration' or summary['trend'] == 'down'
    assert not gpu_check.loss_summary(losses)['finite']
    assert gpu_check.loss_summary({})['iterations'] == 0


def test_training_options_make_a_short_run_in_the_requested_precision():
    opt = gpu_check.training_options('train_demo.yml', 'check', 'fp16', 6, 'cuda', tiny=False)
    assert opt['train']['total_iter'] == 6 and opt['num_gpu'] == 1 and list(opt['datasets']) == ['train']
    assert opt['amp'] == {'enabled': True, 'dtype': 'fp16'} and 'val' not in opt
    assert opt['logger']['print_freq'] == 1 and opt['path']['pretrain_network_degradation_encoder'] is None
    assert gpu_check.training_options('train_daclip_demo.yml', 'c', 'fp32', 4, 'cpu', True)['train']['scheduler'][
        'warmup'] == 2
    assert gpu_check.torch_version_tuple('2.14.1+cu130') == (2, 14)


def test_bad_arguments_get_one_clear_line():
    with pytest.raises(SystemExit, match='--steps'):
        gpu_check.main(['--out', '/nonexistent-never-created', '--steps', 'train,flying'])
    with pytest.raises(SystemExit, match='vlunet=PATH'):
        gpu_check.official_files(['final.py'])


def test_tiny_cpu_check_runs_every_step_and_writes_the_report(tmp_path):
    out = str(tmp_path / 'check')
    status = gpu_check.main(['--device', 'cpu', '--tiny', '--out', out, '--models', 'VLUNetModel',
                             '--precisions', 'bf16', '--networks', 'VLU-Net', '--repeats', '1',
                             '--compile-backend', 'none'])  # compiling: tests/utils/test_compile_network.py
    report = json.loads(open(osp.join(out, 'report.json')).read())
    steps = report['steps']
    assert list(steps) == list(gpu_check.STEPS)
    assert status == 0, {step: result.get('error') or result.get('rows') for step, result in steps.items()}
    train = steps['train']['rows'][0]
    assert train['precision'] == 'bf16' and train['finite'] and train['iterations'] == 2
    assert steps['ddp']['notes'][0].startswith('skipped')
    tiling = steps['tiling']['rows'][0]
    assert tiling['predicted_bytes'] > 0 and tiling['measured_bytes'] > 0
    variants = {(row['measurement'], row['variant']) for row in steps['timing']['rows']}
    assert ('forward 32^2 x1', 'eager, bf16') in variants and ('train step 2x32^2', 'eager, fp32') in variants
    page = open(osp.join(out, 'report.md')).read()
    assert '## train: ok' in page and '| VLU-Net | forward 32^2 x1 | eager, fp32 |' in page
