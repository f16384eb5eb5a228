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

Every failure to use a file is one of five :class:`BadFileError` kinds (all ``ValueError``), whose one-line
message names the file, what it was for (the option key or flag) and the fix: :class:`MissingFileError`,
:class:`WrongKindError` (a folder, or not a file of this format), :class:`DamagedFileError` (corrupt or
incomplete: download or copy it again), :class:`UnsafeCheckpointError` and :class:`WrongContentsError`
(readable, but the wrong keys, shapes or types; the first mismatches are listed). The entry points print
that line and exit non-zero (:func:`report_bad_files`); ``--verbose`` shows the traceback.
"""
import _compat_pickle
import codecs
import collections
import os.path as osp
import pickle
import re
import sys
import zipfile
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

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


MAX_LISTED_MISMATCHES = 5
ZIP_MAGIC = b'PK\x03\x04'
LEGACY_TORCH_MAGIC = b'\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8'  # torch.save's legacy format: pickled magic number
DAMAGED_FIX = 'the file is damaged or incomplete (an interrupted download or copy): download or copy it again'


class BadFileError(ValueError):
    """A file that cannot be used; the message (one line) names the file, what it is for and the fix."""


class MissingFileError(BadFileError, FileNotFoundError):
    """The file does not exist."""


class WrongKindError(BadFileError):
    """A folder, or a file of another format than the one expected."""


class DamagedFileError(BadFileError):
    """A file of the expected format that cannot be read to its end: corrupt or an incomplete download."""


class WrongContentsError(BadFileError):
    """A readable file holding the wrong things (keys, shapes, value types); the message lists the first mismatches."""


class StateDictMismatchError(WrongContentsError, RuntimeError):
    """A state dict that does not fit its network (a ``RuntimeError`` too, as ``nn.Module.load_state_dict`` raises)."""


class UnsafeCheckpointError(BadFileError, pickle.UnpicklingError):
    """A weight or state file that needs code outside the allow-list to be unpickled (a ``ValueError``
    too, so command-line tools report it like any other bad input file)."""


def one_line(text: str, limit: int = 600) -> str:
    """``text`` with its line breaks and runs of spaces collapsed, cut at ``limit`` characters."""
    flat = ' '.join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + '...'


def check_file(path: str, description: str, fix: Optional[str] = None) -> None:
    """Raise :class:`MissingFileError` / :class:`WrongKindError` (a folder) unless ``path`` is a file."""
    if osp.isdir(path):
        raise WrongKindError(f'{description} {path} is a folder, not a file: give the file itself.')
    if not osp.isfile(path):
        raise MissingFileError(f'{description} {path} does not exist; {fix}.' if fix else
                               f'{description} not found: {path}; check the path.')


def _looks_like_torch_file(path: str) -> bool:
    """The first bytes are those of ``torch.save``'s zip or legacy format."""
    with open(path, 'rb') as file:
        head = file.read(len(LEGACY_TORCH_MAGIC))
    return head.startswith(ZIP_MAGIC) or head == LEGACY_TORCH_MAGIC


