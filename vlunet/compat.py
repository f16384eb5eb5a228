"""Compatibility fixes for basicsr 1.4.2 (the current PyPI release) on today's torch/torchvision.

Applied once by ``import vlunet`` (see :func:`apply`). Each fix names the BasicSR behaviour it
replaces; on a CUDA machine BasicSR's behaviour is kept except where it is a plain bug (the global
rank used as the GPU index). Every deviation from BasicSR says once what it changed when it takes
effect: in the run's log (written when BasicSR has set up its logger; nothing is printed when
vlunet is only used as a library) or, for the per-process distributed fixes, on the console.

1. ``basicsr.data.degradations`` imports ``torchvision.transforms.functional_tensor``, removed in
   torchvision 0.17, so ``import basicsr`` fails. We register an alias module exposing the one
   function BasicSR uses (``rgb_to_grayscale``) from ``torchvision.transforms.functional``
   (:func:`vlunet_basicsr_hook.install_functional_tensor_alias`; the hook installs it too, before
   BasicSR's own entry points import basicsr).
2. ``basicsr.train.load_resume_state`` maps the resume state to CUDA, which crashes without a GPU.
   We load it with :mod:`vlunet.utils.resume_state` (``safe_torch_load``: never runs code from the file;
   checked contents; ``--auto_resume`` falls back to the previous good state when the newest is damaged)
   onto the current CUDA device, or the CPU without CUDA.
3. ``basicsr.utils.dist_util._init_dist_pytorch`` always uses NCCL and calls
   ``torch.cuda.set_device(RANK % device_count)`` (ZeroDivisionError without GPUs, and the wrong
   GPU on the second node). We use gloo when CUDA is unavailable and ``LOCAL_RANK`` for the device.
4. ``BaseModel.model_to_device`` wraps DistributedDataParallel with CUDA ``device_ids``; on CPU
   DDP must get none.
5. ``python -m torch.distributed.launch`` (torch >= 2.0) passes ``--local-rank=N`` while BasicSR's
   parser knows only ``--local_rank``; :func:`normalize_local_rank_argument` rewrites the former
   (called by ``vlunet.train`` / ``vlunet.test``, and by BasicSR's ``parse_options``, see 7).
6. BasicSR's pipelines print the whole network structure, the option dump and a version banner
   (about 500 lines) on the console, and the training eta is one iteration off (``eta: -1 day,
   23:59:58`` at the last). The console handler of their logger skips those records (the log file
   keeps them), ``print_network`` writes the structure to the log file only, and the eta is
   (iterations left) x (time per iteration).
7. BasicSR's own entry points (``python -m basicsr.train``, ``python <BasicSR>/basicsr/train.py``,
   likewise ``test``; vlunet is imported by ``vlunet_basicsr_hook``) run the pipeline as
   ``__main__``, a second copy of ``basicsr/train.py`` whose globals never saw the fixes above. The
   first thing the pipeline calls is ``basicsr.utils.options.parse_options``; ours normalises
   ``--local-rank`` (5) and, when ``__main__`` is BasicSR's train/test script, gives it the globals of
   ``basicsr.train`` / ``basicsr.test`` (with the fixes: CPU resume, readable console) before the
   pipeline looks any of them up.
8. ``Registry._do_register`` asserts when a name is registered twice, also when the same file is
   imported again under another module name (by path with ``importlib``, ``python -m`` of a plugin
   file, a folder inside the package on ``sys.path``), so the second import crashes. A second
   registration of the same definition (same qualified name and source file) now keeps the first
   one; a different object under a taken name is still refused, with both definitions named.
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
12. BasicSR counts epochs per process: a state written by 2 processes and resumed in one ended training
   at once ("End of training" after 0 iterations). The epoch count now reaches ``total_iter``.
"""
import inspect
import logging
import os
import os.path as osp
import sys
from typing import List

import torch
from vlunet_basicsr_hook import install_functional_tensor_alias

