"""Speed and exactness of DA-CLIP's IR-SDE noise network (``ConditionalUNet``), side by side with the release's.

Usage:
    python benchmarks/benchmark_irsde.py \\
        --official-file ../universal-image-restoration/config/daclip-sde/models/modules/DenoisingUNet_arch.py
    python benchmarks/benchmark_irsde.py                      # vs benchmarks/reimplementations/daclip_release.py
    python benchmarks/benchmark_irsde.py --restore-steps 100  # also one 100-step restoration of a --sizes[0] image

Measures, for the released configuration (48,975,747 parameters; ``--arch-json`` for another):

- forward latency (batch 1) at each ``--sizes``: median and min-max of ``--repeats`` runs after
  ``--warmup``, ours and the baseline alternating in one loop, both under ``torch.no_grad`` (the
  sampler's mode), and the max relative error max|ours − baseline| / max|baseline|. The baseline
  is the release's own ``DenoisingUNet_arch.py`` with ``--official-file`` (imported with its
  package, so its relative imports of ``module_util`` and ``attention`` resolve), or our literal
  re-implementation of it (``benchmarks/reimplementations/daclip_release.py``), labelled as such. Weights: the
  baseline's own initialisation from ``--seed`` (zero-initialised transformer outputs as released;
  ``--randomize-zero`` draws them too, so the attention paths count in the error), copied into ours;
- with ``--train-size``: a training step (forward, L1 loss, backward) of a ``--train-batch`` batch;
- with ``--restore-steps N``: the wall time of one N-step posterior-sampling restoration of a
  ``--sizes[0]``² image with our network and sampler (contexts given, as the Restorer computes them once); with
  ``--official-sde`` (the release's ``utils/sde_utils.py``) also the release's own loop
  (``IRSDE.reverse_posterior``) with the baseline network, the two alternating, DA-CLIP's test settings for both.

Run as a script, the process keeps freed memory for reuse (``vlunet/utils/cpu_memory.py``) for both sides;
``VLUNET_KEEP_FREED_MEMORY=0`` measures both with glibc's default allocator.
"""
import argparse
import importlib.util
import json
import os.path as osp
import sys
import types
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from benchmark_common import machine_info, relative_error, smooth_images, time_alternating, write_json
from torch import nn

import vlunet  # noqa: F401  (compat shim before basicsr; registers the archs)
from vlunet.archs.daclip.irsde_unet_arch import ConditionalUNet
from vlunet.models.daclip.irsde_sampler import IRSDERestoration
from vlunet.utils.cpu_memory import keep_freed_memory_in_entry_point

REIMPLEMENTATION_LABEL = 're-implementation of the release (benchmarks/reimplementations/daclip_release.py)'
# The released network configuration (DA-CLIP's options/train.yml); the release's constructor has no defaults for
# the first three and others for ch_mult and use_image_context, so every argument is passed explicitly.
RELEASED_CONFIG = {'in_nc': 3, 'out_nc': 3, 'nf': 64, 'ch_mult': [1, 2, 4, 8], 'context_dim': 512,
                   'use_degra_context': True, 'use_image_context': True}
SDE_SETTINGS = {'max_sigma': 50, 'T': 100, 'schedule': 'cosine', 'eps': 0.005}  # DA-CLIP's test options (sde:)


