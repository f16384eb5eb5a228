"""The fast VLUNet paths compute the official function: channels-last and contiguous inputs, several
attention heads, batch > 1, odd sizes; work is done once per forward and never repeated over the batch;
bf16 autocast stays close; the AMP/compile option helpers; benchmarks/benchmark.py end to end."""
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import vlunet  # noqa: F401  (compat shim before basicsr)
from benchmarks.reimplementations.vlunet_release import OfficialVLUNet, official_forward
from vlunet.archs.padding import pad_to_multiple
from vlunet.archs.vlunet.vlunet_arch import VLUNet
from vlunet.convert.vlunet_checkpoint import plugin_to_official_state_dict
from vlunet.ops.attention import channel_attention
from vlunet.utils.precision import AmpOptions, autocast, make_grad_scaler, parse_amp_options

from helpers import REPO_ROOT, load_benchmark
from helpers.networks import relative_error
from helpers.networks import tiny_net as arch_tiny_net

ROOT = REPO_ROOT
BENCHMARK = osp.join(ROOT, 'benchmarks', 'benchmark.py')
# arch tests' + heads
TINY = dict(de_dim=3, dim=16, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 2, 2, 4), key_size=8)


def tiny_net(seed: int = 0) -> VLUNet:
    """The arch tests' perturbed tiny VLUNet, with several attention heads."""
    return arch_tiny_net(seed, heads=TINY['heads'])


