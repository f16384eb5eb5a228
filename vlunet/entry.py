"""Shared start-up of ``vlunet.train`` and ``vlunet.test``: argv fix-up, option checking, console verbosity."""
import contextlib
import io
import os
import sys
from typing import Callable

import torch
from torch import distributed

from vlunet.command_line import VERBOSE_FLAG, check_command_line, normalize_local_rank_argument
from vlunet.utils import console_log
from vlunet.utils.cpu_memory import keep_freed_memory_in_entry_point
from vlunet.utils.cpu_threads import use_cpu_threads
from vlunet.utils.experiment_lock import ExperimentLockedError, acquire_training_lock
from vlunet.utils.safe_load import report_bad_files
from vlunet.utils.training_interrupts import run_test, run_training


def print_help(pipeline: Callable[[str], None]) -> None:
    """BasicSR's ``--help`` (its parser prints it and exits in the pipeline's first call), with ``--verbose`` added."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
        pipeline(os.getcwd())
    print(text.getvalue().rstrip('\n'))
    print(f'  {VERBOSE_FLAG:<21} also print the network structure and the option dump on the console (always in '
          'the log file)')


def run_pipeline(pipeline: Callable[[str], None], is_train: bool) -> None:
    """Check the ``-opt`` file, then run a BasicSR pipeline rooted at the current directory.

    Outputs (``experiments/``, ``results/``, ``tb_logger/``) go under the directory the command is
    run from, also when vlunet is pip-installed: basicsr 1.4.2 puts them under ``root_path``.
    ``--verbose`` also shows the network structure and the option dump on the console (they are always
    in the log file) and the traceback of a bad file (else one line naming it, exit status 1). Without CUDA the CPU
    thread count follows :mod:`vlunet.utils.cpu_threads` (printed). Freed CPU
    memory is kept for reuse (:mod:`vlunet.utils.cpu_memory`). The process
    group BasicSR opened is closed at the end (basicsr never does; gloo ranks that exit with it still
    open can abort with SIGABRT at interpreter shutdown).
    """
    keep_freed_memory_in_entry_point()
    sys.argv = normalize_local_rank_argument(sys.argv)
    verbose = VERBOSE_FLAG in sys.argv
    console_log.set_verbose(verbose)
    sys.argv = [arg for arg in sys.argv if arg != VERBOSE_FLAG]  # ours, unknown to BasicSR's parser
    if {'-h', '--help'} & set(sys.argv[1:]):
        return print_help(pipeline)
    check_command_line(sys.argv, is_train)
    if not torch.cuda.is_available():  # the CPU thread count of every entry point (vlunet/utils/cpu_threads.py)
        use_cpu_threads(announce=int(os.environ.get('RANK', 0)) == 0)
    try:  # one training run per experiment (vlunet/utils/experiment_lock.py)
        lock = acquire_training_lock(sys.argv[1:], os.getcwd()) if is_train else contextlib.nullcontext()
    except ExperimentLockedError as err:
        sys.exit(f'error: {err}')
    with lock, report_bad_files(verbose):  # Ctrl-C / SIGTERM: one line; training saves the iteration done
        (run_training if is_train else run_test)(pipeline, os.getcwd())
    if distributed.is_available() and distributed.is_initialized():
        distributed.barrier()  # no rank tears the group down while another still uses it
        distributed.destroy_process_group()
