"""DDP without ``find_unused_parameters``: the network of every shipped training option file (shrunk to a
small width, same arch type and keys) trains a few steps on 2 gloo ranks through BasicSR's
``model_to_device`` (vlunet.compat's CPU DDP), the ranks' parameters stay equal, and DDP never warns
that gradient strides do not match its bucket views."""
import copy
import glob
import json
import os.path as osp
import warnings
from typing import Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import distributed

import vlunet  # noqa: F401  (compat shim before basicsr)

from basicsr.archs import build_network
from basicsr.models.base_model import BaseModel

from helpers import REPO_ROOT, TINY_CLIP_CONFIG

NETWORK_KEYS = ('network_g', 'network_clip')
NETWORK_TYPES = ('VLUNet', 'DegradationCLIP')  # the networks this test covers (other models have their own tests)


def _option_file(path: str) -> dict:
    with open(osp.join(REPO_ROOT, path), encoding='utf-8') as f:
        return yaml.safe_load(f)


def _network(opt: dict) -> dict:
    return next((opt[key] for key in NETWORK_KEYS if isinstance(opt.get(key), dict)), {})


TRAIN_OPTION_FILES = sorted(path for path in (osp.relpath(path, REPO_ROOT) for pattern in (
    'options/train_*.yml', 'options/demo/train_*.yml') for path in glob.glob(osp.join(REPO_ROOT, pattern)))
    if _network(_option_file(path)).get('type') in NETWORK_TYPES)
SMALL_VLUNET = dict(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, key_size=8)
STEPS = 3
BUCKET_WARNING = 'Grad strides do not match bucket view strides'
Case = Tuple[str, dict, bool]  # (name, network options, guided by a degradation vector / prompts)


def _training_cases(clip_config_path: str) -> List[Case]:
    """One case per shipped training option file (+ its VLUNet without CLIP guidance), networks shrunk."""
    cases = []
    for option_file in TRAIN_OPTION_FILES:
        opt = _option_file(option_file)
        assert 'find_unused_parameters' not in opt, option_file
        if _network(opt)['type'] == 'VLUNet':
            network = {**opt['network_g'], **SMALL_VLUNET}
            cases.append((option_file, network, opt.get('degradation_encoder') is not None))
            cases.append((f'{option_file} without CLIP', network, False))
        else:
            network = {**opt['network_clip'], 'backbone': clip_config_path, 'pretrained': None}
            cases.append((option_file, network, True))
    return cases


def _loss(net: torch.nn.Module, network: dict, guided: bool, generator: torch.Generator) -> torch.Tensor:
    images = torch.rand(2, 3, 16, 16, generator=generator)
    if network['type'] == 'DegradationCLIP':
        image_embeddings, prompt_embeddings = net(images, ['image with noise', 'image with rain'])
        return F.cross_entropy(image_embeddings @ prompt_embeddings.t(), torch.tensor([0, 1]))
    degradation = torch.randn(2, network.get('degradation_dim', 512), generator=generator) if guided else None
    return (net(images, degradation) - images).abs().mean()


def _train_on_rank(rank: int, world_size: int, init_file: str, cases: List[Case], folder: str) -> None:
    distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    results: Dict[str, object] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        for name, network, guided in cases:
            torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
            net = build_network(copy.deepcopy(network))
            ddp = BaseModel({'num_gpu': 0, 'dist': True, 'is_train': True}).model_to_device(net)
            assert ddp.find_unused_parameters is False
            optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
            initial = {key: value.clone() for key, value in net.state_dict().items()}
            generator = torch.Generator().manual_seed(100 + rank)  # different data on each rank
            for _ in range(STEPS):
                optimizer.zero_grad()
                _loss(ddp, network, guided, generator).backward()
                optimizer.step()
            results[name] = {'initial': initial, 'final': net.state_dict()}
    results['warnings'] = [str(warning.message) for warning in caught]
    torch.save(results, osp.join(folder, f'rank{rank}.pt'))
    distributed.destroy_process_group()


@pytest.fixture(scope='module')
def ranks(tmp_path_factory) -> List[dict]:
    folder = tmp_path_factory.mktemp('ddp')
    clip_config = folder / 'tiny_clip.json'
    clip_config.write_text(json.dumps(TINY_CLIP_CONFIG))
    cases = _training_cases(str(clip_config))
    torch.multiprocessing.spawn(_train_on_rank, args=(2, str(folder / 'init'), cases, str(folder)), nprocs=2)
    return [torch.load(folder / f'rank{rank}.pt', weights_only=True) for rank in range(2)]


def test_every_training_option_file_is_covered():
    names = [name for name, _, _ in _training_cases('tiny.json')]
    assert {'options/train_nhrbl.yml', 'options/train_dehaze.yml', 'options/train_clip_nhrbl.yml',
            'options/demo/train_demo.yml', 'options/demo/train_clip_demo.yml'} <= set(names)
    assert set(TRAIN_OPTION_FILES) <= set(names)
    assert {network['de_dim'] for _, network, _ in _training_cases('tiny.json') if 'de_dim' in network} == {5, 7}


@pytest.mark.multiprocess
@pytest.mark.parametrize('case', range(len(_training_cases('tiny.json'))))
def test_ddp_without_find_unused_parameters_trains_and_keeps_ranks_equal(ranks, case):
    name = _training_cases('tiny.json')[case][0]
    first, second = ranks[0][name], ranks[1][name]
    assert first['final'].keys() == second['final'].keys()
    for key, value in first['final'].items():
        assert torch.equal(value, second['final'][key]), f'{name}: {key} differs between the ranks'
    changed = [key for key, value in first['final'].items() if not torch.equal(value, first['initial'][key])]
    assert changed, f'{name}: nothing trained'
    if 'unused_degraded_down1_2.body.0.weight' in first['final']:
        assert 'unused_degraded_down1_2.body.0.weight' not in changed


@pytest.mark.multiprocess
def test_ddp_gradient_buckets_take_the_gradients_without_stride_warnings(ranks):
    for rank in ranks:
        assert not [message for message in rank['warnings'] if BUCKET_WARNING in message]
