"""Speed, memory and exactness of VLU-Net, optionally side by side with the official code.

Usage:
    python benchmarks/benchmark.py --official-file ../VLU-Net/net/Final.py --json benchmark.json  # vs the authors' code
    python benchmarks/benchmark.py --compare-official                             # vs our re-implementation of it
    python benchmarks/benchmark.py --precision bf16 --sizes 256                   # autocast trade-off
    python benchmarks/benchmark.py --tiled-4k                                     # 3840x2160, tiles 256/32
    python benchmarks/benchmark.py -opt options/train_vlunet_5task.yml --device cuda

Measures, for the network of an option file / ``--arch-json`` (default: official VLUNet, random
weights or ``--weights`` = a converted checkpoint):

- forward latency (batch 1, inference mode) at each ``--sizes``: median and min-max of
  ``--repeats`` runs after ``--warmup`` runs; with a baseline it is timed in the same loop,
  alternating with ours, under the same grad mode (``torch.inference_mode``), and the max relative
  error between the two is reported. The baseline is the authors' code itself with
  ``--official-file PATH`` (a clone's ``net/Final.py``, imported from that path; its ``VLUNet`` gets
  our seeded random weights through ``plugin_to_official_state_dict``), or, with only
  ``--compare-official``, our re-implementation of the official forward
  (``benchmarks/reimplementations/vlunet_release.py``), labelled as such: it is not the authors' code;
- a training step (``--train-batch`` x ``--train-size``^2: forward, L1 loss, backward, AdamW);
- peak memory of each measurement (CPU: peak RSS above the RSS before the measurement, each in a
  fresh subprocess; CUDA: ``torch.cuda.max_memory_allocated``);
- MACs (``scripts/model_stats.py``'s counter) and the compute floor: 2 x MACs at the fp32 matmul
  rate measured on this machine;
- the CLIP guidance cost: ``DegradationCLIP.encode_degradation`` on the training batch (random
  ``--clip-backbone`` weights), alone and as a share of our training step;
- with ``--precision bf16|fp16``: our network under autocast, its error against our fp32 output
  (max abs / rel, PSNR on the smooth benchmark image); with ``--compile``: ``torch.compile`` of ours
  (the first, compiling run is reported separately);
- with ``--tiled-4k``: restoring a ``--tiled-size`` image in ``--tile``/``--overlap`` tiles.

Run as a script, the process keeps freed memory for reuse (``vlunet/utils/cpu_memory.py``, as vlunet's entry
points do), for both sides of a comparison; ``VLUNET_KEEP_FREED_MEMORY=0`` measures both with glibc's default
allocator instead. The machine line says which.
"""
import argparse
import importlib.util
import json
import math
import multiprocessing
import os.path as osp
import resource
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from benchmark_common import (
    Job,
    machine_info,
    matmul_gflops,
    relative_error,
    smooth_images,
    synchronize,
    time_alternating,
    write_json,
)
from reimplementations.vlunet_release import OfficialVLUNet
from torch import nn

import vlunet  # noqa: F401  (compat shim before basicsr; registers the archs)
from vlunet.convert.vlunet_checkpoint import plugin_to_official_state_dict
from vlunet.inference import load_network_weights
from vlunet.network_stats import count_macs, network_options
from vlunet.options import OptionError
from vlunet.tiling.tiles import TileOptions, restore
from vlunet.utils.cpu_memory import keep_freed_memory_in_entry_point
from vlunet.utils.peak_memory import reset_peak_rss, rss_bytes
from vlunet.utils.precision import DTYPES, AmpOptions, autocast, compile_network, make_grad_scaler

from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY

BENCHMARKS_DIR = osp.dirname(osp.abspath(__file__))

SEED = 0
REIMPLEMENTATION_LABEL = 're-implementation of the official forward (benchmarks/reimplementations/vlunet_release.py)'
# Our constructor argument -> the official ``VLUNet`` argument (net/Final.py); the rest must be the official values.
OFFICIAL_ARGUMENTS = {'de_dim': 'de_dim', 'in_channels': 'inp_channels', 'out_channels': 'out_channels', 'dim': 'dim',
                      'num_blocks': 'num_blocks', 'num_refinement_blocks': 'num_refinement_blocks',
                      'heads': 'heads', 'ffn_expansion_factor': 'ffn_expansion_factor'}
