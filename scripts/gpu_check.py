"""One command for whoever has a GPU: does vlunet train, resume, tile and run fast on CUDA? Writes one report.

Usage (from the repository root, with this project installed: ``pip install -e .[test]``)::

    python scripts/gpu_check.py --out gpu_check/                          # every CUDA check, ~8 min on an H100
    python scripts/gpu_check.py --out gpu_check/ --official-file vlunet=../VLU-Net/net/Final.py \\
        --official-file irsde=../universal-image-restoration/config/daclip-sde/models/modules/DenoisingUNet_arch.py
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/check  # the same steps on tiny configs (CI)

Steps (``--steps``, default all), each reported even when it fails (its error, one line):

- ``environment``: torch, CUDA, GPUs, NCCL, the packages this project needs (what is missing, and how to get it);
- ``train``: every shipped model type, from its demo options (``options/demo/train_*.yml``), trained
  ``--iterations`` steps on the device in fp32, bf16 autocast and fp16 autocast with its GradScaler
  (``vlunet/train.py``, one process per run, validation off): the losses of every iteration from the training log,
  whether all are finite, the trend;
- ``ddp``: the VLU-Net demo under ``torchrun --nproc_per_node=<visible GPUs>`` (NCCL; one GPU is a valid world),
  stopped half-way, then resumed (``--auto_resume``) to the end (CUDA only);
- ``tiling``: a 2048x2048 image (``--tiny``: 96x96) restored by the official-size VLU-Net with ``tile: auto``
  (budget: the device's free memory), the plan's predicted peak memory against the measured one;
- ``timing``: forward at 256^2 and 512^2 and a training step (AdamW, batch 2 at 128^2) of VLU-Net, the IR-SDE
  U-Net and PerceiveIR, eager and ``torch.compile``-d, fp32 and bf16 autocast (CUDA events, warm-up, median);
  with ``--official-file`` also the authors' VLU-Net / IR-SDE U-Net with the same weights, eager.

Writes ``<out>/report.md`` and ``<out>/report.json`` (atomically, after every step); training runs work in
``<out>/work/`` (demo data, experiments, logs). Exit status 0 when every check that ran passed.
"""
import argparse
import json
import math
import os
import os.path as osp
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPTS_DIR = osp.join(REPO_ROOT, 'scripts')
STEPS = ('environment', 'train', 'ddp', 'tiling', 'timing')
PRECISIONS = ('fp32', 'bf16', 'fp16')
REQUIRED_PACKAGES = {'torch': 'torch', 'basicsr': 'basicsr', 'open_clip': 'open_clip_torch', 'timm': 'timm',
                     'einops': 'einops', 'yaml': 'pyyaml', 'cv2': 'opencv-python', 'skimage': 'scikit-image'}
TESTED_TORCH = ((2, 11), (2, 14))  # the range of PyTorch versions this check is written for
DEMO_OPTIONS = {  # model type -> its demo training options
    'VLUNetModel': 'train_demo.yml', 'CLIPFinetuneModel': 'train_clip_demo.yml', 'DACLIPModel': 'train_daclip_demo.yml',
    'NAFNet + DA-CLIP (GuidedRestorationModel)': 'train_nafnet_daclip_demo.yml',
    'PerceiveIRModel': 'train_perceiveir_demo.yml', 'IRSDEModel': 'train_irsde_demo.yml',
    'QualityPromptModel': 'train_prompts_demo.yml'}
LOG_ITERATION = re.compile(r'iter:\s*([\d,]+)')
LOG_VALUE = re.compile(r'\b([A-Za-z_][\w/]*):\s*([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))')
NOT_LOSSES = {'epoch', 'iter', 'eta', 'time', 'data', 'lr'}


class Missing(RuntimeError):
    """Something the check needs is not installed or not available; the message says what and how to get it."""


# ---------------------------------------------------------------- report


