"""benchmarks/benchmark.py: the peak-memory probe, and timing against the authors' code (``--official-file``).

The official repository is not available offline, so the tests write a stand-in ``Final.py`` with
the official class name and constructor that delegates to ``benchmarks/reimplementations/vlunet_release.py`` and
records how the benchmark builds, loads and calls it.
"""
import json
import os.path as osp
import subprocess
import sys
import textwrap

import pytest

import vlunet  # noqa: F401  (compat shim before basicsr)
from vlunet.archs.vlunet.vlunet_arch import VLUNet
from vlunet.convert.vlunet_checkpoint import plugin_to_official_state_dict
from vlunet.options import OptionError

from helpers import REPO_ROOT, load_benchmark

ROOT = REPO_ROOT
BENCHMARK = osp.join(ROOT, 'benchmarks', 'benchmark.py')
# Sizes the official constructor can express (its key size is fixed at 96); tiny widths and depths.
ARCH = {'de_dim': 3, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1, 'heads': [1, 2, 2, 4]}
STAND_IN = '''
"""Stand-in for the official net/Final.py: class VLUNet with the official constructor, delegating to the tests."""
import json
import os
import sys

import einops  # noqa: F401  (the official file imports einops)
import torch
from torch import nn

sys.path.insert(0, {tests!r})
from benchmarks.reimplementations.vlunet_release import OfficialVLUNet

RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'record.jsonl')


def _record(**entry):
    with open(RECORD, 'a', encoding='utf-8') as f:
        f.write(json.dumps(entry) + '\\n')


class VLUNet(nn.Module):
    def __init__(self, de_dim, inp_channels=3, out_channels=3, dim=48, num_blocks=[4, 6, 6, 8],
                 num_refinement_blocks=4, heads=[1, 2, 4, 8], ffn_expansion_factor=2.66, bias=False,
                 LayerNorm_type='WithBias', decoder=False):
        super().__init__()
        _record(event='init', de_dim=de_dim, dim=dim, num_blocks=num_blocks, heads=heads,
                num_refinement_blocks=num_refinement_blocks, ffn_expansion_factor=ffn_expansion_factor)
        self.body = None

    def load_state_dict(self, state_dict, strict=True):
        _record(event='load', keys=sorted(state_dict), strict=strict)
        self.body = OfficialVLUNet(state_dict)

    def forward(self, inp_img, degradation, noise_emb=None):
        _record(event='forward', inference_mode=torch.is_inference_mode_enabled(), grad=torch.is_grad_enabled(),
                training=self.training)
        return self.body(inp_img, degradation)
'''


@pytest.fixture(scope='module')
def benchmark():
    return load_benchmark('benchmark')


def _stand_in(folder) -> str:
    path = folder / 'VLU-Net' / 'net' / 'Final.py'
    path.parent.mkdir(parents=True)
    path.write_text(textwrap.dedent(STAND_IN).format(tests=ROOT))
    return str(path)


