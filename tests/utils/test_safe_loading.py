"""No weight or state file runs code when loaded: a crafted pickle through every entry point.

The crafted files carry a ``__reduce__`` payload that would create a marker file when unpickled
(``os.system`` or ``subprocess.call``); each entry point must refuse them with an error naming the
file and the refused global, and leave no marker. Our own training states, official-layout files
and a DA-CLIP-like file with a numpy scalar load; ``trusted=True`` / ``--trust-file`` is the only way
a crafted file is unpickled.
"""
import collections
import os
import os.path as osp
import pickle
import subprocess
import zipfile

import numpy as np
import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet.convert.vlunet_checkpoint import load_official_file
from vlunet.guidance.degradation_encoder import build_degradation_encoder
from vlunet.inference import Restorer
from vlunet.utils.safe_load import UnsafeCheckpointError, safe_torch_load

from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

from helpers import REPO_ROOT, load_script, run_entry, smooth_image, write_image

CONVERTER = osp.join(REPO_ROOT, 'scripts', 'convert_official_checkpoint.py')
TINY_VLUNET = {'type': 'VLUNet', 'de_dim': 3, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
               'heads': [1, 1, 1, 1], 'key_size': 8}


class SystemPayload:
    """Unpickling this runs ``touch <marker>`` through ``os.system`` (pickled as ``posix.system``)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


class CallPayload(SystemPayload):
    """The same through ``subprocess.call`` (pickled under its Python 2 name ``commands.call``)."""

    def __reduce__(self):
        return subprocess.call, (['touch', self.marker],)


def adapter_state(prefix: str = '') -> dict:
    return {f'{prefix}{side}_adapter.{layer}.{kind}': torch.zeros(4)
            for side in ('image', 'text') for layer in (0, 1, 3, 4, 6, 7) for kind in ('weight', 'bias')}


def crafted(path, contents: dict, payload=SystemPayload) -> str:
    """Save ``contents`` plus a payload creating ``<path>.marker`` when unpickled; return the path."""
    torch.save({**contents, 'payload': payload(f'{path}.marker')}, path)
    return str(path)


def assert_refused(error_text: str, path: str, refused: str = 'posix.system') -> None:
    assert path in error_text and refused in error_text, error_text
    assert not osp.exists(f'{path}.marker'), 'the payload ran'


@pytest.fixture
def tiny_clip(tiny_clip_name):
    return ARCH_REGISTRY.get('DegradationCLIP')(backbone=tiny_clip_name, pretrained=None)


@pytest.fixture
def net_weights(tmp_path):
    torch.manual_seed(0)
    net = ARCH_REGISTRY.get('VLUNet')(**{k: v for k, v in TINY_VLUNET.items() if k != 'type'})
    path = str(tmp_path / 'net_g.pth')
    torch.save({'params': net.state_dict()}, path)
    return path


# ------------------------------------------------------------------ the loader itself

@pytest.mark.multiprocess
def test_crafted_files_are_refused_naming_the_file_and_the_global(tmp_path):
    for payload, refused in ((SystemPayload, 'posix.system'), (CallPayload, 'commands.call (subprocess.call)')):
        path = crafted(tmp_path / f'{payload.__name__}.pth', {'params': {}}, payload)
        with pytest.raises(UnsafeCheckpointError) as error:
            safe_torch_load(path, 'CLIP weights')
        assert_refused(str(error.value), path, refused)
        assert str(error.value).startswith(f'refused to load the CLIP weights {path}')
        assert isinstance(error.value, ValueError)  # command-line tools report it like any bad input


def test_legacy_format_crafted_file_is_refused_too(tmp_path):
    path = str(tmp_path / 'legacy.pth')
    torch.save({'payload': SystemPayload(f'{path}.marker')}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError) as error:
        safe_torch_load(path)
    assert_refused(str(error.value), path)


def test_trusted_is_the_only_way_a_crafted_file_is_unpickled(tmp_path):
    path = crafted(tmp_path / 'trusted.pth', {'params': {}})
    with pytest.raises(UnsafeCheckpointError):
        load_official_file(path)
    assert not osp.exists(f'{path}.marker')
    assert load_official_file(path, trusted=True)['payload'] == 0  # os.system's exit status
    assert osp.exists(f'{path}.marker')


def test_files_that_are_not_torch_files_get_a_plain_error(tmp_path):
    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint')
    with pytest.raises(ValueError, match=f'network weights {text} is not a file written by torch.save') as error:
        safe_torch_load(str(text), 'network weights')
    assert not isinstance(error.value, UnsafeCheckpointError)
    raw_pickle = tmp_path / 'raw.pkl'
    raw_pickle.write_bytes(pickle.dumps({'payload': SystemPayload(f'{raw_pickle}.marker')}))
    with pytest.raises(ValueError, match='is not a file written by torch.save'):
        safe_torch_load(str(raw_pickle))
    assert not osp.exists(f'{raw_pickle}.marker')


def _as_numpy1_file(numpy2_file: str, path: str) -> str:
    """Rewrite the pickle of ``numpy2_file`` to name the scalar constructor as numpy 1 does (DA-CLIP's file)."""
    with zipfile.ZipFile(numpy2_file) as source, zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith('data.pkl'):
                data = data.replace(b'numpy._core.multiarray\n', b'numpy.core.multiarray\n')
            target.writestr(info.filename, data)
    return path


def test_daclip_like_file_with_a_numpy_scalar_loads(tmp_path):
    numpy2 = str(tmp_path / 'daclip_numpy2.pt')
    torch.save({'epoch': 3, 'name': 'daclip', 'state_dict': {'module.logit_scale': torch.tensor(4.6)},
                'lr': np.float64(3e-5)}, numpy2)
    numpy1 = _as_numpy1_file(numpy2, str(tmp_path / 'daclip_numpy1.pt'))
    for path, scalar in ((numpy2, 'numpy._core.multiarray.scalar'), (numpy1, 'numpy.core.multiarray.scalar')):
        assert scalar in torch.serialization.get_unsafe_globals_in_checkpoint(path)  # outside torch's own list
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=True)
        checkpoint = safe_torch_load(path, 'DA-CLIP checkpoint')
        assert checkpoint['lr'] == np.float64(3e-5) and isinstance(checkpoint['lr'], np.float64)
        assert float(checkpoint['state_dict']['module.logit_scale']) == pytest.approx(4.6)


