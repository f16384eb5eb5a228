"""Compatibility fixes for basicsr 1.4.2 (the current PyPI release) on today's torch/torchvision.

Applied once by ``import vlunet`` (see :func:`apply`). Each fix names the BasicSR behaviour it
replaces; on a CUDA machine BasicSR's behaviour is kept except where it is a plain bug (the global
rank used as the GPU index). Every deviation from BasicSR is logged when it takes effect.

1. ``basicsr.data.degradations`` imports ``torchvision.transforms.functional_tensor``, removed in
   torchvision 0.17, so ``import basicsr`` fails. We register an alias module exposing the one
   function BasicSR uses (``rgb_to_grayscale``) from ``torchvision.transforms.functional``.
2. ``basicsr.train.load_resume_state`` maps the resume state to CUDA, which crashes without a GPU.
   Without CUDA we load it onto the CPU; with CUDA BasicSR's function runs unchanged.
3. ``basicsr.utils.dist_util._init_dist_pytorch`` always uses NCCL and calls
   ``torch.cuda.set_device(RANK % device_count)`` (ZeroDivisionError without GPUs, and the wrong
   GPU on the second node). We use gloo when CUDA is unavailable and ``LOCAL_RANK`` for the device.
4. ``BaseModel.model_to_device`` wraps DistributedDataParallel with CUDA ``device_ids``; on CPU
   DDP must get none.
5. ``python -m torch.distributed.launch`` (torch >= 2.0) passes ``--local-rank=N`` while BasicSR's
   parser knows only ``--local_rank``; :func:`normalize_local_rank_argument` rewrites the former
   (called by ``vlunet.train`` / ``vlunet.test``, since argv belongs to the entry point).
"""
import importlib
import logging
import os
import os.path as osp
import sys
import types
from typing import List

import torch

_LOGGER = logging.getLogger('basicsr')
_applied = False


def _install_functional_tensor_alias() -> None:
    name = 'torchvision.transforms.functional_tensor'
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        from torchvision.transforms import functional
        alias = types.ModuleType(name)
        alias.rgb_to_grayscale = functional.rgb_to_grayscale
        sys.modules[name] = alias


def _load_resume_state_on_cpu(opt: dict):
    """BasicSR's ``load_resume_state`` with ``map_location='cpu'``, used only without CUDA."""
    from basicsr.utils import scandir
    from basicsr.utils.misc import check_resume

    resume_state_path = None
    if opt['auto_resume']:
        state_dir = osp.join('experiments', opt['name'], 'training_states')
        iters = [int(name[:-len('.state')]) for name in scandir(state_dir, suffix='.state')] if osp.isdir(
            state_dir) else []
        if iters:
            resume_state_path = osp.join(state_dir, f'{max(iters)}.state')
            opt['path']['resume_state'] = resume_state_path
    else:
        resume_state_path = opt['path'].get('resume_state')
    if not resume_state_path:
        return None
    _LOGGER.info('vlunet.compat: CUDA is unavailable, loading the resume state %s on the CPU.',
                 resume_state_path)
    resume_state = torch.load(resume_state_path, map_location='cpu', weights_only=False)
    check_resume(opt, resume_state['iter'])
    return resume_state


def _patch_load_resume_state() -> None:
    import basicsr.train
    original = basicsr.train.load_resume_state

    def load_resume_state(opt: dict):
        if torch.cuda.is_available():
            return original(opt)
        return _load_resume_state_on_cpu(opt)

    basicsr.train.load_resume_state = load_resume_state


def _init_dist_pytorch(backend: str = 'nccl', **kwargs) -> None:
    """Initialise ``torch.distributed`` from torchrun's environment (RANK, LOCAL_RANK, ...)."""
    import torch.distributed as dist
    if torch.cuda.is_available():
        local_rank = int(os.environ.get('LOCAL_RANK', os.environ['RANK']))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    elif backend == 'nccl':
        backend = 'gloo'
        print('vlunet.compat: CUDA is unavailable, using the gloo backend for distributed training.',
              flush=True)
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
    _applied = True
