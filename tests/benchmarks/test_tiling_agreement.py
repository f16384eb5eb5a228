"""Tiled VLU-Net vs whole-image VLU-Net (benchmarks/tiling_agreement.py): the attention is global, so they
differ, but they agree within measured PSNR bounds that rise with the tile size."""
import json
import math
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import vlunet  # noqa: F401  (compat shim before basicsr)
from vlunet.tiling.tiles import BLENDS, restore_tiled

from helpers import REPO_ROOT, load_benchmark

SCRIPT = osp.join(REPO_ROOT, 'benchmarks', 'tiling_agreement.py')
TINY = dict(de_dim=3, dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1], key_size=8)
# Measured on this config (seed 0, astronaut 96x64): tile 32: 41.8-42.9 dB, tile 64: 50.5-51.5 dB.
MIN_PSNR = {32: 39.0, 64: 48.0}


@pytest.fixture(scope='module')
def script():
    return load_benchmark('tiling_agreement')


@pytest.fixture(scope='module')
def agreement(script) -> dict:
    torch.set_num_threads(1)
    return script.measure(TINY, None, height=64, width=96, sizes=[32, 64], overlaps=[8, 16])


def test_tiled_vlunet_agrees_with_the_whole_image_within_the_measured_bounds(agreement):
    assert [(row['tile'], row['overlap']) for row in agreement['rows']] == [(32, 8), (32, 16), (64, 8), (64, 16)]
    for row in agreement['rows']:
        for blend in BLENDS:
            assert MIN_PSNR[row['tile']] <= row[blend] < 80, row  # close, but not equal: global attention
    by_tile = {tile: min(row['linear'] for row in agreement['rows'] if row['tile'] == tile) for tile in MIN_PSNR}
    assert by_tile[64] > by_tile[32] + 5  # larger tiles see more of the image
    assert agreement['psnr_whole_vs_input'] < 35  # the network does change the image


def test_crop_blending_takes_each_pixel_from_its_nearest_tile():
    image = torch.rand(1, 3, 8, 30, generator=torch.Generator().manual_seed(0))  # one row of tiles at 0, 10, 14
    calls = []

    def tile_index(tile: torch.Tensor) -> torch.Tensor:
        calls.append(None)
        return torch.full_like(tile, float(len(calls)))  # each tile paints its own number

    crop = restore_tiled(tile_index, image, 16, 6, blend='crop')
    calls.clear()
    linear = restore_tiled(tile_index, image, 16, 6, blend='linear')
    # cuts at the middle of each overlap: (10 + 16) // 2 = 13 and (14 + 10 + 16) // 2 = 20
    assert crop[0, 0, 0].tolist() == [1.0] * 13 + [2.0] * 7 + [3.0] * 10
    assert torch.equal(crop[..., :10], linear[..., :10])  # outside the overlaps both are tile 1
    assert 1 < linear[0, 0, 0, 12] < 2  # linear ramps across the overlap


@pytest.mark.multiprocess
def test_script_prints_the_table(tmp_path):
    out_json = tmp_path / 'tiling.json'
    result = subprocess.run(
        [sys.executable, SCRIPT, '--arch-json', json.dumps(TINY), '--height', '24', '--width', '40', '--sizes', '16',
         '--overlaps', '4', '--json', str(out_json)], capture_output=True, text=True, timeout=300,
        env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert result.returncode == 0, result.stderr
    assert '| tile | overlap | linear blend | crop blend |' in result.stdout and '| 16 | 4 |' in result.stdout
    rows = json.loads(out_json.read_text())['rows']
    assert len(rows) == 1 and math.isfinite(rows[0]['linear'])