OFFICIAL_FIXED = {'degradation_dim': 512, 'key_size': 96, 'gradient_step_heads': 2}


# ---------------------------------------------------------------- setup


def degradation_vectors(net: nn.Module, batch: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(SEED)
    dim = getattr(net, 'config', {}).get('degradation_dim', 512)
    return torch.randn(batch, dim, generator=generator).to(device)


def build_ours(net_opt: dict, weights: Optional[str], device: torch.device) -> nn.Module:
    """Our network (eval mode) with seeded random weights, or the converted ``weights`` file."""
    torch.manual_seed(SEED)
    net = build_network(dict(net_opt))
    if weights:
        if not osp.isfile(weights):
            raise OptionError(f'--weights {weights!r} does not exist; convert an official checkpoint with '
                              'scripts/convert_official_checkpoint.py.')
        load_network_weights(net, weights, 'network weights (--weights)')
    return net.to(device).eval()


def official_state(net: nn.Module) -> Dict[str, torch.Tensor]:
    """Our weights under the official key names (input of the official computation)."""
    return {key: value.detach() for key, value in plugin_to_official_state_dict(net.state_dict()).items()}


def forward_job(net: nn.Module, image: torch.Tensor, degradation: torch.Tensor, amp: AmpOptions,
                device: torch.device) -> Job:
    def run() -> torch.Tensor:
        with torch.inference_mode(), autocast(amp, device):
            return net(image, degradation).float()
    return run


def load_official_module(path: str) -> object:
    """Import the official ``net/Final.py`` from ``path``.

    Its folder and the clone root are appended to sys.path (for ``from net import x`` style imports),
    after the installed packages, so the clone's vendored ``open_clip`` never shadows the installed one.
    """
    if not osp.isfile(path):
        raise OptionError(f'--official-file {path!r} does not exist; give the net/Final.py of a clone of the '
                          'official repository (https://github.com/xianggkl/VLU-Net).')
    folder = osp.dirname(osp.abspath(path))
    for entry in (osp.dirname(folder), folder):
        if entry not in sys.path:
            sys.path.append(entry)
    spec = importlib.util.spec_from_file_location('vlunet_benchmark_official_final', path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as error:
        raise OptionError(f'--official-file {path}: importing it failed ({error}); install what it needs '
                          '(e.g. pip install einops) in this environment.') from error
    if not isinstance(getattr(module, 'VLUNet', None), type):
        raise OptionError(f'--official-file {path}: no class VLUNet in it; give the official net/Final.py.')
    return module


def official_arguments(net_opt: dict) -> dict:
    """Keyword arguments of the official ``VLUNet`` for our ``net_opt``; error if it has no official equivalent."""
    options = {key: value for key, value in net_opt.items() if key != 'type'}
    fixed = {key: options.pop(key) for key in list(options) if key in OFFICIAL_FIXED}
    different = {key: value for key, value in fixed.items() if value != OFFICIAL_FIXED[key]}
    unknown = sorted(set(options) - set(OFFICIAL_ARGUMENTS))
    if net_opt.get('type', 'VLUNet') != 'VLUNet' or different or unknown:
        what = different or unknown or net_opt['type']
        raise OptionError(f'--official-file: the official VLUNet cannot express {what} (its degradation_dim, '
                          f'key_size and gradient-step heads are fixed at {OFFICIAL_FIXED}); measure a '
                          'configuration it can build.')
    arguments = {OFFICIAL_ARGUMENTS[key]: list(value) if isinstance(value, (list, tuple)) else value
                 for key, value in options.items()}
    arguments.setdefault('de_dim', 7)  # our default; the official constructor has none
    return arguments


def build_baseline(net: nn.Module, net_opt: dict, official_file: Optional[str], device: torch.device) -> nn.Module:
    """The baseline network (eval mode) holding ``net``'s weights under the official key names.

    With ``official_file`` the authors' ``VLUNet`` from that file (strict ``load_state_dict``), else
    :class:`OfficialVLUNet`, the re-implementation of the official forward in
    ``benchmarks/reimplementations/vlunet_release.py``.
    """
    state = official_state(net)
    if official_file is None:
        return OfficialVLUNet(state).to(device).eval()
    official = load_official_module(official_file).VLUNet(**official_arguments(net_opt))
    official.load_state_dict(state)
    return official.to(device).eval()


def train_step_job(net: nn.Module, batch: int, size: int, amp: AmpOptions, device: torch.device) -> Job:
    """One forward + L1 loss + backward + AdamW step of ``net`` (train mode) on a fixed batch."""
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-4)
    scaler = make_grad_scaler(amp, device)
    target = smooth_images(batch, size, size, device)
    image = (target + 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(SEED)).to(device))
    degradation = degradation_vectors(net, batch, device)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(amp, device):
            loss = F.l1_loss(net(image, degradation).float(), target)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    return run


