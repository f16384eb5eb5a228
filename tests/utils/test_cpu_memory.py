"""keep_freed_memory: a freed large block's pages are reused (no new page faults), the held bytes count as
available to the CPU memory budget, and VLUNET_KEEP_FREED_MEMORY=0 keeps glibc's defaults. Each case runs in
a fresh interpreter: the setting changes the whole process."""
import json
import os
import platform
import subprocess
import sys

import psutil
import pytest

from vlunet.tiling import memory_model
from vlunet.utils import cpu_memory

from helpers import REPO_ROOT

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='mallopt is glibc-only')

PROBE = r'''
import json, resource, torch
from vlunet.utils import cpu_memory
kept = cpu_memory.keep_freed_memory()
size = 64 << 20  # above glibc's largest mmap threshold (32 MiB)
torch.empty(size, dtype=torch.uint8).fill_(1)  # allocated, touched, freed
held = cpu_memory.held_free_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.empty(size - (4 << 20), dtype=torch.uint8).fill_(2)  # fits the freed block wherever it lies in the heap
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({'kept': kept, 'again': cpu_memory.keep_freed_memory(), 'held': held, 'faults': faults,
                  'pages': size // resource.getpagesize()}))
'''


def probe(**environment: str) -> dict:
    completed = subprocess.run([sys.executable, '-c', PROBE], env={**os.environ, **environment},
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.multiprocess
def test_freed_pages_are_reused_and_counted_as_available():
    result = probe()
    assert result['kept'] and result['again']
    assert result['held'] >= 64 << 20
    assert result['faults'] < result['pages'] // 10  # the second, 60 MiB block reuses the first one's pages


@pytest.mark.multiprocess
def test_the_environment_variable_keeps_the_system_default():
    result = probe(VLUNET_KEEP_FREED_MEMORY='0')
    assert not result['kept'] and result['held'] == 0


def test_a_value_that_is_no_switch_is_an_error(monkeypatch):
    monkeypatch.setattr(cpu_memory, '_applied', False)
    monkeypatch.setenv('VLUNET_KEEP_FREED_MEMORY', 'maybe')
    with pytest.raises(ValueError, match=r"VLUNET_KEEP_FREED_MEMORY='maybe' is not a switch: use 0"):
        cpu_memory.keep_freed_memory()
    monkeypatch.setenv('VLUNET_KEEP_FREED_MEMORY', 'Off')
    assert not cpu_memory.keep_freed_memory() and not cpu_memory.freed_memory_kept()


def test_the_cpu_budget_counts_the_held_memory_as_available(monkeypatch):
    monkeypatch.setattr(psutil, 'virtual_memory', lambda: type('Memory', (), {'available': 6 << 30})())
    monkeypatch.setattr(memory_model, 'held_free_bytes', lambda: 2 << 30)
    budget, _ = memory_model.available_memory('cpu')
    assert budget == int(memory_model.AVAILABLE_FRACTION * (8 << 30))


@pytest.mark.multiprocess
def test_an_entry_point_reports_a_bad_switch_before_any_work(tmp_path):
    train = os.path.join(REPO_ROOT, 'vlunet', 'train.py')
    completed = subprocess.run([sys.executable, train, '-opt', 'missing.yml'], cwd=tmp_path, capture_output=True,
                               text=True, timeout=120, env={**os.environ, 'VLUNET_KEEP_FREED_MEMORY': 'maybe'})
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1].startswith(
        "error: VLUNET_KEEP_FREED_MEMORY='maybe' is not a switch")
    assert list(tmp_path.iterdir()) == []
