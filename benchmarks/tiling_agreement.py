"""How far VLU-Net's tiled output is from its whole-image output, per tile size, overlap and blending.

Usage:
    python benchmarks/tiling_agreement.py --json tiling.json                 # docs/inference.md's table (CPU: minutes)
    python benchmarks/tiling_agreement.py --arch-json '{"dim": 16, ...}' --sizes 32 --overlaps 8 --height 64 --width 96

VLU-Net's channel attention is global (every output pixel depends on the whole input) and its
degradation keys are resized to the input size, so a tiled restore never equals the whole-image one.
This script restores one natural image (scikit-image's astronaut, resized to ``--height`` x
``--width``) whole and in tiles with the same seeded network (official size by default, random
weights or ``--weights``) and the same degradation vector d (as :class:`vlunet.inference.Restorer`
shares d over the tiles), and prints PSNR(tiled, whole) on the [0, 1]-clamped outputs for every
tile size x overlap x blending of :mod:`vlunet.tiling.tiles`. Each distinct tile is computed once
(shared by the blendings and by overlaps that place a tile at the same position). For scale,
PSNR(whole output, input) says how much the network changes the image.
"""
import argparse
import json
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from benchmark_common import write_json

import vlunet  # noqa: F401  (compat shim before basicsr; registers the archs)
from vlunet.inference import load_network_weights
from vlunet.tiling.tiles import BLENDS, restore_tiled, run_padded
from vlunet.utils.safe_load import BadFileError

from basicsr.archs import build_network

SEED = 0
SIZE_MULTIPLE = 8


def natural_image(height: int, width: int) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1]: scikit-image's astronaut photograph, resized (antialiased bicubic)."""
    from skimage import data
    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1).unsqueeze(0).float() / 255
    return F.interpolate(image, size=(height, width), mode='bicubic', antialias=True,
                         align_corners=False).clamp(0, 1)


def psnr(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """PSNR in dB of two [0, 1] images (inf when equal)."""
    mse = (actual - expected).square().mean().item()
    return float('inf') if mse == 0 else 10 * torch.log10(torch.tensor(1 / mse)).item()


def memoized(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` computed once per distinct input tile (keyed by its bytes)."""
    cache: Dict[bytes, torch.Tensor] = {}

    def cached(tile: torch.Tensor) -> torch.Tensor:
        key = tile.contiguous().numpy().tobytes()
        if key not in cache:
            cache[key] = fn(tile)
        return cache[key]
    return cached


def build_net(arch: dict, weights: Optional[str]) -> torch.nn.Module:
    torch.manual_seed(SEED)
    net = build_network({'type': 'VLUNet', **arch})
    if weights:
        load_network_weights(net, weights, 'network weights (--weights)')
    return net.eval()


def measure(arch: dict, weights: Optional[str], height: int, width: int, sizes: List[int],
            overlaps: List[int]) -> dict:
    net = build_net(arch, weights)
    degradation = torch.randn(1, net.config['degradation_dim'], generator=torch.Generator().manual_seed(SEED))
    image = natural_image(height, width)

    def network(tile: torch.Tensor) -> torch.Tensor:
        return net(tile, degradation)

    with torch.inference_mode():
        started = time.perf_counter()
        whole = run_padded(network, image, SIZE_MULTIPLE).clamp(0, 1)
        results = {'height': height, 'width': width, 'arch': arch, 'threads': torch.get_num_threads(),
                   'whole_seconds': time.perf_counter() - started, 'psnr_whole_vs_input': psnr(whole, image),
                   'rows': []}
        print(f'whole {width}x{height}: {results["whole_seconds"]:.1f} s, PSNR(output, input) '
              f'{results["psnr_whole_vs_input"]:.2f} dB', flush=True)
        for size in sizes:
            tiles = memoized(network)  # tile positions repeat across overlaps (e.g. the first and last ones)
            for overlap in overlaps:
                if overlap >= size:
                    continue
                row = {'tile': size, 'overlap': overlap}
                started = time.perf_counter()
                for blend in BLENDS:
                    tiled = restore_tiled(tiles, image, size, overlap, SIZE_MULTIPLE, blend=blend).clamp(0, 1)
                    row[blend] = psnr(tiled, whole)
                    row[f'{blend}_max_abs'] = (tiled - whole).abs().max().item()
                row['seconds'] = time.perf_counter() - started
                results['rows'].append(row)
                print(json.dumps(row), flush=True)
    return results


def markdown(results: dict) -> str:
    lines = [f'PSNR (dB) of tiled vs whole-image output, {results["width"]}x{results["height"]} image '
             f'(whole output vs input: {results["psnr_whole_vs_input"]:.2f} dB):', '',
             '| tile | overlap | ' + ' | '.join(f'{blend} blend' for blend in BLENDS) + ' |',
             '|---|---|' + '---|' * len(BLENDS)]
    for row in results['rows']:
        lines.append(f'| {row["tile"]} | {row["overlap"]} | ' + ' | '.join(f'{row[b]:.2f}' for b in BLENDS) + ' |')
    return '\n'.join(lines)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch-json', default='{}', help='VLUNet arguments as JSON (default: official size)')
    parser.add_argument('--weights', help='converted network weights ({"params": state_dict}); default: random')
    parser.add_argument('--height', type=int, default=512, help='image height in pixels')
    parser.add_argument('--width', type=int, default=768, help='image width in pixels')
    parser.add_argument('--sizes', type=int, nargs='+', default=[128, 256, 512], help='tile sizes')
    parser.add_argument('--overlaps', type=int, nargs='+', default=[16, 32, 64], help='tile overlaps')
    parser.add_argument('--threads', type=int, default=1, help='CPU threads (torch.set_num_threads)')
    parser.add_argument('--json', help='also write the results to this JSON file')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        results = measure(json.loads(args.arch_json), args.weights, args.height, args.width, args.sizes, args.overlaps)
    except BadFileError as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    print(markdown(results))
    write_json(results, args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
