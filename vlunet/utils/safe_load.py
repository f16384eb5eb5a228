"""Loading weight and state files without running code from them.

Every file vlunet reads with ``torch.load`` goes through :func:`safe_torch_load`: it unpickles with
``weights_only=True`` and an explicit allow-list (:data:`CHECKPOINT_GLOBALS`) of the few non-tensor
globals that the files we accept really contain. A file that needs anything else is refused before
any code from it runs, with a message naming the file and the refused globals. Full unpickling
(``weights_only=False``, which executes whatever the file says) happens only when the caller passes
``trusted=True`` — an explicit opt-in (``--trust-file`` on the command line), never a fallback.

Files and the globals they need beyond torch's own allow-list:

- our BasicSR training states (Adam/AdamW/SGD, MultiStepRestartLR / CosineAnnealingRestartLR,
  GradScaler) and checkpoints: nothing. They hold tensors, plain containers and
  ``collections.Counter`` (``MultiStepRestartLR.milestones``), which torch allows already; it is
  listed here too, should that change. tests/test_safe_loading.py checks this on real saved states;
- official VLU-Net Lightning ``.ckpt`` and ``clip_tuned.pth``: tensors, plain containers and
  optimiser / scheduler state dicts (no ``hyper_parameters``: the release never saves them);
- DA-CLIP's ``daclip_ViT-B-32.pt`` (an open_clip training checkpoint): a numpy float64 scalar (the
  saved learning rate) pickled as ``numpy.core.multiarray.scalar`` + ``numpy.dtype`` +
  ``numpy.dtypes.Float64DType`` and ``_codecs.encode`` (its raw bytes). Under numpy 2 the scalar
  constructor lives at ``numpy._core.multiarray.scalar`` and must be allow-listed under its numpy-1
  name, the one in the pickle (files written under numpy 2 use the numpy-2 name: both are allowed).
"""
import _compat_pickle
import codecs
import collections
import os.path as osp
import pickle
import re
from typing import Any, List, Sequence, Tuple, Union

import numpy as np
import torch

AllowedGlobal = Union[Any, Tuple[Any, str]]


def _numpy_scalar_constructor() -> Any:
    core = getattr(np, '_core', None) or np.core  # numpy 2 / numpy 1
    return core.multiarray.scalar


CHECKPOINT_GLOBALS: Tuple[AllowedGlobal, ...] = (
    collections.Counter,
    _numpy_scalar_constructor(),  # as pickled by numpy 2
    (_numpy_scalar_constructor(), 'numpy.core.multiarray.scalar'),  # as pickled by numpy 1
    np.dtype,
    type(np.dtype(np.float64)),  # numpy.dtypes.Float64DType
    codecs.encode,
)
"""Globals allowed in every file read by :func:`safe_torch_load` (see the module docstring)."""


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A weight or state file that needs code outside the allow-list to be unpickled (a ``ValueError``
    too, so command-line tools report it like any other bad input file)."""


def _global_name(entry: AllowedGlobal) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f'{entry.__module__}.{entry.__qualname__}'


def _python3_name(pickled: str) -> str:
    """``'commands.call'`` (pickle protocol 2 spelling) -> ``'commands.call (subprocess.call)'``."""
    module, _, name = pickled.rpartition('.')
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module),
                                                                     name))
    return pickled if f'{module}.{name}' == pickled else f'{pickled} ({module}.{name})'


def _refused_globals(path: str, allowed: Sequence[AllowedGlobal], error: Exception) -> List[str]:
    """The globals of ``path`` outside ``allowed``: from torch's scanner, else the one torch's error names."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 -- legacy (non-zip) files: the scanner cannot read them
        found = re.findall(r'GLOBAL ([\w.]+)', str(error))[:1]
    allowed_names = {_global_name(entry) for entry in allowed}
    return sorted(_python3_name(name) for name in set(found) - allowed_names)


def _unpickler_message(error: Exception) -> str:
    message = str(error)
    detail = message.split('WeightsUnpickler error:', 1)[-1].strip().split('\n')[0]
    return detail or type(error).__name__


def safe_torch_load(path: str, description: str = 'weights file', extra_globals: Sequence[AllowedGlobal] = (),
                    trusted: bool = False, map_location: Any = 'cpu') -> Any:
    """``torch.load(path)`` that never runs code from the file unless ``trusted`` is True.

    Args:
        path: The file.
        description: What the file is for, used in messages (e.g. ``'resume state'``).
        extra_globals: Further globals (or ``(global, 'pickled.name')`` pairs) to allow.
        trusted: Unpickle with ``weights_only=False`` (runs arbitrary code: only for files whose
            origin you trust, and only when the caller opted in explicitly).
        map_location: As for ``torch.load``; CPU by default.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        UnsafeCheckpointError: the file needs globals outside the allow-list (named in the message).
        ValueError: the file is not a PyTorch file.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'{description} not found: {path}')
    if trusted:
        return torch.load(path, map_location=map_location, weights_only=False)
    allowed = (*CHECKPOINT_GLOBALS, *extra_globals)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_globals(path, allowed, error)
        if not refused:
            raise ValueError(f'{description} {path} is not a file written by torch.save (torch.load refused it: '
                             f'{_unpickler_message(error)})') from error
        raise UnsafeCheckpointError(
            f'refused to load the {description} {path}: it contains {", ".join(refused)}, which unpickling would run '
            'as code (weight and state files need none of these). Only if you trust where the file comes from: '
            'convert an official VLU-Net file with scripts/convert_official_checkpoint.py --trust-file, or re-save '
            'its tensors yourself (torch.load(path, weights_only=False), then torch.save).') from error
    except (RuntimeError, EOFError, OSError, KeyError, AttributeError, TypeError, ValueError) as error:
        raise ValueError(f'{description} {path} is not a readable PyTorch file (torch.load failed: '
                         f'{type(error).__name__}: {error})') from error
