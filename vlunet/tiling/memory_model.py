"""How much memory a restoration network needs for a forward pass, and how much the machine has.

Memory model: ``bytes(batch, pixels) = fixed + per_pixel * batch * pixels`` for one forward pass
(inputs already allocated; everything the forward allocates, output included). Fully convolutional
networks with channel attention (VLU-Net, Restormer, NAFNet) have activations linear in the pixel
count, so two measurements fit it: :func:`measure_memory_model` runs the network on two small
images (64² and 128², rounded up to the network's size multiple) and records the peak of the
memory the forward allocates above what was allocated before it:

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``;
- CPU: the torch profiler with ``profile_memory=True``, which records every allocation and free of
  torch's CPU allocator (oneDNN's scratch memory included) in order; the peak of their running sum
  is exact and deterministic (no RSS noise from the C allocator, no subprocess).

The fit is cached in memory per (network configuration, device, grad mode, autocast dtype, input
dtype and channels): a process measures each network once (two small profiled forwards; the
official-size VLU-Net: 7.4 kB per pixel, no fixed part, about twice a plain 128² forward). The
measurements compute whole maps (:func:`~vlunet.ops.dispatch.whole_maps`): on large images the
Restormer blocks work in bands of rows without autograd, which only lowers the peak, so the fit is an
upper bound there.
Predictions are multiplied by :data:`MEMORY_MARGIN` for what the torch allocator does not see (the
C allocator's fragmentation and caches, CUDA's caching allocator).

Budgets: :func:`available_memory` is free CUDA memory (``torch.cuda.mem_get_info`` plus what torch's
caching allocator holds unused) or, on CPU, the system's available RAM (``psutil``, on every OS, plus what
this process holds freed: :func:`vlunet.utils.cpu_memory.held_free_bytes`), times :data:`AVAILABLE_FRACTION`;
:func:`parse_memory_size` reads an explicit budget such as ``'2GB'``.
"""
import contextlib
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, Iterator, Tuple, Union

import psutil
import torch
from torch import nn

from vlunet.ops.dispatch import whole_maps
from vlunet.utils.cpu_memory import held_free_bytes

ImageFunction = Callable[[torch.Tensor], torch.Tensor]
# Side lengths of the two measurement images (rounded up to the network's size multiple).
MEASURE_SIZES = (64, 128)
# Predictions are this much above the fit. Measured (benchmarks/auto_tiling_figures.py, CPU): the fit is exact for
# the torch allocator's peak at other sizes and batches (tiny VLU-Net, 48²-200², batch 1-4: within 0.1%); the
# process's peak RSS above the state before is 0.81x the fit for a 256² forward, 1.02x for a whole 1280x1024
# restore (official-size VLU-Net: 9.31 GiB measured, 9.10 GiB fitted, 11.36 GiB predicted with the margin) and
# 1.01x for 2560x1600 in 1408-pixel tiles (13.99 GiB measured, 13.85 GiB fitted, 17.27 GiB predicted).
MEMORY_MARGIN = 1.25
# Share of the available memory that automatic budgets use (other processes, memory that is not the network's).
AVAILABLE_FRACTION = 0.85
UNITS = {'': 1, 'b': 1, 'k': 2 ** 10, 'kb': 10 ** 3, 'kib': 2 ** 10, 'm': 2 ** 20, 'mb': 10 ** 6, 'mib': 2 ** 20,
         'g': 2 ** 30, 'gb': 10 ** 9, 'gib': 2 ** 30, 't': 2 ** 40, 'tb': 10 ** 12, 'tib': 2 ** 40}


@dataclass(frozen=True)
class MemoryModel:
    """Bytes one forward pass allocates: ``fixed_bytes + bytes_per_pixel * batch * pixels``."""
    fixed_bytes: float
    bytes_per_pixel: float

    def forward_bytes(self, batch: int, height: int, width: int) -> int:
        """Predicted bytes (margin included) for a forward of (batch, C, height, width)."""
        return int(MEMORY_MARGIN * (self.fixed_bytes + self.bytes_per_pixel * batch * height * width))

    def __str__(self) -> str:
        return f'{self.fixed_bytes / 2 ** 20:.0f} MiB + {self.bytes_per_pixel:.0f} B/pixel'


_CACHE: Dict[Hashable, MemoryModel] = {}


def format_bytes(size: float) -> str:
    """``1.5 GiB``, ``640 MiB``."""
    return f'{size / 2 ** 30:.2f} GiB' if size >= 2 ** 30 else f'{size / 2 ** 20:.0f} MiB'


