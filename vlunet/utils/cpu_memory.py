"""Keep freed CPU memory in the process for reuse, instead of returning it to the system at every free.

glibc's ``malloc`` serves every block of 32 MiB or more (one VLU-Net GDFN map of a 2 x 128 x 128 batch
is 64 MiB) with fresh ``mmap`` pages and unmaps them when the tensor is freed. A CPU training step then
faults its large feature maps in again page by page: 300,000 to 500,000 page faults and more than a
second of system time per VLU-Net step at batch 2, 128 x 128 (measured on a 2-core Xeon). Serving
them from the heap and keeping the freed heap makes the next step reuse the same pages.

:func:`keep_freed_memory` is called by vlunet's entry points (``vlunet/train.py`` and ``vlunet/test.py``
through :mod:`vlunet.entry`; ``scripts/inference.py``, ``benchmarks/benchmark.py`` and ``benchmarks/benchmark_irsde.py``
when run as scripts), never on ``import vlunet`` or by a ``main()`` called in-process: it changes the whole
process. The process's memory then stays at its peak until it exits (as with PyTorch's CUDA caching
allocator); the peak grows little (6.6 to 6.8 GB in a VLU-Net training run at batch 2, 128 x 128), and
:func:`held_free_bytes` tells how much of it is free for reuse (the CPU memory budget of ``tile: auto``
counts it as available). Set ``VLUNET_KEEP_FREED_MEMORY=0`` to keep glibc's defaults; other C libraries
(macOS, musl) are left alone.
"""
import ctypes
import os
import platform
import sys

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_MAX = -4
SWITCH_VARIABLE = 'VLUNET_KEEP_FREED_MEMORY'
SWITCH_VALUES = {'1': True, 'true': True, 'yes': True, 'on': True, '0': False, 'false': False, 'no': False,
                 'off': False}
_applied = False


def keep_freed_memory() -> bool:
    """Serve large blocks from glibc's heap and never trim it (``mallopt``). Returns whether it is in effect.

    No effect (False) outside glibc or with ``VLUNET_KEEP_FREED_MEMORY=0`` (or false/no/off). Idempotent.
    Raises ValueError for another value of the variable.
    """
    global _applied
    if _applied:
        return True
    value = os.environ.get(SWITCH_VARIABLE, '1')
    switch = SWITCH_VALUES.get(value.strip().lower())
    if switch is None:
        raise ValueError(f'{SWITCH_VARIABLE}={value!r} is not a switch: use 0 to keep glibc\'s default allocator, '
                         '1 (the default) to keep freed memory for reuse')
    if not switch or platform.libc_ver()[0] != 'glibc':
        return False
    try:
        libc = ctypes.CDLL('libc.so.6')
    except OSError:
        return False
    _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))
    return _applied


def keep_freed_memory_in_entry_point() -> None:
    """:func:`keep_freed_memory` for a command's process: a bad ``VLUNET_KEEP_FREED_MEMORY`` exits with its message."""
    try:
        keep_freed_memory()
    except ValueError as err:
        sys.exit(f'error: {err}')


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process."""
    return _applied


class _MallocInfo(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (malloc.h, glibc >= 2.33)."""
    _fields_ = [(name, ctypes.c_size_t) for name in ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
                                                     'fsmblks', 'uordblks', 'fordblks', 'keepcost')]


def held_free_bytes() -> int:
    """Bytes this process holds freed for reuse while :func:`keep_freed_memory` is in effect (else 0)."""
    if not _applied:
        return 0
    mallinfo2 = getattr(ctypes.CDLL('libc.so.6'), 'mallinfo2', None)
    if mallinfo2 is None:
        return 0
    mallinfo2.restype = _MallocInfo
    return int(mallinfo2().fordblks)
