"""Parameters, MACs and latency of a restoration network, from an option file or an arch config.

Usage:
    python scripts/model_stats.py                                   # official VLU-Net (de_dim 7)
    python scripts/model_stats.py -opt options/train_vlunet_5task.yml --sizes 128 256
    python scripts/model_stats.py --arch-json '{"type": "VLUNet", "de_dim": 5}' --runs 5

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (no compute):
what this implementation computes (MACs = FLOPs / 2), split into ``conv`` (k x k convolutions) and
``matmul`` (matrix products: the 1x1 convolutions, which run as products, and the attention). VLU-Net's
official computation is 186.25 GMACs at 256x256; this implementation computes 177.35 (the attention's
output projection is merged into the small attention matrix, docs/performance.md). Latency is the
median of ``--runs`` forward passes of a
1x3xSxS random image (batch 1, inference mode) on ``--device``, after one warm-up pass, using
``torch.get_num_threads()`` CPU threads (set ``OMP_NUM_THREADS`` to change them). Guided networks get
random (1, D) embeddings for the guidance they take (NAFNetDACLIP: ``degradation`` and ``content``; VLU-Net:
``degradation``; see :mod:`vlunet.guidance.degradation_encoder`); the encoder computing them is not counted.
"""
import argparse
import json
import statistics
import sys
import time
from typing import List, Optional

import torch
from torch import nn

import vlunet  # noqa: F401  (compat shim before basicsr; registers VLUNet)
from vlunet.network_stats import count_macs, count_parameters, example_inputs, network_options
from vlunet.options import OptionError

from basicsr.archs import build_network


def median_latency(net: nn.Module, size: int, runs: int, device: torch.device) -> float:
    """Median seconds of ``runs`` forward passes after one warm-up pass."""
    inputs, guidance = example_inputs(net, size, device)
    times = []
    with torch.inference_mode():
        for _ in range(runs + 1):
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            net(*inputs, **guidance)
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def report(net_opt: dict, sizes: List[int], runs: int, device: torch.device) -> List[str]:
    """Lines of the stats table for ``net_opt`` at each size."""
    params = count_parameters(net_opt)
    lines = [f'network: {json.dumps(net_opt)}', f'parameters: {params:,} ({params / 1e6:.2f} M)',
             f'{"size":>9} {"GMACs":>9} {"conv":>9} {"matmul":>9} {"other":>7} {"latency":>12}']
    net = build_network(dict(net_opt)).to(device).eval() if runs > 0 else None
    for size in sizes:
        macs = {key: value / 1e9 for key, value in count_macs(net_opt, size).items()}
        latency = (f'{median_latency(net, size, runs, device) * 1e3:9.1f} ms' if net is not None else '           -')
        lines.append(f'{size:>4}x{size:<4} {macs["total"]:9.2f} {macs["conv"]:9.2f} {macs["matmul"]:9.2f} '
                     f'{macs["other"]:7.3f} {latency}')
    if net is not None:
        threads = f', {torch.get_num_threads()} threads' if device.type == 'cpu' else ''
        lines.append(f'latency: median of {runs} runs on {device}{threads}, batch 1')
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument('-opt', help='option file; its network_g section is measured')
    source.add_argument('--arch-json', help='arch config as JSON, e.g. \'{"type": "VLUNet", "de_dim": 5}\' '
                                            '(type defaults to VLUNet); default: the official VLUNet')
    parser.add_argument('--sizes', type=int, nargs='+', default=[128, 256], help='square input sizes')
    parser.add_argument('--runs', type=int, default=3, help='timed forward passes per size (0: skip latency)')
    parser.add_argument('--device', default='cpu', help='device for the latency runs, e.g. cpu or cuda')
    args = parser.parse_args(argv)
    try:
        net_opt = network_options(args.opt, args.arch_json)
        lines = report(net_opt, args.sizes, args.runs, torch.device(args.device))
    except (OptionError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