def _torch_format_error(path: str, description: str, error: Exception) -> BadFileError:
    """Damaged (a zip or legacy torch file, or empty) or not a torch file at all, judged by the first bytes."""
    detail = one_line(f'{type(error).__name__}: {_unpickler_message(error)}', 200)
    if osp.getsize(path) == 0:
        return DamagedFileError(f'{description} {path} is empty: {DAMAGED_FIX}.')
    if _looks_like_torch_file(path):
        return DamagedFileError(f'{description} {path} is a PyTorch file that cannot be read to its end ({detail}): '
                                f'{DAMAGED_FIX}.')
    return WrongKindError(f'{description} {path} is not a file written by torch.save (torch.load refused it: '
                          f'{detail}): give the PyTorch weight file itself.')


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
        MissingFileError: ``path`` does not exist (a ``FileNotFoundError`` too).
        WrongKindError: ``path`` is a folder, or not a PyTorch file.
        DamagedFileError: a PyTorch file that cannot be read to its end (corrupt, incomplete download).
        UnsafeCheckpointError: the file needs globals outside the allow-list (named in the message).
    """
    check_file(path, description)
    if trusted:
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as error:  # noqa: BLE001 -- whatever a corrupt pickle raises
            raise _torch_format_error(path, description, error) from error
    allowed = (*CHECKPOINT_GLOBALS, *extra_globals)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_globals(path, allowed, error) if _looks_like_torch_file(path) else []
        if not refused:  # random bytes may spell a GLOBAL too: they are not a torch file
            raise _torch_format_error(path, description, error) from error
        named = ', '.join(f'GLOBAL {name}' for name in refused)
        raise UnsafeCheckpointError(
            f'refused to load the {description} {path}: it contains {named}, which unpickling would run as code '
            '(weight and state files need none of these). Only if you trust where the file comes from: convert an '
            'official VLU-Net file with scripts/convert_official_checkpoint.py --trust-file, or re-save its tensors '
            'yourself (torch.load(path, weights_only=False), then torch.save).'
        ) from error
    except MemoryError as error:
        raise DamagedFileError(f'{description} {path} declares more data than memory holds: {DAMAGED_FIX}.') from error
    except Exception as error:  # noqa: BLE001 -- a corrupt file makes torch raise almost anything
        raise _torch_format_error(path, description, error) from error


def torch_pickle_record(path: str, description: str) -> bytes:
    """The pickle record (``*/data.pkl``) of a zip-format torch file, unpickled by nobody; ``b''`` for other files.

    Raises:
        DamagedFileError: a zip whose record cannot be read (corrupt, truncated).
    """
    if not (osp.isfile(path) and zipfile.is_zipfile(path)):
        return b''
    try:
        with zipfile.ZipFile(path) as archive:
            records = [name for name in archive.namelist() if name.endswith('data.pkl')]
            return archive.read(records[0]) if records else b''
    except Exception as error:  # noqa: BLE001 -- BadZipFile (bad CRC, truncated), zlib.error, OSError
        raise DamagedFileError(f'{description} {path} is a zip whose contents cannot be read ({one_line(error, 200)}):'
                               f' {DAMAGED_FIX}.') from error


def load_safetensors(path: str, description: str) -> Dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file; every failure is a :class:`BadFileError` naming ``path``."""
    from safetensors.torch import load_file
    check_file(path, description)
    try:
        return load_file(path)
    except Exception as error:  # noqa: BLE001 -- SafetensorError, OSError, ...
        with open(path, 'rb') as file:
            head = file.read(9)
        detail = one_line(f'{type(error).__name__}: {error}', 200)
        if len(head) < 9 or head[8:9] == b'{':
            raise DamagedFileError(f'{description} {path} is a .safetensors file that cannot be read ({detail}): '
                                   f'{DAMAGED_FIX}.') from error
        raise WrongKindError(f'{description} {path} is not a .safetensors file ({detail}): give the .safetensors '
                             'file itself, or a torch file under another extension.') from error


