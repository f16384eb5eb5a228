"""What vlunet adds to BasicSR's own pipelines and entry points (``python -m basicsr.train``, ``basicsr/train.py``,
likewise ``test``; vlunet is imported by ``vlunet_basicsr_hook``), besides the compatibility fixes of
:mod:`vlunet.compat`.

Installed once by ``import vlunet`` (:func:`install`); each change says once, in the run's log, what it did.

6. BasicSR's pipelines print the whole network structure, the option dump and a version banner
   (about 500 lines) on the console, and the training eta is one iteration off (``eta: -1 day,
   23:59:58`` at the last). The console handler of their logger skips those records (the log file
   keeps them), ``print_network`` writes the structure to the log file only, and the eta is
   (iterations left) x (time per iteration).
9. BasicSR's own train/test scripts (7) put ``experiments/``, ``results/`` and ``tb_logger/`` under
   the folder above the basicsr package: site-packages when basicsr is pip-installed (``python -m
   basicsr.train``), while ``--auto_resume`` looks under the current directory. When that root is a
   site-packages folder we use the current directory, as vlunet's entry points do; a BasicSR source
   tree stays the root.
10. BasicSR's own entry points (7) check nothing before creating folders and let two runs train the
   same experiment. There, as in ``vlunet/train.py``, the options are checked first (with
   ``--force_yml`` applied; nothing is created when they fail), the CPU thread count is chosen
   (:mod:`vlunet.utils.cpu_threads`) and a training run holds the experiment lock
   (``vlunet/utils/experiment_lock.py``) until the process ends.
11. ``BaseModel.load_network`` relies on torch's default ``weights_only=True``: a bad weight file raises
   whatever torch raises, without naming the file. It now reads through ``safe_torch_load``: one
   ``BadFileError`` naming the file and its ``path.*`` option. ``resume_training`` first checks the
   optimiser states against the network (a wrong shape would crash the first step).
"""
import os
import sys

import torch

from vlunet.command_line import VERBOSE_FLAG, check_command_line, normalize_local_rank_argument, output_root
from vlunet.compat import adopt_pipeline_fixes_in_main, report_in_log
from vlunet.utils import console_log
from vlunet.utils.cpu_threads import use_cpu_threads
from vlunet.utils.experiment_lock import ExperimentLockedError, acquire_training_lock
from vlunet.utils.resume_state import check_optimizer_shapes
from vlunet.utils.safe_load import (
    BadFileError,
    WrongContentsError,
    load_checked_state_dict,
    one_line,
    require_state_dict,
    safe_torch_load,
)

_installed = False


