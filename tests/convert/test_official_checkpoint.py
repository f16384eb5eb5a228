"""Official checkpoint conversion: Lightning .ckpt and clip_tuned.pth in, BasicSR weight files out; download checks."""
import csv
import hashlib
import json
import os
import os.path as osp

import open_clip
import pytest
import torch

import vlunet  # noqa: F401  (compat shim before basicsr)
from vlunet.archs.vlunet.vlunet_arch import VLUNet
from vlunet.convert.vlunet_checkpoint import convert_official_checkpoint
from vlunet.convert.vlunet_release import RELEASE_PACKAGE_URL, verify_official_file

from helpers import FIXTURES, REPO_ROOT, load_script

SCRIPT = osp.join(REPO_ROOT, 'scripts', 'convert_official_checkpoint.py')
MANIFEST = osp.join(FIXTURES, 'vlunet_official_state_dict.tsv')
ADAPTER_LAYERS = (0, 1, 3, 4, 6, 7)


def clip_tower() -> dict:
    """The ViT-B-32 CLIP tensors with their real names and shapes, each a broadcast scalar (the file stays tiny)."""
    with torch.device('meta'):
        shapes = {key: value.shape for key, value in
                  open_clip.create_model('ViT-B-32', pretrained=None, device='meta').state_dict().items()}
    return {key: torch.tensor(float(i)).expand(shape) for i, (key, shape) in enumerate(shapes.items())}


def adapter_params(prefix: str) -> dict:
    """Official adapter tensors under ``prefix`` (e.g. 'ad_imageEncoder.adapter.'), real shapes, random values."""
    generator = torch.Generator().manual_seed(len(prefix))
    return {f'{prefix}{layer}.{kind}': torch.randn((512, 512) if kind == 'weight' and layer % 3 == 0 else (512,),
                                                   generator=generator)
            for layer in ADAPTER_LAYERS for kind in ('weight', 'bias')}


def lightning_checkpoint(de_dim: int) -> dict:
    """An official-layout Lightning checkpoint: manifest tensors (random) plus ViT-B-32-shaped CLIP weights."""
    column = 'shape' if de_dim == 7 else 'shape_de_dim5'
    generator = torch.Generator().manual_seed(0)
    with open(MANIFEST, newline='', encoding='utf-8') as f:
        net = {f'net.{row["key"]}': torch.randn(json.loads(row[column]), generator=generator)
               for row in csv.DictReader(f, delimiter='\t')}
    clip = clip_tower()
    degradation = {}
    for encoder in ('ad_imageEncoder', 'ad_textEncoder'):
        degradation.update({f'{encoder}.clip_model.{key}': value for key, value in clip.items()})
        degradation.update(adapter_params(f'{encoder}.adapter.'))
    state = {**net, **{f'model_degradation.{key}': value for key, value in degradation.items()}}
    # The Lightning 2.4 layout (no hyper_parameters: the release never saves them).
    return {'epoch': 199, 'global_step': 1000, 'pytorch-lightning_version': '2.4.0', 'state_dict': state,
            'loops': {}, 'callbacks': {}, 'optimizer_states': [], 'lr_schedulers': []}


@pytest.fixture(scope='module')
def single_haze_checkpoint(tmp_path_factory) -> str:
    """An official-layout de_dim-5 checkpoint file named as the release names it."""
    path = str(tmp_path_factory.mktemp('release') / 'single_haze_vlunet.ckpt')
    torch.save(lightning_checkpoint(de_dim=5), path)
    return path


def _script():
    return load_script('convert_official_checkpoint')


def load_params(path: str) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)['params']


@pytest.mark.slow
def test_lightning_checkpoint_converts_and_loads_strictly(tmp_path, single_haze_checkpoint, capsys):
    src = single_haze_checkpoint
    checkpoint = torch.load(src, map_location='cpu', weights_only=True)
    out_dir = tmp_path / 'converted'

    assert _script().main([src, str(out_dir)]) == 0

    stdout = capsys.readouterr().out
    net_path, clip_path = str(out_dir / 'single_haze_vlunet_net.pth'), str(out_dir / 'single_haze_vlunet_clip.pth')
    with open(src, 'rb') as f:
        assert f'SHA-256 {hashlib.sha256(f.read()).hexdigest()}' in stdout  # checked before converting
    assert 'restoration network: 615 tensors, detected de_dim 5' in stdout
    assert 'CLIP adapters: 24 tensors' in stdout and 'CLIP backbone: 302 tensors' in stdout
    assert 'verdict: as expected' in stdout
    assert f'wrote restoration network: {net_path} (detected de_dim=5' in stdout
    assert f'wrote degradation encoder (CLIP backbone and adapters): {clip_path}' in stdout
    assert sorted(os.listdir(out_dir)) == ['single_haze_vlunet_clip.pth', 'single_haze_vlunet_net.pth']

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
    expected_keys = ({f'backbone.{key}' for key in clip_tower()}
                     | {f'{side}_adapter.{layer}.{kind}' for side in ('image', 'text')
                        for layer in ADAPTER_LAYERS for kind in ('weight', 'bias')})
    assert set(clip) == expected_keys
    torch.testing.assert_close(clip['backbone.visual.proj'],
                               official['model_degradation.ad_imageEncoder.clip_model.visual.proj'])
    torch.testing.assert_close(clip['text_adapter.6.weight'],
                               official['model_degradation.ad_textEncoder.adapter.6.weight'])