# ------------------------------------------------------------------ (a) the converter

def _converter():
    return load_script('convert_official_checkpoint')


@pytest.mark.multiprocess
def test_converter_refuses_a_crafted_checkpoint_and_converts_it_only_with_trust_file(tmp_path, capsys):
    learnable = {f'ad_{side}Encoder.adapter.{layer}.{kind}': torch.zeros((512, 512) if layer % 3 == 0 and
                                                                         kind == 'weight' else (512,))
                 for side in ('image', 'text') for layer in (0, 1, 3, 4, 6, 7) for kind in ('weight', 'bias')}
    src = crafted(tmp_path / 'clip_tuned.pth', {'epoch': 90, 'learnable_params': learnable}, CallPayload)
    converter = _converter()
    assert converter.main([src, str(tmp_path / 'out')]) == 1
    output = capsys.readouterr()
    assert_refused(output.out + output.err, src, 'subprocess.call')
    assert not (tmp_path / 'out').exists()

    assert converter.main([src, str(tmp_path / 'out'), '--trust-file']) == 0, capsys.readouterr()
    assert osp.exists(f'{src}.marker')  # the opt-in really unpickles fully
    assert osp.isfile(tmp_path / 'out' / 'clip_tuned_clip.pth')


# ------------------------------------------------------------------ (b) CLIP weights

def test_clip_weights_are_refused_by_every_clip_loader(tmp_path, tiny_clip, tiny_clip_name):
    path = crafted(tmp_path / 'clip.pth', {'params': adapter_state()})
    with pytest.raises(UnsafeCheckpointError) as error:
        tiny_clip.load_weights(path)
    assert_refused(str(error.value), path)
    encoder = {'type': 'DegradationCLIP', 'backbone': tiny_clip_name, 'pretrained': None}
    with pytest.raises(ValueError, match='path.pretrain_network_degradation_encoder') as error:
        build_degradation_encoder(encoder, path, torch.device('cpu'))
    assert_refused(str(error.value), path)
    backbone = crafted(tmp_path / 'backbone.pth', {'params': {'backbone.logit_scale': torch.zeros(())}})
    with pytest.raises(UnsafeCheckpointError) as error:
        ARCH_REGISTRY.get('DegradationCLIP')(backbone=tiny_clip_name, pretrained=backbone)
    assert_refused(str(error.value), backbone)


