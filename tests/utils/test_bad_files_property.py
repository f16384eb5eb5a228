"""Property: whatever bytes a loader is given, it either loads them or raises one BadFileError naming the file.

Generated inputs (hypothesis, derandomized, bounded): random bytes, truncations and bit flips of real saved
files, torch files holding dicts of wrong keys, shapes and value types, and crafted pickles whose payload would
create a marker file. For every loader of the project: never another exception (a traceback at the entry
points), never the payload run, nothing written, and the message (one line) names the file.
"""
import builtins
import os
import os.path as osp
import pickle
import subprocess
import tempfile
from typing import Callable, Dict, NamedTuple

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vlunet  # noqa: F401
from vlunet.utils.safe_load import BadFileError, safe_torch_load

from basicsr.utils.registry import ARCH_REGISTRY

SETTINGS = settings(derandomize=True, max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MARKER = osp.join(tempfile.gettempdir(), 'vlunet-bad-file-payload-ran')


class SystemPayload:
    def __reduce__(self):
        return os.system, (f'touch {MARKER}',)


class CallPayload:
    def __reduce__(self):
        return subprocess.call, (['touch', MARKER],)


class EvalPayload:
    def __reduce__(self):
        return builtins.eval, (f'open({MARKER!r}, "w").close()',)


class ExecPayload:
    def __reduce__(self):
        return builtins.exec, (f'open({MARKER!r}, "w").close()',)


PAYLOADS = (SystemPayload, CallPayload, EvalPayload, ExecPayload)


class Loaders(NamedTuple):
    by_name: Dict[str, Callable[[str], object]]
    converted: str  # the converters' output folder: stays empty


@pytest.fixture(scope='module')
def loaders(tiny_clip_name, tmp_path_factory) -> Loaders:
    """Every kind of file the project reads, each with the network it loads into built once."""
    import timm
    from torchvision.models import vgg

    from vlunet.archs.perceiveir.perceiveir_blocks import _load_semantic_file
    from vlunet.archs.perceiveir.vgg16_features import _load_features
    from vlunet.convert.daclip_checkpoint import convert_daclip_checkpoint
    from vlunet.convert.irsde_checkpoint import convert_irsde_checkpoint
    from vlunet.convert.vlunet_checkpoint import convert_official_checkpoint
    from vlunet.inference import load_network_weights
    from vlunet.losses.perceiveir.perceiveir_quality_loss import read_prompts_file
    from vlunet.metrics.lpips_metric import _load_heads, lpips_network
    from vlunet.utils.resume_state import load_resume_state
    net = ARCH_REGISTRY.get('VLUNet')(de_dim=3, dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                                      heads=[1, 1, 1, 1], key_size=8)
    clip = ARCH_REGISTRY.get('DegradationCLIP')(backbone=tiny_clip_name)
    daclip = ARCH_REGISTRY.get('DACLIP')(backbone=tiny_clip_name)
    lpips = lpips_network('alex', None, _default_heads(), torch.device('cpu'))
    features = vgg.make_layers(vgg.cfgs['D'])[:2]
    vit = timm.create_model('vit_small_patch14_dinov2', pretrained=False, img_size=28, depth=1)
    out = str(tmp_path_factory.mktemp('converted'))
    return Loaders({
        'torch file': lambda path: safe_torch_load(path, 'weights file'),
        'network weights': lambda path: load_network_weights(net, path),
        'resume state': lambda path: load_resume_state({'auto_resume': False, 'path': {'resume_state': path}},
                                                       'cpu', print),
        'CLIP adapters': clip.load_weights,
        'DA-CLIP weights': daclip.load_weights,
        'LPIPS heads': lambda path: _load_heads(lpips, path),
        'VGG-16': lambda path: _load_features(features, path, 'vgg_weights'),
        'quality prompts': read_prompts_file,
        'DINO-v2': lambda path: _load_semantic_file(vit, path),
        'convert VLU-Net': lambda path: convert_official_checkpoint(path, out),
        'convert IR-SDE': lambda path: convert_irsde_checkpoint(path, out),
        'convert DA-CLIP': lambda path: convert_daclip_checkpoint(path, out),
    }, out)


def _default_heads() -> str:
    from vlunet.metrics.lpips_metric import default_head_weights
    return default_head_weights('alex')


def real_file_bytes(kind: int) -> bytes:
    """A real saved file: 0 a BasicSR weight file, 1 a legacy-format one, 2 a training state, 3 a .safetensors."""
    from safetensors.torch import save
    layer = torch.nn.Conv2d(3, 4, 3)
    with tempfile.TemporaryDirectory() as folder:
        path = osp.join(folder, 'real.pth')
        if kind == 3:
            return save({key: value.contiguous() for key, value in layer.state_dict().items()})
        optimizer = torch.optim.Adam(layer.parameters())
        layer.weight.sum().backward()
        optimizer.step()
        contents = ({'params': layer.state_dict()} if kind < 2 else
                    {'iter': 4, 'epoch': 1, 'optimizers': [optimizer.state_dict()], 'schedulers': []})
        torch.save(contents, path, _use_new_zipfile_serialization=kind != 1)
        with open(path, 'rb') as file:
            return file.read()


REAL_FILES = [real_file_bytes(kind) for kind in range(4)]

tensors = st.builds(lambda shape: torch.zeros(shape), st.lists(st.integers(0, 3), max_size=3))
values = st.one_of(tensors, st.integers(), st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2))
keys = st.one_of(st.sampled_from(['params', 'params_ema', 'state_dict', 'iter', 'epoch', 'optimizers',
                                  'embed.weight', 'learnable_params', 'lin0.model.1.weight', 'features.0.weight',
                                  'init_conv.weight', 'time_mlp.1.weight', 'final_res_block.mlp.1.weight',
                                  'visual_control.transformer.zero_modules.0.weight', 'cls_token']),
                 st.text(max_size=6), st.integers())
