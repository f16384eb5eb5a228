"""Figures of ``tile: auto``: the memory model against measured peaks, tiles/s per tile batch, large photos.

Usage::

    python benchmarks/auto_tiling_figures.py --json auto_tiling.json                  # everything (CPU: an hour)
    python benchmarks/auto_tiling_figures.py --parts model batch                      # the quick parts
    python benchmarks/auto_tiling_figures.py --arch-json '{"dim": 16, ...}' --photos 96x64 --batch-tile 32

Parts (official-size VLU-Net with random weights by default, a random degradation vector d):

- ``model``: the memory model (:mod:`vlunet.tiling.memory_model`) and how long measuring it takes;
  then whole-image forwards at ``--check-sizes`` in fresh processes: peak process memory above the
  state before the forward (``VmHWM - VmRSS``, Linux) and the torch-allocator peak (profiler), against
  the prediction without its safety margin;
- ``plans``: the ``tile: auto`` plan of each ``--photos`` image (nothing restored);
- ``batch``: tiles/s of restoring ``--batch-tiles`` tiles of ``--batch-tile`` pixels with 1, 2 and 4
  tiles per forward, the batch sizes alternating in ``--rounds`` rounds (median tiles/s; ratios to 1);
- ``photos``: each ``--photos`` WxH image (smooth synthetic content) restored with ``tile: auto``
  (``--max-memory`` or the available RAM) in a fresh process: the plan, seconds, peak process memory;
  and whole-image where the plan is whole-image anyway (then the two are the same run). Every
  forward's time is written as it happens (``--json`` ``.progress`` lines), so a run that is stopped
  still says how far it got.
"""
import argparse
import json
import multiprocessing
import os.path as osp
import statistics
import sys
import time
from typing import List, Optional

import torch
from benchmark_common import write_json

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import vlunet  # noqa: F401,E402  (compat shim before basicsr; registers the archs)
from vlunet.tiling.memory_model import (  # noqa: E402
    MEMORY_MARGIN,
    cached_memory_model,
    format_bytes,
    measure_memory_model,
    network_memory_key,
    parse_memory_size,
    peak_forward_bytes,
)
from vlunet.tiling.tiles import AutoTile, TileOptions, plan_tiles, repeat_per_tile, restore  # noqa: E402

from basicsr.archs import build_network  # noqa: E402

SEED = 0
SIZE_MULTIPLE = 8


def build(arch: dict) -> tuple:
    """(network in eval mode, d (1, D), the guided network function) for the seeded ``arch``."""
    torch.manual_seed(SEED)
    net = build_network({'type': 'VLUNet', **arch}).eval()
    degradation = torch.randn(1, net.config['degradation_dim'], generator=torch.Generator().manual_seed(SEED))
    return net, degradation, lambda tiles: net(tiles, repeat_per_tile(degradation, tiles.shape[0]))


def smooth_image(height: int, width: int) -> torch.Tensor:
    rows = torch.linspace(0, 1, height).view(1, 1, height, 1)
    cols = torch.linspace(0, 1, width).view(1, 1, 1, width)
    phase = torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1)
    return 0.5 + 0.4 * torch.sin(6.3 * (rows * 1.3 + cols * 0.7) + phase) * torch.cos(3 * cols + phase)


def _status_bytes(field: str) -> int:
    with open('/proc/self/status', encoding='ascii') as status:
        for line in status:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'{field} is not in /proc/self/status')


def _log(path: Optional[str], record: dict) -> None:
    print(json.dumps(record), flush=True)
    if path:
        with open(path, 'a', encoding='utf-8') as log:
            log.write(json.dumps(record) + '\n')


def whole_forward_job(arch: dict, size: int, threads: int) -> dict:
    """In a fresh process: peak RSS above the state before one whole-image forward, and the allocator's peak."""
    torch.set_num_threads(threads)
    _, _, network = build(arch)
    image = smooth_image(size, size)
    with torch.inference_mode():
        allocator_peak = peak_forward_bytes(network, image)
        before = _status_bytes('VmRSS')
        started = time.perf_counter()
        network(image)
        seconds = time.perf_counter() - started
    return {'size': size, 'rss_extra_bytes': _status_bytes('VmHWM') - before, 'allocator_peak_bytes': allocator_peak,
            'seconds': seconds}


