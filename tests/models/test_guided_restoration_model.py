"""VLUNetModel: CLIP-guided training/resume/testing through the entry points, metrics, tiling.

Training and testing run ``vlunet/train.py`` / ``vlunet/test.py`` in subprocesses on generated
images with BasicSR's PairedImageDataset, a tiny VLUNet and a DegradationCLIP on the tiny random
open_clip config (registered in the subprocesses by a ``sitecustomize`` module on PYTHONPATH).
"""
import copy
import csv
import glob
import os
import os.path as osp
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import distributed, nn
from torch.utils.data import DataLoader, Dataset, default_collate

import vlunet  # noqa: F401
from vlunet.metrics.restoration_metric import calculate_psnr_float_rgb, calculate_ssim_float_rgb
from vlunet.models.checkpoint_options import OPTIONS_KEY
from vlunet.tiling.tiles import TileOptions, parse_tile_options, restore, tile_starts
from vlunet.utils.results_table import format_markdown

from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

from helpers import REPO_ROOT, run_entry, smooth_image, write_image

TINY_VLUNET = {'type': 'VLUNet', 'de_dim': 3, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
               'heads': [1, 1, 1, 1], 'key_size': 8}
METRICS = {
    'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
    'psnr_y': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': True},
    'psnr_float': {'type': 'calculate_psnr_float_rgb'},
    'ssim_float': {'type': 'calculate_ssim_float_rgb'},
}
SITECUSTOMIZE = '''
import sys
sys.path.insert(0, {tests!r})
from helpers import register_tiny_clip
register_tiny_clip({folder!r})
'''


def _make_pairs(root: str, count: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        gt = smooth_image(seed * 100 + i, size, size + 3 * i)
        lq = np.clip(gt.astype(np.float32) + rng.normal(0, 25, gt.shape), 0, 255).round().astype(np.uint8)
        write_image(osp.join(root, 'gt', f'{i:03d}.png'), gt)
        write_image(osp.join(root, 'lq', f'{i:03d}.png'), lq)


def _paired(root: str, name: str, **extra) -> dict:
    return {'name': name, 'type': 'PairedImageDataset', 'dataroot_gt': f'{root}/gt', 'dataroot_lq': f'{root}/lq',
            'io_backend': {'type': 'disk'}, **extra}


def _write_yaml(path, opt: dict) -> str:
    with open(path, 'w', encoding='utf-8') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return str(path)


def _log_text(folder) -> str:
    return ''.join(open(p, encoding='utf-8').read() for p in sorted(glob.glob(str(folder / '*.log'))))


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, tiny_clip_name):
    root = tmp_path_factory.mktemp('vlunet_model')
    # One fixed 24x24 training pair, no flips: every iteration sees the same batch, so the loss must fall.
    _make_pairs(str(root / 'data' / 'train'), 1, 24, seed=1)
    _make_pairs(str(root / 'data' / 'val'), 2, 20, seed=2)
    _make_pairs(str(root / 'data' / 'test'), 3, 21, seed=3)
    site = root / 'site'
    site.mkdir()
    (site / 'sitecustomize.py').write_text(SITECUSTOMIZE.format(tests=osp.join(REPO_ROOT, 'tests'), folder=str(site)))
    encoder = ARCH_REGISTRY.get('DegradationCLIP')(backbone=tiny_clip_name, pretrained=None)
    adapters = {k: v for k, v in encoder.state_dict().items() if not k.startswith('backbone.')}
    torch.save({'params': adapters}, root / 'clip.pth')
    return root