class Report:
    """The results of every step, written as Markdown and JSON after each step."""

    def __init__(self, out: str, arguments: dict):
        self.out, self.results = out, {'arguments': arguments, 'steps': {}}

    def record(self, step: str, result: dict) -> None:
        self.results['steps'][step] = result
        self.write()

    def write(self) -> None:
        from vlunet.utils.atomic_write import atomic_write_text
        atomic_write_text(json.dumps(self.results, indent=2, default=str), osp.join(self.out, 'report.json'))
        atomic_write_text(markdown(self.results), osp.join(self.out, 'report.md'))

    @property
    def passed(self) -> bool:
        return all(result.get('ok', False) for result in self.results['steps'].values())


def _mib(value: Optional[float]) -> str:
    return '-' if value is None else f'{value / 2 ** 20:.0f} MiB'


def _ms(value: Optional[float]) -> str:
    return '-' if value is None else f'{value * 1e3:.1f} ms'


def markdown(results: dict) -> str:
    """The report page: one section per step, tables where there are rows."""
    lines = ['# vlunet GPU check', '', f"Command: `{results['arguments']['command']}`", '']
    for step, result in results['steps'].items():
        lines += [f"## {step}: {'ok' if result.get('ok') else 'FAILED'}", '']
        if result.get('error'):
            lines += [f"Error: {result['error']}", '']
        if step == 'environment':
            lines += [f'- {key}: {value}' for key, value in result.get('facts', {}).items()] + ['']
        for note in result.get('notes', []):
            lines.append(f'- {note}')
        if result.get('notes'):
            lines.append('')
        rows = result.get('rows', [])
        if step in ('train', 'ddp') and rows:
            lines += ['| run | precision | iterations | finite | first loss | last loss | trend | seconds | error |',
                      '|---|---|---|---|---|---|---|---|---|']
            lines += [f"| {r['run']} | {r['precision']} | {r.get('iterations', 0)} | {r.get('finite', '-')} | "
                      f"{r.get('first', '-')} | {r.get('last', '-')} | {r.get('trend', '-')} | "
                      f"{r.get('seconds', 0):.0f} | {r.get('error') or ''} |" for r in rows]
        elif step == 'tiling' and rows:
            lines += ['| image | plan | predicted peak | measured peak | measured / predicted | budget | seconds |',
                      '|---|---|---|---|---|---|---|']
            lines += [f"| {r['image']} | {r['plan']} | {_mib(r['predicted_bytes'])} | {_mib(r['measured_bytes'])} | "
                      f"{r['ratio']} | {_mib(r['budget_bytes'])} ({r['budget_source']}) | {r['seconds']:.1f} |"
                      for r in rows]
        elif step == 'timing' and rows:
            lines += ['| network | measurement | variant | median | min | runs | error |',
                      '|---|---|---|---|---|---|---|']
            lines += [f"| {r['network']} | {r['measurement']} | {r['variant']} | {_ms(r.get('median_s'))} | "
                      f"{_ms(r.get('min_s'))} | {r.get('runs', 0)} | {r.get('error') or ''} |" for r in rows]
        lines.append('')
    return '\n'.join(lines)


def _one_line(error: BaseException) -> str:
    return f'{type(error).__name__}: {error}'.splitlines()[0][:300]


# ---------------------------------------------------------------- environment


def torch_version_tuple(version: str) -> Tuple[int, int]:
    """'2.14.1+cu130' -> (2, 14)."""
    major, minor = re.match(r'(\d+)\.(\d+)', version).groups()
    return int(major), int(minor)


def missing_packages() -> List[str]:
    """The pip names of the required packages that do not import."""
    import importlib
    missing = []
    for module, pip_name in REQUIRED_PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(pip_name)
    return missing


