"""tile: auto (memory model, budget, plan), batched tiles and the folder progress of scripts/inference.py."""
import json
import os.path as osp
import re

import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet.models.guided_restoration_model import VLUNetModel
from vlunet.tiling.memory_model import (
    MEMORY_MARGIN,
    MemoryModel,
    cached_memory_model,
    measure_memory_model,
    network_memory_key,
    parse_memory_size,
    peak_forward_bytes,
)
from vlunet.tiling.tiles import (
    IMAGE_BYTES_PER_PIXEL,
    AutoTile,
    InsufficientMemoryError,
    TileOptions,
    parse_tile_options,
    plan_tiles,
    repeat_per_tile,
    restore,
    tile_starts,
)

from basicsr.archs import build_network

from helpers import REPO_ROOT, load_script, smooth_image, write_image

TINY_SIZES = {'dim': 10, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1, 'heads': [1, 1, 1, 1],
              'key_size': 8}
CPU = torch.device('cpu')
# The memory model (without its margin) against the torch allocator's measured peak, at sizes and batches
# it was not fitted on: measured 1.000-1.001 for the tiny VLU-Net; the official-size one: 1.0 at 256².
MODEL_FACTOR = 1.05


class Counting:
    """A guided tiny VLU-Net that records the shape of every input it gets."""

    def __init__(self, degradation: torch.Tensor):
        torch.manual_seed(0)
        self.net = build_network({'type': 'VLUNet', 'de_dim': 3, **TINY_SIZES}).eval()
        self.degradation, self.shapes = degradation, []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(images.shape))
        return self.net(images, degradation=repeat_per_tile(self.degradation, images.shape[0]))


@pytest.fixture(scope='module')
def counting() -> Counting:
    return Counting(torch.randn(1, 512, generator=torch.Generator().manual_seed(1)))


@pytest.fixture(scope='module')
def memory(counting) -> MemoryModel:
    with torch.no_grad():
        return cached_memory_model(network_memory_key(counting.net, CPU), counting, torch.zeros(1, 3, 8, 8), 8)


def _plan(tile, shape, memory):
    return plan_tiles(tile, shape, 8, CPU, lambda: memory)


def test_auto_restores_a_small_image_whole_and_a_large_one_in_the_largest_tiles_that_fit(counting, memory):
    small, large = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 48, 64)
    image_bytes = IMAGE_BYTES_PER_PIXEL * 48 * 64
    budget = image_bytes + memory.forward_bytes(1, 32, 32) + 1  # 32-pixel tiles fit, 40-pixel ones do not
    assert image_bytes + memory.forward_bytes(1, 40, 40) > budget
    tile = AutoTile(overlap=8, min_size=16, max_memory=budget)
    counting.shapes.clear()
    with torch.no_grad():
        restore(counting, small, tile, 8, memory_key=network_memory_key(counting.net, CPU))
        assert counting.shapes == [(1, 3, 24, 24)]  # one whole-image forward, the model came from the cache
        counting.shapes.clear()
        plans = []
        output = restore(counting, large, tile, 8, memory_key=network_memory_key(counting.net, CPU),
                         on_plan=plans.append)
    tiles = len(tile_starts(48, 32, 8)) * len(tile_starts(64, 32, 8))
    assert plans[0].size == 32 and plans[0].tiles == tiles == 6 and plans[0].predicted_bytes <= budget
    assert counting.shapes == [(1, 3, 32, 32)] * tiles and output.shape == (1, 3, 48, 64)
    assert str(plans[0]).startswith('tiles 32 px (overlap 8): 6 tiles, 1 per forward; memory ')
    assert str(plans[0]).endswith('(max_memory)')


def test_the_memory_model_predicts_the_measured_peak_within_the_stated_factor(counting, memory):
    with torch.no_grad():
        for batch, height, width in ((1, 48, 80), (2, 40, 40), (1, 160, 136)):
            measured = peak_forward_bytes(counting, torch.rand(batch, 3, height, width))
            predicted = memory.forward_bytes(batch, height, width) / MEMORY_MARGIN
            assert 1 / MODEL_FACTOR <= measured / predicted <= MODEL_FACTOR, (batch, height, width)
            assert memory.forward_bytes(batch, height, width) > measured  # the margin is on the safe side


def test_the_cpu_peak_counts_every_torch_allocation_including_freed_temporaries():
    def temporary_then_output(images: torch.Tensor) -> torch.Tensor:
        temporary = images.repeat(1, 4, 1, 1)  # 12 planes, freed on return
        return temporary[:, :3] + 1  # 3 planes, allocated while the temporary lives

    planes = 4 * 32 * 40  # float32 bytes of one 32x40 plane
    assert 15 * planes <= peak_forward_bytes(temporary_then_output, torch.rand(1, 3, 32, 40)) <= 15 * planes + 64
    linear = measure_memory_model(temporary_then_output, 3, CPU)
    assert linear.bytes_per_pixel == pytest.approx(60, rel=1e-3) and linear.fixed_bytes < 1024