def _run(script: str, args: list, workdir):
    result = run_entry(script, args, cwd=str(workdir), extra_env={'PYTHONPATH': str(workdir / 'site')})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def _train_options(tiny_clip_name: str) -> dict:
    return {
        'name': 'guided', 'model_type': 'VLUNetModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': _paired('data/train', 'tiny_train', gt_size=24, use_hflip=False, use_rot=False,
                             num_worker_per_gpu=0, batch_size_per_gpu=1, dataset_enlarge_ratio=1),
            'val': _paired('data/val', 'tiny_val'),
        },
        'network_g': TINY_VLUNET,
        'degradation_encoder': {'type': 'DegradationCLIP', 'backbone': tiny_clip_name, 'pretrained': None},
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                 'pretrain_network_degradation_encoder': 'clip.pth'},
        'train': {'ema_decay': 0.5, 'optim_g': {'type': 'AdamW', 'lr': 2e-3, 'betas': [0.9, 0.999]},
                  'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [20], 'eta_min': 1e-4},
                  'total_iter': 8, 'warmup_iter': 2,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'val': {'val_freq': 4, 'save_img': False, 'metrics': METRICS},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 4, 'use_tb_logger': False, 'wandb': {'project': None}},
    }


@pytest.fixture(scope='module')
def trained(workdir, tiny_clip_name):
    opt_path = _write_yaml(workdir / 'train.yml', _train_options(tiny_clip_name))
    _run('train', ['-opt', opt_path], workdir)
    return workdir / 'experiments' / 'guided'


def test_guided_training_lowers_the_loss_and_validates_with_both_metric_families(trained):
    log = _log_text(trained)
    losses = [float(v) for v in re.findall(r'l_pix: ([0-9.e+-]+)', log)]
    assert len(losses) == 8
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
    assert 'Degradation encoder: DegradationCLIP' in log
    assert 'will not be optimized' not in log
    for name in METRICS:
        values = [float(v) for v in re.findall(rf'# {name}: ([0-9.]+)', log)]
        assert len(values) == 2, name  # iterations 4 and 8; the final validation (same weights) is skipped
    assert 'Final validation skipped: the final weights are those of iteration 8' in log
    psnr = [float(v) for v in re.findall(r'# psnr: ([0-9.]+)', log)]
    psnr_float = [float(v) for v in re.findall(r'# psnr_float: ([0-9.]+)', log)]
    assert all(15 < v < 60 for v in psnr) and np.allclose(psnr, psnr_float, atol=0.1)  # uint8 rounding only


def test_checkpoints_hold_net_g_only_and_no_clip(trained):
    net_keys = set(ARCH_REGISTRY.get('VLUNet')(**{k: v for k, v in TINY_VLUNET.items() if k != 'type'}).state_dict())
    for name in ('net_g_4.pth', 'net_g_8.pth', 'net_g_latest.pth'):
        checkpoint = torch.load(trained / 'models' / name, map_location='cpu', weights_only=True)
        assert set(checkpoint) == {'params', 'params_ema', OPTIONS_KEY}  # options: plain values, no tensors
        assert checkpoint[OPTIONS_KEY]['network_g']['type'] == 'VLUNet'
        assert set(checkpoint['params']) == net_keys and set(checkpoint['params_ema']) == net_keys
    assert sorted(os.listdir(trained / 'training_states')) == ['4.state', '8.state']
    assert not [f for f in os.listdir(trained / 'models') if f.startswith('.')], 'temporary files left behind'


@pytest.mark.multiprocess
def test_auto_resume_reloads_the_encoder_from_its_own_path(trained, workdir):
    _run('train', ['-opt', str(workdir / 'train.yml'), '--auto_resume', '--force_yml', 'train:total_iter=12'], workdir)
    log = _log_text(trained)
    resumed = log[log.index('Resuming training from epoch'):]
    assert 'iter: 8.' in resumed and re.search(r'iter:\s+9, lr:', resumed)
    assert log.count('Loaded the degradation encoder adapters from clip.pth') == 2
    state = torch.load(trained / 'training_states' / '12.state', map_location='cpu', weights_only=False)
    assert {int(s['step']) for s in state['optimizers'][0]['state'].values()} == {12}