def check_environment(device: str) -> dict:
    missing = missing_packages()
    if 'torch' in missing:
        raise Missing('PyTorch is not installed: install the CUDA build your driver supports (pytorch.org).')
    import torch
    facts = {'python': platform.python_version(), 'torch': torch.__version__, 'platform': platform.platform(),
             'device': device, 'cuda build': torch.version.cuda or 'none'}
    notes = []
    version = torch_version_tuple(torch.__version__)
    if not TESTED_TORCH[0] <= version <= TESTED_TORCH[1]:
        notes.append(f'torch {torch.__version__} is outside the tested range '
                     f'{".".join(map(str, TESTED_TORCH[0]))}-{".".join(map(str, TESTED_TORCH[1]))}')
    if torch.cuda.is_available():
        facts['GPUs'] = ', '.join(f'{torch.cuda.get_device_name(i)} '
                                  f'({torch.cuda.get_device_properties(i).total_memory / 2 ** 30:.0f} GiB)'
                                  for i in range(torch.cuda.device_count()))
        facts['bf16 supported'] = torch.cuda.is_bf16_supported()
        facts['NCCL'] = torch.distributed.is_available() and torch.distributed.is_nccl_available()
    if missing:
        notes.append(f'missing packages: {", ".join(missing)} (pip install {" ".join(missing)}; or pip install -e .)')
    if device == 'cuda' and not torch.cuda.is_available():
        notes.append('CUDA is not available to this PyTorch (a CPU-only build, or no driver): run with a CUDA build, '
                     'or --device cpu --tiny')
    return {'ok': not missing and (device != 'cuda' or torch.cuda.is_available()), 'facts': facts, 'notes': notes}


# ---------------------------------------------------------------- training runs


def prepare_work_dir(work: str, tiny: bool) -> None:
    """Demo data, the demo CLIP weights and a link to ``options/`` under ``work`` (the option files' relative
    paths resolve there)."""
    os.makedirs(work, exist_ok=True)
    if not osp.exists(osp.join(work, 'options')):
        os.symlink(osp.join(REPO_ROOT, 'options'), osp.join(work, 'options'))
    data = osp.join(work, 'datasets', 'demo')
    if not osp.isdir(data):
        size, crops = (48, 1) if tiny else (160, 2)
        command = [sys.executable, osp.join(SCRIPTS_DIR, 'make_demo_data.py'), '--out', data, '--crops', str(crops),
                   '--size', str(size)]
        finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        if finished.returncode != 0:
            raise RuntimeError(f'making the demo data failed: {finished.stderr.strip().splitlines()[-1:]}')
    sys.path.insert(0, SCRIPTS_DIR)
    from demo import write_demo_encoder

    from vlunet.options import load_option_file
    write_demo_encoder(load_option_file(osp.join(REPO_ROOT, 'options', 'demo', 'test_demo.yml')), root=work)


