"""BasicSR's own entry points see vlunet once it is installed; packaging and import cost.

``python -m basicsr.train`` / ``basicsr.test`` and BasicSR's ``train.py`` run as a script find
vlunet's components and fixes through ``vlunet_basicsr_hook`` (imported at start-up by the
``vlunet_basicsr_hook.pth`` that ``pip install [-e] .`` puts into site-packages). Every run here
uses ``sys.executable``, the interpreter of the environment vlunet is installed in (CI: a fresh
venv with ``pip install -e '.[test]'``).
"""
import ast
import glob
import importlib.metadata
import importlib.util
import json
import os
import os.path as osp
import re
import subprocess
import sys
import sysconfig

import pytest
import yaml

from helpers import REPO_ROOT, smooth_image, write_image

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0')
HOOK_PTH = 'vlunet_basicsr_hook.pth'
TINY_VLUNET = {'type': 'VLUNet', 'de_dim': 2, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
               'heads': [1, 1, 1, 1], 'key_size': 8}
TASKS = [{'name': 'denoise_25', 'source': {'dataroot_gt': 'data/gt'}},
         {'name': 'denoise_50', 'source': {'dataroot_gt': 'data/gt'}}]
PSNR = {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}


def _run(argv: list, cwd: str, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *argv], cwd=cwd, env=ENV, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _basicsr_dir() -> str:
    """The installed basicsr package folder, found without importing it (nor torch) in this process."""
    return importlib.util.find_spec('basicsr').submodule_search_locations[0]