def _run(tmp_path, *extra):
    out_json = tmp_path / 'bench.json'
    result = subprocess.run(
        [sys.executable, BENCHMARK, '--arch-json', json.dumps(ARCH), '--sizes', '16', '--repeats', '1', '--warmup', '0',
         '--train-size', '16', '--threads', '1', '--clip-backbone', 'none', '--no-memory', '--json', str(out_json),
         *extra], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads(out_json.read_text())


@pytest.mark.multiprocess
def test_official_file_is_loaded_built_with_our_weights_and_timed_in_the_same_grad_mode(tmp_path):
    final = _stand_in(tmp_path)
    stdout, results = _run(tmp_path, '--official-file', final)
    assert results['baseline']['kind'] == 'official-file' and results['baseline']['path'] == final
    assert f'Baseline ("official"): the official code ({final}, class VLUNet)' in stdout
    assert '| forward (batch 1) | GMACs | ours | official | speed-up |' in stdout
    row = results['forward'][0]
    assert row['official']['runs'] == 1 and row['max_rel_error_vs_official'] <= 1e-5  # same weights, same function
    assert results['train']['official']['median_s'] > 0
    record = [json.loads(line) for line in open(osp.join(osp.dirname(final), 'record.jsonl'), encoding='utf-8')]
    inits = [entry for entry in record if entry['event'] == 'init']
    assert inits[0] == {'event': 'init', 'de_dim': 3, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'heads': [1, 2, 2, 4],
                        'num_refinement_blocks': 1, 'ffn_expansion_factor': 2.66}
    loads = [entry for entry in record if entry['event'] == 'load']
    assert len(loads) == len(inits) == 2  # forward and training-step baselines
    official_keys = sorted(plugin_to_official_state_dict(VLUNet(**ARCH).state_dict()))
    assert loads[0]['keys'] == official_keys and loads[0]['strict'] is True
    assert 'encoder_level1.gradient_descent.prompt_param' in official_keys  # the official names, not ours
    forwards = [entry for entry in record if entry['event'] == 'forward']
    timed = [entry for entry in forwards if not entry['training']]
    trained = [entry for entry in forwards if entry['training']]
    assert timed and all(entry['inference_mode'] for entry in timed)  # as ours: torch.inference_mode
    assert trained and all(entry['grad'] and not entry['inference_mode'] for entry in trained)


@pytest.mark.multiprocess
def test_without_a_file_the_baseline_is_labelled_as_our_re_implementation(tmp_path):
    stdout, results = _run(tmp_path, '--compare-official')
    assert results['baseline']['kind'] == 're-implementation'
    assert ('Baseline ("re-impl. of official"): re-implementation of the official forward '
            '(benchmarks/reimplementations/vlunet_release.py)') in stdout
    assert "It is not the authors' code: pass --official-file" in stdout
    assert '| ours | re-impl. of official | speed-up |' in stdout and '| ours | official |' not in stdout
    assert results['forward'][0]['max_rel_error_vs_official'] <= 1e-5


def test_official_file_errors_name_the_file_and_the_fix(benchmark, tmp_path):
    with pytest.raises(OptionError, match=r"--official-file '.*nowhere.py' does not exist; give the net/Final.py"):
        benchmark.load_official_module(str(tmp_path / 'nowhere.py'))
    other = tmp_path / 'other.py'
    other.write_text('x = 1\n')
    with pytest.raises(OptionError, match='no class VLUNet in it'):
        benchmark.load_official_module(str(other))
    missing = tmp_path / 'needs.py'
    missing.write_text('import not_installed_module_xyz\n')
    with pytest.raises(OptionError, match=r"importing it failed \(No module named 'not_installed_module_xyz'\)"):
        benchmark.load_official_module(str(missing))
    with pytest.raises(OptionError, match=r"cannot express \{'key_size': 8\}"):
        benchmark.official_arguments({'type': 'VLUNet', 'key_size': 8})
    assert benchmark.official_arguments({'type': 'VLUNet', 'in_channels': 3, 'heads': (1, 2)}) == {
        'inp_channels': 3, 'heads': [1, 2], 'de_dim': 7}


PEAK_PROBES = r'''
import importlib.util, json, sys
import torch
sys.path.insert(0, sys.argv[2])
spec = importlib.util.spec_from_file_location('benchmark', sys.argv[1])
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)
cpu, mib = torch.device('cpu'), 2 ** 20
torch.ones(64 * mib).add_(1)  # a 256 MiB peak before the probes: each probe must measure from its own start
print(json.dumps([benchmark.peak_memory(lambda: None, cpu),
                  benchmark.peak_memory(lambda: torch.ones(16 * mib).add_(1), cpu),  # 64 MiB
                  benchmark.peak_memory(lambda: torch.ones(48 * mib).add_(1), cpu)]))  # 192 MiB
'''


@pytest.mark.multiprocess
def test_peak_memory_reports_what_a_job_allocates():
    """In a fresh interpreter, as the benchmark runs it (not one where keep_freed_memory holds freed memory)."""
    completed = subprocess.run([sys.executable, '-c', PEAK_PROBES, BENCHMARK, osp.join(ROOT, 'benchmarks')],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    idle, small, large = json.loads(completed.stdout.strip().splitlines()[-1])
    mib = 2 ** 20
    assert idle['extra_bytes'] < 8 * mib and idle['peak_bytes'] > 0 and idle['seconds'] >= 0
    assert 58 * mib <= small['extra_bytes'] <= 96 * mib, small
    assert 175 * mib <= large['extra_bytes'] <= 230 * mib, large
