"""Atomic file output: write to a temporary file in the target folder, then ``os.replace`` it.

An interrupted run (Ctrl-C, a killed job, a full disk) then leaves either the previous file or the
new one, never a truncated checkpoint, image or table.

The file gets the permissions a plain ``open(path, 'w')`` would give it: a new file is created with
mode 0666 and the kernel applies the umask (and the folder's default ACL), so the process umask is
never read or changed (``os.umask`` can only be read by setting it, which races with other threads);
an existing file keeps its mode. ``tempfile.mkstemp`` would make every file owner-only (0600).
"""
import contextlib
import os
import os.path as osp
import secrets
import stat
from typing import Iterator

import cv2
import numpy as np
import torch

_NEW_FILE_MODE = 0o666  # what open() asks for; the kernel removes the umask bits


def _create_temporary(path: str) -> str:
    """Create an empty, uniquely named file next to ``path`` (same extension) with ``open()``'s permissions."""
    folder, name = osp.split(osp.abspath(path))
    while True:
        temporary = osp.join(folder, f'.{name}.{secrets.token_hex(4)}{osp.splitext(name)[1]}')
        try:
            handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _NEW_FILE_MODE)
        except FileExistsError:
            continue
        os.close(handle)
        return temporary


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path`` (same extension); on success move it onto ``path``."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    temporary = _create_temporary(path)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(temporary, stat.S_IMODE(os.stat(path).st_mode))  # an existing file keeps its mode
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
        try:
            written = cv2.imwrite(temporary, image)
        except cv2.error as error:  # OpenCV >= 4.7 raises for an extension it has no writer for
            raise OSError(f'OpenCV could not write {path!r} (unsupported extension?): {error}') from error
        if not written:
            raise OSError(f'OpenCV could not write {path!r} (unsupported extension or unwritable folder).')