def photo_job(arch: dict, width: int, height: int, threads: int, max_memory: Optional[int],
              progress_path: Optional[str]) -> dict:
    """In a fresh process: restore a WxH image with tile: auto; plan, seconds, peak RSS above the state before."""
    torch.set_num_threads(threads)
    net, _, network = build(arch)
    image = smooth_image(height, width)
    plans, started = [], time.perf_counter()

    def on_plan(plan) -> None:
        plans.append(plan)
        _log(progress_path, {'photo': f'{width}x{height}', 'plan': str(plan), 'tile': plan.size, 'tiles': plan.tiles,
                             'predicted_bytes': plan.predicted_bytes, 'budget_bytes': plan.budget_bytes,
                             'seconds_planning': time.perf_counter() - started})

    def on_progress(pixels: int) -> None:
        _log(progress_path, {'photo': f'{width}x{height}', 'forward_done_pixels': pixels,
                             'seconds': time.perf_counter() - started})

    key = network_memory_key(net, torch.device('cpu'))
    with torch.inference_mode():
        cached_memory_model(key, network, image, SIZE_MULTIPLE)  # measured first: its profiler is not the restore's
        before = _status_bytes('VmRSS')
        restore(network, image, AutoTile(max_memory=max_memory), SIZE_MULTIPLE, memory_key=key, on_plan=on_plan,
                on_progress=on_progress)
    return {'width': width, 'height': height, 'plan': str(plans[0]), 'tile': plans[0].size, 'tiles': plans[0].tiles,
            'predicted_bytes': plans[0].predicted_bytes, 'seconds': time.perf_counter() - started,
            'rss_extra_bytes': _status_bytes('VmHWM') - before}


def in_fresh_process(function, *args) -> dict:
    with multiprocessing.get_context('spawn').Pool(1) as pool:
        return pool.apply(function, args)


def model_part(arch: dict, sizes: List[int], threads: int) -> dict:
    net, _, network = build(arch)
    with torch.inference_mode():
        started = time.perf_counter()
        model = measure_memory_model(network, 3, torch.device('cpu'), size_multiple=SIZE_MULTIPLE)
        seconds = time.perf_counter() - started
    result = {'fixed_bytes': model.fixed_bytes, 'bytes_per_pixel': model.bytes_per_pixel,
              'measure_seconds': seconds, 'checks': []}
    print(f'memory model: {model} (measured in {seconds:.1f} s)', flush=True)
    for size in sizes:
        check = in_fresh_process(whole_forward_job, arch, size, threads)
        check['predicted_bytes'] = model.forward_bytes(1, size, size) / MEMORY_MARGIN
        check['rss_over_prediction'] = check['rss_extra_bytes'] / check['predicted_bytes']
        check['allocator_over_prediction'] = check['allocator_peak_bytes'] / check['predicted_bytes']
        result['checks'].append(check)
        print(json.dumps(check), flush=True)
    return result


def batch_part(arch: dict, tile: int, tiles: int, rounds: int, batches: List[int]) -> dict:
    """Tiles/s of restoring a strip of ``tiles`` tiles (no overlap) per tile batch, alternating."""
    _, _, network = build(arch)
    image = smooth_image(tile, tile * tiles)
    seconds = {batch: [] for batch in batches}
    with torch.inference_mode():
        restore(network, image[..., :tile * 2], TileOptions(tile, 0, 2), SIZE_MULTIPLE)  # warm-up
        for round_index in range(rounds):
            for batch in batches:
                started = time.perf_counter()
                restore(network, image, TileOptions(tile, 0, batch), SIZE_MULTIPLE)
                seconds[batch].append(time.perf_counter() - started)
                print(f'round {round_index + 1}, batch {batch}: {tiles / seconds[batch][-1]:.3f} tiles/s', flush=True)
    rates = {batch: tiles / statistics.median(values) for batch, values in seconds.items()}
    return {'tile': tile, 'tiles': tiles, 'rounds': rounds, 'seconds': seconds, 'tiles_per_second': rates,
            'ratio_to_batch_1': {batch: rate / rates[batches[0]] for batch, rate in rates.items()}}