def require_state_dict(state: object, path: str, description: str, fix: str) -> Dict[str, torch.Tensor]:
    """``state`` if it is a dict of str -> tensor, else :class:`WrongContentsError` naming what it holds."""
    if not isinstance(state, dict):
        raise WrongContentsError(f'{description} {path} holds a {type(state).__name__}, not a state dict of '
                                 f'tensors: {fix}.')
    wrong = [f'{key!r}: {type(value).__name__}' for key, value in state.items()
             if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if wrong:
        listed = ', '.join(wrong[:MAX_LISTED_MISMATCHES]) + (f' (+{len(wrong) - MAX_LISTED_MISMATCHES} more)'
                                                              if len(wrong) > MAX_LISTED_MISMATCHES else '')
        raise WrongContentsError(f'{description} {path} is not a state dict of named tensors ({listed}): {fix}.')
    return state


def _names(keys: List[str], limit: int = 4) -> str:
    return ', '.join(keys[:limit]) + (f', ... ({len(keys)} in all)' if len(keys) > limit else '')


def state_dict_mismatches(expected: Mapping[str, Any], given: Mapping[str, Any], strict: bool = True,
                          optional: Tuple[str, ...] = ()) -> List[str]:
    """Shape mismatches, then (``strict``) the missing and the unexpected keys, between two state dicts (or key ->
    shape); keys of ``expected`` starting with an ``optional`` prefix may be missing."""
    def shape(value: Any) -> Tuple[int, ...]:
        return tuple(value.shape if isinstance(value, torch.Tensor) else value)
    problems = [f'{key}: {shape(given[key])} instead of {shape(value)}'
                for key, value in expected.items() if key in given and shape(given[key]) != shape(value)]
    missing = [key for key in expected if key not in given and not (optional and key.startswith(optional))]
    unexpected = [key for key in given if key not in expected]
    if strict and missing:
        problems.append(f'missing keys {_names(missing)}')
    if strict and unexpected:
        problems.append(f'unexpected keys {_names(unexpected)}')
    return problems


def listed_mismatches(problems: Sequence[str]) -> str:
    """The first :data:`MAX_LISTED_MISMATCHES` problems on one line, with the count of the others."""
    more = len(problems) - MAX_LISTED_MISMATCHES
    return '; '.join(problems[:MAX_LISTED_MISMATCHES]) + (f'; ... and {more} more' if more > 0 else '')


def load_checked_state_dict(net: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str, description: str,
                            fix: str, strict: bool = True, optional: Tuple[str, ...] = ()) -> None:
    """``net.load_state_dict(state)``; a state dict that does not fit is a :class:`StateDictMismatchError` naming
    ``path`` with the first mismatches (and the net's own explanation, for nets such as VLUNet that give one).

    ``optional``: key prefixes of ``net`` that ``state`` may lack (e.g. a frozen backbone saved elsewhere).
    """
    state = require_state_dict(state, path, description, fix)
    problems = state_dict_mismatches(net.state_dict(), state, strict, optional)
    if problems:
        explained = ''
        if type(net).load_state_dict is not torch.nn.Module.load_state_dict:  # it checks before loading anything
            try:
                net.load_state_dict(state, strict=strict)
            except Exception as error:  # noqa: BLE001 -- only its explanation is wanted
                explained = one_line(str(error).partition('Likely cause:')[2], 300)
        raise StateDictMismatchError(f'{description} {path} does not fit {type(net).__name__} '
                                     f'({listed_mismatches(problems)}): {explained or fix}.')
    try:
        net.load_state_dict(state, strict=strict and not optional)
    except (RuntimeError, KeyError, TypeError, ValueError) as error:
        raise StateDictMismatchError(f'{description} {path} does not fit {type(net).__name__} '
                                     f'({one_line(error, 300)}): {fix}.') from error


def is_verbose(argv: Optional[Sequence[str]] = None) -> bool:
    """Whether ``--verbose`` is on the command line (the traceback of a bad file is then shown)."""
    return '--verbose' in (sys.argv if argv is None else argv)


@contextmanager
def report_bad_files(verbose: Optional[bool] = None) -> Iterator[None]:
    """Turn a :class:`BadFileError` raised inside into ``error: <its line>`` on stderr and exit status 1.

    ``verbose`` lets the exception through, with its traceback. None (scripts: ``with report_bad_files():
    main()``): ``--verbose`` on the command line, which is then taken off ``sys.argv`` for the script's parser.
    """
    if verbose is None:
        verbose = is_verbose()
        sys.argv = [arg for arg in sys.argv if arg != '--verbose']
    try:
        yield
    except BadFileError as error:
        if verbose:
            raise
        sys.exit(f'error: {one_line(error, 2000)}')