def parse_memory_size(value: Union[str, int, float], key: str = 'max_memory') -> int:
    """Bytes of ``'2GB'`` (10⁹), ``'2GiB'``/``'2G'`` (2³⁰), ``'512MB'``, ``'1.5 GiB'`` or a number of bytes."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f'{key}: expected a size like 2GB, 1.5GiB or 512MB, got {value!r}.')
    match = re.fullmatch(r'\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*', str(value))
    unit = match and match.group(2).lower()
    if not match or unit not in UNITS or float(match.group(1)) <= 0:
        raise ValueError(f'{key}: expected a positive size like 2GB, 1.5GiB or 512MB, got {value!r}.')
    return int(float(match.group(1)) * UNITS[unit])


def available_memory(device: torch.device) -> Tuple[int, str]:
    """(bytes a restoration may use on ``device``, where the figure comes from)."""
    device = torch.device(device)
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(AVAILABLE_FRACTION * (free + cached)), f'{AVAILABLE_FRACTION:.0%} of free memory on {device}'
    if device.type == 'cpu':
        available = psutil.virtual_memory().available + held_free_bytes()
        return int(AVAILABLE_FRACTION * available), f'{AVAILABLE_FRACTION:.0%} of available RAM'
    raise ValueError(f'cannot tell how much memory {device} has free; give a budget: tile: {{size: auto, '
                     'max_memory: 4GB}} (option file / Restorer) or --max-memory 4GB (scripts/inference.py).')


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Discard what native code writes to file descriptor 2 (the profiler's start/stop lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w', encoding='ascii') as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_bytes(run: Callable[[], object]) -> int:
    with _native_stderr_silenced(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        run()
    current = peak = 0
    # '[memory]' events: one per allocation (nbytes > 0) and free (nbytes < 0) of torch's CPU allocator.
    for _, size in sorted((event.start_ns(), event.nbytes()) for event in profiler.profiler.kineto_results.events()
                          if event.name() == '[memory]'):
        current += size
        peak = max(peak, current)
    return peak


def peak_forward_bytes(fn: ImageFunction, images: torch.Tensor) -> int:
    """Peak bytes allocated while ``fn(images)`` runs (and its output, kept), above what was allocated before."""
    if images.device.type == 'cuda':
        torch.cuda.synchronize(images.device)
        torch.cuda.reset_peak_memory_stats(images.device)
        before = torch.cuda.memory_allocated(images.device)
        output = fn(images)
        torch.cuda.synchronize(images.device)
        del output
        return torch.cuda.max_memory_allocated(images.device) - before
    return _cpu_peak_bytes(lambda: fn(images))


def _rounded_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def measure_memory_model(fn: ImageFunction, channels: int, device: torch.device, dtype: torch.dtype = torch.float32,
                         size_multiple: int = 1) -> MemoryModel:
    """Fit :class:`MemoryModel` to the peak memory of ``fn`` on two small (1, channels, s, s) images."""
    sizes = [_rounded_up(size, size_multiple) for size in MEASURE_SIZES]
    with whole_maps():  # bands of rows (large images, no autograd) only lower the peak: the fit is an upper bound
        peaks = [peak_forward_bytes(fn, torch.full((1, channels, size, size), 0.5, device=device, dtype=dtype))
                 for size in sizes]
    pixels = [size * size for size in sizes]
    per_pixel = (peaks[1] - peaks[0]) / (pixels[1] - pixels[0])
    fixed = peaks[0] - per_pixel * pixels[0]
    if per_pixel <= 0 or fixed < 0:  # not linear at these sizes: assume all of it grows with the pixels
        return MemoryModel(0.0, max(peak / count for peak, count in zip(peaks, pixels)))
    return MemoryModel(fixed, per_pixel)


def network_memory_key(net: nn.Module, device: torch.device) -> Hashable:
    """What a network's memory use depends on: its class, configuration (or parameter shapes) and device."""
    config = getattr(net, 'config', None)
    shapes = tuple((name, tuple(value.shape), value.dtype) for name, value in net.state_dict().items())
    return type(net).__qualname__, repr(config) if config is not None else shapes, str(torch.device(device))


def _mode(device: torch.device) -> Hashable:
    device_type = torch.device(device).type
    autocast_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    return torch.is_grad_enabled(), autocast_dtype


def cached_memory_model(key: Hashable, fn: ImageFunction, images: torch.Tensor, size_multiple: int = 1) -> MemoryModel:
    """The memory model of ``fn`` for inputs like ``images`` (B, C, H, W), measured once per ``key``, grad mode,
    autocast dtype, input dtype and channels (``key``: e.g. :func:`network_memory_key`; None: measured every time)."""
    def measure() -> MemoryModel:
        return measure_memory_model(fn, images.shape[1], images.device, images.dtype, size_multiple)

    if key is None:
        return measure()
    full_key = (key, _mode(images.device), images.dtype, images.shape[1])
    if full_key not in _CACHE:
        _CACHE[full_key] = measure()
    return _CACHE[full_key]
