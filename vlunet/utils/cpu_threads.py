"""How many CPU threads a run uses: ``OMP_NUM_THREADS`` when set, else the CPUs idle when it starts.

OpenMP threads wait for each other at every parallel region, so one thread sharing its core with another busy
process stalls them all. Measured on 2-core machines: with one core busy, training took 11-17 s per iteration
with 2 threads and 0.66 s with 1; at a load average of 15-18, 67 s per iteration with 2 threads and 5.8 s with 1.
Every entry point on the CPU (``vlunet/train.py``, ``vlunet/test.py``, ``scripts/inference.py``,
``scripts/demo.py``) applies :func:`use_cpu_threads` and prints the count and why.
"""
import math
import os
from typing import Tuple

import torch


def choose_threads(cpus: int, load: float) -> int:
    """Threads for ``cpus`` usable CPUs at a 1-minute ``load`` average: the idle CPUs, at least 1, at most ``cpus``."""
    return max(1, min(cpus, math.floor(cpus - load + 0.5)))


def cpu_threads() -> Tuple[int, str]:
    """The CPU thread count and why: ``OMP_NUM_THREADS`` if set, else :func:`choose_threads` of this machine."""
    if os.environ.get('OMP_NUM_THREADS', '').isdigit() and int(os.environ['OMP_NUM_THREADS']) > 0:
        return int(os.environ['OMP_NUM_THREADS']), 'from OMP_NUM_THREADS'
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else 0.0
    return choose_threads(cpus, load), (f'{cpus} CPU(s) usable, 1-minute load average {load:.2f}; set '
                                        'OMP_NUM_THREADS to choose another number')


def use_cpu_threads(announce: bool = True) -> int:
    """Set torch's CPU thread count by :func:`cpu_threads`, print it (when ``announce``) and return it."""
    threads, reason = cpu_threads()
    torch.set_num_threads(threads)
    if announce:
        print(f'CPU: {threads} thread(s) ({reason})', flush=True)
    return threads