# ---------------------------------------------------------------- measuring


def _build_memory_job(task: dict) -> Job:
    device = torch.device(task['device'])
    amp = AmpOptions(task['precision'] != 'fp32', DTYPES.get(task['precision'], torch.float32))
    net = build_ours(task['net_opt'], task['weights'], device)
    kind, size = task['kind'], task['size']
    if kind == 'ours_train':
        return train_step_job(net, task['train_batch'], size, amp, device)
    if kind == 'official_train':
        return train_step_job(build_baseline(net, task['net_opt'], task['official_file'], device), task['train_batch'],
                              size, AmpOptions(), device)
    image = smooth_images(1, *size, device) if kind == 'ours_tiled' else smooth_images(1, size, size, device)
    degradation = degradation_vectors(net, 1, device)
    if kind == 'official_forward':
        return forward_job(build_baseline(net, task['net_opt'], task['official_file'], device), image, degradation,
                           AmpOptions(), device)
    if kind == 'ours_tiled':
        tile = TileOptions(task['tile'], task['overlap'])
        return lambda: tiled_restore(net, image, degradation, tile, amp, device)
    return forward_job(net, image, degradation, amp, device)


def tiled_restore(net: nn.Module, image: torch.Tensor, degradation: torch.Tensor, tile: TileOptions,
                  amp: AmpOptions, device: torch.device) -> torch.Tensor:
    """The whole image restored tile by tile (inference mode), as the model's tiled test does."""
    with torch.inference_mode(), autocast(amp, device):
        return restore(lambda tile_image: net(tile_image, degradation).float(), image, tile, size_multiple=8,
                       progress=True)


def memory_probe(task: dict) -> dict:
    """Run one measurement in this (fresh) process; peak memory above the state before it, in bytes."""
    torch.set_num_threads(task['threads'])
    return peak_memory(_build_memory_job(task), torch.device(task['device']))


def peak_memory(job: Job, device: torch.device) -> dict:
    """Run ``job`` once: {'extra_bytes': peak memory above the memory before it, 'peak_bytes', 'seconds'}."""
    if device.type == 'cuda':
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        job()
        synchronize(device)
        return {'extra_bytes': torch.cuda.max_memory_allocated(device) - before,
                'seconds': time.perf_counter() - start}
    resettable = reset_peak_rss()
    before = rss_bytes('VmRSS')
    start = time.perf_counter()
    job()
    seconds = time.perf_counter() - start
    peak = rss_bytes('VmHWM') if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if before is None:
        return {'extra_bytes': None, 'peak_bytes': peak, 'seconds': seconds}
    # The kernel's RSS counters are cached per thread and may lag by a few pages: never report < 0.
    return {'extra_bytes': max(peak - before, 0), 'peak_bytes': max(peak, before), 'seconds': seconds}


def measure_memory(task: dict) -> dict:
    """``memory_probe`` in a fresh subprocess (so earlier allocations do not hide the peak)."""
    with multiprocessing.get_context('spawn').Pool(1) as pool:
        return pool.apply(memory_probe, (task,))