# ------------------------------------------------------------------ (c) network weights through BasicSR

def test_basicsr_load_network_refuses_crafted_network_weights(tmp_path):
    path = crafted(tmp_path / 'net_g.pth', {'params': {}})
    opt = {'name': 'safe', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'is_train': False, 'dist': False,
           'network_g': TINY_VLUNET, 'path': {'pretrain_network_g': path, 'results_root': str(tmp_path)}}
    with pytest.raises(pickle.UnpicklingError, match='GLOBAL posix.system') as error:
        MODEL_REGISTRY.get('VLUNetModel')(opt)  # basicsr's load_network: torch's default weights_only=True
    assert path in str(error.value)  # compat names the file
    assert not osp.exists(f'{path}.marker')


def test_basicsr_cuda_resume_path_refuses_a_crafted_state(tmp_path, monkeypatch):
    import basicsr.train
    path = crafted(tmp_path / '4.state', {'iter': 4, 'epoch': 0, 'optimizers': [], 'schedulers': []})
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)  # compat hands over to BasicSR's function
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    with pytest.raises(pickle.UnpicklingError, match='posix.system'):
        basicsr.train.load_resume_state({'auto_resume': False, 'name': 'x', 'root_path': str(tmp_path),
                                         'path': {'resume_state': path}})
    assert not osp.exists(f'{path}.marker')


# ------------------------------------------------------------------ (d) a resume state through vlunet/train.py

@pytest.mark.multiprocess
def test_auto_resume_refuses_a_crafted_training_state(tmp_path):
    for folder in ('gt', 'lq'):
        write_image(str(tmp_path / 'data' / folder / '0.png'), smooth_image(0, 16, 16))
    states = tmp_path / 'experiments' / 'resumed' / 'training_states'
    states.mkdir(parents=True)
    path = crafted(states / '4.state', {'iter': 4, 'epoch': 0, 'optimizers': [], 'schedulers': []})
    opt = {'name': 'resumed', 'model_type': 'VLUNetModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
           'datasets': {'train': {'name': 'train', 'type': 'PairedImageDataset', 'dataroot_gt': 'data/gt',
                                  'dataroot_lq': 'data/lq', 'io_backend': {'type': 'disk'}, 'gt_size': 16,
                                  'use_hflip': False, 'use_rot': False, 'num_worker_per_gpu': 0,
                                  'batch_size_per_gpu': 1, 'dataset_enlarge_ratio': 1}},
           'network_g': TINY_VLUNET, 'path': {'pretrain_network_g': None, 'resume_state': None},
           'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3}, 'total_iter': 8,
                     'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                     'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
           'logger': {'print_freq': 1, 'save_checkpoint_freq': 4, 'use_tb_logger': False}}
    (tmp_path / 'train.yml').write_text(yaml.safe_dump(opt, sort_keys=False))
    result = run_entry('train', ['-opt', 'train.yml', '--auto_resume'], cwd=str(tmp_path))
    assert result.returncode != 0
    assert result.stderr.startswith('error: refused to load the resume state') and 'Traceback' not in result.stderr
    assert_refused(result.stderr, osp.join('experiments', 'resumed', 'training_states', '4.state'))
    assert not osp.exists(f'{path}.marker')
    assert os.listdir(states) == ['4.state'] and not (tmp_path / 'experiments' / 'resumed' / 'models').exists()


# ------------------------------------------------------------------ (e) Restorer

def test_restorer_refuses_crafted_network_and_clip_weights(tmp_path, net_weights, tiny_clip_name):
    net = crafted(tmp_path / 'crafted_net.pth', {'params': {}})
    with pytest.raises(UnsafeCheckpointError) as error:
        Restorer(net)
    assert_refused(str(error.value), net)
    clip = crafted(tmp_path / 'crafted_clip.pth', {'params': adapter_state()})
    encoder = {'type': 'DegradationCLIP', 'backbone': tiny_clip_name, 'pretrained': None}
    with pytest.raises(ValueError) as error:
        Restorer(net_weights, clip_weights=clip, network_options=TINY_VLUNET, encoder_options=encoder)
    assert_refused(str(error.value), clip)


# ------------------------------------------------------------------ our own files load

