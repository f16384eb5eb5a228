"""Shared start-up of ``vlunet.train`` and ``vlunet.test``: argv fix-up and option checking."""
import argparse
import os
import sys
from typing import Callable

from torch import distributed

from vlunet import compat
from vlunet.options import OptionError, check_option_file


def run_pipeline(pipeline: Callable[[str], None], is_train: bool) -> None:
    """Check the ``-opt`` file, then run a BasicSR pipeline rooted at the current directory.

    Outputs (``experiments/``, ``results/``, ``tb_logger/``) go under the directory the command is
    run from, also when vlunet is pip-installed: basicsr 1.4.2 puts them under ``root_path``.
    The process group BasicSR opened is closed at the end (basicsr never does; gloo ranks that exit
    with it still open can abort with SIGABRT at interpreter shutdown).
    """
    sys.argv = compat.normalize_local_rank_argument(sys.argv)
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt')
    known, _ = parser.parse_known_args()
    if known.opt is not None:
        try:
            warnings = check_option_file(known.opt, is_train)
        except OptionError as err:
            sys.exit(f'error: {err}')
        for warning in warnings:
            print(f'warning: {known.opt}: {warning}', file=sys.stderr, flush=True)
    pipeline(os.getcwd())
    if distributed.is_available() and distributed.is_initialized():
        distributed.barrier()  # no rank tears the group down while another still uses it
        distributed.destroy_process_group()
