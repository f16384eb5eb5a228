"""Compare restoration methods on the same images (see ``vlunet/compare/cli.py`` or ``--help``).

Usage: ``python scripts/compare.py -m NAME=OPTION_FILE.yml [-m ...] [-opt TEST_OPTION_FILE] [-o results/compare]``;
the same as the installed ``vlunet-compare``.
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from vlunet.compare.cli import main  # noqa: E402
from vlunet.utils.cpu_memory import keep_freed_memory_in_entry_point  # noqa: E402

if __name__ == '__main__':
    keep_freed_memory_in_entry_point()  # a process of its own: reuse freed CPU memory (vlunet/utils/cpu_memory.py)
    sys.exit(main())