def assert_same(loaded: object, expected: object) -> None:
    """Equal nested containers of tensors and plain values (same types, same values)."""
    assert type(loaded) is type(expected)
    if isinstance(expected, dict):
        assert list(loaded) == list(expected)
        for key in expected:
            assert_same(loaded[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(loaded) == len(expected)
        for item, expected_item in zip(loaded, expected):
            assert_same(item, expected_item)
    elif isinstance(expected, torch.Tensor):
        torch.testing.assert_close(loaded, expected, rtol=0, atol=0)
    else:
        assert loaded == expected


def _optimised(model, steps: int = 1):
    batch = {'lq': torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))}
    batch['gt'] = batch['lq'].flip(-1)
    for step in range(1, steps + 1):
        model.feed_data(batch)
        model.optimize_parameters(step)
        model.update_learning_rate(step)
    return model


@pytest.mark.parametrize('scheduler', [
    {'type': 'MultiStepRestartLR', 'milestones': [1, 100], 'gamma': 0.5, 'restarts': [50], 'restart_weights': [1]},
    {'type': 'CosineAnnealingRestartLR', 'periods': [10, 10], 'restart_weights': [1, 0.5], 'eta_min': 1e-5},
])
def test_our_training_states_load_safely(tmp_path, scheduler):
    def options() -> dict:  # BasicSR pops keys from the sections it reads
        return {'name': 'states', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'is_train': True, 'dist': False,
                'network_g': dict(TINY_VLUNET), 'amp': {'enabled': True, 'dtype': 'fp16'},
                'path': {'models': str(tmp_path), 'training_states': str(tmp_path)},
                'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 0.01},
                          'scheduler': dict(scheduler), 'total_iter': 2,
                          'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}}}

    model = _optimised(MODEL_REGISTRY.get('VLUNetModel')(options()))
    assert model.grad_scaler is not None
    model.save_training_state(epoch=0, current_iter=1)
    path = str(tmp_path / '1.state')

    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []  # nothing beyond torch's own list
    state = safe_torch_load(path, 'resume state')
    assert_same(state, torch.load(path, weights_only=True))  # what BasicSR's CUDA resume path reads
    assert_same(state, torch.load(path, weights_only=False))
    assert state['grad_scaler']['scale'] == model.grad_scaler.get_scale()
    if scheduler['type'] == 'MultiStepRestartLR':
        assert state['schedulers'][0]['milestones'] == collections.Counter({1: 1, 100: 1})
    assert {int(s['step']) for s in state['optimizers'][0]['state'].values()} == {1}
    resumed = MODEL_REGISTRY.get('VLUNetModel')(options())
    resumed.resume_training(state)
    assert_same(resumed.schedulers[0].state_dict(), model.schedulers[0].state_dict())
    assert resumed.grad_scaler.get_scale() == model.grad_scaler.get_scale()


def test_clip_finetune_training_state_and_checkpoint_load_safely(tmp_path, tiny_clip_name):
    opt = {'name': 'clip_states', 'model_type': 'CLIPFinetuneModel', 'num_gpu': 0, 'is_train': True, 'dist': False,
           'network_clip': {'type': 'DegradationCLIP', 'backbone': tiny_clip_name},
           'degradation_prompts': ['noise', 'haze'],
           'path': {'models': str(tmp_path), 'training_states': str(tmp_path)},
           'train': {'clip_opt': {'type': 'DegradationContrastiveLoss'},
                     'optim_clip': {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 0.01},
                     'scheduler': {'type': 'MultiStepLR', 'milestones': [5], 'gamma': 0.5}, 'total_iter': 1}}
    model = MODEL_REGISTRY.get('CLIPFinetuneModel')(opt)
    model.feed_data({'lq': torch.rand(2, 3, 32, 32), 'task_index': torch.tensor([0, 1]), 'text': ['noise', 'haze']})
    model.optimize_parameters(1)
    model.save(epoch=0, current_iter=1)
    state = safe_torch_load(str(tmp_path / '1.state'), 'resume state')
    assert_same(state, torch.load(tmp_path / '1.state', weights_only=False))
    assert state['schedulers'][0]['milestones'] == collections.Counter({5: 1})
    checkpoints = [name for name in os.listdir(tmp_path) if name.endswith('.pth')]
    assert checkpoints
    for name in checkpoints:
        assert set(safe_torch_load(str(tmp_path / name))) >= {'params'}
