"""Frozen helper networks (LPIPS, FID, Perceive-IR's VGG-16): their device and their weight files.

Weights are read from local files only, never downloaded at run time (the machines that run
evaluations are often offline). A weight option (e.g. ``backbone_weights`` of ``calculate_lpips``)
is one of:

- ``~``: the file torch's hub cache would hold, ``$TORCH_HOME/hub/checkpoints/<file name of the URL>``
  (``~/.cache/torch/hub/checkpoints`` by default). Put the downloaded file there once and every run
  finds it; torchvision finds it there too;
- a path: that file;
- ``random``: random weights drawn with a fixed seed (the same on every call), for tests only.

A missing file raises ``FileNotFoundError`` naming the file, its download URL, the option to set and
the cache location. Every file is read with :func:`~vlunet.utils.safe_load.safe_torch_load`.
"""
import os.path as osp
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

from vlunet.utils.safe_load import MissingFileError, WrongKindError

RANDOM_WEIGHTS = 'random'
RANDOM_WEIGHTS_SEED = 0


def metric_device(device: Optional[str]) -> torch.device:
    """The device of a metric network: ``device`` if given, else CUDA when available, else the CPU."""
    if device is None:
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(device)


def hub_cache_path(url: str) -> str:
    """Where torch's hub cache keeps the file of ``url``: ``$TORCH_HOME/hub/checkpoints/<basename>``."""
    return osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(url))


def resolve_weights_file(weights: Optional[str], option: str, url: str, what: str) -> Optional[str]:
    """The file to read for the weight option ``weights`` (see the module docstring), or None for ``random``.

    Args:
        weights: ``None`` (torch's hub cache), a path, or ``'random'``.
        option: The option's name, for messages (e.g. ``'calculate_lpips.backbone_weights'``).
        url: Where the file can be downloaded (its base name is the cached file's name).
        what: What the file is, for messages (e.g. ``'ImageNet AlexNet weights'``).

    Raises:
        FileNotFoundError: the file does not exist; the message says which file to get, from where,
            and where to put it.
        ValueError: ``weights`` is neither None, a path nor ``'random'``.
    """
    if weights == RANDOM_WEIGHTS:
        return None
    if weights is not None and not isinstance(weights, str):
        raise ValueError(f'{option}: {weights!r} must be a file path, ~ (torch\'s hub cache {hub_cache_path(url)}) '
                         f'or {RANDOM_WEIGHTS!r} (tests only).')
    path = osp.expanduser(weights) if weights is not None else hub_cache_path(url)
    if osp.isdir(path):
        raise WrongKindError(f'{option}: the {what} file {path} is a folder, not a file: give the file itself.')
    if not osp.isfile(path):
        raise MissingFileError(
            f'{option}: the {what} file {path} does not exist (weights are never downloaded at run time). '
            f'Download {url} on a machine with internet access and either set {option} to the file\'s path or put '
            f'it at {hub_cache_path(url)} (torch\'s hub cache, $TORCH_HOME/hub/checkpoints). For tests only, '
            f'{option}: {RANDOM_WEIGHTS} uses random weights.')
    return path


@contextmanager
def seeded_random_weights() -> Iterator[None]:
    """Networks built inside get the same random initial weights every time; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        yield