def _patch_load_network() -> None:
    """11. BasicSR's ``load_network`` reads through :func:`~vlunet.utils.safe_load.safe_torch_load`: every bad
    file is one :class:`~vlunet.utils.safe_load.BadFileError` naming the file and its ``path.*`` option; and
    ``resume_training`` checks the optimiser tensors' shapes first."""
    from basicsr.models.base_model import BaseModel
    from basicsr.utils import get_root_logger

    original_resume = BaseModel.resume_training

    def load_network(self, net: torch.nn.Module, load_path: str, strict: bool = True, param_key: str = 'params'):
        net = self.get_bare_model(net)
        option = next((f'path.{key}' for key, value in (getattr(self, 'opt', None) or {}).get('path', {}).items()
                       if value == load_path),
                      'network weights')
        description = f'{option} ({type(net).__name__} weights)'
        fix = (f'give a BasicSR weight file ({{"params": state_dict}}) saved from a {type(net).__name__} built '
               'with these options')
        checkpoint = safe_torch_load(load_path, description)
        if param_key is not None:
            if not isinstance(checkpoint, dict) or not ({param_key, 'params'} & set(checkpoint)):
                held = sorted(map(str, checkpoint))[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
                raise WrongContentsError(f'{description} {load_path} has no {param_key!r} entry (it holds {held}): '
                                         f'{fix}.')
            param_key = param_key if param_key in checkpoint else 'params'
            checkpoint = checkpoint[param_key]
        state = require_state_dict(checkpoint, load_path, description, fix)
        state = {key[len('module.'):] if key.startswith('module.') else key: value for key, value in state.items()}
        get_root_logger().info(f'Loading {type(net).__name__} model from {load_path}, with param key: [{param_key}].')
        self._print_different_keys_loading(net, state, strict)
        load_checked_state_dict(net, state, load_path, description, fix, strict)

    def resume_training(self, resume_state: dict) -> None:
        path = self.opt['path'].get('resume_state') or 'resume state'
        check_optimizer_shapes(self.optimizers, resume_state['optimizers'], path)
        if len(resume_state['optimizers']) != len(self.optimizers) or \
                len(resume_state['schedulers']) != len(self.schedulers):
            raise WrongContentsError(
                f'resume state {path} holds {len(resume_state["optimizers"])} optimiser(s) and '
                f'{len(resume_state["schedulers"])} scheduler(s), this training {len(self.optimizers)} and '
                f'{len(self.schedulers)}: resume with the option file of the training that wrote it.')
        original_resume(self, resume_state)

    BaseModel.load_network = load_network
    BaseModel.resume_training = resume_training


def _patch_console_output() -> None:
    """6. A readable console (:mod:`vlunet.utils.console_log`): the network structure, the option dump and
    the version banner go to the log file only, and the training eta is never negative."""
    import basicsr.test
    import basicsr.train
    from basicsr.models.base_model import BaseModel

    for pipeline in (basicsr.train, basicsr.test):
        pipeline.get_root_logger = console_log.with_quiet_console(pipeline.get_root_logger)
        pipeline.dict2str = console_log.file_only(pipeline.dict2str)
        pipeline.get_env_info = console_log.file_only(pipeline.get_env_info)
    basicsr.train.MessageLogger = console_log.IterationTimeMessageLogger
    BaseModel.print_network = console_log.print_network


_held_locks: list = []  # experiment locks of BasicSR's own entry points, held until the process ends


def _report_bad_files_in_one_line(verbose: bool) -> None:
    """A :class:`~vlunet.utils.safe_load.BadFileError` that ends the process prints one line (``--verbose``: the
    traceback), as under ``vlunet/train.py``."""
    previous = sys.excepthook

    def excepthook(kind, error, traceback) -> None:
        if issubclass(kind, BadFileError) and not verbose:
            print(f'error: {one_line(error, 2000)}', file=sys.stderr, flush=True)
        else:
            previous(kind, error, traceback)

    sys.excepthook = excepthook


def _check_and_lock_for_basicsr_entry(root_path: str, is_train: bool) -> None:
    """10. BasicSR's own entry points get what ``vlunet/train.py`` does first: the option check and the lock; a bad
    file is one line (``--verbose``, ours, taken off before BasicSR's parser: the traceback)."""
    _report_bad_files_in_one_line(VERBOSE_FLAG in sys.argv)
    sys.argv = [arg for arg in sys.argv if arg != VERBOSE_FLAG]
    check_command_line(sys.argv, is_train)  # exits with the problems before anything is created
    if not torch.cuda.is_available():
        use_cpu_threads(announce=int(os.environ.get('RANK', 0)) == 0)
    if not is_train:
        return
    try:
        _held_locks.append(acquire_training_lock(sys.argv[1:], root_path))
    except ExperimentLockedError as err:
        sys.exit(f'error: {err}')


def _patch_parse_options() -> None:
    """5, 7, 9, 10: BasicSR's ``parse_options`` (first call of both pipelines) fixes argv, ``__main__``, the root,
    and checks the options (and locks the experiment) under BasicSR's own entry points."""
    import basicsr.test
    import basicsr.train
    from basicsr.utils import options
    original = options.parse_options
    if getattr(original, 'vlunet_fixes', False):
        return

    def parse_options(root_path: str, is_train: bool = True):
        sys.argv = normalize_local_rank_argument(sys.argv)
        if adopt_pipeline_fixes_in_main():
            _check_and_lock_for_basicsr_entry(output_root(root_path), is_train)
        if output_root(root_path) != root_path:
            report_in_log(f'vlunet: outputs go under the current directory {os.getcwd()}, not under '
                           f'{root_path} (site-packages, where basicsr 1.4.2 would put them).')
        return original(output_root(root_path), is_train)

    parse_options.vlunet_fixes = True
    options.parse_options = basicsr.train.parse_options = basicsr.test.parse_options = parse_options


def install() -> None:
    """Install the additions once; safe to call repeatedly."""
    global _installed
    if _installed:
        return
    _patch_load_network()
    _patch_console_output()
    _patch_parse_options()
    _installed = True
