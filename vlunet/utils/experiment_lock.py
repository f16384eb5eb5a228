"""One training run per experiment: an exclusive lock on ``experiments/.<name>.lock``.

Two runs training the same experiment (e.g. an ``--auto_resume`` started while orphaned ranks of a
killed ``torchrun`` still train) would overwrite each other's checkpoints and training states. Before
BasicSR creates any folder, ``vlunet/train.py`` takes an exclusive ``fcntl.flock`` on the lock file
of its experiment and writes its PID and host into it; a second run finds the lock taken and stops
with an error naming that PID.

- The lock file sits beside the experiment folder, not inside it: BasicSR renames an existing
  ``experiments/<name>`` to ``<name>_archived_<time>`` when a run starts afresh, which would move a
  lock file kept inside. The file stays after the run; only the kernel lock on it counts.
- It is held by the process on **global rank 0** only (the one that writes the experiment folder
  in BasicSR). A per-node lock would make the second node of a multi-node run on a shared file
  system refuse its own run. When rank 0 refuses, ``torchrun`` stops the other ranks.
- It is released when the run ends, and by the kernel when the process dies however it dies
  (SIGKILL, a crash, an out-of-memory kill): a stale lock file never blocks a later run.
- Across machines the lock holds only where the file system shares ``flock`` locks (Linux NFS
  clients map them to NFS byte-range locks; Lustre needs its ``flock`` mount option); elsewhere two
  runs of one experiment on two machines are not detected.
"""
import argparse
import contextlib
import fcntl
import os
import os.path as osp
import socket
from typing import ContextManager, List, Optional

from vlunet.options import apply_force_yml, load_option_file


class ExperimentLockedError(RuntimeError):
    """Another live process holds the lock of the experiment (its PID is in the message)."""


def lock_file_path(experiments_root: str, name: str) -> str:
    """``<experiments_root>/.<name>.lock`` (a name with folders keeps them: ``a/b`` -> ``a/.b.lock``)."""
    folder, base = osp.split(name)
    return osp.join(experiments_root, folder, f'.{base}.lock')


class ExperimentLock:
    """The exclusive lock of experiment ``name``, taken on construction; ``with`` releases it at the end.

    Raises:
        ExperimentLockedError: another process holds it (the message names the PID from the file).
    """

    def __init__(self, path: str, name: str):
        self.path = path
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        self._handle: Optional[int] = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._handle, 256, 0).decode(errors='replace').split()
            self.release()
            pid, host = (holder + ['unknown', 'unknown'])[:2]
            raise ExperimentLockedError(
                f'experiment {name!r} is being trained by another process: PID {pid} on host {host} holds {path}. '
                'Two runs in one experiment folder overwrite each other\'s checkpoints. Stop that run first (send '
                'SIGINT or SIGTERM to its torchrun, or to that PID), or give this run another `name`.') from None
        except OSError:
            self.release()
            raise
        os.ftruncate(self._handle, 0)
        os.pwrite(self._handle, f'{os.getpid()} {socket.gethostname()}\n'.encode(), 0)

    def release(self) -> None:
        """Give the lock back (closing the file releases it); safe to call twice."""
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None

    def __enter__(self) -> 'ExperimentLock':
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def _training_arguments(argv: List[str]) -> argparse.Namespace:
    """The arguments of BasicSR's training parser that decide the rank and the experiment name."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt')
    parser.add_argument('--launcher', default='none')
    parser.add_argument('--debug', action='store_true')
    parser.add_argument('--force_yml', nargs='+')
    return parser.parse_known_args(argv)[0]


def experiment_name(option_path: str, argv: List[str]) -> str:
    """The name BasicSR's ``parse_options`` gives the experiment: ``--force_yml`` applied, ``--debug`` prefix."""
    args = _training_arguments(argv)
    opt = load_option_file(option_path)
    apply_force_yml(opt, args.force_yml)
    name = str(opt['name'])
    return f'debug_{name}' if args.debug and not name.startswith('debug') else name


def _global_rank(launcher: str) -> int:
    if launcher == 'pytorch':
        return int(os.environ.get('RANK', '0'))
    if launcher == 'slurm':
        return int(os.environ.get('SLURM_PROCID', '0'))
    return 0


def acquire_training_lock(argv: List[str], root: str) -> ContextManager:
    """The held lock of the experiment that ``vlunet/train.py argv`` (without the program name) trains
    under ``root``, on global rank 0; other ranks, and a command line without ``-opt`` (BasicSR reports
    it), get a context that holds nothing. ``with`` releases the lock at the end.

    Raises:
        ExperimentLockedError: another process trains this experiment.
    """
    args = _training_arguments(argv)
    if args.opt is None or _global_rank(args.launcher) != 0:
        return contextlib.nullcontext()
    name = experiment_name(args.opt, argv)
    return ExperimentLock(lock_file_path(osp.join(root, 'experiments'), name), name)