@pytest.mark.multiprocess
def test_test_entry_writes_the_results_table_and_images(trained, workdir, tiny_clip_name):
    opt = {
        'name': 'bench', 'model_type': 'VLUNetModel', 'scale': 1, 'num_gpu': 0,
        'datasets': {'test_1': _paired('data/test', 'SetA'), 'test_2': _paired('data/val', 'SetB')},
        'network_g': TINY_VLUNET,
        'degradation_encoder': {'type': 'DegradationCLIP', 'backbone': tiny_clip_name, 'pretrained': None},
        'tile': {'size': 16, 'overlap': 4},
        'path': {'pretrain_network_g': 'experiments/guided/models/net_g_latest.pth', 'strict_load_g': True,
                 'param_key_g': 'params_ema', 'pretrain_network_degradation_encoder': 'clip.pth'},
        'val': {'save_img': True, 'suffix': None, 'metrics': METRICS},
    }
    _run('test', ['-opt', _write_yaml(workdir / 'test.yml', opt)], workdir)
    results = workdir / 'results' / 'bench'
    with open(results / 'results.csv', encoding='utf-8') as f:
        rows = list(csv.reader(f))
    assert rows[0] == ['Dataset', 'Images', *METRICS]
    assert [r[:2] for r in rows[1:]] == [['SetA', '3'], ['SetB', '2'], ['Average', '5']]
    values = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    assert np.allclose(values[2], values[:2].mean(axis=0), atol=1e-4)
    assert (results / 'results.md').read_text().splitlines()[-1].startswith('| Average | 5 |')
    assert sorted(os.listdir(results / 'visualization' / 'SetA')) == [f'00{i}_bench.png' for i in range(3)]


# --------------------------------------------------------------------------- in-process model


class _ImageSet(Dataset):
    """Random (lq, gt) pairs of different sizes, like a validation folder; records the indices read."""

    def __init__(self, name: str, count: int):
        self.opt = {'name': name}
        self.images = [torch.rand(3, 19 + i, 23 + 2 * i, generator=torch.Generator().manual_seed(i))
                       for i in range(count)]
        self.read = []

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        self.read.append(index)
        gt = self.images[index]
        return {'lq': (gt + 0.1).clamp(0, 1), 'gt': gt, 'lq_path': f'{index}.png', 'gt_path': f'{index}.png'}


def _test_model(tmp_path, network_g: dict, **extra):
    opt = {'name': 'inproc', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'is_train': False, 'dist': False,
           'network_g': network_g, 'path': {'results_root': str(tmp_path), 'visualization': str(tmp_path / 'vis')},
           'val': {'save_img': False, 'metrics': METRICS}, **extra}
    return MODEL_REGISTRY.get('VLUNetModel')(opt)


PLAIN_NET = {'type': 'SRVGGNetCompact', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_conv': 1, 'upscale': 1,
             'act_type': 'relu'}


def test_clip_off_runs_plain_networks_and_vlunet_without_degradation(tmp_path):
    plain = _test_model(tmp_path, PLAIN_NET)
    assert plain.degradation_encoder is None
    images = _ImageSet('plain', 2)
    plain.validation(DataLoader(images), 'inproc', None)
    with torch.no_grad():
        expected = np.mean([peak_signal_noise_ratio(
            sample['gt'].permute(1, 2, 0).numpy(),
            plain.net_g(sample['lq'][None])[0].clamp(0, 1).permute(1, 2, 0).numpy(), data_range=1)
            for sample in (images[0], images[1])])
    assert list(plain.dataset_results) == ['plain']
    assert plain.dataset_results['plain']['psnr_float'] == pytest.approx(expected, rel=1e-5)
    unguided = _test_model(tmp_path, TINY_VLUNET)
    unguided.feed_data(default_collate([_ImageSet('vlunet', 1)[0]]))
    assert unguided.degradation is None
    unguided.test()
    assert unguided.output.shape == (1, 3, 19, 23) and torch.isfinite(unguided.output).all()


