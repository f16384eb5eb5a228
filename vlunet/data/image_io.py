"""Robust image reading and pair geometry for the datasets, with errors that name the file.

Reading (:func:`read_image`) goes through BasicSR's ``FileClient`` (disk or LMDB) and returns a
float32 HWC **RGB** image in [0, 1], whatever was stored:

- grayscale (1 channel) → replicated to 3 channels;
- 16-bit → divided by 65535 (8-bit by 255; float images kept, clipped to [0, 1]);
- RGBA → the alpha channel is dropped (not composited: transparent pixels keep their colour);
- unreadable, corrupt or missing → :class:`ImageReadError` naming the file (a ``ValueError``, so a
  DataLoader worker re-raises it in the main process with this message, not an OpenCV traceback).

Geometry helpers: :func:`check_same_size` (lq/gt mismatch → error naming both files),
:func:`crop_to_multiple` (the official ``crop_img``) and :func:`fit_to_crop` (images smaller than
the training crop are reflect-padded, or rejected with ``small_image: error``).
"""
from typing import Optional

import cv2
import numpy as np
from basicsr.utils import FileClient, imfrombytes

SMALL_IMAGE_MODES = ('pad', 'error')


class ImageReadError(ValueError):
    """An image that cannot be used; the message names the file and the problem."""


def _read_bytes(file_client: FileClient, path: str, client_key: str) -> bytes:
    try:
        content = file_client.get(path, client_key)
    except (OSError, KeyError) as err:
        raise ImageReadError(f'cannot read image {path!r}: {err}. Check the dataroot / meta-info file.') from err
    if content is None:  # the LMDB backend returns None for a missing key
        raise ImageReadError(f'image key {path!r} is not in the {client_key} LMDB (rebuild it, or fix meta_info.txt).')
    return content


def _to_float(img: np.ndarray, path: str) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    if img.dtype in (np.float32, np.float64):
        return np.clip(img, 0, 1).astype(np.float32)
    raise ImageReadError(f'{path!r}: unsupported pixel type {img.dtype} (use 8- or 16-bit images).')


def _to_rgb(img: np.ndarray, path: str) -> np.ndarray:
    if img.ndim == 2:
        img = img[..., None]
    channels = img.shape[2]
    if channels in (1, 2):  # gray, or gray + alpha
        return np.repeat(img[..., :1], 3, axis=2)
    if channels in (3, 4):  # BGR, or BGRA: alpha dropped
        return np.ascontiguousarray(img[..., 2::-1])
    raise ImageReadError(f'{path!r}: {channels} channels; expected gray, RGB or RGBA.')


def read_image(file_client: FileClient, path: str, client_key: str = 'default') -> np.ndarray:
    """Read ``path`` (a file, or an LMDB key) as float32 HWC RGB in [0, 1] (H, W, 3)."""
    content = _read_bytes(file_client, path, client_key)
    try:
        img = imfrombytes(content, flag='unchanged', float32=False)
    except cv2.error as err:
        raise ImageReadError(f'{path!r} is not a readable image ({err}).') from err
    if img is None or img.size == 0:
        raise ImageReadError(f'{path!r} is corrupt or not an image OpenCV can decode.')
    return _to_rgb(_to_float(img, path), path)


def check_same_size(lq: np.ndarray, gt: np.ndarray, lq_path: str, gt_path: str) -> None:
    """Raise :class:`ImageReadError` unless ``lq`` and ``gt`` have the same height and width."""
    if lq.shape[:2] != gt.shape[:2]:
        raise ImageReadError(f'size mismatch: lq {lq_path!r} is {lq.shape[1]}x{lq.shape[0]} but gt {gt_path!r} is '
                             f'{gt.shape[1]}x{gt.shape[0]} (width x height); the pair must be aligned.')


def crop_to_multiple(img: np.ndarray, base: int) -> np.ndarray:
    """The official ``crop_img``: drop ``h mod base`` rows (the floor half from the top) and likewise columns."""
    height, width = img.shape[:2]
    top, left = (height % base) // 2, (width % base) // 2
    return img[top:top + height - height % base, left:left + width - width % base]


def fit_to_crop(img: np.ndarray, size: int, mode: str, path: str) -> np.ndarray:
    """Reflect-pad ``img`` at the bottom/right up to ``size`` × ``size`` (``mode='pad'``), or raise (``'error'``)."""
    height, width = img.shape[:2]
    if height >= size and width >= size:
        return img
    if mode == 'error':
        raise ImageReadError(f'{path!r} is {width}x{height}, smaller than the {size}x{size} crop (use a smaller '
                             'gt_size, remove the image, or set small_image: pad).')
    return cv2.copyMakeBorder(img, 0, max(size - height, 0), 0, max(size - width, 0), cv2.BORDER_REFLECT_101)


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` × ``size`` region of an image at least that large (H, W, C) -> (size, size, C)."""
    height, width = img.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return img[top:top + size, left:left + size]


def optional_crop_to_multiple(img: np.ndarray, base: Optional[int]) -> np.ndarray:
    """:func:`crop_to_multiple` when ``base`` is set (``crop_border_base`` option), else ``img`` unchanged."""
    return crop_to_multiple(img, base) if base else img
