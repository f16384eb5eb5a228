"""Peak memory of a piece of work: allocated CUDA memory on a GPU, the process's resident memory (RSS) on the CPU.

On Linux the kernel's peak-RSS mark (``VmHWM``) can be reset (``/proc/self/clear_refs``), so the CPU
peak of each piece of work is measured on its own; elsewhere it is the process's peak so far.
"""
import resource
import time
from contextlib import contextmanager
from typing import Iterator, Optional

import torch


def rss_bytes(field: str) -> Optional[int]:
    """A memory field of ``/proc/self/status`` in bytes (``VmRSS``: now, ``VmHWM``: peak), None where unsupported."""
    try:
        with open('/proc/self/status', encoding='ascii') as status:
            for line in status:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux); False where unsupported."""
    try:
        with open('/proc/self/clear_refs', 'w', encoding='ascii') as clear_refs:
            clear_refs.write('5')
        return True
    except OSError:
        return False


class Measurement:
    """What :func:`measure` found: ``seconds`` and ``peak_bytes`` (CUDA: most memory allocated; CPU: peak RSS)."""
    seconds: float = 0.0
    peak_bytes: Optional[int] = None


@contextmanager
def measure(device: torch.device) -> Iterator[Measurement]:
    """Time the work inside (CUDA synchronised) and record its peak memory on ``device``."""
    result = Measurement()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resettable = True
    else:
        resettable = reset_peak_rss()
    start = time.perf_counter()
    yield result
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        result.peak_bytes = torch.cuda.max_memory_allocated(device)
    else:
        result.peak_bytes = rss_bytes('VmHWM') if resettable else resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss * 1024
    result.seconds = time.perf_counter() - start