def training_options(demo_file: str, name: str, precision: str, iterations: int, device: str, tiny: bool) -> dict:
    """The demo options of ``demo_file`` for a short check run: ``iterations`` steps, a loss logged at each, no
    validation, a checkpoint at the end, ``precision`` (fp32 / bf16 / fp16 autocast)."""
    from vlunet.options import load_option_file
    opt = load_option_file(osp.join(REPO_ROOT, 'options', 'demo', demo_file))
    opt['name'] = name
    opt['num_gpu'] = 1 if device == 'cuda' else 0
    opt['datasets'] = {'train': opt['datasets']['train']}
    opt.pop('val', None)
    opt['train']['total_iter'] = iterations
    opt['train']['warmup_iter'] = -1
    scheduler = opt['train'].get('scheduler') or {}
    if 'warmup' in scheduler:
        scheduler['warmup'] = min(scheduler['warmup'], iterations // 2)
    opt['logger'] = {'print_freq': 1, 'save_checkpoint_freq': iterations, 'use_tb_logger': False}
    opt['amp'] = None if precision == 'fp32' else {'enabled': True, 'dtype': precision}
    if opt.get('path', {}).get('pretrain_network_degradation_encoder'):
        opt['path']['pretrain_network_degradation_encoder'] = None  # the demo CLIP's random adapters
    if tiny:
        train_set = opt['datasets']['train']
        size_key = 'crop_size' if 'crop_size' in train_set else 'gt_size'  # triplets: crop_size
        train_set[size_key] = min(train_set[size_key], 32)
        train_set['batch_size_per_gpu'] = 2
    return opt


def parse_losses(log_text: str) -> Dict[int, Dict[str, float]]:
    """{iteration: {loss name: value}} from a BasicSR training log (lines ``[..iter: N, lr:(..)] [eta..] l_x: v``)."""
    losses = {}
    for line in log_text.splitlines():
        found = LOG_ITERATION.search(line)
        if not found or '] ' not in line:
            continue
        tail = line.rsplit(']', 1)[1]
        values = {key: float(value) for key, value in LOG_VALUE.findall(tail) if key not in NOT_LOSSES}
        if values:
            losses[int(found.group(1).replace(',', ''))] = values
    return losses


def loss_summary(losses: Dict[int, Dict[str, float]]) -> dict:
    """Finite everywhere, the first and last total (sum of the logged losses) and the trend (first vs last third)."""
    if not losses:
        return {'iterations': 0, 'finite': False, 'trend': 'no losses logged'}
    totals = [sum(values.values()) for _, values in sorted(losses.items())]
    finite = all(math.isfinite(value) for values in losses.values() for value in values.values())
    third = max(1, len(totals) // 3)
    first, last = statistics.mean(totals[:third]), statistics.mean(totals[-third:])
    trend = 'down' if last < first * 0.98 else 'up' if last > first * 1.02 else 'flat'
    return {'iterations': len(totals), 'finite': finite, 'first': f'{totals[0]:.4g}', 'last': f'{totals[-1]:.4g}',
            'trend': trend if len(totals) > 1 else 'one iteration', 'losses': {str(k): v for k, v in losses.items()}}


def run_training(work: str, opt: dict, launcher: Optional[List[str]] = None, resume: bool = False,
                 timeout: int = 900) -> dict:
    """``vlunet/train.py`` on ``opt`` in ``work`` (``launcher``: e.g. torchrun's command before the script); the
    losses from the experiment's newest log."""
    import yaml
    option_file = osp.join(work, 'check_options', f"{opt['name']}{'_resume' if resume else ''}.yml")
    os.makedirs(osp.dirname(option_file), exist_ok=True)
    with open(option_file, 'w', encoding='utf-8') as handle:
        yaml.safe_dump(json.loads(json.dumps(opt)), handle, sort_keys=False)  # plain mappings, in order
    command = [*(launcher or [sys.executable]), osp.join(REPO_ROOT, 'vlunet', 'train.py'), '-opt', option_file]
    if launcher:
        command += ['--launcher', 'pytorch']
    if resume:
        command.append('--auto_resume')
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')])))
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=timeout, env=environment)
    seconds = time.perf_counter() - start
    logs = sorted((osp.join(root, name) for root, _, names in os.walk(osp.join(work, 'experiments', opt['name']))
                   for name in names if name.startswith('train_') and name.endswith('.log')), key=osp.getmtime)
    log_text = open(logs[-1], encoding='utf-8').read() if logs else ''
    result = {'seconds': seconds, **loss_summary(parse_losses(log_text))}
    if finished.returncode != 0:
        errors = [line for line in (finished.stderr or finished.stdout).strip().splitlines() if line.strip()]
        result['error'] = f'exit {finished.returncode}: ' + (errors[-1][:300] if errors else 'no output')
    return result


def check_training(work: str, device: str, precisions: Sequence[str], models: Sequence[str], iterations: int,
                   tiny: bool) -> dict:
    rows = []
    for model_type in models:
        for precision in precisions:
            name = f"gpucheck_{re.sub(r'[^A-Za-z0-9]+', '_', model_type).strip('_')}_{precision}"
            shutil.rmtree(osp.join(work, 'experiments', name), ignore_errors=True)
            opt = training_options(DEMO_OPTIONS[model_type], name, precision, iterations, device, tiny)
            try:
                rows.append({'run': model_type, 'precision': precision, **run_training(work, opt)})
            except subprocess.TimeoutExpired as error:
                rows.append({'run': model_type, 'precision': precision, 'error': _one_line(error)})
            print(f"train {model_type} {precision}: {rows[-1].get('error') or rows[-1]['trend']}", flush=True)
    ok = bool(rows) and all(row.get('finite') and not row.get('error') for row in rows)
    return {'ok': ok, 'rows': rows, 'notes': []}


def check_ddp(work: str, iterations: int) -> dict:
    """The VLU-Net demo under torchrun with every visible GPU (NCCL): half the iterations, then resumed."""
    import torch
    gpus = torch.cuda.device_count()
    if not torch.distributed.is_nccl_available():
        raise Missing('this PyTorch has no NCCL: install a CUDA build of PyTorch with distributed support')
    name, rows = 'gpucheck_ddp_VLUNetModel', []
    shutil.rmtree(osp.join(work, 'experiments', name), ignore_errors=True)
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    launcher = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={gpus}', f'--master_port={port}']
    half = max(1, iterations // 2)
    for label, total, resume in (('first half', half, False), ('resumed', iterations, True)):
        opt = training_options(DEMO_OPTIONS['VLUNetModel'], name, 'fp32', total, 'cuda', tiny=False)
        opt['logger']['save_checkpoint_freq'] = half
        rows.append({'run': f'VLUNetModel, torchrun x{gpus}, {label}', 'precision': 'fp32',
                     **run_training(work, opt, launcher, resume)})
    resumed = rows[-1]
    resumed_from_half = bool(resumed.get('losses')) and min(map(int, resumed['losses'])) > half
    ok = all(row.get('finite') and not row.get('error') for row in rows) and resumed_from_half
    notes = [f'world size {gpus} (NCCL); the resumed run continued from iteration {half}: {resumed_from_half}']
    return {'ok': ok, 'rows': rows, 'notes': notes}


# ---------------------------------------------------------------- tiling


def check_tiling(device: str, tiny: bool) -> dict:
    import torch

    from vlunet.archs.vlunet.vlunet_arch import SIZE_MULTIPLE, VLUNet
    from vlunet.tiling.memory_model import network_memory_key, peak_forward_bytes
    from vlunet.tiling.tiles import parse_tile_options, restore
    torch.manual_seed(0)
    net = (VLUNet(**TINY_NETWORKS['VLU-Net']) if tiny else VLUNet()).to(device).eval()
    side = 96 if tiny else 2048
    image = torch.rand(1, 3, side, side, device=device)
    degradation = torch.randn(1, net.config['degradation_dim'], device=device)
    plans = []

    def restored(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return restore(lambda x: net(x, degradation.expand(x.shape[0], -1)), images, parse_tile_options('auto'),
                           SIZE_MULTIPLE, memory_key=network_memory_key(net, torch.device(device)),
                           on_plan=plans.append)

    restored(image[..., :side // 4, :side // 4])  # warm-up: measures and caches the memory model
    plans.clear()
    start = time.perf_counter()
    measured = peak_forward_bytes(restored, image)
    seconds = time.perf_counter() - start
    plan = plans[-1]
    predicted = plan.predicted_bytes
    row = {'image': f'{side}x{side}', 'plan': 'whole image' if plan.size is None else
           f'{plan.tiles} tiles of {plan.size}, batch {plan.batch}', 'predicted_bytes': predicted,
           'measured_bytes': measured, 'ratio': f'{measured / predicted:.2f}' if predicted else '-',
           'budget_bytes': plan.budget_bytes, 'budget_source': plan.budget_source, 'seconds': seconds}
    ok = predicted is not None and measured <= max(predicted, 1) * 1.2
    return {'ok': ok, 'rows': [row], 'notes': ['ok: the measured peak is at most 1.2x the predicted one']}


# ---------------------------------------------------------------- timing

TINY_NETWORKS = {
    'VLU-Net': dict(de_dim=3, dim=16, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1),
                    key_size=8),
    'IR-SDE U-Net': dict(nf=8, ch_mult=(1, 2, 4, 8), context_dim=512),
    'PerceiveIR': dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1),
                       semantic_pretrained=None, semantic_layers=(1, 2, 3, 4), semantic_image_size=32,
                       semantic_kwargs={'embed_dim': 32, 'depth': 4, 'num_heads': 2, 'patch_size': 8}),
}


def build_timed_network(name: str, tiny: bool, device: str):
    """(network in eval mode, inputs(batch, size) -> its forward arguments in order) of a timed network, random
    weights."""
    import torch
    torch.manual_seed(0)
    if name == 'VLU-Net':
        from vlunet.archs.vlunet.vlunet_arch import VLUNet
        net = VLUNet(**(TINY_NETWORKS[name] if tiny else {}))
        return net.to(device).eval(), lambda batch, size: {
            'image': torch.rand(batch, 3, size, size, device=device),
            'degradation': torch.randn(batch, net.config['degradation_dim'], device=device)}
    if name == 'IR-SDE U-Net':
        from vlunet.archs.daclip.irsde_unet_arch import ConditionalUNet
        net = ConditionalUNet(**(TINY_NETWORKS[name] if tiny else {}))
        return net.to(device).eval(), lambda batch, size: {
            'xt': torch.rand(batch, 3, size, size, device=device), 'cond': torch.rand(batch, 3, size, size,
                                                                                      device=device),
            'time': 37.0, 'text_context': torch.randn(batch, 512, device=device),
            'image_context': torch.randn(batch, 512, device=device)}
    from vlunet.archs.perceiveir.perceiveir_arch import PerceiveIR
    net = PerceiveIR(**(TINY_NETWORKS[name] if tiny else {'semantic_pretrained': None}))
    return net.to(device).eval(), lambda batch, size: {'image': torch.rand(batch, 3, size, size, device=device)}


def official_network(name: str, ours, path: str, device: str):
    """The authors' network from ``path`` with ``ours``'s weights (VLU-Net: net/Final.py; IR-SDE U-Net: the
    release's DenoisingUNet_arch.py), loaded by the benchmark scripts' loaders."""
    sys.path.insert(0, SCRIPTS_DIR)
    if name == 'VLU-Net':
        from benchmark import build_baseline
        return build_baseline(ours, {'type': 'VLUNet'}, path, device).to(device).eval()
    if name == 'IR-SDE U-Net':
        from benchmark_irsde import load_release_class
        release = load_release_class(path)()  # the release's defaults: ours (nf 64, ch_mult 1 2 4 8, context 512)
        release.load_state_dict(ours.state_dict(), strict=True)
        return release.to(device).eval()
    raise Missing(f'--official-file {name}: no loader for the authors\' {name} here (VLU-Net and IR-SDE U-Net)')


def time_job(job: Callable[[], object], device: str, warmup: int, repeats: int) -> dict:
    """Median and min seconds of ``repeats`` runs after ``warmup`` (CUDA events on CUDA, perf_counter on CPU)."""
    import torch
    for _ in range(warmup):
        job()
    times = []
    for _ in range(repeats):
        if device == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            job()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            job()
            times.append(time.perf_counter() - begin)
    return {'median_s': statistics.median(times), 'min_s': min(times), 'runs': len(times)}


def _forward_job(net, inputs: dict, precision: str, device: str) -> Callable[[], object]:
    import torch

    def run():
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=precision == 'bf16'):
            return net(*inputs.values())  # positionally: the authors' argument names differ
    return run


def _train_job(net, inputs: dict, precision: str, device: str) -> Callable[[], object]:
    import torch
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)

    def run():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == 'bf16'):
            out = net(*inputs.values())  # positionally: the authors' argument names differ
        out = out[0] if isinstance(out, tuple) else out
        out.float().square().mean().backward()
        optimizer.step()
    return run


