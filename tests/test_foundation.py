"""The plugin foundation: registration, entry points, resume, distributed training, option checks.

These tests drive BasicSR's own SRModel with a tiny BasicSR network so they exercise only the
plugin plumbing (compat fixes, entry points, option checking), not vlunet's models.
"""
import glob
import hashlib
import importlib
import importlib.util
import os
import os.path as osp
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet import command_line
from vlunet.options import OptionError, check_option_file
from vlunet.utils.registration import import_modules_by_suffix

from helpers import REPO_ROOT, run_entry, smooth_image, write_image

REGISTRIES = ('ARCH_REGISTRY', 'DATASET_REGISTRY', 'MODEL_REGISTRY', 'LOSS_REGISTRY', 'METRIC_REGISTRY')
SUBPACKAGES = {'archs': '_arch.py', 'data': '_dataset.py', 'models': '_model.py', 'losses': '_loss.py',
               'metrics': '_metric.py'}


def _plugin_entries():
    from basicsr.utils import registry
    return {
        name: {key: obj for key, obj in getattr(registry, name) if obj.__module__.startswith('vlunet.')}
        for name in REGISTRIES
    }


def test_every_plugin_file_is_imported_and_its_classes_resolve():
    from basicsr.utils import registry
    entries = _plugin_entries()
    for subpackage, suffix in SUBPACKAGES.items():
        folder = osp.join(REPO_ROOT, 'vlunet', subpackage)
        expected = sorted(
            f'vlunet.{subpackage}.' + osp.relpath(osp.join(root, f), folder)[:-3].replace(osp.sep, '.')
            for root, _, files in os.walk(folder) for f in files if f.endswith(suffix))
        assert importlib.import_module(f'vlunet.{subpackage}').MODULES == expected
        for module in expected:
            assert module in sys.modules
    for registry_name, objects in entries.items():
        for key, obj in objects.items():
            assert getattr(registry, registry_name).get(key) is obj