_LOGGER = logging.getLogger('basicsr')
_applied = False


class _ReportWhenLogIsReady(logging.Handler):
    """Handler of the ``basicsr`` logger that logs the queued reports before its first record.

    BasicSR sets its logger up (handlers, INFO level on rank 0, ERROR elsewhere) only inside its
    pipelines, after the import-time fixes took effect; the first record that reaches the handlers
    means the log is ready. The reports go first, once, to the console and the run's log file.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reports: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        reports, self.reports = self.reports, []
        for report in reports:
            _LOGGER.info(report)


_PENDING_REPORTS = _ReportWhenLogIsReady()


def _report_in_log(message: str) -> None:
    """Log ``message`` once through BasicSR's logger as soon as it is set up."""
    if _PENDING_REPORTS not in _LOGGER.handlers:
        _LOGGER.addHandler(_PENDING_REPORTS)
    _PENDING_REPORTS.reports.append(message)


def _install_functional_tensor_alias() -> None:
    if install_functional_tensor_alias():
        _report_in_log('vlunet.compat: torchvision.transforms.functional_tensor (removed in torchvision 0.17, '
                       'imported by basicsr 1.4.2) is an alias of torchvision.transforms.functional.')


def _patch_load_resume_state() -> None:
    """2. Resume states through :mod:`vlunet.utils.resume_state` (safe, checked, auto-resume fallback), on the CPU
    without CUDA; 12. epochs reach ``total_iter`` whatever the world size the state was written with."""
    import basicsr.train

    from vlunet.utils import resume_state as resume
    resumed = {}

    def warn(message: str) -> None:
        resume.print_warning(message)
        _report_in_log(message)

    def load_resume_state(opt: dict):
        opt['root_path'] = _output_root(opt['root_path'])  # 9: train_pipeline has just set it (tb_logger/)
        map_location = f'cuda:{torch.cuda.current_device()}' if torch.cuda.is_available() else 'cpu'
        state = resume.load_resume_state(opt, map_location, warn)
        if state is not None:
            if map_location == 'cpu':
                _report_in_log(f'vlunet.compat: CUDA is unavailable, the resume state {opt["path"]["resume_state"]} '
                               'was loaded on the CPU.')
            check_resume(opt, state['iter'])
        resumed['state'] = state
        return state

    def create_train_val_dataloader(opt: dict, logger):
        train_loader, sampler, val_loaders, total_epochs, total_iters = original_loaders(opt, logger)
        epochs = resume.epochs_to_total_iter(total_epochs, len(train_loader) if train_loader else 0,
                                             resumed.get('state'), total_iters)
        if epochs != total_epochs:
            logger.info(f'vlunet.compat: the resume state was written with another number of processes (or dataset '
                        f'size); {epochs} epochs (not {total_epochs}) reach train.total_iter {total_iters}.')
        return train_loader, sampler, val_loaders, epochs, total_iters

    from basicsr.utils.misc import check_resume
    original_loaders = basicsr.train.create_train_val_dataloader
    basicsr.train.load_resume_state = load_resume_state
    basicsr.train.create_train_val_dataloader = create_train_val_dataloader


def _init_dist_pytorch(backend: str = 'nccl', **kwargs) -> None:
    """Initialise ``torch.distributed`` from torchrun's environment (RANK, LOCAL_RANK, ...)."""
    import torch.distributed as dist
    if torch.cuda.is_available():
        rank, count = int(os.environ['RANK']), torch.cuda.device_count()
        local_rank = int(os.environ.get('LOCAL_RANK', rank))
        torch.cuda.set_device(local_rank % count)
        if local_rank % count != rank % count:
            print(f'vlunet.compat: rank {rank} uses GPU {local_rank % count} (LOCAL_RANK={local_rank}); '
                  f'basicsr 1.4.2 would use RANK % {count} = {rank % count}.', flush=True)
    elif backend == 'nccl':
        backend = 'gloo'
        print('vlunet.compat: CUDA is unavailable, using the gloo backend for distributed training '
              '(basicsr 1.4.2: NCCL), and DistributedDataParallel on the CPU without CUDA device_ids.', flush=True)
    dist.init_process_group(backend=backend, **kwargs)