class _RecordingNet(nn.Module):
    """A 3x3 convolution that records the degradation embeddings it is called with."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.calls = []

    def forward(self, image, degradation=None):
        self.calls.append((tuple(image.shape), degradation))
        return self.conv(image)


class _CountingEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.inputs = []

    def encode_degradation(self, images):
        self.inputs.append(tuple(images.shape))
        return images.mean(dim=(2, 3)).repeat(1, 4)


class _FixedEncoder(nn.Module):
    """Returns the same degradation vector for every image and records the images it was given."""

    def __init__(self, vector: torch.Tensor):
        super().__init__()
        self.vector, self.inputs = vector, []

    def encode_degradation(self, images):
        self.inputs.append(images.clone())
        return self.vector.expand(images.shape[0], -1)


def test_degradation_vector_guides_vlunet_exactly_through_the_key_mixture(tmp_path):
    model = _test_model(tmp_path, TINY_VLUNET)
    torch.manual_seed(5)
    with torch.no_grad():  # away from the initial constants, with clearly different keys
        for name, parameter in model.net_g.named_parameters():
            parameter.copy_(torch.randn_like(parameter) if name.endswith('degradation_keys')
                            else parameter + 0.1 * torch.randn_like(parameter))
    degradation = 4 * torch.randn(1, 512)
    model.degradation_encoder = _FixedEncoder(degradation)
    sample = default_collate([_ImageSet('guided', 1)[0]])
    model.feed_data(sample)
    model.test()
    assert len(model.degradation_encoder.inputs) == 1 and torch.equal(model.degradation_encoder.inputs[0], sample['lq'])
    # The paper's mechanism, computed independently: every D-GDM mixes its key bank with softmax(W d + b). A copy of
    # the network whose banks hold that mixture in every slot, run without d (equal weights), must give the same output.
    mixed = copy.deepcopy(model.net_g)
    steps = [module for module in mixed.modules() if hasattr(module, 'degradation_keys')]
    assert len(steps) == 8
    with torch.no_grad():
        for step in steps:
            weights = torch.softmax(degradation @ step.key_logits.weight.T + step.key_logits.bias, dim=1)[0]
            assert weights.max() - weights.min() > 0.05  # d really selects among the keys
            mixture = (weights.view(-1, 1, 1, 1) * step.degradation_keys[0]).sum(dim=0)
            step.degradation_keys.copy_(mixture.expand_as(step.degradation_keys[0])[None])
        equivalent, unguided = mixed(sample['lq']), model.net_g(sample['lq'])
    scale = model.output.abs().max()  # measured: 1e-6 relative to the equivalent, 1e-2 to the unguided output
    assert (model.output - equivalent).abs().max() <= 1e-5 * scale
    assert (model.output - unguided).abs().max() > 2e-3 * scale  # and the mixture changes the restoration


def test_tiled_validation_encodes_the_whole_image_once_and_guides_every_tile(tmp_path):
    model = _test_model(tmp_path, TINY_VLUNET, tile={'size': 12, 'overlap': 4})
    model.net_g, model.degradation_encoder = _RecordingNet(), _CountingEncoder()
    model.validation(DataLoader(_ImageSet('tiles', 1)), 'inproc', None)
    assert model.degradation_encoder.inputs == [(1, 3, 19, 23)]
    assert len(model.net_g.calls) == len(tile_starts(19, 12, 4)) * len(tile_starts(23, 12, 4)) == 6
    first = model.net_g.calls[0][1]
    assert first.shape == (1, 12) and all(d is first for _, d in model.net_g.calls)


def _validate_on_rank(rank: int, world_size: int, init_file: str, folder: str) -> None:
    distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = _test_model(Path(folder), PLAIN_NET, dist=True)
    dataset = _ImageSet('shards', 5)
    model.validation(DataLoader(dataset), 'inproc', None)
    torch.save({'read': dataset.read, 'results': dict(model.dataset_results), 'counts': model.dataset_image_counts},
               osp.join(folder, f'rank{rank}.pt'))
    distributed.destroy_process_group()


@pytest.mark.multiprocess
def test_distributed_validation_shards_images_and_reduces_the_metrics(tmp_path):
    torch.multiprocessing.spawn(_validate_on_rank, args=(2, str(tmp_path / 'init'), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f'rank{r}.pt', weights_only=False) for r in range(2)]
    assert [r['read'] for r in ranks] == [[0, 2, 4], [1, 3]]
    torch.manual_seed(0)
    single = _test_model(tmp_path, PLAIN_NET)
    single.validation(DataLoader(_ImageSet('shards', 5)), 'inproc', None)
    for result in ranks:
        assert result['counts'] == {'shards': 5}
        assert result['results']['shards'] == pytest.approx(single.dataset_results['shards'], rel=1e-6)


# --------------------------------------------------------------------------- tiling


def _two_conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()


@pytest.mark.parametrize('height,width,size,overlap', [(37, 50, 16, 6), (40, 29, 20, 4), (9, 30, 12, 4)])
def test_tiled_output_matches_whole_image_away_from_tile_borders(height, width, size, overlap):
    net, radius = _two_conv_net(), 2  # two 3x3 convolutions
    image = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height))
    with torch.no_grad():
        whole = restore(net, image)
        tiled = restore(net, image, TileOptions(size, overlap))
    assert tiled.shape == whole.shape == image.shape
    safe = torch.ones(height, width, dtype=torch.bool)
    for length, starts, axis in ((height, tile_starts(height, size, overlap), 0),
                                 (width, tile_starts(width, size, overlap), 1)):
        for edge in starts[1:] + [start + size for start in starts[:-1]]:  # inner tile edges
            band = slice(max(edge - radius, 0), min(edge + radius, length))
            safe[(band, slice(None)) if axis == 0 else (slice(None), band)] = False
    assert safe.float().mean() > 0.15
    torch.testing.assert_close(tiled[..., safe], whole[..., safe], rtol=1e-5, atol=1e-5)


def test_pointwise_network_tiles_exactly_and_padding_is_cropped():
    conv = nn.Conv2d(3, 3, 1)
    image = torch.rand(1, 3, 33, 45)

    def needs_multiple_of_8(x):
        assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0
        return conv(x)

    with torch.no_grad():
        torch.testing.assert_close(restore(needs_multiple_of_8, image, TileOptions(16, 5), size_multiple=8),
                                   conv(image), rtol=1e-5, atol=1e-6)


def test_tile_progress_bar_counts_the_tiles_without_changing_the_output(capsys):
    conv = nn.Conv2d(3, 3, 1)
    image = torch.rand(1, 3, 30, 50)
    with torch.no_grad():
        quiet = restore(conv, image, TileOptions(16, 4))
        assert capsys.readouterr().err == ''
        shown = restore(conv, image, TileOptions(16, 4), progress=True)
    assert torch.equal(quiet, shown)
    tiles = len(tile_starts(30, 16, 4)) * len(tile_starts(50, 16, 4))
    assert re.search(rf'Tiles:.* 0/{tiles} ', capsys.readouterr().err)


def test_tile_options_are_checked():
    assert parse_tile_options(None) is None and parse_tile_options({'size': None}) is None
    assert parse_tile_options({'size': 64, 'overlap': 8}) == TileOptions(64, 8)
    assert tile_starts(50, 16, 6) == [0, 10, 20, 30, 34] and tile_starts(10, 16, 6) == [0]
    with pytest.raises(ValueError, match=r'tile.overlap \(16\) must be smaller than tile.size \(16\)'):
        parse_tile_options({'size': 16, 'overlap': 16})
    with pytest.raises(ValueError, match='tile.size: expected an integer >= 1'):
        parse_tile_options({'size': '256'})
    with pytest.raises(ValueError, match='tile.size_multiple: expected an integer >= 1, got 0'):
        parse_tile_options({'size': None, 'size_multiple': 0})
    with pytest.raises(ValueError, match="unknown keys \\['overlop'\\]"):
        parse_tile_options({'size': 16, 'overlop': 4})


# --------------------------------------------------------------------------- metrics and table


def test_float_rgb_psnr_of_a_known_mse_and_clipping():
    gt = np.full((8, 9, 3), 0.5, dtype=np.float32)
    assert calculate_psnr_float_rgb(gt + 0.1, gt) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    assert calculate_psnr_float_rgb(gt, gt) == float('inf')
    over = np.full_like(gt, 1.0)
    assert calculate_psnr_float_rgb(over + 5, over) == float('inf'), 'values are clipped to [0, 1] first'
    assert calculate_psnr_float_rgb(gt + 0.1, gt, crop_border=2) == pytest.approx(20.0, abs=1e-4)


def test_float_rgb_ssim_is_skimage_on_clipped_rgb_and_rejects_uint8():
    rng = np.random.default_rng(0)
    gt = rng.random((16, 16, 3)).astype(np.float32)
    restored = gt + rng.normal(0, 0.1, gt.shape).astype(np.float32)
    expected = structural_similarity(gt, np.clip(restored, 0, 1), data_range=1, channel_axis=2)
    assert calculate_ssim_float_rgb(restored, gt) == pytest.approx(expected, abs=1e-7)
    assert calculate_ssim_float_rgb(gt, gt) == pytest.approx(1.0)
    with pytest.raises(TypeError, match='calculate_psnr / calculate_ssim'):
        calculate_ssim_float_rgb((gt * 255).astype(np.uint8), (gt * 255).astype(np.uint8))


def test_results_markdown_has_a_row_per_dataset_and_the_average():
    table = format_markdown({'CBSD68': {'psnr': 30.0, 'ssim': 0.8}, 'Rain100L': {'psnr': 36.0, 'ssim': 0.9}},
                            {'CBSD68': 68, 'Rain100L': 100})
    assert table.splitlines() == ['| Dataset | Images | psnr | ssim |', '|---|---:|---:|---:|',
                                  '| CBSD68 | 68 | 30.0000 | 0.8000 |', '| Rain100L | 100 | 36.0000 | 0.9000 |',
                                  '| Average | 168 | 33.0000 | 0.8500 |']


def _train_model(tmp_path, **extra):
    torch.manual_seed(0)
    opt = {'name': 'precision', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'is_train': True, 'dist': False,
           'network_g': TINY_VLUNET, 'path': {'models': str(tmp_path), 'training_states': str(tmp_path)},
           'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3}, 'total_iter': 2,
                     'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                     'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}}, **extra}
    model = MODEL_REGISTRY.get('VLUNetModel')(opt)
    images = _ImageSet('amp', 1)
    model.feed_data(default_collate([images[0], images[0]]))
    return model


def test_bf16_autocast_training_keeps_fp32_outputs_and_close_losses(tmp_path):
    reference = _train_model(tmp_path)
    reference.optimize_parameters(1)
    mixed = _train_model(tmp_path, amp={'enabled': True, 'dtype': 'bf16'})
    assert mixed.grad_scaler is None
    mixed.optimize_parameters(1)
    assert mixed.output.dtype == torch.float32
    assert abs(mixed.log_dict['l_pix'] - reference.log_dict['l_pix']) < 0.05 * reference.log_dict['l_pix']
    mixed.test()
    assert mixed.output.dtype == torch.float32 and torch.isfinite(mixed.output).all()


def test_fp16_grad_scaler_state_is_saved_and_restored(tmp_path):
    model = _train_model(tmp_path, amp={'enabled': True, 'dtype': 'fp16'})
    assert model.grad_scaler is not None
    model.optimize_parameters(1)
    model.grad_scaler.update(1024.0)  # a loss scale that differs from the default
    model.save_training_state(epoch=0, current_iter=1)
    state = torch.load(tmp_path / '1.state', map_location='cpu', weights_only=False)
    assert state['grad_scaler']['scale'] == model.grad_scaler.get_scale()
    resumed = _train_model(tmp_path, amp={'enabled': True, 'dtype': 'fp16'})
    resumed.resume_training(state)
    assert resumed.grad_scaler.get_scale() == model.grad_scaler.get_scale() != 65536.0
