"""bf16 autocast against fp32 inference on photos: speed and agreement (VLU-Net, the IR-SDE U-Net, Perceive-IR).

Usage:
    python benchmarks/bf16_inference.py                          # official sizes, 256² and 512², 1 thread
    python benchmarks/bf16_inference.py --sizes 256 --networks irsde --json bf16.json

For each network and size, every photo (scikit-image's ``astronaut``, ``coffee`` and ``chelsea``,
centre-cropped to a square and area-resized) is restored in fp32 and under ``torch.autocast(dtype=bfloat16)``,
the two alternating after one warm-up of each; reported: the median per-thread CPU time of each
(``time.thread_time``, which a shared machine barely changes), the speed-up, and the PSNR of the bf16
output against the fp32 output per photo (peak 1 for the restored images; the U-Net predicts noise, so its
peak is the fp32 output's range), on the unclipped outputs. Weights are seeded random initialisations, or
``--weights NETWORK=FILE`` (a BasicSR ``{'params': ...}`` file). On a CPU without AVX512-BF16 or AMX bf16 is
emulated: the script says so and still measures.
"""
import argparse
import json
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from benchmark_common import machine_info, write_json
from skimage import data, transform

import vlunet  # noqa: F401  (compat shim before basicsr; registers the archs)
from vlunet.inference import build_restoration_network
from vlunet.utils.cpu_memory import keep_freed_memory_in_entry_point
from vlunet.utils.precision import native_bf16

from basicsr.archs import build_network

PHOTOS = ('astronaut', 'coffee', 'chelsea')
# network_g of each network: the official sizes, and tiny ones for --tiny (the tests)
NETWORKS = {
    'vlunet': ({'type': 'VLUNet'},
               {'type': 'VLUNet', 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
                'heads': [1, 1, 1, 1], 'key_size': 8, 'de_dim': 8}),
    'irsde': ({'type': 'ConditionalUNet'},
              {'type': 'ConditionalUNet', 'nf': 8, 'ch_mult': [1, 2, 4, 8], 'context_dim': 16}),
    'perceiveir': ({'type': 'PerceiveIR'},
                   {'type': 'PerceiveIR', 'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
                    'heads': [1, 2, 2, 4], 'degradation_dim': 16, 'semantic_layers': [1, 2, 3, 4],
                    'semantic_image_size': 32,
                    'semantic_kwargs': {'embed_dim': 32, 'depth': 4, 'num_heads': 2, 'patch_size': 8}}),
}
LABELS = {'vlunet': 'VLU-Net', 'irsde': 'IR-SDE U-Net (one step)', 'perceiveir': 'Perceive-IR'}
Forward = Callable[[torch.Tensor], torch.Tensor]


def photo(name: str, size: int) -> torch.Tensor:
    """scikit-image's photo ``name``, centre-cropped to a square and area-resized: (1, 3, size, size) in [0, 1]."""
    image = getattr(data, name)().astype(np.float32) / 255
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = transform.resize(image[top:top + side, left:left + side], (size, size), anti_aliasing=True)
    return torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1).unsqueeze(0).contiguous()


def build_forward(name: str, tiny: bool, weights: Optional[str]) -> Forward:
    """The network ``name`` (seeded random, or ``weights``) as a function of a (1, 3, H, W) image; VLU-Net gets a
    seeded degradation vector, the U-Net a state of step 37 on the image and seeded DA-CLIP contexts."""
    torch.manual_seed(0)
    options = dict(NETWORKS[name][1 if tiny else 0])
    net = (build_restoration_network(weights, options) if weights else build_network(options)).eval()
    generator = torch.Generator().manual_seed(1)
    if name == 'vlunet':
        degradation = torch.randn(1, net.config['degradation_dim'], generator=generator)
        return lambda image: net(image, degradation)
    if name == 'irsde':
        contexts = [torch.randn(1, net.context_dim, generator=generator) for _ in range(2)]

        def noise_step(image: torch.Tensor) -> torch.Tensor:
            noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(2))
            return net(image + 0.1 * noise, image, 37.0, *contexts)
        return noise_step
    return net