def precision_error(low: torch.Tensor, reference: torch.Tensor) -> dict:
    """Max abs / rel error of a low-precision output and its PSNR (dB) against the fp32 output."""
    mse = F.mse_loss(low.clamp(0, 1), reference.clamp(0, 1)).item()
    return {'max_abs': (low - reference).abs().max().item(), 'max_rel': relative_error(low, reference),
            'psnr_db': 10 * math.log10(1 / mse) if mse > 0 else math.inf}


def clip_cost(backbone: str, batch: int, size: int, repeats: int, device: torch.device) -> Optional[dict]:
    """Seconds of ``DegradationCLIP.encode_degradation`` on a batch (random weights); None if unavailable."""
    if backbone == 'none' or 'DegradationCLIP' not in ARCH_REGISTRY:
        return None
    encoder = ARCH_REGISTRY.get('DegradationCLIP')(backbone=backbone, pretrained=None).to(device).eval()
    images = smooth_images(batch, size, size, device)

    def run() -> None:
        with torch.inference_mode():
            encoder.encode_degradation(images)
    return time_alternating({'clip': run}, repeats, 1, device)['clip']


# ---------------------------------------------------------------- the benchmark


def baseline_info(args: argparse.Namespace) -> Optional[dict]:
    """What the "official" column is: the authors' file or our re-implementation (None: no baseline)."""
    if not args.compare_official:
        return None
    if args.official_file:
        return {'kind': 'official-file', 'path': osp.abspath(args.official_file),
                'label': f'the official code ({args.official_file}, class VLUNet)'}
    return {'kind': 're-implementation', 'path': osp.join(BENCHMARKS_DIR, 'reimplementations', 'vlunet_release.py'),
            'label': REIMPLEMENTATION_LABEL}


def run_benchmark(args: argparse.Namespace, net_opt: dict) -> dict:
    device = torch.device(args.device)
    amp = AmpOptions(args.precision != 'fp32', DTYPES.get(args.precision, torch.float32))
    net = build_ours(net_opt, args.weights, device)
    timed_net = compile_network(net, args.compile)
    baseline = build_baseline(net, net_opt, args.official_file, device) if args.compare_official else None
    task = dict(net_opt=net_opt, weights=args.weights, device=args.device, threads=args.threads,
                precision=args.precision, train_batch=args.train_batch, official_file=args.official_file)
    results: dict = {'machine': machine_info(device), 'network': net_opt, 'precision': args.precision,
                     'compile': args.compile, 'matmul_gflops': matmul_gflops(device), 'forward': [], 'train': None,
                     'baseline': baseline_info(args)}
    for size in args.sizes:
        image = smooth_images(1, size, size, device)
        degradation = degradation_vectors(net, 1, device)
        ours = forward_job(timed_net, image, degradation, amp, device)
        jobs = {'ours': ours}
        if baseline is not None:
            jobs['official'] = forward_job(baseline, image, degradation, AmpOptions(), device)
        row = {'size': size, 'macs': count_macs(net_opt, size)['total'],
               **time_alternating(jobs, args.repeats, args.warmup, device)}
        fp32_output = forward_job(net, image, degradation, AmpOptions(), device)()
        if baseline is not None:
            row['max_rel_error_vs_official'] = relative_error(fp32_output, jobs['official']())
        if amp.enabled:
            row['precision_error'] = precision_error(ours(), fp32_output)
        if args.memory:
            row['memory'] = {name: measure_memory({**task, 'kind': f'{name}_forward', 'size': size}) for name in jobs}
        results['forward'].append(row)
        print(f'forward {size}x{size} done', file=sys.stderr, flush=True)
    if args.train_size:
        jobs = {'ours': train_step_job(build_ours(net_opt, args.weights, device), args.train_batch, args.train_size,
                                       amp, device)}
        if baseline is not None:
            jobs['official'] = train_step_job(build_baseline(net, net_opt, args.official_file, device),
                                              args.train_batch, args.train_size, AmpOptions(), device)
        results['train'] = {'batch': args.train_batch, 'size': args.train_size,
                            **time_alternating(jobs, args.repeats, args.warmup, device)}
        if args.memory:
            results['train']['memory'] = {name: measure_memory({**task, 'kind': f'{name}_train',
                                                                'size': args.train_size}) for name in jobs}
        clip = clip_cost(args.clip_backbone, args.train_batch, args.train_size, args.repeats, device)
        if clip is not None:
            clip['share_of_train_step'] = clip['median_s'] / results['train']['ours']['median_s']
            clip['backbone'] = args.clip_backbone
        results['clip'] = clip
        print('training step done', file=sys.stderr, flush=True)
    if args.tiled_4k:
        width, height = args.tiled_size
        results['tiled'] = {'width': width, 'height': height, 'tile': args.tile, 'overlap': args.overlap,
                            **measure_memory({**task, 'kind': 'ours_tiled', 'size': (height, width),
                                              'tile': args.tile, 'overlap': args.overlap})}
    return results


