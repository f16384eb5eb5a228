"""Reading BasicSR resume states (``experiments/<name>/training_states/<iter>.state``) as bad-file-safe as weights.

- :func:`load_resume_state` reads ``path.resume_state``, or under ``--auto_resume`` the newest state; a newest
  state that is damaged or wrong falls back to the previous good one, with a warning naming both files;
- :func:`check_resume_state_contents` refuses a state that is not BasicSR's ``{'iter', 'epoch', 'optimizers',
  'schedulers'}`` before anything is created;
- :func:`check_optimizer_shapes` refuses optimiser tensors whose shapes differ from the network's parameters
  (they would crash the first step, far from the file);
- :func:`epochs_to_total_iter` keeps a resumed run going to ``train.total_iter`` when the state was written
  with another number of processes (BasicSR counts epochs per process: resuming a 2-process state in one
  process would end "after" 0 iterations).
"""
import math
import os
import os.path as osp
import re
import sys
from typing import Callable, List, Optional, Sequence

import torch

from vlunet.utils.safe_load import BadFileError, WrongContentsError, listed_mismatches, safe_torch_load

DESCRIPTION = 'resume state'
STATE_KEYS = {'iter': int, 'epoch': int, 'optimizers': list, 'schedulers': list}
RESUME_FIX = ('give a training state written by this training (experiments/<name>/training_states/<iter>.state), '
              'or remove it to resume from an earlier one')


def check_resume_state_contents(state: object, path: str) -> dict:
    """``state`` if it is a BasicSR training state, else :class:`WrongContentsError` naming ``path``."""
    if not isinstance(state, dict):
        raise WrongContentsError(f'{DESCRIPTION} {path} holds a {type(state).__name__}, not a training state '
                                 f'(a dict with {", ".join(STATE_KEYS)}): {RESUME_FIX}.')
    problems = [f'{key} missing' if key not in state else f'{key} is a {type(state[key]).__name__}'
                for key, kind in STATE_KEYS.items() if not isinstance(state.get(key), kind)
                or isinstance(state.get(key), bool)]
    if problems:
        raise WrongContentsError(f'{DESCRIPTION} {path} is not a training state ({listed_mismatches(problems)}): '
                                 f'{RESUME_FIX}.')
    return state


def _read_state(path: str, map_location) -> dict:
    return check_resume_state_contents(safe_torch_load(path, DESCRIPTION, map_location=map_location), path)


def saved_states(state_dir: str) -> List[str]:
    """The ``<iter>.state`` files of ``state_dir``, newest (highest iteration) first."""
    if not osp.isdir(state_dir):
        return []
    names = [name for name in sorted(os.listdir(state_dir)) if re.fullmatch(r'\d+\.state', name)]
    return [osp.join(state_dir, name) for name in sorted(names, key=lambda name: -int(name[:-len('.state')]))]


def load_resume_state(opt: dict, map_location, warn: Callable[[str], None]) -> Optional[dict]:
    """BasicSR's ``load_resume_state`` through :func:`safe_torch_load`, checked, with the auto-resume fallback.

    Sets ``opt['path']['resume_state']`` to the state read (auto-resume). ``warn`` gets the fallback warning.

    Raises:
        BadFileError: ``path.resume_state`` (or, with ``--auto_resume``, every saved state) cannot be used.
    """
    if not opt['auto_resume']:
        path = opt['path'].get('resume_state')
        return _read_state(path, map_location) if path else None
    candidates = saved_states(osp.join('experiments', opt['name'], 'training_states'))
    failures: List[BadFileError] = []
    for path in candidates:
        try:
            state = _read_state(path, map_location)
        except BadFileError as error:
            failures.append(error)
            continue
        if failures:
            warn(f'warning: --auto_resume: the newest training state {candidates[0]} cannot be used ({failures[0]}); '
                 f'resuming from {path} instead (iteration {state["iter"]}).')
        opt['path']['resume_state'] = path
        return state
    if failures:
        raise failures[0]
    return None


def check_optimizer_shapes(optimizers: Sequence[torch.optim.Optimizer], saved: Sequence[dict], path: str) -> None:
    """Raise :class:`WrongContentsError` unless the saved optimiser states fit ``optimizers`` (groups, parameter
    counts, and the shapes of per-parameter tensors such as Adam's moments)."""
    problems = []
    for index, (optimizer, state) in enumerate(zip(optimizers, saved)):
        groups = state.get('param_groups') if isinstance(state, dict) else None
        if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
            problems.append(f'optimizer {index}: {len(groups) if isinstance(groups, list) else "no"} parameter '
                            f'group(s) instead of {len(optimizer.param_groups)}')
            continue
        for saved_group, group in zip(groups, optimizer.param_groups):
            ids = saved_group.get('params', []) if isinstance(saved_group, dict) else []
            if len(ids) != len(group['params']):
                problems.append(f'optimizer {index}: {len(ids)} parameters instead of {len(group["params"])}')
                continue
            for saved_id, parameter in zip(ids, group['params']):
                for name, value in (state.get('state') or {}).get(saved_id, {}).items():
                    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != parameter.shape:
                        problems.append(f'optimizer {index} parameter {saved_id} {name}: {list(value.shape)} '
                                        f'instead of {list(parameter.shape)}')
    if problems:
        raise WrongContentsError(f'{DESCRIPTION} {path} does not fit this network\'s optimiser '
                                 f'({listed_mismatches(problems)}): {RESUME_FIX} (network_g as in that training).')


def epochs_to_total_iter(total_epochs: int, iters_per_epoch: int, resume_state: Optional[dict],
                         total_iters: int) -> int:
    """``total_epochs``, raised so that epochs from the resumed one reach ``total_iters`` at ``iters_per_epoch``."""
    if not resume_state or iters_per_epoch <= 0:
        return total_epochs
    needed = resume_state['epoch'] + math.ceil(max(total_iters - resume_state['iter'], 0) / iters_per_epoch)
    return max(total_epochs, needed)


def print_warning(message: str) -> None:
    """A warning on stderr, printed by rank 0 only."""
    if int(os.environ.get('RANK', 0)) == 0:
        print(message, file=sys.stderr, flush=True)

