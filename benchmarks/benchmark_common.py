"""What the benchmarks share: seeded smooth images, alternating timing, relative error, the machine's facts and the
JSON report."""
import json
import math
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from vlunet.utils.atomic_write import atomic_write_text
from vlunet.utils.cpu_memory import freed_memory_kept

Job = Callable[[], object]


def smooth_images(batch: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """(batch, 3, H, W) smooth, deterministic images in [0, 1] (low-frequency sinusoids)."""
    rows = torch.linspace(0, 1, height, device=device).view(1, 1, height, 1)
    cols = torch.linspace(0, 1, width, device=device).view(1, 1, 1, width)
    phase = torch.arange(batch * 3, device=device, dtype=torch.float32).view(batch, 3, 1, 1)
    return 0.5 + 0.4 * torch.sin(2 * math.pi * (rows * 1.3 + cols * 0.7) + phase) * torch.cos(3 * cols + phase)


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_alternating(jobs: Dict[str, Job], repeats: int, warmup: int, device: torch.device) -> Dict[str, dict]:
    """Seconds of each job: ``warmup`` untimed rounds, then ``repeats`` rounds, jobs alternating in each."""
    times: Dict[str, List[float]] = {name: [] for name in jobs}
    first: Dict[str, float] = {}
    for round_index in range(warmup + repeats):
        for name, job in jobs.items():
            synchronize(device)
            start = time.perf_counter()
            job()
            synchronize(device)
            elapsed = time.perf_counter() - start
            first.setdefault(name, elapsed)
            if round_index >= warmup:
                times[name].append(elapsed)
    return {name: {'median_s': statistics.median(values), 'min_s': min(values), 'max_s': max(values),
                   'first_s': first[name], 'runs': len(values)} for name, values in times.items()}


def matmul_gflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 matrix-multiply rate (GFLOP/s) on ``device``: the compute-floor yardstick."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as cpuinfo:
            cpu = next(line.split(':', 1)[1].strip() for line in cpuinfo if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    info = {'cpu': cpu, 'threads': torch.get_num_threads(), 'torch': torch.__version__, 'device': str(device),
            'python': platform.python_version(),
            'malloc': 'freed memory kept (keep_freed_memory)' if freed_memory_kept() else 'system default'}
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def write_json(results: dict, path: Optional[str]) -> None:
    """``results`` as indented JSON at ``path`` (written atomically; values JSON lacks as their text); None: nothing."""
    if path:
        atomic_write_text(json.dumps(results, indent=2, default=str) + '\n', path)