# ---------------------------------------------------------------- report


def _ms(seconds: float) -> str:
    return f'{seconds * 1e3:,.0f} ms' if seconds < 10 else f'{seconds:,.1f} s'


def _timing(entry: Optional[dict]) -> str:
    if not entry:
        return '-'
    return f'{_ms(entry["median_s"])} ({_ms(entry["min_s"])}-{_ms(entry["max_s"])})'


def _mib(memory: Optional[dict], name: str) -> str:
    value = (memory or {}).get(name, {}).get('extra_bytes')
    return '-' if value is None else f'{value / 2 ** 20:,.0f} MiB'


def _ratio(entry: dict) -> str:
    return f'{entry["official"]["median_s"] / entry["ours"]["median_s"]:.2f}x' if 'official' in entry else '-'


def markdown(results: dict) -> str:
    machine = results['machine']
    mode = results['precision'] + (' + torch.compile' if results['compile'] else '')
    lines = [f'Machine: {machine["cpu"]}, {machine["threads"]} threads, torch {machine["torch"]}, '
             f'device {machine["device"]}{", " + machine["gpu"] if "gpu" in machine else ""}; '
             f'fp32 matmul {results["matmul_gflops"]:.0f} GFLOP/s; malloc: {machine["malloc"]}. Ours: {mode}. '
             'Times: median (min-max).']
    baseline = results.get('baseline')
    column = 'official' if (baseline or {}).get('kind') == 'official-file' else 're-impl. of official'
    if baseline:
        lines.append(f'Baseline ("{column}"): {baseline["label"]}, fp32, same grad mode (inference mode) as ours.')
        if baseline['kind'] == 're-implementation':
            lines.append('It is not the authors\' code: pass --official-file <clone>/net/Final.py to time that.')
    if results['forward']:
        lines += ['', f'| forward (batch 1) | GMACs | ours | {column} | speed-up | ours / compute floor '
                      f'| max rel. error | extra memory ours | extra memory {column} |',
                  '|---|---|---|---|---|---|---|---|---|']
    for row in results['forward']:
        floor = 2 * row['macs'] / (results['matmul_gflops'] * 1e9)
        error = row.get('max_rel_error_vs_official')
        lines.append(f'| {row["size"]}x{row["size"]} | {row["macs"] / 1e9:.1f} | {_timing(row["ours"])} | '
                     f'{_timing(row.get("official"))} | {_ratio(row)} | '
                     f'{row["ours"]["median_s"] / floor:.2f} (floor {_ms(floor)}) | '
                     f'{"-" if error is None else f"{error:.1e}"} | {_mib(row.get("memory"), "ours")} | '
                     f'{_mib(row.get("memory"), "official")} |')
    train = results.get('train')
    if train:
        lines += ['', f'| training step (batch {train["batch"]}, {train["size"]}x{train["size"]}, fwd+bwd+AdamW) '
                      f'| ours | {column} | speed-up | extra memory ours | extra memory {column} |',
                  '|---|---|---|---|---|---|',
                  f'| | {_timing(train["ours"])} | {_timing(train.get("official"))} | {_ratio(train)} | '
                  f'{_mib(train.get("memory"), "ours")} | {_mib(train.get("memory"), "official")} |']
    clip = results.get('clip')
    if clip:
        lines += ['', f'CLIP guidance ({clip["backbone"]}, encode_degradation on the training batch, inference mode): '
                      f'{_timing(clip)} = {clip["share_of_train_step"] * 100:.1f}% of our training step.']
    errors = [row for row in results['forward'] if 'precision_error' in row]
    if errors:
        lines += ['', f'| {results["precision"]} vs fp32 (ours) | max abs | max rel | PSNR vs fp32 output |',
                  '|---|---|---|---|']
        lines += [f'| {row["size"]}x{row["size"]} | {row["precision_error"]["max_abs"]:.2e} | '
                  f'{row["precision_error"]["max_rel"]:.2e} | {row["precision_error"]["psnr_db"]:.1f} dB |'
                  for row in errors]
    if results['compile']:
        lines += ['', 'torch.compile: first (compiling) run ' + ', '.join(
            f'{row["size"]}x{row["size"]} {_ms(row["ours"]["first_s"])}' for row in results['forward'])]
    tiled = results.get('tiled')
    if tiled:
        lines += ['', f'Tiled restore of {tiled["width"]}x{tiled["height"]} (tile {tiled["tile"]}, overlap '
                      f'{tiled["overlap"]}): {_ms(tiled["seconds"])}, extra memory '
                      f'{_mib({"t": tiled}, "t")} (peak process RSS {tiled.get("peak_bytes", 0) / 2 ** 30:.2f} GiB).']
    return '\n'.join(lines)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument('-opt', help='option file; its network_g section is measured')
    source.add_argument('--arch-json', help='arch config as JSON (type defaults to VLUNet); default: official VLUNet')
    parser.add_argument('--weights', help='converted network weights ({"params": state_dict}); default: random')
    parser.add_argument('--sizes', type=int, nargs='*', default=[128, 256, 512],
                        help='square forward sizes (none: skip the forward timings)')
    parser.add_argument('--repeats', type=int, default=5, help='timed runs per measurement')
    parser.add_argument('--warmup', type=int, default=1, help='untimed runs before timing')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (torch.set_num_threads)')
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:1, ...')
    parser.add_argument('--precision', choices=('fp32', 'bf16', 'fp16'), default='fp32',
                        help='ours under autocast in this dtype (the official computation stays fp32)')
    parser.add_argument('--compile', action='store_true', help='torch.compile our network')
    parser.add_argument('--compare-official', action='store_true',
                        help='also time a baseline (alternating, same grad mode) and report the max relative error: '
                             'the --official-file, else our re-implementation of the official forward')
    parser.add_argument('--official-file', metavar='PATH',
                        help="the official net/Final.py of a clone of the authors' repository: the baseline is "
                             'their VLUNet with our weights (implies --compare-official)')
    parser.add_argument('--train-batch', type=int, default=2, help='training-step batch size')
    parser.add_argument('--train-size', type=int, default=128, help='training-step crop size (0: skip)')
    parser.add_argument('--clip-backbone', default='ViT-B-32', help="open_clip model of the CLIP cost ('none': skip)")
    parser.add_argument('--no-memory', dest='memory', action='store_false', help='skip the peak-memory runs')
    parser.add_argument('--tiled-4k', action='store_true', help='time a tiled restore of a --tiled-size image')
    parser.add_argument('--tiled-size', type=int, nargs=2, default=[3840, 2160], metavar=('W', 'H'))
    parser.add_argument('--tile', type=int, default=256, help='tile size of --tiled-4k')
    parser.add_argument('--overlap', type=int, default=32, help='tile overlap of --tiled-4k')
    parser.add_argument('--json', help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    args.compare_official = args.compare_official or args.official_file is not None
    if args.compare_official and any(size % 8 for size in args.sizes):
        parser.error('--compare-official needs --sizes that are multiples of 8 (as the official code does)')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available on this machine')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        results = run_benchmark(args, network_options(args.opt, args.arch_json))
    except (OptionError, json.JSONDecodeError, KeyError, TypeError, ValueError, RuntimeError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    print(markdown(results))
    write_json(results, args.json)
    return 0


if __name__ == '__main__':
    keep_freed_memory_in_entry_point()  # a process of its own: both sides of a comparison reuse freed memory
    sys.exit(main())