def check_timing(device: str, tiny: bool, official: Dict[str, str], compile_backend: str, warmup: int,
                 repeats: int, networks: Sequence[str]) -> dict:
    import torch

    from vlunet.utils.precision import CompileOptions, compile_network
    sizes, train_size = ((32,), 32) if tiny else ((256, 512), 128)
    rows, notes = [], []
    for name in networks:
        net, inputs = build_timed_network(name, tiny, device)
        variants = {'eager': net}
        if compile_backend != 'none':
            variants['compiled'] = compile_network(net, CompileOptions(True, backend=compile_backend))
        if name in official:
            try:
                variants['authors\' code'] = official_network(name, net, official[name], device)
            except Exception as error:  # noqa: BLE001 -- reported, the other timings go on
                notes.append(f'{name}: the authors\' code could not be loaded ({_one_line(error)})')
        for precision in ('fp32', 'bf16'):
            for variant, module in variants.items():
                jobs = [(f'forward {size}^2 x1', _forward_job(module, inputs(1, size), precision, device))
                        for size in sizes]
                jobs.append((f'train step 2x{train_size}^2', _train_job(module.train(), inputs(2, train_size),
                                                                        precision, device)))
                for measurement, job in jobs:
                    row = {'network': name, 'measurement': measurement, 'variant': f'{variant}, {precision}'}
                    try:
                        row.update(time_job(job, device, warmup, repeats))
                    except Exception as error:  # noqa: BLE001 -- one failing variant must not hide the others
                        row['error'] = _one_line(error)
                    rows.append(row)
                    print(f"timing {name} {measurement} {row['variant']}: "
                          f"{row.get('error') or _ms(row['median_s'])}", flush=True)
                module.eval()
        del variants, net
        torch._dynamo.reset()
        if device == 'cuda':
            torch.cuda.empty_cache()
    ok = bool(rows) and not any(row.get('error') for row in rows)
    return {'ok': ok, 'rows': rows, 'notes': notes}


