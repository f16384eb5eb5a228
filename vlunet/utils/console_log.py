"""A readable console: the bulky records go to the log file only, and misleading messages are fixed or dropped.

BasicSR's ``basicsr`` logger writes every record to the console and to the run's log file. The
network structure and the option dump (about 500 lines) are written to the log file only: a record
logged with ``extra=FILE_ONLY``, or whose message is a :class:`FileOnlyText`, is dropped by the
:class:`ConsoleFilter` of the console handler (``--verbose`` of ``vlunet/train.py`` and
``vlunet/test.py`` shows them there too, :func:`set_verbose`). :mod:`vlunet.compat` installs these
helpers in BasicSR's pipelines.
"""
import contextlib
import functools
import logging
import time
from typing import Callable, Iterator

from torch import nn

from basicsr.utils import MessageLogger, get_root_logger
from basicsr.utils.dist_util import master_only

FILE_ONLY = {'file_only': True}
OPEN_CLIP_RANDOM_INIT = 'No pretrained weights loaded for model'
_settings = {'verbose': False}


class FileOnlyText(str):
    """A log message meant for the log file only (e.g. the option dump)."""


def set_verbose(verbose: bool) -> None:
    """Show the file-only records on the console too (``--verbose``)."""
    _settings['verbose'] = verbose


class ConsoleFilter(logging.Filter):
    """Drops file-only records (see the module docstring) unless :func:`set_verbose` is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        file_only = getattr(record, 'file_only', False) or isinstance(record.msg, FileOnlyText)
        return _settings['verbose'] or not file_only


class DropMessages(logging.Filter):
    """Drops records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_console(logger: logging.Logger) -> logging.Logger:
    """Give every console handler of ``logger`` (a StreamHandler that is no FileHandler) a ConsoleFilter, once."""
    for handler in logger.handlers:
        is_console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if is_console and not any(isinstance(f, ConsoleFilter) for f in handler.filters):
            handler.addFilter(ConsoleFilter())
    return logger


def drop_messages(logger: logging.Logger, *prefixes: str) -> None:
    """Drop ``logger``'s records starting with any of ``prefixes`` (console and file), once per prefix set."""
    if not any(isinstance(f, DropMessages) and f.prefixes == prefixes for f in logger.filters):
        logger.addFilter(DropMessages(*prefixes))


def with_quiet_console(get_logger: Callable[..., logging.Logger]) -> Callable[..., logging.Logger]:
    """``get_root_logger`` whose console handlers get a ConsoleFilter."""
    @functools.wraps(get_logger)
    def wrapped(*args, **kwargs) -> logging.Logger:
        return quiet_console(get_logger(*args, **kwargs))
    return wrapped


def file_only(format_text: Callable[..., str]) -> Callable[..., FileOnlyText]:
    """``format_text`` (e.g. BasicSR's ``dict2str``) whose result is logged to the file only."""
    @functools.wraps(format_text)
    def wrapped(*args, **kwargs) -> FileOnlyText:
        return FileOnlyText(format_text(*args, **kwargs))
    return wrapped


@master_only
def print_network(model, net: nn.Module) -> None:
    """BasicSR's ``BaseModel.print_network``: class and parameter count on the console, structure in the log file."""
    bare = model.get_bare_model(net)
    name = type(bare).__name__ if bare is net else f'{type(net).__name__} - {type(bare).__name__}'
    logger = get_root_logger()
    logger.info(f'Network: {name}, with parameters: {sum(p.numel() for p in bare.parameters()):,d} '
                '(structure in the log file)')
    logger.info(str(bare), extra=FILE_ONLY)


class IterationTimeMessageLogger(MessageLogger):
    """BasicSR's MessageLogger with an eta of (iterations left) x (the logged time per iteration).

    BasicSR divides the time since the first iteration by one or two iterations too many and
    multiplies by one iteration too few, so its eta is 0 at the first iteration and negative at the
    last (``eta: -1 day, 23:59:58``).
    """

    def __init__(self, opt: dict, start_iter: int = 1, tb_logger=None):
        super().__init__(opt, start_iter, tb_logger)
        self.max_iters += 1  # BasicSR multiplies by max_iters - current_iter - 1

    def __call__(self, log_vars: dict) -> None:
        if 'time' in log_vars:  # BasicSR averages over (now - start_time): make that the logged iteration time
            self.start_time = time.time() - log_vars['time'] * (log_vars['iter'] - self.start_iter + 1)
        super().__call__(log_vars)


@contextlib.contextmanager
def without_random_init_warning() -> Iterator[None]:
    """Hide open_clip's "No pretrained weights loaded ... initialized randomly" (the caller reports the weights)."""
    root = logging.getLogger()
    drop = DropMessages(OPEN_CLIP_RANDOM_INIT)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