def _patch_init_dist() -> None:
    from basicsr.utils import dist_util
    dist_util._init_dist_pytorch = _init_dist_pytorch


def _patch_model_to_device() -> None:
    from basicsr.models.base_model import BaseModel
    from torch.nn.parallel import DistributedDataParallel
    original = BaseModel.model_to_device

    def model_to_device(self, net: torch.nn.Module) -> torch.nn.Module:
        if self.opt['dist'] and self.device.type == 'cpu':
            return DistributedDataParallel(
                net.to(self.device), find_unused_parameters=self.opt.get('find_unused_parameters', False))
        return original(self, net)

    BaseModel.model_to_device = model_to_device


def _patch_load_network() -> None:
    """11. BasicSR's ``load_network`` reads through :func:`~vlunet.utils.safe_load.safe_torch_load`: every bad
    file is one :class:`~vlunet.utils.safe_load.BadFileError` naming the file and its ``path.*`` option; and
    ``resume_training`` checks the optimiser tensors' shapes first."""
    from basicsr.models.base_model import BaseModel
    from basicsr.utils import get_root_logger

    from vlunet.utils.resume_state import check_optimizer_shapes
    from vlunet.utils.safe_load import WrongContentsError, load_checked_state_dict, require_state_dict, \
        safe_torch_load
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

    from vlunet.utils import console_log
    for pipeline in (basicsr.train, basicsr.test):
        pipeline.get_root_logger = console_log.with_quiet_console(pipeline.get_root_logger)
        pipeline.dict2str = console_log.file_only(pipeline.dict2str)
        pipeline.get_env_info = console_log.file_only(pipeline.get_env_info)
    basicsr.train.MessageLogger = console_log.IterationTimeMessageLogger
    BaseModel.print_network = console_log.print_network


def _adopt_pipeline_fixes_in_main() -> bool:
    """7. When ``__main__`` is BasicSR's train/test script, give it the fixed ``basicsr.train``/``test`` globals.

    Returns whether ``__main__`` is BasicSR's script (``python -m basicsr.train``, ``basicsr/train.py``).
    """
    import basicsr.test
    import basicsr.train
    main = sys.modules.get('__main__')
    for pipeline, function in ((basicsr.train, 'train_pipeline'), (basicsr.test, 'test_pipeline')):
        running = getattr(main, function, None)
        if main is pipeline or getattr(running, '__globals__', None) is not vars(main):
            continue  # not defined by the script itself (e.g. imported from basicsr.train)
        if running.__code__.co_code != getattr(pipeline, function).__code__.co_code:
            continue  # somebody's own script with a function of that name
        for name, value in vars(pipeline).items():
            if not name.startswith('__') and name != function:
                setattr(main, name, value)
        _report_in_log(f'vlunet.compat: {main.__file__} runs as __main__; it uses the fixes of {pipeline.__name__}.')
        return True
    return False


_held_locks: list = []  # experiment locks of BasicSR's own entry points, held until the process ends


def _report_bad_files_in_one_line(verbose: bool) -> None:
    """A :class:`~vlunet.utils.safe_load.BadFileError` that ends the process prints one line (``--verbose``: the
    traceback), as under ``vlunet/train.py``."""
    from vlunet.utils.safe_load import BadFileError, one_line
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
    from vlunet.entry import VERBOSE_FLAG, check_command_line
    _report_bad_files_in_one_line(VERBOSE_FLAG in sys.argv)
    sys.argv = [arg for arg in sys.argv if arg != VERBOSE_FLAG]
    from vlunet.utils.cpu_threads import use_cpu_threads
    from vlunet.utils.experiment_lock import ExperimentLockedError, acquire_training_lock
    check_command_line(sys.argv, is_train)  # exits with the problems before anything is created
    if not torch.cuda.is_available():
        use_cpu_threads(announce=int(os.environ.get('RANK', 0)) == 0)
    if not is_train:
        return
    try:
        _held_locks.append(acquire_training_lock(sys.argv[1:], root_path))
    except ExperimentLockedError as err:
        sys.exit(f'error: {err}')