# ---------------------------------------------------------------- main


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='folder for report.md, report.json and work/')
    parser.add_argument('--device', default='cuda', choices=['cuda', 'cpu'], help='default cuda')
    parser.add_argument('--tiny', action='store_true', help='tiny networks, images and runs (for CI on the CPU)')
    parser.add_argument('--steps', default=','.join(STEPS), help=f'comma-separated subset of {",".join(STEPS)}')
    parser.add_argument('--models', default=','.join(DEMO_OPTIONS),
                        help='comma-separated model types to train (default: every one with demo options)')
    parser.add_argument('--precisions', default=','.join(PRECISIONS), help='training precisions (default all)')
    parser.add_argument('--iterations', type=int, help='training iterations per run (default 20; --tiny: 2)')
    parser.add_argument('--networks', default=','.join(TINY_NETWORKS), help='networks to time (default all)')
    parser.add_argument('--official-file', action='append', default=[], metavar='NETWORK=PATH',
                        help="the authors' code to time against: vlunet=PATH (net/Final.py) or irsde=PATH "
                             '(DenoisingUNet_arch.py); repeatable')
    parser.add_argument('--compile-backend', help="torch.compile backend (default inductor; --tiny: aot_eager); "
                        "'none' leaves the compiled variant out")
    parser.add_argument('--repeats', type=int, help='timed runs per measurement (default 10; --tiny: 2)')
    return parser.parse_args(argv)


