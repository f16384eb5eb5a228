"""Official checkpoint conversion: Lightning .ckpt and clip_tuned.pth in, BasicSR weight files out."""
import argparse
import csv
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import vlunet  # noqa: F401  (compat shim before basicsr)
from vlunet.archs.vlunet_arch import VLUNet
from vlunet.utils.official_checkpoint import convert_official_checkpoint

TESTS = osp.dirname(osp.abspath(__file__))
SCRIPT = osp.join(osp.dirname(TESTS), 'scripts', 'convert_official_checkpoint.py')
MANIFEST = osp.join(TESTS, 'data', 'vlunet_official_state_dict.tsv')
ADAPTER_LAYERS = (0, 1, 3, 4, 6, 7)
CLIP_TOWER = {'logit_scale': (), 'visual.proj': (8, 4), 'token_embedding.weight': (10, 4)}


def adapter_params(prefix: str) -> dict:
    """Official adapter tensors under ``prefix`` (e.g. 'ad_imageEncoder.adapter.'), small random values."""
    generator = torch.Generator().manual_seed(len(prefix))
    return {f'{prefix}{layer}.{kind}': torch.randn(4, generator=generator)
            for layer in ADAPTER_LAYERS for kind in ('weight', 'bias')}


def lightning_checkpoint(de_dim: int) -> dict:
    """An official-layout Lightning checkpoint: manifest tensors (random) plus fake CLIP weights."""
    column = 'shape' if de_dim == 7 else 'shape_de_dim5'
    generator = torch.Generator().manual_seed(0)
    with open(MANIFEST, newline='', encoding='utf-8') as f:
        net = {f'net.{row["key"]}': torch.randn(json.loads(row[column]), generator=generator)
               for row in csv.DictReader(f, delimiter='\t')}
    clip = {key: torch.randn(shape, generator=generator) for key, shape in CLIP_TOWER.items()}
    degradation = {}
    for encoder in ('ad_imageEncoder', 'ad_textEncoder'):
        degradation.update({f'{encoder}.clip_model.{key}': value for key, value in clip.items()})
        degradation.update(adapter_params(f'{encoder}.adapter.'))
    state = {**net, **{f'model_degradation.{key}': value for key, value in degradation.items()}}
    # A Lightning checkpoint may hold objects outside torch's weights_only allowlist.
    return {'epoch': 199, 'global_step': 1000, 'pytorch-lightning_version': '2.4.0', 'state_dict': state,
            'loops': {}, 'callbacks': {}, 'optimizer_states': [], 'lr_schedulers': [],
            'hparams_like': argparse.Namespace(de_dim=de_dim)}


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)


def load_params(path: str) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)['params']


def test_lightning_checkpoint_converts_and_loads_strictly(tmp_path):
    src = str(tmp_path / '5task_vlunet.ckpt')
    checkpoint = lightning_checkpoint(de_dim=5)
    torch.save(checkpoint, src)
    out_dir = tmp_path / 'converted'

    result = run_script(src, str(out_dir))

    assert result.returncode == 0, result.stderr
    net_path, clip_path = str(out_dir / '5task_vlunet_net.pth'), str(out_dir / '5task_vlunet_clip.pth')
    assert 'WARNING' in result.stdout and 'weights_only=False' in result.stdout
    assert f'wrote restoration network: {net_path} (detected de_dim=5' in result.stdout
    assert f'wrote degradation encoder (CLIP backbone and adapters): {clip_path}' in result.stdout
    assert sorted(os.listdir(out_dir)) == ['5task_vlunet_clip.pth', '5task_vlunet_net.pth']

    net = VLUNet(de_dim=5)
    net.load_state_dict(load_params(net_path), strict=True)
    official = checkpoint['state_dict']
    torch.testing.assert_close(net.latent.gradient_step.degradation_keys,
                               official['net.latent.gradient_descent.prompt_param'], rtol=0, atol=0)
    torch.testing.assert_close(net.refinement.proximal_mapping[3].norm2.bias,
                               official['net.refinement.denoiser.blocks.3.norm2.body.bias'], rtol=0, atol=0)
    torch.testing.assert_close(net.unused_degraded_down1_2.body[0].weight, official['net.down1_2_i.body.0.weight'],
                               rtol=0, atol=0)

    clip = load_params(clip_path)
    expected_keys = ({f'backbone.{key}' for key in CLIP_TOWER}
                     | {f'{side}_adapter.{layer}.{kind}' for side in ('image', 'text')
                        for layer in ADAPTER_LAYERS for kind in ('weight', 'bias')})
    assert set(clip) == expected_keys
    torch.testing.assert_close(clip['backbone.visual.proj'],
                               official['model_degradation.ad_imageEncoder.clip_model.visual.proj'])
    torch.testing.assert_close(clip['text_adapter.6.weight'],
                               official['model_degradation.ad_textEncoder.adapter.6.weight'])