def _train_options(name: str) -> dict:
    dataset = {'type': 'MixedDegradationDataset', 'tasks': TASKS, 'gt_size': 16}
    return {
        'name': name, 'model_type': 'VLUNetModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': {**dataset, 'name': 'tiny_train', 'use_hflip': True, 'use_rot': True, 'use_shuffle': True,
                      'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 1},
            'val': {**dataset, 'name': 'tiny_val'},
        },
        'network_g': TINY_VLUNET,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3, 'betas': [0.9, 0.999]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                  'total_iter': 2, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'val': {'val_freq': 2, 'save_img': False, 'metrics': {'psnr': PSNR}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': True, 'wandb': {'project': None}},
    }


def _write_yaml(path: str, opt: dict) -> str:
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return path


def _log_text(folder: str) -> str:
    logs = sorted(glob.glob(osp.join(folder, '*.log')))
    assert logs, f'no log file in {folder}'
    return ''.join(open(p, encoding='utf-8').read() for p in logs)


def _assert_trained(workdir: str, name: str, iters: int = 2) -> str:
    """The run ``name`` trained, validated and saved under ``workdir`` (and nothing under site-packages)."""
    exp = osp.join(workdir, 'experiments', name)
    for path in (f'models/net_g_{iters}.pth', 'models/net_g_latest.pth', f'training_states/{iters}.state'):
        assert osp.isfile(osp.join(exp, path)), f'{path} missing in {exp}'
    log = _log_text(exp)
    assert re.search(r'Validation tiny_val\s+# psnr: [0-9.]+', log), log[-2000:]
    assert 'Model [VLUNetModel] is created.' in log and 'Dataset [MixedDegradationDataset]' in log
    assert glob.glob(osp.join(workdir, 'tb_logger', name, 'events.out.tfevents.*'))
    for site_packages in {sysconfig.get_paths()['purelib'], osp.dirname(_basicsr_dir())}:
        assert not osp.exists(osp.join(site_packages, 'experiments', name)), 'outputs went into site-packages'
    return log


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp('basicsr_entry')
    for i in range(3):
        write_image(str(root / 'data' / 'gt' / f'{i:03d}.png'), smooth_image(10 + i, 20, 20))
    _write_yaml(str(root / 'train.yml'), _train_options('entry_m'))
    return str(root)


@pytest.fixture(scope='module')
def trained_with_m(workdir):
    """``python -m basicsr.train`` in ``workdir``; returns its log."""
    _run(['-m', 'basicsr.train', '-opt', 'train.yml'], workdir)
    return _assert_trained(workdir, 'entry_m')


def test_python_m_basicsr_train_trains_validates_and_saves(trained_with_m):
    # The fixes said what they changed, in the run's log.
    torchvision_dir = importlib.util.find_spec('torchvision').submodule_search_locations[0]
    if not osp.isfile(osp.join(torchvision_dir, 'transforms', 'functional_tensor.py')):
        assert trained_with_m.count('torchvision.transforms.functional_tensor (removed in torchvision 0.17') == 1
    assert 'runs as __main__; it uses the fixes of basicsr.train' in trained_with_m
    assert 'outputs go under the current directory' in trained_with_m


@pytest.mark.multiprocess
def test_python_m_basicsr_train_resumes_on_the_cpu(workdir, trained_with_m):
    # BasicSR's own load_resume_state maps the state to CUDA (crashes without a GPU): __main__ must use vlunet's.
    _run(['-m', 'basicsr.train', '-opt', 'train.yml', '--auto_resume', '--force_yml', 'train:total_iter=4'],
         workdir)
    log = _log_text(osp.join(workdir, 'experiments', 'entry_m'))
    assert 'Resuming training from epoch: ' in log and 'iter: 2.' in log
    assert osp.isfile(osp.join(workdir, 'experiments', 'entry_m', 'training_states', '4.state'))


@pytest.mark.multiprocess
def test_basicsr_train_py_run_as_a_script(workdir):
    script = osp.join(_basicsr_dir(), 'train.py')
    _run([script, '-opt', 'train.yml', '--force_yml', 'name=entry_script'], workdir)
    log = _assert_trained(workdir, 'entry_script')
    assert 'runs as __main__; it uses the fixes of basicsr.train' in log


@pytest.mark.multiprocess
def test_python_m_basicsr_test_evaluates_a_checkpoint(workdir, trained_with_m):
    opt = _train_options('entry_test')
    opt = {key: opt[key] for key in ('name', 'model_type', 'scale', 'num_gpu', 'network_g')}
    opt['datasets'] = {'test_1': {'type': 'MixedDegradationDataset', 'tasks': TASKS, 'gt_size': 16,
                                  'name': 'tiny_test'}}
    opt['path'] = {'pretrain_network_g': 'experiments/entry_m/models/net_g_latest.pth', 'strict_load_g': True}
    opt['val'] = {'save_img': False, 'suffix': None, 'metrics': {'psnr': PSNR}}
    _run(['-m', 'basicsr.test', '-opt', _write_yaml(osp.join(workdir, 'test.yml'), opt)], workdir)
    log = _log_text(osp.join(workdir, 'results', 'entry_test'))
    assert re.search(r'tiny_test\s+# psnr: [0-9.]+', log), log[-2000:]
    assert 'Loading VLUNet model from experiments/entry_m/models/net_g_latest.pth' in log


# --------------------------------------------------------------------------- installation and import cost


@pytest.mark.multiprocess
def test_the_hook_is_installed_and_costs_no_torch_import(tmp_path):
    code = ('import sys, vlunet_basicsr_hook as h; '
            'print(h.BasicSRImportHook in sys.meta_path, "torch" in sys.modules, "vlunet" in sys.modules)')
    # -c (not -S): the .pth in site-packages ran at start-up, from any folder.
    result = _run(['-c', code], str(tmp_path))
    assert result.stdout.split() == ['True', 'False', 'False'], 'the .pth did not install the hook, or it imported'


@pytest.mark.multiprocess
def test_importing_basicsr_alone_registers_vlunet_without_open_clip(tmp_path):
    code = ('import sys, basicsr; from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, MODEL_REGISTRY; '
            'print(ARCH_REGISTRY.get("VLUNet").__module__, DATASET_REGISTRY.get("MixedDegradationDataset").__module__, '
            'MODEL_REGISTRY.get("VLUNetModel").__module__, ARCH_REGISTRY.get("DegradationCLIP").__name__, '
            'type(basicsr.__loader__).__name__, "vlunet_basicsr_hook" in str(sys.meta_path), '
            '[m for m in ("open_clip", "timm", "skimage") if m in sys.modules])')
    result = _run(['-c', code], str(tmp_path))
    assert result.stdout.split() == ['vlunet.archs.vlunet.vlunet_arch', 'vlunet.data.mixed_degradation_dataset',
                                     'vlunet.models.guided_restoration_model', 'DegradationCLIP', 'SourceFileLoader',
                                     'False', '[]']


@pytest.mark.multiprocess
def test_a_clone_folder_in_the_current_directory_is_named_not_silently_used(tmp_path):
    # Python run from the folder that contains the clone imports ./vlunet (no __init__.py) as a namespace package.
    (tmp_path / 'vlunet' / 'vlunet').mkdir(parents=True)
    result = subprocess.run([sys.executable, '-c', 'import basicsr'], cwd=str(tmp_path), env=ENV, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode != 0
    assert f"'vlunet' is the folder {tmp_path / 'vlunet'}" in result.stderr
    assert 'run Python from another folder than the one that contains the clone' in result.stderr


def _imported_top_level_modules(folder: str) -> set:
    names = set()
    for path in glob.glob(osp.join(folder, '**', '*.py'), recursive=True):
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split('.')[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split('.')[0])
    return names


def _normalised(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


@pytest.mark.multiprocess
@pytest.mark.skipif(sys.version_info < (3, 10), reason='needs sys.stdlib_module_names and packages_distributions')
def test_every_third_party_import_is_a_declared_dependency(tmp_path):
    # The installed metadata, read away from the checkout (a stale vlunet.egg-info there would shadow it).
    code = ('import importlib.metadata as m, json; d = m.distribution("vlunet"); '
            'print(json.dumps([d.requires, d.metadata["Requires-Python"]]))')
    requires, python_requires = json.loads(_run(['-c', code], str(tmp_path)).stdout)
    requirements = {requirement: _normalised(re.split(r'[ ;<>=!~\[]', requirement)[0]) for requirement in requires}
    required = {name for requirement, name in requirements.items() if 'extra ==' not in requirement}
    owners = importlib.metadata.packages_distributions()
    third_party = _imported_top_level_modules(osp.join(REPO_ROOT, 'vlunet')) - set(sys.stdlib_module_names) - {
        'vlunet', 'vlunet_basicsr_hook'}
    undeclared = {module: owners.get(module) for module in third_party
                  if not {_normalised(d) for d in owners.get(module, [module])} & set(requirements.values())}
    assert not undeclared, f'imported by vlunet but neither in install_requires nor in an extra: {undeclared}'
    assert {'scikit-image', 'tqdm', 'numpy', 'pillow', 'open-clip-torch', 'basicsr', 'torch', 'pyyaml'} <= required
    assert set(python_requires.split(',')) == {'>=3.9', '<3.13'}


@pytest.mark.multiprocess
def test_the_wheel_build_puts_the_hook_pth_into_site_packages(tmp_path):
    # The non-editable path (pip install .): build_py copies the .pth to the top of build_lib.
    pytest.importorskip('setuptools', reason='no setuptools here: pip builds wheels in an isolated environment')
    build_lib = tmp_path / 'lib'
    result = subprocess.run([sys.executable, 'setup.py', '-q', 'build_py', '--build-lib', str(build_lib)],
                            cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(build_lib / HOOK_PTH, encoding='utf-8') as f:
        assert f.read() == 'import vlunet_basicsr_hook; vlunet_basicsr_hook.install()\n'
    assert (build_lib / 'vlunet_basicsr_hook.py').is_file() and (build_lib / 'vlunet' / 'compat.py').is_file()


@pytest.mark.multiprocess
def test_python_m_basicsr_train_checks_the_options_before_creating_anything(tmp_path):
    opt = _train_options('entry_checked')
    opt['network_g'] = {**TINY_VLUNET, 'num_block': [1, 1, 1, 1]}  # misspelt num_blocks
    _write_yaml(str(tmp_path / 'train.yml'), opt)
    result = subprocess.run([sys.executable, '-m', 'basicsr.train', '-opt', 'train.yml'], cwd=str(tmp_path), env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "network_g.num_block" in result.stderr and "num_blocks" in result.stderr, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ['train.yml']  # no experiments/, tb_logger/


@pytest.mark.multiprocess
def test_python_m_basicsr_train_refuses_a_locked_experiment(tmp_path):
    from vlunet.utils.experiment_lock import ExperimentLock, lock_file_path
    _write_yaml(str(tmp_path / 'train.yml'), _train_options('entry_locked'))
    for i in range(3):
        write_image(str(tmp_path / 'data' / 'gt' / f'{i:03d}.png'), smooth_image(10 + i, 20, 20))
    lock = ExperimentLock(lock_file_path(str(tmp_path / 'experiments'), 'entry_locked'), 'entry_locked')
    try:
        result = subprocess.run([sys.executable, '-m', 'basicsr.train', '-opt', 'train.yml'], cwd=str(tmp_path),
                                env=ENV, capture_output=True, text=True, timeout=600)
    finally:
        lock.release()
    assert result.returncode != 0
    assert f'PID {os.getpid()}' in result.stderr, result.stderr[-2000:]
    assert not osp.exists(tmp_path / 'experiments' / 'entry_locked')