def _is_site_packages(folder: str) -> bool:
    """A folder of installed distributions (a site directory, or one holding ``*.dist-info``)."""
    import glob
    import site
    import sysconfig
    folders = {sysconfig.get_paths()[key] for key in ('purelib', 'platlib')}
    folders.update(site.getsitepackages() + [site.getusersitepackages()])
    is_site_dir = osp.realpath(folder) in {osp.realpath(f) for f in folders}
    return is_site_dir or bool(glob.glob(osp.join(folder, '*.dist-info')))


def _output_root(root_path: str) -> str:
    """9. The current directory instead of a site-packages folder as BasicSR's ``root_path``."""
    return os.getcwd() if _is_site_packages(root_path) else root_path


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
        if _adopt_pipeline_fixes_in_main():
            _check_and_lock_for_basicsr_entry(_output_root(root_path), is_train)
        if _output_root(root_path) != root_path:
            _report_in_log(f'vlunet.compat: outputs go under the current directory {os.getcwd()}, not under '
                           f'{root_path} (site-packages, where basicsr 1.4.2 would put them).')
        return original(_output_root(root_path), is_train)

    parse_options.vlunet_fixes = True
    options.parse_options = basicsr.train.parse_options = basicsr.test.parse_options = parse_options


def _definition(obj: object) -> tuple:
    """(qualified name, real source file) of a registered class or function; the file is None if unknown.

    The file comes from the code objects (a module imported by path need not be in ``sys.modules``).
    """
    functions = [obj] if inspect.isfunction(obj) else [
        value for value in vars(obj).values() if inspect.isfunction(value)] if isinstance(obj, type) else []
    source = osp.realpath(functions[0].__code__.co_filename) if functions else None
    return getattr(obj, '__qualname__', repr(obj)), source


def _patch_registry() -> None:
    from basicsr.utils.registry import Registry
    original = Registry._do_register
    if getattr(original, 'vlunet_fixes', False):
        return

    def _do_register(self, name: str, obj: object, suffix=None) -> None:
        key = f'{name}_{suffix}' if isinstance(suffix, str) else name
        registered = self._obj_map.get(key)
        if registered is None:
            return original(self, name, obj, suffix)
        if _definition(registered) == _definition(obj) and _definition(obj)[1] is not None:
            return None  # the same file imported again under another module name: keep the first registration
        (first, first_file), (second, second_file) = _definition(registered), _definition(obj)
        raise ValueError(f'{self._name} registry: {key!r} is already registered by {registered.__module__}.{first} '
                         f'({first_file or "source unknown"}); {getattr(obj, "__module__", "?")}.{second} '
                         f'({second_file or "source unknown"}) is another object with that name: rename one of them.')

    _do_register.vlunet_fixes = True
    Registry._do_register = _do_register


def normalize_local_rank_argument(argv: List[str]) -> List[str]:
    """Return ``argv`` with ``--local-rank`` (torch >= 2.0 launcher) spelled ``--local_rank``."""
    return ['--local_rank' + arg[len('--local-rank'):] if arg.startswith('--local-rank') else arg for arg in argv]


def apply() -> None:
    """Apply all fixes once; safe to call repeatedly."""
    global _applied
    if _applied:
        return
    _install_functional_tensor_alias()
    _patch_load_resume_state()
    _patch_init_dist()
    _patch_model_to_device()
    _patch_load_network()
    _patch_console_output()
    _patch_parse_options()
    _patch_registry()
    _applied = True