def test_a_plugin_file_imported_under_another_module_name_keeps_the_first_registration():
    from basicsr.utils.registry import ARCH_REGISTRY, METRIC_REGISTRY
    before = _plugin_entries()
    for name, path in (('vlunet_arch_by_path', ('archs', 'vlunet', 'vlunet_arch.py')),
                       ('restoration_metric_by_path', ('metrics', 'restoration_metric.py'))):
        spec = importlib.util.spec_from_file_location(name, osp.join(REPO_ROOT, 'vlunet', *path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # BasicSR alone: "An object named 'VLUNet' was already registered"
    assert module.calculate_psnr_float_rgb is not METRIC_REGISTRY.get('calculate_psnr_float_rgb')
    assert _plugin_entries() == before  # the same definitions: the first registrations stay
    message = (r"arch registry: 'VLUNet' is already registered by "
               r"vlunet\.archs\.vlunet\.vlunet_arch\.VLUNet \(.*vlunet_arch"
               r"\.py\); test_foundation\..*VLUNet \(.*test_foundation\.py\) is another object with that name: rename")
    with pytest.raises(ValueError, match=message):
        @ARCH_REGISTRY.register()
        class VLUNet(torch.nn.Module):
            def forward(self, x):
                return x
    assert ARCH_REGISTRY.get('VLUNet') is before['ARCH_REGISTRY']['VLUNet']


def test_adding_a_file_is_enough_to_register(tmp_path, monkeypatch):
    from basicsr.utils.registry import ARCH_REGISTRY
    package = tmp_path / 'my_plugin_archs'
    package.mkdir()
    (package / '__init__.py').write_text('')
    (package / 'tiny_thing_arch.py').write_text(textwrap.dedent('''
        import torch
        from basicsr.utils.registry import ARCH_REGISTRY

        @ARCH_REGISTRY.register()
        class FoundationTestTinyThing(torch.nn.Identity):
            pass
    '''))
    (package / 'helpers.py').write_text('raise RuntimeError("not a registered file, must not be imported")')
    (package / 'system').mkdir()
    (package / 'system' / '__init__.py').write_text('')
    (package / 'system' / 'nested_thing_arch.py').write_text(textwrap.dedent('''
        import torch
        from basicsr.utils.registry import ARCH_REGISTRY

        @ARCH_REGISTRY.register()
        class FoundationTestNestedThing(torch.nn.Identity):
            pass
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    names = import_modules_by_suffix('my_plugin_archs', str(package / '__init__.py'), '_arch.py')
    assert names == ['my_plugin_archs.system.nested_thing_arch', 'my_plugin_archs.tiny_thing_arch']
    assert ARCH_REGISTRY.get('FoundationTestTinyThing').__name__ == 'FoundationTestTinyThing'
    assert ARCH_REGISTRY.get('FoundationTestNestedThing').__module__ == 'my_plugin_archs.system.nested_thing_arch'
    import_modules_by_suffix('my_plugin_archs', str(package / '__init__.py'), '_arch.py')  # no AssertionError


@pytest.mark.multiprocess
def test_import_vlunet_before_basicsr_in_a_fresh_interpreter():
    code = 'import sys; import vlunet; assert "basicsr" in sys.modules; import basicsr.data.degradations; print("ok")'
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'ok'


def test_local_rank_spellings_are_normalised():
    argv = ['train.py', '-opt', 'x.yml', '--local-rank=1', '--local-rank', '2', '--local_rank=3']
    assert command_line.normalize_local_rank_argument(argv) == [
        'train.py', '-opt', 'x.yml', '--local_rank=1', '--local_rank', '2', '--local_rank=3']


# --------------------------------------------------------------------------- end-to-end runs


def _make_pairs(root: str, count: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        gt = smooth_image(seed * 100 + i, size, size)
        lq = np.clip(gt.astype(np.float32) + rng.normal(0, 20, gt.shape), 0, 255).round().astype(np.uint8)
        write_image(osp.join(root, 'gt', f'{i:03d}.png'), gt)
        write_image(osp.join(root, 'lq', f'{i:03d}.png'), lq)


def _train_options(data_root: str, name: str, total_iter: int) -> dict:
    return {
        'name': name, 'model_type': 'SRModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': {'name': 'tiny_train', 'type': 'PairedImageDataset', 'dataroot_gt': f'{data_root}/train/gt',
                      'dataroot_lq': f'{data_root}/train/lq', 'io_backend': {'type': 'disk'}, 'gt_size': 24,
                      'use_hflip': True, 'use_rot': True, 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2,
                      'dataset_enlarge_ratio': 1},
            'val': {'name': 'tiny_val', 'type': 'PairedImageDataset', 'dataroot_gt': f'{data_root}/val/gt',
                    'dataroot_lq': f'{data_root}/val/lq', 'io_backend': {'type': 'disk'}},
        },
        'network_g': {'type': 'SRVGGNetCompact', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_conv': 2,
                      'upscale': 1, 'act_type': 'prelu'},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [3], 'gamma': 0.5},
                  'total_iter': total_iter, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'val': {'val_freq': 2, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
                            'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': False}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': True, 'wandb': {'project': None}},
    }


def _write_yaml(path: str, opt: dict) -> str:
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return path


def _sha(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp('foundation')
    _make_pairs(str(root / 'data' / 'train'), 4, 32, seed=1)
    _make_pairs(str(root / 'data' / 'val'), 2, 32, seed=2)
    return root


@pytest.fixture(scope='module')
def trained(workdir):
    """A 4-iteration training run; returns (workdir, experiment folder, process)."""
    opt_path = _write_yaml(str(workdir / 'train_tiny.yml'), _train_options('data', 'tiny', total_iter=4))
    result = run_entry('train', ['-opt', opt_path], cwd=str(workdir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, workdir / 'experiments' / 'tiny', result


def _log_text(folder) -> str:
    logs = sorted(glob.glob(str(folder / '*.log')))
    assert logs, f'no log file in {folder}'
    return ''.join(open(p, encoding='utf-8').read() for p in logs)


@pytest.mark.multiprocess
def test_train_writes_checkpoints_metrics_and_tensorboard(trained):
    workdir, exp, _ = trained
    for name in ('net_g_2.pth', 'net_g_4.pth', 'net_g_latest.pth'):
        params = torch.load(exp / 'models' / name, map_location='cpu', weights_only=True)['params']
        assert 'body.0.weight' in params
    assert sorted(os.listdir(exp / 'training_states')) == ['2.state', '4.state']
    log = _log_text(exp)
    psnr = [float(v) for v in re.findall(r'# psnr: ([0-9.]+)', log)]
    ssim = [float(v) for v in re.findall(r'# ssim: ([0-9.]+)', log)]
    assert len(psnr) == 3 and len(ssim) == 3  # iterations 2 and 4, then the final validation
    assert all(10 < v < 60 for v in psnr) and all(0 < v <= 1 for v in ssim)
    assert glob.glob(str(workdir / 'tb_logger' / 'tiny' / 'events.out.tfevents.*'))
    assert not glob.glob(str(workdir / 'vlunet')), 'outputs must go under the working directory only'


@pytest.mark.multiprocess
def test_auto_resume_continues_and_keeps_earlier_checkpoints(trained):
    workdir, exp, _ = trained
    before = {name: _sha(exp / 'models' / name) for name in ('net_g_2.pth', 'net_g_4.pth')}
    result = run_entry('train', ['-opt', str(workdir / 'train_tiny.yml'), '--auto_resume', '--force_yml',
                                 'train:total_iter=6'], cwd=str(workdir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = _log_text(exp)
    assert 'Resuming training from epoch: ' in log and 'iter: 4.' in log
    assert re.search(r'iter:\s+5, lr:', log) and not re.search(r'iter:\s+1, lr:.*\n(?s:.*)iter:\s+5, lr:', log[
        log.index('Resuming'):])
    assert {name: _sha(exp / 'models' / name) for name in before} == before
    state = torch.load(exp / 'training_states' / '6.state', map_location='cpu', weights_only=False)
    assert state['iter'] == 6
    adam_steps = {int(s['step']) for s in state['optimizers'][0]['state'].values()}
    assert adam_steps == {6}, 'optimizer state must continue from iteration 4'
    # BasicSR steps the schedulers from iteration 2 on: 5 steps by iteration 6 (2 if it had restarted).
    assert state['schedulers'][0]['last_epoch'] == 5, 'scheduler state must continue from iteration 4'
    assert state['schedulers'][0]['_last_lr'] == [5e-4], 'the milestone at iteration 3 must have applied'


# Loaded by every process of the DDP run: records, per rank, each file or folder the process writes or creates.
RECORD_WRITES = '''
import builtins
import os

import torch

_rank, _record_open = os.environ.get('RANK'), os.open


def _record(kind, path):
    if _rank is not None and isinstance(path, (str, bytes, os.PathLike)):
        handle = _record_open(os.path.join({folder!r}, 'writes_rank' + _rank + '.txt'),
                              os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(handle, (kind + ' ' + os.path.abspath(os.fsdecode(path)) + chr(10)).encode())
        os.close(handle)


def _wrap(owner, name, kind, target=lambda args, kwargs: args[0], writes=lambda args, kwargs: True):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if writes(args, kwargs):
            _record(kind, target(args, kwargs))
        return original(*args, **kwargs)
    setattr(owner, name, wrapper)


_mode = lambda args, kwargs: args[1] if len(args) > 1 else kwargs.get('mode', 'r')
_wrap(builtins, 'open', 'open', writes=lambda args, kwargs: any(c in _mode(args, kwargs) for c in 'wax+'))
_wrap(os, 'open', 'os.open', writes=lambda args, kwargs: bool(args[1] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
_wrap(os, 'replace', 'replace', target=lambda args, kwargs: args[1])
_wrap(os, 'rename', 'rename', target=lambda args, kwargs: args[1])
_wrap(os, 'mkdir', 'mkdir')
_wrap(os, 'makedirs', 'makedirs')
_wrap(torch, 'save', 'torch.save', target=lambda args, kwargs: args[1] if len(args) > 1 else kwargs.get('f'))
'''


def _recorded_writes(folder, rank: int, under) -> list:
    path = folder / f'writes_rank{rank}.txt'
    lines = path.read_text().splitlines() if path.exists() else []
    return [line for line in lines if any(str(root) in line for root in under)]


@pytest.mark.multiprocess
def test_distributed_training_on_cpu_with_torchrun(workdir):
    opt = _train_options('data', 'tiny_ddp', total_iter=2)
    opt['datasets']['train']['batch_size_per_gpu'] = 1
    opt_path = _write_yaml(str(workdir / 'train_ddp.yml'), opt)
    site = workdir / 'record_writes'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(RECORD_WRITES.format(folder=str(site)))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(site))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           osp.join(REPO_ROOT, 'vlunet', 'train.py'), '-opt', opt_path, '--launcher', 'pytorch']
    result = subprocess.run(cmd, cwd=str(workdir), env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert output.count('using the gloo backend') == 2, 'both ranks must start'
    exp = workdir / 'experiments' / 'tiny_ddp'
    outputs = (exp, workdir / 'tb_logger' / 'tiny_ddp')
    rank0 = _recorded_writes(site, 0, outputs)
    assert any(line.startswith('open ') and line.endswith('.log') for line in rank0)  # the recorder sees rank 0
    assert {osp.basename(line) for line in rank0} >= {'net_g_2.pth', 'net_g_latest.pth', '2.state'}
    assert _recorded_writes(site, 1, outputs) == [], 'rank 0 alone writes logs, checkpoints and states'
    assert (site / 'writes_rank1.txt').exists(), 'rank 1 ran with the recorder'
    assert 'world_size: 2' in _log_text(exp)
    assert sorted(os.listdir(exp / 'models')) == ['net_g_2.pth', 'net_g_latest.pth']


@pytest.mark.multiprocess
def test_test_entry_evaluates_a_checkpoint(trained):
    workdir, exp, _ = trained
    opt = _train_options('data', 'tiny_eval', total_iter=1)
    opt = {key: opt[key] for key in ('name', 'model_type', 'scale', 'num_gpu', 'network_g', 'val')}
    opt['datasets'] = {'test_1': dict(_train_options('data', 'x', 1)['datasets']['val'], name='tiny_test')}
    opt['path'] = {'pretrain_network_g': str(exp / 'models' / 'net_g_latest.pth'), 'strict_load_g': True}
    opt['val']['save_img'] = True
    opt_path = _write_yaml(str(workdir / 'test_tiny.yml'), opt)
    with pytest.raises(OptionError, match='val.suffix: missing'):
        check_option_file(opt_path, is_train=False)
    opt['val']['suffix'] = None
    opt_path = _write_yaml(opt_path, opt)
    result = run_entry('test', ['-opt', opt_path], cwd=str(workdir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = _log_text(workdir / 'results' / 'tiny_eval')
    assert re.search(r'Validation tiny_test\s+# psnr: [0-9.]+', log)
    assert len(glob.glob(str(workdir / 'results' / 'tiny_eval' / 'visualization' / 'tiny_test' / '*.png'))) == 2


# --------------------------------------------------------------------------- malformed options


@pytest.mark.multiprocess
def test_unknown_type_names_the_key(workdir):
    opt = _train_options(str(workdir / 'data'), 'bad', 1)
    opt['network_g']['type'] = 'SRVGGNetCompakt'
    path = _write_yaml(str(workdir / 'bad_type.yml'), opt)
    with pytest.raises(OptionError, match=r"network_g\.type: unknown arch type 'SRVGGNetCompakt'.*SRVGGNetCompact"):
        check_option_file(path, is_train=True)
    result = run_entry('train', ['-opt', path], cwd=str(workdir))
    assert result.returncode != 0 and 'network_g.type' in result.stderr
    assert 'Traceback' not in result.stderr


def test_missing_or_wrong_dataroot_names_the_key(workdir):
    opt = _train_options(str(workdir / 'data'), 'bad', 1)
    del opt['datasets']['train']['dataroot_gt']
    opt['datasets']['val']['dataroot_lq'] = str(workdir / 'nowhere')
    path = _write_yaml(str(workdir / 'bad_root.yml'), opt)
    with pytest.raises(OptionError) as err:
        check_option_file(path, is_train=True)
    assert 'datasets.train.dataroot_gt: missing (required by PairedImageDataset)' in str(err.value)
    assert 'datasets.val.dataroot_lq' in str(err.value) and 'does not exist' in str(err.value)


def test_yaml_errors_and_typos_are_reported(workdir):
    broken = workdir / 'broken.yml'
    broken.write_text('name: x\ndatasets: [unclosed\n')
    with pytest.raises(OptionError, match='invalid YAML'):
        check_option_file(str(broken), is_train=True)
    with pytest.raises(OptionError, match='does not exist'):
        check_option_file(str(workdir / 'missing.yml'), is_train=True)
    opt = _train_options(str(workdir / 'data'), 'typo', 1)
    opt['loger'] = opt.pop('logger')
    path = _write_yaml(str(workdir / 'typo.yml'), opt)
    with pytest.raises(OptionError, match="logger: missing .*Is 'loger' a misspelling of 'logger'"):
        check_option_file(path, is_train=True)
    opt['logger'] = opt['loger']
    warnings = check_option_file(_write_yaml(path, opt), is_train=True)
    assert warnings == ["loger: unknown top-level key, ignored. Did you mean 'logger'?"]


@pytest.mark.multiprocess
@pytest.mark.parametrize('launcher', ['module', 'console'])
def test_module_and_console_entry_points_train_and_test(workdir, launcher):
    def command(entry: str) -> list:  # entry: 'train' or 'test'
        if launcher == 'module':
            return [sys.executable, '-m', f'vlunet.{entry}']
        executable = osp.join(osp.dirname(sys.executable), f'vlunet-{entry}')
        if not osp.exists(executable):
            pytest.skip(f'vlunet-{entry} is not installed next to {sys.executable} (pip install -e .)')
        return [executable]

    name = f'tiny_{launcher}'
    opt_path = _write_yaml(str(workdir / f'train_{name}.yml'), _train_options('data', name, total_iter=2))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    result = subprocess.run([*command('train'), '-opt', opt_path], cwd=str(workdir), env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    exp = workdir / 'experiments' / name
    assert sorted(os.listdir(exp / 'models')) == ['net_g_2.pth', 'net_g_latest.pth']
    assert re.search(r'iter:\s+2, lr:', _log_text(exp)) and len(re.findall(r'# psnr: [0-9.]+', _log_text(exp))) == 2
    test_opt = {key: _train_options('data', f'{name}_test', 1)[key] for key in ('name', 'model_type', 'scale',
                                                                                 'num_gpu', 'network_g', 'val')}
    test_opt['datasets'] = {'test_1': dict(_train_options('data', 'x', 1)['datasets']['val'], name='tiny_test')}
    test_opt['path'] = {'pretrain_network_g': str(exp / 'models' / 'net_g_latest.pth'), 'strict_load_g': True}
    test_path = _write_yaml(str(workdir / f'test_{name}.yml'), test_opt)
    result = subprocess.run([*command('test'), '-opt', test_path], cwd=str(workdir), env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r'Validation tiny_test\s+# psnr: [0-9.]+', _log_text(workdir / 'results' / f'{name}_test'))