def reference_output(net: VLUNet, image: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
    """The official computation on the mirror-padded image, cropped back (it needs multiples of 8)."""
    padded = pad_to_multiple(image, 8)
    out = official_forward(plugin_to_official_state_dict(net.state_dict()), padded, degradation)
    return out[..., :image.shape[-2], :image.shape[-1]]


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_fast_path_equals_official_computation(memory_format):
    net = tiny_net(seed=3)
    image = torch.rand(2, 3, 21, 27).contiguous(memory_format=memory_format)
    degradation = torch.randn(2, 512)
    with torch.no_grad():
        out = net(image, degradation)
    assert out.shape == image.shape and out.is_contiguous()
    assert relative_error(out, reference_output(net, image.contiguous(), degradation)) <= 1e-5


@pytest.mark.parametrize('heads', [1, 2, 4])
@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_channel_attention_equals_the_per_head_definition(heads, memory_format):
    torch.manual_seed(heads)
    query, key, value = (torch.randn(2, 8, 5, 6).contiguous(memory_format=memory_format) for _ in range(3))
    temperature = torch.rand(heads, 1, 1) + 0.5
    out = channel_attention(query, key, value, temperature, heads)
    expected = []
    for q, k, v, t in zip(query.chunk(heads, 1), key.chunk(heads, 1), value.chunk(heads, 1), temperature):
        q, k, v = (x.flatten(2) for x in (q, k, v))
        logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(1, 2) * t
        expected.append((logits.softmax(-1) @ v).view(2, -1, 5, 6))
    assert torch.allclose(out, torch.cat(expected, 1), rtol=1e-5, atol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_key_mixing_is_per_sample_and_never_repeats_over_the_batch(monkeypatch):
    net = tiny_net(seed=4)
    step = net.encoder_level2.gradient_step
    degradation = torch.randn(3, 512)
    batched = step.mixed_key(degradation, 3, (12, 10))
    for index in range(3):
        single = step.mixed_key(degradation[index:index + 1], 1, (12, 10))
        assert torch.allclose(batched[index:index + 1], single, atol=1e-6)

    def no_repeat(*args, **kwargs):
        raise AssertionError('Tensor.repeat called in the VLUNet forward')
    monkeypatch.setattr(torch.Tensor, 'repeat', no_repeat)
    with torch.no_grad():
        net(torch.rand(3, 3, 16, 16), degradation)


def test_degraded_branch_and_key_weights_are_computed_once_per_forward():
    net = tiny_net()
    calls = {'degraded_embed': 0, 'key_logits': 0}

    def counter(name):
        def hook(*_):
            calls[name] += 1
        return hook
    net.degraded_embed.register_forward_hook(counter('degraded_embed'))
    for module in net.modules():
        if hasattr(module, 'key_logits'):
            module.key_logits.register_forward_hook(counter('key_logits'))
    with torch.no_grad():
        net(torch.rand(2, 3, 16, 16), torch.randn(2, 512))
    assert calls == {'degraded_embed': 1, 'key_logits': 8}  # one D-GDM per unfolding stage


def test_bf16_autocast_runs_and_stays_close():
    net = tiny_net(seed=5)
    image, degradation = torch.rand(2, 3, 24, 24), torch.randn(2, 512)
    with torch.no_grad():
        expected = net(image, degradation)
        with autocast(AmpOptions(True, torch.bfloat16), torch.device('cpu')):
            low = net(image, degradation)
    assert torch.isfinite(low).all()
    assert 0 < relative_error(low.float(), expected) < 0.05  # bf16 did run, and stays close


def test_amp_options_and_grad_scaler():
    assert parse_amp_options(None) == AmpOptions()
    assert parse_amp_options({'enabled': True, 'dtype': 'fp16'}) == AmpOptions(True, torch.float16)
    with pytest.raises(ValueError, match='amp.dtype'):
        parse_amp_options({'enabled': True, 'dtype': 'int8'})
    with pytest.raises(ValueError, match='unknown keys'):
        parse_amp_options({'enable': True})
    with pytest.raises(ValueError, match='amp.enabled'):
        parse_amp_options({'enabled': 'yes'})
    cpu = torch.device('cpu')
    assert make_grad_scaler(AmpOptions(True, torch.bfloat16), cpu) is None
    assert make_grad_scaler(AmpOptions(), cpu) is None
    assert isinstance(make_grad_scaler(AmpOptions(True, torch.float16), cpu), torch.amp.GradScaler)
    with autocast(AmpOptions(), cpu):
        assert not torch.is_autocast_enabled('cpu')


def test_trainable_official_baseline_matches_and_gets_gradients():
    net = tiny_net(seed=6)
    official = OfficialVLUNet(plugin_to_official_state_dict(net.state_dict()))
    image, degradation = torch.rand(2, 3, 16, 16), torch.randn(2, 512)
    out = official(image, degradation)
    assert relative_error(out.detach(), net(image, degradation).detach()) <= 1e-5
    out.mean().backward()
    named = dict(zip(official.names, official.weights))
    assert named['patch_embed.proj.weight'].grad is not None


@pytest.fixture(scope='module')
def benchmark():
    return load_benchmark('benchmark')


def test_memory_probe_and_clip_cost_on_tiny_models(benchmark, tiny_clip_name):
    task = dict(net_opt={'type': 'VLUNet', **TINY}, weights=None, device='cpu', threads=1, precision='fp32',
                train_batch=2, kind='ours_forward', size=32)
    memory = benchmark.memory_probe(task)
    assert memory['peak_bytes'] > 0 and memory['seconds'] > 0  # extra_bytes: tests/test_benchmark_script.py
    clip = benchmark.clip_cost(tiny_clip_name, batch=2, size=32, repeats=1, device=torch.device('cpu'))
    assert clip['runs'] == 1 and clip['median_s'] > 0
    assert benchmark.clip_cost('none', 2, 32, 1, torch.device('cpu')) is None


@pytest.mark.multiprocess
def test_benchmark_script_end_to_end(tmp_path):
    out_json = tmp_path / 'bench.json'
    arch = json.dumps({**TINY, 'num_blocks': list(TINY['num_blocks']), 'heads': list(TINY['heads'])})
    result = subprocess.run(
        [sys.executable, BENCHMARK, '--arch-json', arch, '--sizes', '16', '--repeats', '1', '--warmup', '0',
         '--train-size', '16', '--threads', '1', '--compare-official', '--clip-backbone', 'none', '--no-memory',
         '--json', str(out_json)], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert '| forward (batch 1) | GMACs | ours | re-impl. of official | speed-up |' in result.stdout
    assert '| 16x16 |' in result.stdout and 'training step (batch 2, 16x16' in result.stdout
    results = json.loads(out_json.read_text())
    assert results['machine']['threads'] == 1 and results['machine']['torch'] == torch.__version__
    row = results['forward'][0]
    assert row['size'] == 16 and row['macs'] > 0 and row['ours']['runs'] == 1 and row['official']['runs'] == 1
    assert row['max_rel_error_vs_official'] <= 1e-5
    assert results['train']['ours']['median_s'] > 0 and results['train']['official']['median_s'] > 0


def test_benchmark_rejects_sizes_the_official_code_cannot_take(benchmark, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.parse_args(['--sizes', '20', '--compare-official'])
    assert exit_info.value.code == 2 and 'multiples of 8' in capsys.readouterr().err