def load_release_class(path: Optional[str]) -> type:
    """The release's ``ConditionalUNet`` from ``path`` (its ``DenoisingUNet_arch.py``), else the re-implementation."""
    if path is None:
        from reimplementations.daclip_release import OfficialConditionalUNet
        return OfficialConditionalUNet
    if not osp.isfile(path):
        raise FileNotFoundError(f'--official-file {path}: no such file; give the release\'s '
                                'config/daclip-sde/models/modules/DenoisingUNet_arch.py')
    package = types.ModuleType('daclip_release_modules')
    package.__path__ = [osp.dirname(osp.abspath(path))]
    sys.modules[package.__name__] = package
    spec = importlib.util.spec_from_file_location(f'{package.__name__}.DenoisingUNet_arch', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.ConditionalUNet


def build_pair(config: dict, release_class: type, seed: int, randomize_zero: bool,
               device: torch.device) -> Dict[str, nn.Module]:
    """The baseline with its own initialisation from ``seed`` and ours with the same weights (strict load)."""
    torch.manual_seed(seed)
    baseline = release_class(**config)
    if randomize_zero:
        with torch.no_grad():
            for name, parameter in baseline.named_parameters():
                if 'proj_out' in name:
                    parameter.normal_(0, 0.02)
    ours = ConditionalUNet(**config)
    ours.load_state_dict(baseline.state_dict(), strict=True)
    return {'ours': ours.to(device).eval(), 'baseline': baseline.to(device).eval()}


def network_inputs(config: dict, batch: int, size: int, device: torch.device) -> dict:
    """A smooth LQ image, a noisier state, step 37 and random (B, context_dim) contexts."""
    generator = torch.Generator().manual_seed(1)
    cond = smooth_images(batch, size, size, device)
    xt = cond + 0.1 * torch.randn(cond.shape, generator=generator).to(device)
    contexts = [torch.randn(batch, config.get('context_dim', 512), generator=generator).to(device) for _ in range(2)]
    return {'xt': xt, 'cond': cond, 'time': 37.0, 'text_context': contexts[0], 'image_context': contexts[1]}


def forward_jobs(nets: Dict[str, nn.Module], inputs: dict) -> dict:
    def job(net: nn.Module):
        def run() -> torch.Tensor:
            with torch.no_grad():
                return net(**inputs)
        return run
    return {name: job(net) for name, net in nets.items()}


def train_jobs(nets: Dict[str, nn.Module], inputs: dict) -> dict:
    target = inputs['cond'].flip(-1)

    def job(net: nn.Module):
        def run() -> None:
            net.train()
            F.l1_loss(net(**inputs), target).backward()
            net.zero_grad(set_to_none=True)
            net.eval()
        return run
    return {name: job(net) for name, net in nets.items()}


def load_release_sde(path: str) -> type:
    """The release's ``IRSDE`` sampler class from ``path`` (its ``utils/sde_utils.py``)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'--official-sde {path}: no such file; give the release\'s '
                                'universal-image-restoration/utils/sde_utils.py')
    spec = importlib.util.spec_from_file_location('daclip_release_sde_utils', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.IRSDE


def restoration_jobs(nets: Dict[str, nn.Module], inputs: dict, steps: int, release_sde: Optional[type]) -> dict:
    """One ``steps``-step restoration of ``inputs['cond']``: ours (network and sampler), and with ``release_sde``
    the release's ``reverse_posterior`` loop with the baseline network."""
    contexts = {'text_context': inputs['text_context'], 'image_context': inputs['image_context']}
    lq = inputs['cond']

    def ours() -> torch.Tensor:
        with torch.no_grad():
            return IRSDERestoration(SDE_SETTINGS, steps=steps, seed=0).restore(nets['ours'], lq, contexts)

    def release() -> torch.Tensor:
        sde = release_sde(SDE_SETTINGS['max_sigma'], SDE_SETTINGS['T'], sample_T=steps,
                          schedule=SDE_SETTINGS['schedule'], eps=SDE_SETTINGS['eps'], device=lq.device)
        sde.set_model(nets['baseline'])
        sde.set_mu(lq)
        torch.manual_seed(0)
        with torch.no_grad():
            return sde.reverse_posterior(sde.noise_state(lq), **contexts)
    return {'ours': ours} if release_sde is None else {'ours': ours, 'baseline': release}


def run_benchmark(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    config = {**RELEASED_CONFIG, **json.loads(args.arch_json)} if args.arch_json else dict(RELEASED_CONFIG)
    nets = build_pair(config, load_release_class(args.official_file), args.seed, args.randomize_zero, device)
    results = {'machine': machine_info(device), 'config': config,
               'parameters': sum(p.numel() for p in nets['ours'].parameters()),
               'baseline': f'the release ({args.official_file})' if args.official_file else REIMPLEMENTATION_LABEL,
               'forward': {}}
    for size in args.sizes:
        inputs = network_inputs(config, 1, size, device)
        jobs = forward_jobs(nets, inputs)
        entry = time_alternating(jobs, args.repeats, args.warmup, device)
        entry['max_relative_error'] = relative_error(jobs['ours'](), jobs['baseline']())
        results['forward'][size] = entry
    if args.train_size:
        inputs = network_inputs(config, args.train_batch, args.train_size, device)
        results['train_step'] = time_alternating(train_jobs(nets, inputs), args.repeats, args.warmup, device)
    if args.restore_steps:
        release_sde = load_release_sde(args.official_sde) if args.official_sde else None
        jobs = restoration_jobs(nets, network_inputs(config, 1, args.sizes[0], device), args.restore_steps,
                                release_sde)
        timed = time_alternating(jobs, 1, 0, device)
        results['restoration'] = {'size': args.sizes[0], 'steps': args.restore_steps,
                                  'seconds': timed['ours']['median_s']}
        if release_sde is not None:
            results['restoration'].update(baseline_seconds=timed['baseline']['median_s'],
                                          baseline_loop=args.official_sde)
    return results


def _ms(entry: dict) -> str:
    return f'{entry["median_s"] * 1e3:,.0f} ms ({entry["min_s"] * 1e3:,.0f}-{entry["max_s"] * 1e3:,.0f})'


def markdown(results: dict) -> str:
    machine = results['machine']
    lines = [f'ConditionalUNet ({results["parameters"]:,} parameters), {machine["cpu"]}, {machine["threads"]} threads, '
             f'torch {machine["torch"]}, {machine["device"]}, malloc: {machine["malloc"]}; '
             f'baseline: {results["baseline"]}', '',
             '| measurement | ours | baseline | speed-up | max rel. error |', '|---|---|---|---|---|']
    for size, entry in results['forward'].items():
        speedup = entry['baseline']['median_s'] / entry['ours']['median_s']
        lines.append(f'| forward {size}² | {_ms(entry["ours"])} | {_ms(entry["baseline"])} | {speedup:.2f}x | '
                     f'{entry["max_relative_error"]:.1e} |')
    if 'train_step' in results:
        entry = results['train_step']
        speedup = entry['baseline']['median_s'] / entry['ours']['median_s']
        lines.append(f'| training step | {_ms(entry["ours"])} | {_ms(entry["baseline"])} | {speedup:.2f}x | - |')
    if 'restoration' in results:
        restoration = results['restoration']
        line = (f'One {restoration["steps"]}-step restoration of a {restoration["size"]}² image (ours): '
                f'{restoration["seconds"]:,.1f} s')
        if 'baseline_seconds' in restoration:
            line += (f'; the release\'s loop with its network: {restoration["baseline_seconds"]:,.1f} s '
                     f'({restoration["baseline_seconds"] / restoration["seconds"]:.2f}x)')
        lines += ['', line]
    return '\n'.join(lines)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--official-file', metavar='PATH', help="the release's DenoisingUNet_arch.py "
                        '(default: benchmarks/reimplementations/daclip_release.py, a re-implementation)')
    parser.add_argument('--arch-json', help='ConditionalUNet arguments as JSON, over the released configuration')
    parser.add_argument('--sizes', type=int, nargs='+', default=[256], help='square forward sizes')
    parser.add_argument('--repeats', type=int, default=5, help='timed runs per measurement')
    parser.add_argument('--warmup', type=int, default=1, help='untimed runs before timing')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (torch.set_num_threads)')
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:1, ...')
    parser.add_argument('--seed', type=int, default=0, help='seed of the weights')
    parser.add_argument('--randomize-zero', action='store_true',
                        help='draw the zero-initialised transformer outputs too (every path counts in the error)')
    parser.add_argument('--train-size', type=int, default=0, help='training-step crop size (0: skip)')
    parser.add_argument('--train-batch', type=int, default=2, help='training-step batch size')
    parser.add_argument('--restore-steps', type=int, default=0, help='also time one restoration with this many steps')
    parser.add_argument('--official-sde', metavar='PATH',
                        help="the release's utils/sde_utils.py: --restore-steps also times its sampling loop")
    parser.add_argument('--json', help='also write the results to this JSON file')
    args = parser.parse_args(argv)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available on this machine')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        results = run_benchmark(args)
    except (FileNotFoundError, ImportError, AttributeError, json.JSONDecodeError, TypeError, RuntimeError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    print(markdown(results))
    write_json(results, args.json)
    return 0


if __name__ == '__main__':
    keep_freed_memory_in_entry_point()  # a process of its own: both sides of a comparison reuse freed memory
    sys.exit(main())