def test_de_dim_7_checkpoint_is_detected(tmp_path):
    src = str(tmp_path / '3task_vlunet.ckpt')
    torch.save(lightning_checkpoint(de_dim=7), src)
    converted = convert_official_checkpoint(src, str(tmp_path))
    assert converted.de_dim == 7
    VLUNet(de_dim=7).load_state_dict(load_params(converted.net_path))
    with pytest.raises(RuntimeError, match='set network_g.de_dim: 7'):
        VLUNet(de_dim=5).load_state_dict(load_params(converted.net_path))


def test_clip_tuned_file_converts_to_the_clip_file_only(tmp_path, capsys):
    learnable = {**adapter_params('ad_imageEncoder.adapter.'), **adapter_params('ad_textEncoder.adapter.')}
    optimizer = {'state': {0: {'step': torch.tensor(3.0), 'exp_avg': torch.zeros(4)}},
                 'param_groups': [{'lr': 1e-5, 'betas': (0.9, 0.999), 'params': [0]}]}
    src = str(tmp_path / 'clip_tuned.pth')
    torch.save({'epoch': 90, 'learnable_params': learnable, 'optimizer': optimizer}, src)

    converted = convert_official_checkpoint(src, str(tmp_path / 'out'))

    assert 'WARNING' not in capsys.readouterr().out  # loaded with weights_only=True
    assert converted.net_path is None and converted.de_dim is None and not converted.clip_has_backbone
    assert converted.clip_path == str(tmp_path / 'out' / 'clip_tuned_clip.pth')
    clip = load_params(converted.clip_path)
    assert len(clip) == 24 and not any(key.startswith('backbone.') for key in clip)
    torch.testing.assert_close(clip['image_adapter.7.bias'], learnable['ad_imageEncoder.adapter.7.bias'])


def test_non_checkpoint_files_are_refused_with_a_clear_message(tmp_path):
    text_file = tmp_path / 'notes.ckpt'
    text_file.write_text('not a checkpoint')
    result = run_script(str(text_file), str(tmp_path / 'out'))
    assert result.returncode == 1
    assert f'error: {text_file} is not a PyTorch checkpoint' in result.stderr
    assert not (tmp_path / 'out').exists()

    basicsr_file = str(tmp_path / 'net_g_1000.pth')
    torch.save({'params': {'embed.weight': torch.zeros(1)}}, basicsr_file)
    with pytest.raises(ValueError, match='neither an official VLU-Net Lightning checkpoint .* nor an official '
                                         'clip_tuned.pth'):
        convert_official_checkpoint(basicsr_file, str(tmp_path / 'out'))
    with pytest.raises(FileNotFoundError, match='official checkpoint not found'):
        convert_official_checkpoint(str(tmp_path / 'missing.ckpt'), str(tmp_path / 'out'))


def test_cli_main_returns_error_code_in_process(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location('convert_official_checkpoint', SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(tmp_path / 'missing.ckpt'), str(tmp_path)]) == 1
    assert 'official checkpoint not found' in capsys.readouterr().err