def official_files(entries: Sequence[str]) -> Dict[str, str]:
    """{'VLU-Net' | 'IR-SDE U-Net': path} from ``vlunet=PATH`` / ``irsde=PATH`` entries."""
    names = {'vlunet': 'VLU-Net', 'irsde': 'IR-SDE U-Net'}
    files = {}
    for entry in entries:
        key, _, path = entry.partition('=')
        if key not in names or not path:
            raise SystemExit(f'--official-file {entry!r}: expected vlunet=PATH or irsde=PATH')
        if not osp.isfile(path):
            raise SystemExit(f'--official-file {entry!r}: no such file')
        files[names[key]] = path
    return files


def _listed(value: str, allowed: Sequence[str], option: str) -> List[str]:
    chosen = [item.strip() for item in value.split(',') if item.strip()]
    unknown = [item for item in chosen if item not in allowed]
    if unknown:
        raise SystemExit(f'{option}: unknown {unknown}; choose from {list(allowed)}')
    return chosen


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    steps = _listed(args.steps, STEPS, '--steps')
    models, precisions = _listed(args.models, list(DEMO_OPTIONS), '--models'), _listed(args.precisions, PRECISIONS,
                                                                                         '--precisions')
    networks = _listed(args.networks, list(TINY_NETWORKS), '--networks')
    official = official_files(args.official_file)
    iterations = args.iterations or (2 if args.tiny else 20)
    os.makedirs(args.out, exist_ok=True)
    sys.path.insert(0, REPO_ROOT)
    missing = missing_packages()
    if missing:
        print(f'gpu_check: missing packages {", ".join(missing)}: pip install {" ".join(missing)} '
              '(or pip install -e . in the repository)', file=sys.stderr)
        return 2
    import vlunet  # noqa: F401  (compatibility fixes, registration)
    report = Report(args.out, {'command': ' '.join(['python scripts/gpu_check.py', *(argv or sys.argv[1:])]),
                               **vars(args)})
    work = osp.abspath(osp.join(args.out, 'work'))
    checks = {
        'environment': lambda: check_environment(args.device),
        'train': lambda: (prepare_work_dir(work, args.tiny),
                          check_training(work, args.device, precisions, models, iterations, args.tiny))[1],
        'ddp': lambda: (prepare_work_dir(work, args.tiny), check_ddp(work, iterations))[1],
        'tiling': lambda: check_tiling(args.device, args.tiny),
        'timing': lambda: check_timing(args.device, args.tiny, official,
                                       args.compile_backend or ('aot_eager' if args.tiny else 'inductor'),
                                       warmup=1 if args.tiny else 3, repeats=args.repeats or (2 if args.tiny else 10),
                                       networks=networks),
    }
    environment = check_environment(args.device)
    for step in steps:
        if step != 'environment' and args.device == 'cuda' and not environment['facts'].get('GPUs'):
            report.record(step, {'ok': False, 'error': 'no CUDA device: run on a GPU machine, or --device cpu --tiny'})
            continue
        if step == 'ddp' and args.device != 'cuda':
            report.record(step, {'ok': True, 'notes': ['skipped: torchrun with NCCL needs CUDA devices']})
            continue
        print(f'gpu_check: {step} ...', flush=True)
        start = time.perf_counter()
        try:
            report.record(step, {**checks[step](), 'seconds': time.perf_counter() - start})
        except Missing as error:
            report.record(step, {'ok': False, 'error': str(error)})
        except Exception as error:  # noqa: BLE001 -- every step is reported; --verbose-like detail in the JSON
            report.record(step, {'ok': False, 'error': _one_line(error), 'traceback': traceback.format_exc()})
    print(f"gpu_check: {'all checks passed' if report.passed else 'some checks FAILED'}; report: "
          f"{osp.join(args.out, 'report.md')}")
    return 0 if report.passed else 1


if __name__ == '__main__':
    sys.exit(main())
