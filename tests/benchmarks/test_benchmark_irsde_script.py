"""benchmarks/benchmark_irsde.py: ConditionalUNet side by side with the release's network (``--official-file``).

The DA-CLIP repository is not available offline, so the test writes a stand-in
``models/modules/DenoisingUNet_arch.py`` whose ``ConditionalUNet`` comes, through a relative import of
a sibling module (as the release's imports ``module_util`` and ``attention``), from the literal
re-implementation in ``benchmarks/reimplementations/daclip_release.py``, behind the release's constructor signature:
no defaults for ``in_nc, out_nc, nf`` and other defaults than the released configuration (``ch_mult``
[1, 2, 4, 4], ``use_image_context`` off), so the script must pass every argument.
"""
import json
import os.path as osp
import subprocess
import sys

import pytest

import vlunet  # noqa: F401  (compat shim before basicsr)

from helpers import REPO_ROOT

TINY = {'nf': 8, 'ch_mult': [1, 2, 4, 8], 'context_dim': 16}


def _release_stand_in(directory) -> str:
    modules = directory / 'models' / 'modules'
    modules.mkdir(parents=True)
    (modules / 'module_util.py').write_text(
        f'import sys\nsys.path.insert(0, {REPO_ROOT!r})\n'
        'from benchmarks.reimplementations.daclip_release import OfficialConditionalUNet as ReleaseNetwork\n')
    (modules / 'DenoisingUNet_arch.py').write_text(
        'from .module_util import ReleaseNetwork\n\n\nclass ConditionalUNet(ReleaseNetwork):\n'
        '    def __init__(self, in_nc, out_nc, nf, ch_mult=[1, 2, 4, 4], context_dim=512, use_degra_context=True,\n'
        '                 use_image_context=False, upscale=1):\n'
        '        super().__init__(in_nc, out_nc, nf, ch_mult, context_dim, use_degra_context, use_image_context)\n')
    return str(modules / 'DenoisingUNet_arch.py')


def _release_sampler_stand_in(directory) -> str:
    """A ``utils/sde_utils.py`` with the release's ``IRSDE`` interface (constructor, set_mu, set_model, noise_state,
    reverse_posterior(xt, **contexts)), sampling with vlunet's IRSDE."""
    utils = directory / 'utils'
    utils.mkdir()
    (utils / 'sde_utils.py').write_text(
        f'import sys\nsys.path.insert(0, {REPO_ROOT!r})\nimport torch\n'
        'from vlunet.models.daclip.irsde import IRSDE as Schedule\n\n\nclass IRSDE:\n'
        "    def __init__(self, max_sigma, T=100, sample_T=-1, schedule='cosine', eps=0.01, device=None):\n"
        '        self.steps = T if sample_T < 0 else sample_T\n'
        '        self.scale = T / self.steps\n'
        '        self.schedule = Schedule(max_sigma, self.steps, schedule, eps)\n\n'
        '    def set_mu(self, mu):\n        self.mu = mu\n\n'
        '    def set_model(self, model):\n        self.model = model\n\n'
        '    def noise_state(self, tensor):\n'
        '        return tensor + torch.randn_like(tensor) * self.schedule.max_sigma\n\n'
        '    def reverse_posterior(self, xt, T=-1, **kwargs):\n'
        '        x = xt.clone()\n'
        '        for t in range(self.steps, 0, -1):\n'
        '            steps = torch.full((x.shape[0],), t)\n'
        '            noise = self.model(x, self.mu, t * self.scale, **kwargs)\n'
        '            x = self.schedule.posterior_step(x, self.mu, noise, steps)\n'
        '        return x\n')
    return str(utils / 'sde_utils.py')


def _run(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, osp.join(REPO_ROOT, 'benchmarks', 'benchmark_irsde.py'), *arguments],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)


@pytest.mark.multiprocess
def test_times_ours_against_the_release_file_and_reports_error_training_step_and_restoration(tmp_path):
    release_file = _release_stand_in(tmp_path)
    report = tmp_path / 'report.json'
    run = _run('--official-file', release_file, '--arch-json', json.dumps(TINY), '--sizes', '32', '--repeats', '2',
               '--warmup', '0', '--threads', '1', '--randomize-zero', '--train-size', '16', '--restore-steps', '3',
               '--official-sde', _release_sampler_stand_in(tmp_path), '--json', str(report))
    assert run.returncode == 0, run.stderr
    results = json.loads(report.read_text())
    assert results['baseline'] == f'the release ({release_file})'
    assert results['config'] == {'in_nc': 3, 'out_nc': 3, 'nf': 8, 'ch_mult': [1, 2, 4, 8], 'context_dim': 16,
                                 'use_degra_context': True, 'use_image_context': True}
    forward = results['forward']['32']
    assert forward['ours']['runs'] == forward['baseline']['runs'] == 2
    assert 0 < forward['max_relative_error'] < 1e-5  # the same function, computed differently
    assert results['train_step']['ours']['runs'] == 2
    assert results['restoration']['steps'] == 3 and results['restoration']['seconds'] > 0
    assert '| forward 32² |' in run.stdout and 'One 3-step restoration of a 32² image' in run.stdout
    assert results['restoration']['baseline_seconds'] > 0  # the release's loop with its network
    assert results['restoration']['baseline_loop'].endswith('sde_utils.py') and "the release's loop" in run.stdout


@pytest.mark.multiprocess
def test_a_missing_release_file_is_an_error_naming_the_file_to_give(tmp_path):
    run = _run('--official-file', str(tmp_path / 'missing.py'), '--arch-json', json.dumps(TINY), '--sizes', '16')
    assert run.returncode == 1
    assert 'missing.py: no such file' in run.stderr and 'DenoisingUNet_arch.py' in run.stderr
    run = _run('--arch-json', json.dumps(TINY), '--sizes', '16', '--repeats', '1', '--warmup', '0',
               '--restore-steps', '2', '--official-sde', str(tmp_path / 'sde_utils.py'))
    assert run.returncode == 1 and "sde_utils.py: no such file; give the release's" in run.stderr
