"""Stopping a training run of ``vlunet/train.py`` with Ctrl-C or SIGTERM without losing the iterations done.

The first Ctrl-C (SIGINT) or SIGTERM asks the run to stop: the iteration in progress finishes, then the
network weights and a resume state of that iteration are saved (``experiments/<name>/models/net_g_<iter>.pth``,
``training_states/<iter>.state``, BasicSR's ``model.save``, atomic) and the run ends with one line and exit
status 130; ``--auto_resume`` continues from there. A second signal stops at once (nothing more is saved).
``--auto_resume`` without any saved state says so and starts at iteration 0.

The hooks wrap ``basicsr.train``'s ``build_model``, ``create_train_val_dataloader`` and ``load_resume_state``
while :func:`interruptible_training` is active: the iteration is seen when the loop calls
``model.update_learning_rate(current_iter)`` at the start of each iteration, the epoch when it calls
``train_sampler.set_epoch(epoch)``.
"""
import contextlib
import os
import os.path as osp
import signal
import sys
from typing import Any, Callable, Iterator, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED_STATUS = 130


class TrainingInterrupted(Exception):
    """The run stopped on a signal; the message is the one line that says where and what was saved."""


def _shown(path: str) -> str:
    """``path`` relative to the current folder when it is inside it."""
    relative = osp.relpath(path)
    return path if relative.startswith('..') else relative


def newest_state(folder: Optional[str]) -> Optional[str]:
    """The resume state with the highest iteration in ``folder`` (``<iter>.state`` files), or None."""
    if not folder or not osp.isdir(folder):
        return None
    iterations = [int(name[:-len('.state')]) for name in os.listdir(folder)
                  if name.endswith('.state') and name[:-len('.state')].isdigit()]
    return osp.join(folder, f'{max(iterations)}.state') if iterations else None


class TrainingStop:
    """A stop request (signal) and what the training loop has done; see the module docstring."""

    def __init__(self) -> None:
        self.requested: Optional[str] = None  # name of the signal that asked to stop
        self.model: Any = None
        self.epoch = 0
        self.start: Optional[int] = None  # iteration the loop started from (0, or the resumed one)
        self.completed: Optional[int] = None  # last iteration finished

    def handle(self, signum: int, frame: Any) -> None:
        """Signal handler: the first signal asks to stop after the current iteration, a second one stops now."""
        if self.requested is not None or self.completed is None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f'{self.requested}: stopping after iteration {self.completed + 1} and saving it (again: stop at once, '
              'without saving).', file=sys.stderr, flush=True)

    def watch_model(self, model: Any) -> Any:
        """Wrap ``model.update_learning_rate`` (called first in every iteration) to follow and stop the loop."""
        update_learning_rate = model.update_learning_rate

        def update_and_check(current_iter: int, *args, **kwargs):
            self.completed = current_iter - 1
            if self.start is None:
                self.start = self.completed
            if self.requested is not None:
                raise TrainingInterrupted(self.save_and_describe())
            return update_learning_rate(current_iter, *args, **kwargs)

        self.model = model
        model.update_learning_rate = update_and_check
        return model

    def watch_sampler(self, sampler: Any) -> None:
        if sampler is None:
            return
        set_epoch = sampler.set_epoch

        def record_epoch(epoch: int) -> None:
            self.epoch = epoch
            set_epoch(epoch)

        sampler.set_epoch = record_epoch

    def save_and_describe(self) -> str:
        """Save the last finished iteration (when it is new) and return the line that reports it."""
        where = f'{self.requested} at iteration {self.completed}'
        if self.completed == self.start:
            return f'{where}: no iteration finished since the start, nothing new saved ({self.last_saved()}).'
        self.model.save(self.epoch, self.completed)
        folder = self.model.opt['path']
        return (f'{where}: saved {_shown(osp.join(folder["models"], f"net_g_{self.completed}.pth"))} and '
                f'{_shown(osp.join(folder["training_states"], f"{self.completed}.state"))}; continue with '
                '--auto_resume.')

    def last_saved(self) -> str:
        state = newest_state(self.model.opt['path'].get('training_states')) if self.model is not None else None
        return f'newest resume state: {_shown(state)}' if state else 'no resume state saved yet'

    def interrupted_line(self) -> str:
        """The line for a stop without saving (a second signal, or one before the first iteration)."""
        if self.completed is None:
            return 'Interrupted before training started; nothing was saved.'
        return f'Interrupted at iteration {self.completed + 1}, not saved ({self.last_saved()}).'


def _announce_fresh_start(load_resume_state: Callable[[dict], Any]) -> Callable[[dict], Any]:
    def load(opt: dict):
        state = load_resume_state(opt)
        if state is None and opt.get('auto_resume'):
            folder = osp.join('experiments', opt['name'], 'training_states')
            print(f'--auto_resume: no resume state in {folder}; training starts anew at iteration 0.', flush=True)
        return state
    return load


@contextlib.contextmanager
def interruptible_training() -> Iterator[TrainingStop]:
    """Within: BasicSR's ``train_pipeline`` stops on SIGINT/SIGTERM as the module docstring says."""
    import basicsr.train
    stop = TrainingStop()
    originals = {name: getattr(basicsr.train, name)
                 for name in ('build_model', 'create_train_val_dataloader', 'load_resume_state')}

    def create_train_val_dataloader(*args, **kwargs):
        loaders = originals['create_train_val_dataloader'](*args, **kwargs)
        stop.watch_sampler(loaders[1])
        return loaders

    basicsr.train.build_model = lambda opt: stop.watch_model(originals['build_model'](opt))
    basicsr.train.create_train_val_dataloader = create_train_val_dataloader
    basicsr.train.load_resume_state = _announce_fresh_start(originals['load_resume_state'])
    handlers = {number: signal.signal(number, stop.handle) for number in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        for name, function in originals.items():
            setattr(basicsr.train, name, function)


def run_training(pipeline: Callable[[str], None], root: str) -> None:
    """Run BasicSR's training ``pipeline`` in ``root``; a signal ends it with one line and exit status 130."""
    with interruptible_training() as stop:
        try:
            pipeline(root)
        except TrainingInterrupted as stopped:
            print(stopped, file=sys.stderr, flush=True)
            sys.exit(INTERRUPTED_STATUS)
        except KeyboardInterrupt:
            print(stop.interrupted_line(), file=sys.stderr, flush=True)
            sys.exit(INTERRUPTED_STATUS)


def run_test(pipeline: Callable[[str], None], root: str) -> None:
    """Run BasicSR's test ``pipeline`` in ``root``; Ctrl-C ends it with one line and exit status 130."""
    try:
        pipeline(root)
    except KeyboardInterrupt:
        print('Interrupted; the results tables and images written so far are kept (complete files).',
              file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED_STATUS)