def psnr(output: torch.Tensor, reference: torch.Tensor, peak: float) -> float:
    mse = torch.mean((output.float() - reference) ** 2).item()
    return float('inf') if mse == 0 else 10 * np.log10(peak ** 2 / mse)


def measure(name: str, forward: Forward, size: int, photos: List[str]) -> dict:
    """fp32 and bf16 CPU seconds (medians over the photos) and the per-photo PSNR of bf16 against fp32."""
    seconds: Dict[str, List[float]] = {'fp32': [], 'bf16': []}
    agreement = {}
    for index, photo_name in enumerate(photos):
        image = photo(photo_name, size)
        outputs = {}
        for precision in ('fp32', 'bf16'):
            with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'bf16'):
                if index == 0:
                    forward(image)  # warm-up
                start = time.thread_time()
                outputs[precision] = forward(image).float()
                seconds[precision].append(time.thread_time() - start)
        reference = outputs['fp32']
        peak = (reference.max() - reference.min()).item() if name == 'irsde' else 1.0
        agreement[photo_name] = round(psnr(outputs['bf16'], reference, peak), 2)
    fp32, bf16 = statistics.median(seconds['fp32']), statistics.median(seconds['bf16'])
    return {'network': name, 'size': size, 'fp32_s': fp32, 'bf16_s': bf16, 'speedup': fp32 / bf16,
            'psnr_db': agreement}


def markdown(results: dict) -> str:
    machine = results['machine']
    lines = [f'{machine["cpu"]}, {machine["threads"]} thread(s), torch {machine["torch"]}, native bf16: '
             f'{results["native_bf16"]}; weights: {results["weights"]}', '',
             '| network | size | fp32 | bf16 | speed-up | PSNR bf16 vs fp32 (' + ', '.join(results['photos']) + ') |',
             '|---|---|---|---|---|---|']
    for row in results['rows']:
        agreement = ', '.join(f'{value:.1f}' for value in row['psnr_db'].values())
        lines.append(f'| {LABELS[row["network"]]} | {row["size"]}² | {row["fp32_s"]:.2f} s | {row["bf16_s"]:.2f} s | '
                     f'{row["speedup"]:.2f}x | {agreement} dB |')
    return '\n'.join(lines)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--networks', nargs='+', choices=sorted(NETWORKS), default=list(NETWORKS))
    parser.add_argument('--sizes', type=int, nargs='+', default=[256, 512], help='square photo sizes')
    parser.add_argument('--photos', nargs='+', choices=PHOTOS, default=list(PHOTOS))
    parser.add_argument('--threads', type=int, default=1, help='CPU threads (torch.set_num_threads)')
    parser.add_argument('--weights', nargs='+', default=[], metavar='NETWORK=FILE',
                        help='trained weights of a network, e.g. vlunet=experiments/x/models/net_g_latest.pth')
    parser.add_argument('--tiny', action='store_true', help='tiny networks (a quick check of the script)')
    parser.add_argument('--json', help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    try:
        args.weights = dict(item.split('=', 1) for item in args.weights)
    except ValueError:
        parser.error(f'--weights: expected NETWORK=FILE, got {args.weights}')
    unknown = set(args.weights) - set(NETWORKS)
    if unknown:
        parser.error(f'--weights: unknown network(s) {sorted(unknown)}; choose from {sorted(NETWORKS)}')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {'machine': machine_info(torch.device('cpu')), 'native_bf16': native_bf16(torch.device('cpu')),
               'photos': args.photos, 'rows': [],
               'weights': ', '.join(f'{k}={v}' for k, v in args.weights.items()) or 'seeded random'}
    if not results['native_bf16']:
        print('note: this CPU has no AVX512-BF16 or AMX: bf16 runs emulated (slower than fp32).', file=sys.stderr)
    try:
        forwards = {name: build_forward(name, args.tiny, args.weights.get(name)) for name in args.networks}
    except (OSError, ValueError, RuntimeError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    for size in args.sizes:
        for name, forward in forwards.items():
            results['rows'].append(measure(name, forward, size, args.photos))
            print(json.dumps(results['rows'][-1]), file=sys.stderr, flush=True)
    print(markdown(results))
    write_json(results, args.json)
    return 0


if __name__ == '__main__':
    keep_freed_memory_in_entry_point()
    sys.exit(main())