@pytest.mark.slow
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

    assert converted.net_path is None and converted.de_dim is None and not converted.clip_has_backbone
    assert converted.clip_path == str(tmp_path / 'out' / 'clip_tuned_clip.pth')
    clip = load_params(converted.clip_path)
    assert len(clip) == 24 and not any(key.startswith('backbone.') for key in clip)
    torch.testing.assert_close(clip['image_adapter.7.bias'], learnable['ad_imageEncoder.adapter.7.bias'])


def test_non_checkpoint_files_are_refused_with_a_clear_message(tmp_path, capsys):
    text_file = tmp_path / 'notes.ckpt'
    text_file.write_text('not a checkpoint')
    assert _script().main([str(text_file), str(tmp_path / 'out')]) == 1
    captured = capsys.readouterr()
    assert f'PROBLEM: official checkpoint {text_file} is not a file written by torch.save' in captured.out
    assert 'an incomplete download fails this way too' in captured.out
    assert f'error: {text_file} failed the checks above; nothing was converted.' in captured.err
    assert not (tmp_path / 'out').exists()

    basicsr_file = str(tmp_path / 'net_g_1000.pth')
    torch.save({'params': {'embed.weight': torch.zeros(1)}}, basicsr_file)
    with pytest.raises(ValueError, match='neither an official VLU-Net Lightning checkpoint .* nor an official '
                                         'clip_tuned.pth'):
        convert_official_checkpoint(basicsr_file, str(tmp_path / 'out'))
    with pytest.raises(FileNotFoundError, match='official checkpoint not found'):
        convert_official_checkpoint(str(tmp_path / 'missing.ckpt'), str(tmp_path / 'out'))


def test_a_missing_file_points_to_where_the_files_come_from(tmp_path, capsys):
    assert _script().main([str(tmp_path / '5task_vlunet.ckpt'), str(tmp_path / 'out')]) == 1
    err = capsys.readouterr().err
    assert f'{tmp_path / "5task_vlunet.ckpt"} does not exist' in err and RELEASE_PACKAGE_URL in err
    assert '3task_vlunet.ckpt' in err and 'single_lowlight_vlunet.ckpt' in err and 'clip_tuned.pth' in err
    assert 'laion/CLIP-ViT-B-32-laion2B-s34B-b79K' in err and 'open_clip_pytorch_model.bin' in err
    assert not (tmp_path / 'out').exists()


def test_a_saved_download_page_is_refused_before_anything_is_written(tmp_path, capsys):
    src = tmp_path / '5task_vlunet.ckpt'
    src.write_text('<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>')
    assert _script().main([str(src), str(tmp_path / 'out')]) == 1
    out = capsys.readouterr().out
    assert 'web page, not a checkpoint' in out and 'NOT an intact official file' in out and RELEASE_PACKAGE_URL in out
    assert not (tmp_path / 'out').exists()


def test_a_truncated_download_is_refused(tmp_path, capsys):
    learnable = {**adapter_params('ad_imageEncoder.adapter.'), **adapter_params('ad_textEncoder.adapter.')}
    whole = tmp_path / 'whole.pth'
    torch.save({'epoch': 90, 'learnable_params': learnable}, str(whole))
    assert verify_official_file(str(whole)).problems == []
    src = tmp_path / 'clip_tuned.pth'
    src.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    check = verify_official_file(str(src))
    assert len(check.problems) == 1 and 'incomplete download' in check.problems[0]
    assert check.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert _script().main([str(src), str(tmp_path / 'out')]) == 1 and not (tmp_path / 'out').exists()


def test_wrong_keys_shapes_and_de_dim_are_reported(tmp_path, single_haze_checkpoint, capsys):
    checkpoint = torch.load(single_haze_checkpoint, map_location='cpu', weights_only=True)
    state = checkpoint['state_dict']
    del state['net.refinement.denoiser.blocks.3.norm2.body.bias']
    state['net.output.weight'] = torch.zeros(3, 96, 1, 1)
    state['model_degradation.ad_imageEncoder.adapter.7.bias'] = torch.zeros(256)
    src = str(tmp_path / 'single_haze_vlunet.ckpt')
    torch.save(checkpoint, src)
    problems = '\n'.join(verify_official_file(src).problems)
    assert 'restoration network (de_dim 5): 1 missing tensor(s), e.g. refinement.proximal_mapping.3.norm2.bias' \
        in problems
    assert 'restoration network (de_dim 5): 1 wrong shape tensor(s), e.g. output.weight' in problems
    assert 'CLIP adapters: 1 wrong shape tensor(s), e.g. image_adapter.7.bias' in problems
    assert _script().main([src, str(tmp_path / 'out')]) == 1 and not (tmp_path / 'out').exists()

    renamed = str(tmp_path / '5task_vlunet.ckpt')  # the release's 5task file has de_dim 7
    os.symlink(single_haze_checkpoint, renamed)
    check = verify_official_file(renamed)
    assert check.de_dim == 5 and check.problems == ['5task_vlunet.ckpt of the official release has de_dim 7, this '
                                                    'file 5: another checkpoint under this name?']


def test_verify_only_checks_and_writes_nothing(tmp_path, single_haze_checkpoint, capsys):
    assert _script().main([single_haze_checkpoint, str(tmp_path / 'out'), '--verify-only']) == 0
    assert 'verdict: as expected' in capsys.readouterr().out and not (tmp_path / 'out').exists()