wrong_contents = st.recursive(st.dictionaries(keys, values, max_size=5),
                              lambda inner: st.dictionaries(keys, st.one_of(values, inner), max_size=4), max_leaves=8)


def run_loader(loaders: 'Loaders', name: str, contents: bytes, file_name: str) -> None:
    """Give ``contents`` as ``file_name`` to a loader; check the property (see the module docstring)."""
    with tempfile.TemporaryDirectory() as folder:
        path = osp.join(folder, file_name)
        with open(path, 'wb') as file:
            file.write(contents)
        try:
            loaders.by_name[name](path)
        except BadFileError as error:
            assert path in str(error) and '\n' not in str(error), f'{name}: {error}'
        finally:
            assert not osp.exists(MARKER), f'{name} ran the payload of {path}'
        assert os.listdir(folder) == [file_name], f'{name} wrote {os.listdir(folder)}'
        assert not os.listdir(loaders.converted), f'{name} converted a bad file: {os.listdir(loaders.converted)}'


def file_name(name: str) -> str:
    return {'convert IR-SDE': 'universal-ir.pth', 'convert DA-CLIP': 'daclip_ViT-B-32.pt',
            'convert VLU-Net': '5task_vlunet.ckpt', 'resume state': '4.state'}.get(name, 'weights.pth')


LOADER_NAMES = st.sampled_from(['torch file', 'network weights', 'resume state', 'CLIP adapters', 'DA-CLIP weights',
                                'LPIPS heads', 'VGG-16', 'quality prompts', 'DINO-v2', 'convert VLU-Net',
                                'convert IR-SDE', 'convert DA-CLIP'])


@SETTINGS
@given(name=LOADER_NAMES, contents=st.binary(max_size=3000), safetensors=st.booleans())
def test_random_bytes(loaders, name, contents, safetensors):
    run_loader(loaders, name, contents, 'weights.safetensors' if safetensors and name == 'DINO-v2' else file_name(name))


@SETTINGS
@given(name=LOADER_NAMES, kind=st.integers(0, 3), fraction=st.floats(0, 1, exclude_max=True))
def test_truncated_real_files(loaders, name, kind, fraction):
    real = REAL_FILES[kind]
    suffix = '.safetensors' if kind == 3 and name == 'DINO-v2' else ''
    run_loader(loaders, name, real[:int(len(real) * fraction)], file_name(name) + suffix)


@SETTINGS
@given(name=LOADER_NAMES, kind=st.integers(0, 3), flips=st.lists(st.floats(0, 1, exclude_max=True), min_size=1,
                                                                   max_size=8))
def test_bit_flips_of_real_files(loaders, name, kind, flips):
    data = bytearray(REAL_FILES[kind])
    for position in flips:
        bit = int(position * len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
    suffix = '.safetensors' if kind == 3 and name == 'DINO-v2' else ''
    run_loader(loaders, name, bytes(data), file_name(name) + suffix)


@SETTINGS
@given(name=LOADER_NAMES, contents=st.one_of(wrong_contents, st.lists(values, max_size=3), tensors))
def test_wrong_keys_shapes_and_types(loaders, name, contents):
    with tempfile.TemporaryDirectory() as folder:
        torch.save(contents, osp.join(folder, 'f.pth'))
        with open(osp.join(folder, 'f.pth'), 'rb') as file:
            data = file.read()
    run_loader(loaders, name, data, file_name(name))


@SETTINGS
@given(name=LOADER_NAMES, payload=st.sampled_from(PAYLOADS), where=st.sampled_from(['top', 'params', 'list']),
       container=st.sampled_from(['zip', 'legacy', 'pickle']), protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_crafted_pickles_never_run(loaders, name, payload, where, container, protocol):
    contents = {'top': {'params': {'w': torch.zeros(1)}, 'x': payload()},
                'params': {'params': {'w': payload()}}, 'list': [torch.zeros(1), payload()]}[where]
    with tempfile.TemporaryDirectory() as folder:
        path = osp.join(folder, 'f.pth')
        if container == 'pickle':
            data = pickle.dumps(contents, protocol=protocol)
        else:
            torch.save(contents, path, _use_new_zipfile_serialization=container == 'zip',
                       pickle_protocol=max(protocol, 2))
            with open(path, 'rb') as file:
                data = file.read()
    run_loader(loaders, name, data, file_name(name))
