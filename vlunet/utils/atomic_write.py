"""Atomic file output: write to a temporary file in the target folder, then ``os.replace`` it.

An interrupted run (Ctrl-C, a killed job, a full disk) then leaves either the previous file or the
new one, never a truncated checkpoint, image or table.
"""
import contextlib
import os
import os.path as osp
import tempfile
from typing import Iterator

import cv2
import numpy as np
import torch


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path`` (same extension); on success move it onto ``path``."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f'.{osp.basename(path)}.', suffix=osp.splitext(path)[1])
    os.close(handle)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if osp.exists(temporary):
            os.remove(temporary)


def atomic_torch_save(obj: object, path: str) -> None:
    """``torch.save(obj, path)``, atomically."""
    with atomic_output(path) as temporary:
        torch.save(obj, temporary)


def atomic_write_text(text: str, path: str) -> None:
    """Write UTF-8 ``text`` to ``path``, atomically."""
    with atomic_output(path) as temporary:
        with open(temporary, 'w', encoding='utf-8') as f:
            f.write(text)


def atomic_imwrite(image: np.ndarray, path: str) -> None:
    """Write an HWC BGR uint8 ``image`` with OpenCV (format from the extension), atomically."""
    with atomic_output(path) as temporary:
        if not cv2.imwrite(temporary, image):
            raise OSError(f'OpenCV could not write {path!r} (unsupported extension or unwritable folder).')
