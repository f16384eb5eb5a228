"""Compatibility fixes for basicsr 1.4.2 (the current PyPI release) on today's torch/torchvision.

Applied once by ``import vlunet`` (see :func:`apply`). Each fix names the BasicSR behaviour it
replaces; on a CUDA machine BasicSR's behaviour is kept except where it is a plain bug (the global
rank used as the GPU index). Every deviation from BasicSR says once what it changed when it takes
effect: in the run's log (written when BasicSR has set up its logger; nothing is printed when
vlunet is only used as a library) or, for the per-process distributed fixes, on the console.
What vlunet adds to BasicSR's pipelines beyond fixes (items 6, 9, 10 and 11: readable console, output folder,
option check and lock, bad files in one line) is in :mod:`vlunet.basicsr_entry_points`.

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
   parser knows only ``--local_rank``; :func:`vlunet.command_line.normalize_local_rank_argument` rewrites
   the former (called by both kinds of entry point, and by BasicSR's ``parse_options``, see 7).
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


def report_in_log(message: str) -> None:
    """Log ``message`` once through BasicSR's logger as soon as it is set up."""
    if _PENDING_REPORTS not in _LOGGER.handlers:
        _LOGGER.addHandler(_PENDING_REPORTS)
    _PENDING_REPORTS.reports.append(message)


def _install_functional_tensor_alias() -> None:
    if install_functional_tensor_alias():
        report_in_log('vlunet.compat: torchvision.transforms.functional_tensor (removed in torchvision 0.17, '
                       'imported by basicsr 1.4.2) is an alias of torchvision.transforms.functional.')


def _patch_load_resume_state() -> None:
    """2. Resume states through :mod:`vlunet.utils.resume_state` (safe, checked, auto-resume fallback), on the CPU
    without CUDA; 12. epochs reach ``total_iter`` whatever the world size the state was written with."""
    from vlunet.command_line import output_root
    from vlunet.utils import resume_state as resume

    import basicsr.train
    resumed = {}

    def warn(message: str) -> None:
        resume.print_warning(message)
        report_in_log(message)

    def load_resume_state(opt: dict):
        opt['root_path'] = output_root(opt['root_path'])  # train_pipeline has just set it (tb_logger/)
        map_location = f'cuda:{torch.cuda.current_device()}' if torch.cuda.is_available() else 'cpu'
        state = resume.load_resume_state(opt, map_location, warn)
        if state is not None:
            if map_location == 'cpu':
                report_in_log(f'vlunet.compat: CUDA is unavailable, the resume state {opt["path"]["resume_state"]} '
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
    from torch.nn.parallel import DistributedDataParallel

    from basicsr.models.base_model import BaseModel
    original = BaseModel.model_to_device

    def model_to_device(self, net: torch.nn.Module) -> torch.nn.Module:
        if self.opt['dist'] and self.device.type == 'cpu':
            return DistributedDataParallel(
                net.to(self.device), find_unused_parameters=self.opt.get('find_unused_parameters', False))
        return original(self, net)

    BaseModel.model_to_device = model_to_device


def adopt_pipeline_fixes_in_main() -> bool:
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
        report_in_log(f'vlunet.compat: {main.__file__} runs as __main__; it uses the fixes of {pipeline.__name__}.')
        return True
    return False


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


def apply() -> None:
    """Apply all fixes once; safe to call repeatedly."""
    global _applied
    if _applied:
        return
    _install_functional_tensor_alias()
    _patch_load_resume_state()
    _patch_init_dist()
    _patch_model_to_device()
    _patch_registry()
    _applied = True
