"""``python scripts/benchmark.py ...`` runs ``benchmarks/benchmark.py``, where the benchmark moved."""
import os.path as osp
import runpy
import sys

BENCHMARKS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'benchmarks')
sys.path.insert(0, BENCHMARKS)  # its shared module, as when it runs from benchmarks/
runpy.run_path(osp.join(BENCHMARKS, 'benchmark.py'), run_name='__main__')