def plans_part(arch: dict, photos: List[str], max_memory: Optional[int]) -> List[dict]:
    """The tile: auto plan of every photo (no restoration): tile size, tiles, predicted memory, budget."""
    net, _, network = build(arch)
    with torch.inference_mode():
        model = cached_memory_model(network_memory_key(net, torch.device('cpu')), network, torch.zeros(1, 3, 8, 8),
                                    SIZE_MULTIPLE)
    plans = []
    for photo in photos:
        width, height = (int(side) for side in photo.split('x'))
        plan = plan_tiles(AutoTile(max_memory=max_memory), (1, 3, height, width), SIZE_MULTIPLE, torch.device('cpu'),
                          lambda: model)
        whole = model.forward_bytes(1, -(-height // 8) * 8, -(-width // 8) * 8)
        plans.append({'photo': photo, 'plan': str(plan), 'tile': plan.size, 'tiles': plan.tiles,
                      'predicted_bytes': plan.predicted_bytes, 'budget_bytes': plan.budget_bytes,
                      'whole_image_network_bytes': whole, 'pixels_restored': plan.pixels})
        print(json.dumps(plans[-1]), flush=True)
    return plans


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch-json', default='{}', help='VLUNet arguments as JSON (default: official size)')
    parser.add_argument('--parts', nargs='+', default=['model', 'plans', 'batch', 'photos'],
                        choices=['model', 'plans', 'batch', 'photos'], help='what to measure (default: all)')
    parser.add_argument('--check-sizes', type=int, nargs='+', default=[256, 512], help='memory-model check sizes')
    parser.add_argument('--batch-tile', type=int, default=128, help='tile size of the batch part')
    parser.add_argument('--batch-tiles', type=int, default=8, help='tiles per timing of the batch part')
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 2, 4], help='tile batch sizes')
    parser.add_argument('--rounds', type=int, default=3, help='alternating rounds of the batch part')
    parser.add_argument('--photos', nargs='+', default=['1280x1024', '2560x1600'], help='WxH images to restore')
    parser.add_argument('--max-memory', type=parse_memory_size, help='budget of tile: auto (default: available RAM)')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (torch.set_num_threads)')
    parser.add_argument('--json', help='write the results here (and each forward of the photos to <json>.progress)')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    arch = json.loads(args.arch_json)
    results = {'arch': arch, 'threads': args.threads, 'torch': torch.__version__}

    def save() -> None:
        write_json(results, args.json)

    if 'model' in args.parts:
        results['model'] = model_part(arch, args.check_sizes, args.threads)
        save()
    if 'plans' in args.parts:
        results['plans'] = plans_part(arch, args.photos, args.max_memory)
        save()
    if 'batch' in args.parts:
        results['batch'] = batch_part(arch, args.batch_tile, args.batch_tiles, args.rounds, args.batches)
        print(json.dumps(results['batch']['ratio_to_batch_1']), flush=True)
        save()
    if 'photos' in args.parts:
        results['photos'] = []
        for photo in args.photos:
            width, height = (int(side) for side in photo.split('x'))
            results['photos'].append(in_fresh_process(photo_job, arch, width, height, args.threads, args.max_memory,
                                                      args.json and args.json + '.progress'))
            entry = results['photos'][-1]
            print(f'{photo}: {entry["plan"]}: {entry["seconds"]:.1f} s, peak {format_bytes(entry["rss_extra_bytes"])} '
                  'above the state before', flush=True)
            save()
    return 0


if __name__ == '__main__':
    sys.exit(main())