def test_batched_tiles_give_the_same_output_as_one_tile_at_a_time():
    degradation = torch.randn(2, 512, generator=torch.Generator().manual_seed(2))  # two images, two different d
    net = Counting(degradation)
    images = torch.rand(2, 3, 32, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        one = restore(net, images, TileOptions(24, 8))
        forwards_one = len(net.shapes)
        net.shapes.clear()
        three = restore(net, images, TileOptions(24, 8, batch=3))
        assert net.shapes == [(6, 3, 24, 24), (2, 3, 24, 24)]  # 3 tiles x 2 images, then the last tile
        net.shapes.clear()
        each = [restore(Counting(degradation[i:i + 1]), images[i:i + 1], TileOptions(24, 8)) for i in range(2)]
    tiles = len(tile_starts(32, 24, 8)) * len(tile_starts(40, 24, 8))
    assert forwards_one == tiles == 4
    assert (one - three).abs().max() <= 1e-6
    assert (torch.cat(each) - one).abs().max() <= 1e-6  # each image is guided by its own d in the stacked batch
    with pytest.raises(ValueError, match='not a whole number of tile batches'):
        repeat_per_tile(degradation, 3)


def test_batch_auto_takes_as_many_tiles_as_fit(memory):
    shape = (1, 3, 64, 64)
    budget = IMAGE_BYTES_PER_PIXEL * 64 * 64 + memory.forward_bytes(3, 16, 16) + 1
    plan = _plan(TileOptions(16, 4, 'auto', budget), shape, memory)
    assert plan.batch == 3 and plan.tiles == 25 and plan.predicted_bytes <= budget
    assert _plan(TileOptions(16, 4, 2), shape, None).batch == 2  # a fixed batch needs no memory model
    assert _plan(AutoTile(4, 16, budget, batch='auto'), (1, 3, 16, 32), memory).size is None


def test_a_budget_too_small_for_the_smallest_tile_fails_before_any_forward(counting, memory):
    counting.shapes.clear()
    with torch.no_grad(), pytest.raises(InsufficientMemoryError) as error:
        restore(counting, torch.rand(1, 3, 48, 48), AutoTile(8, 16, parse_memory_size('64KB')), 8,
                memory_key=network_memory_key(counting.net, CPU))
    assert counting.shapes == []  # the memory model is cached: not a single forward
    message = str(error.value)
    assert 'not enough memory to restore a 48x48 image on cpu: even 16-pixel tiles need about' in message
    assert 'the budget is 0 MiB (max_memory)' in message and 'tile.min_size, now 16' in message


def test_tile_options_auto_fixed_and_errors():
    assert parse_tile_options('auto') == AutoTile() == parse_tile_options({'size': 'auto'})
    assert parse_tile_options({'size': 'auto', 'max_memory': '2GB', 'min_size': 64, 'overlap': 16, 'batch': 'auto'}) \
        == AutoTile(16, 64, 2 * 10 ** 9, 'auto')
    assert parse_tile_options({'size': 256, 'overlap': 32, 'batch': 4}) == TileOptions(256, 32, 4)
    assert parse_tile_options(None) is None
    for section, message in (({'size': 'auto', 'overlap': 128}, r'tile.overlap \(128\) must be smaller than '
                                                                r'tile.min_size \(128\)'),
                             ({'size': 256, 'min_size': 64}, 'tile.min_size: only for size: auto'),
                             ({'size': 'auto', 'batch': 0}, 'tile.batch: expected an integer >= 1'),
                             ({'size': 'auto', 'max_memory': 'lots'}, 'tile.max_memory: expected a positive size'),
                             ('big', 'tile: expected auto, null or a mapping')):
        with pytest.raises(ValueError, match=message):
            parse_tile_options(section)
    assert parse_memory_size('1.5GiB') == 3 * 2 ** 29 and parse_memory_size('512MB') == 512 * 10 ** 6
    assert parse_memory_size('2G') == 2 ** 31 and parse_memory_size(1000) == 1000


def test_option_files_use_tile_auto_and_the_option_checks_accept_it():
    assert VLUNetModel.check_options({'tile': 'auto'}, is_train=False) == []
    assert VLUNetModel.check_options({'tile': {'size': 'auto', 'max_memory': '4GB'}}, is_train=False) == []
    assert VLUNetModel.check_options({'tile': {'size': 'auto', 'max_memory': 'lots'}}, is_train=False) == [
        "tile.max_memory: expected a positive size like 2GB, 1.5GiB or 512MB, got 'lots'."]
    with open(osp.join(REPO_ROOT, 'options', 'test_official_5task.yml'), encoding='utf-8') as f:
        assert parse_tile_options(yaml.safe_load(f)['tile']) == AutoTile()


def _inference_script():
    return load_script('inference')


@pytest.fixture(scope='module')
def net_weights(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp('auto_tiling') / 'net.pth'
    torch.manual_seed(0)
    torch.save({'params': build_network({'type': 'VLUNet', 'de_dim': 3, **TINY_SIZES}).state_dict()}, str(path))
    return str(path)


def test_the_script_plans_every_image_prints_the_plan_and_counts_pixels_over_the_folder(net_weights, tmp_path,
                                                                                         capsys):
    write_image(str(tmp_path / 'in' / 'a.png'), smooth_image(0, 40, 56))
    write_image(str(tmp_path / 'in' / 'b.png'), smooth_image(1, 24, 24))
    script = _inference_script()
    args = ['--net-weights', str(net_weights), '--network-json', json.dumps({'type': 'VLUNet', **TINY_SIZES})]
    restorer = script.Restorer(**script.restorer_settings(script.parse_args(['x', *args, '--tile', '24',
                                                                              '--tile-overlap', '8'])))
    jobs, _ = script.list_jobs([str(tmp_path / 'in')], str(tmp_path / 'out'), '')
    assert script.planned_pixels(restorer, jobs) == [6 * 24 * 24, 24 * 24]  # 2 x 3 tiles, 1 tile
    assert script.main([str(tmp_path / 'in'), '-o', str(tmp_path / 'out'), *args, '--tile', '24',
                        '--tile-overlap', '8']) == 0
    captured = capsys.readouterr()
    assert 'a.png: tiles 24 px (overlap 8): 6 tiles, 1 per forward; detected n/a' in captured.out
    assert 'b.png: tiles 24 px (overlap 8): 1 tile, 1 per forward' in captured.out
    assert re.search(r'Restoring: 100%.* 4\.03k/4\.03k \[\d\d:\d\d<00:00, ', captured.err)  # (6 + 1) * 24 * 24 px
    assert re.search(r'Restoring: +0%.* 0\.00/4\.03k ', captured.err)  # the total is known before the first image
    assert script.main([str(tmp_path / 'in' / 'b.png'), '-o', str(tmp_path / 'out'), *args]) == 0
    assert 'b.png: whole image; memory ' in capsys.readouterr().out  # the default: tile auto


def test_the_script_reports_an_image_too_large_for_the_budget_and_writes_nothing(net_weights, tmp_path, capsys):
    write_image(str(tmp_path / 'big.png'), smooth_image(0, 48, 48))
    status = _inference_script().main([str(tmp_path / 'big.png'), '-o', str(tmp_path / 'out'), '--net-weights',
                                       str(net_weights), '--network-json', json.dumps({'type': 'VLUNet',
                                                                                       **TINY_SIZES}),
                                       '--max-memory', '100KB'])
    assert status == 1 and not (tmp_path / 'out' / 'big.png').exists()
    assert 'big.png: not enough memory to restore a 48x48 image on cpu: even 48-pixel tiles' in capsys.readouterr().err


def test_the_model_plans_its_test_images_and_logs_the_plan_when_it_changes(tmp_path):
    opt = {'name': 'auto', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'is_train': False, 'dist': False,
           'network_g': {'type': 'VLUNet', 'de_dim': 3, **TINY_SIZES}, 'path': {'results_root': str(tmp_path)},
           'val': {'save_img': False}, 'tile': {'size': 'auto', 'overlap': 4, 'min_size': 16, 'max_memory': '1MB'}}
    model = VLUNetModel(opt)
    assert model.degradation_encoder is None and model.tile == AutoTile(4, 16, 10 ** 6)
    small, large = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 40, 48)
    model.feed_data({'lq': small})
    model.test()
    assert model.logged_tiles == (None, 1)  # whole image
    model.feed_data({'lq': large})
    model.test()
    size, batch = model.logged_tiles
    assert 16 <= size < 40 and batch == 1
    with torch.no_grad():
        expected = restore(model.net_g, large, TileOptions(size, 4), 8)
    assert (model.output - expected).abs().max() <= 1e-6


def test_the_script_options_of_tile_auto(capsys):
    script = _inference_script()

    def tile(*extra):
        return script.restorer_settings(script.parse_args(['x.png', '--net-weights', 'n.pth', *extra])).get('tile', '-')

    assert tile() == '-'  # not given: the option file's tile, else the Restorer's default (auto)
    assert tile('--max-memory', '1.5GiB') == {'size': 'auto', 'overlap': 32, 'max_memory': 3 * 2 ** 29}
    assert tile('--tile', '512', '--tile-batch', 'auto') == {'size': 512, 'overlap': 32, 'batch': 'auto'}
    assert tile('--tile', 'whole') is None
    for bad in (['--tile-batch', '0'], ['--max-memory', 'lots']):
        with pytest.raises(SystemExit):
            tile(*bad)
    err = capsys.readouterr().err
    assert "--tile-batch: '0' is not auto or a number of tiles >= 1" in err
    assert "--max-memory: 'lots' is not a positive size like 2GB" in err
