"""Robust image reading and pair geometry for the datasets, with errors that name the file.

Reading (:func:`read_image`) goes through BasicSR's ``FileClient`` (disk or LMDB) and returns a
float32 HWC **RGB** image in [0, 1], whatever was stored:

- grayscale (1 channel) → replicated to 3 channels;
- 16-bit → divided by 65535 (8-bit by 255; float images kept, clipped to [0, 1]; NaN and infinite values are kept
  for the caller to report, and a float image with values far above 1 (e.g. stored in 0..255) is logged as a
  warning);
- RGBA → the alpha channel is dropped (not composited: transparent pixels keep their colour);
- an EXIF orientation (phone photos) is applied, as image viewers do (:func:`exif_orientation` tells which);
- unreadable, corrupt, empty or missing → :class:`ImageReadError` naming the file in one line (a ``ValueError``,
  so a DataLoader worker re-raises it in the main process with this message, not an OpenCV traceback).

:func:`image_header_size` reads the size from the file's header without decoding the pixels, so that an image
too large for a memory budget is refused before it is decoded.

Geometry helpers: :func:`check_same_size` (lq/gt mismatch → error naming both files),
:func:`crop_to_multiple` (the official ``crop_img``) and :func:`fit_to_crop` (images smaller than
the training crop are reflect-padded, or rejected with ``small_image: error``).
"""
import io
from typing import Optional, Tuple

import cv2
import numpy as np
from PIL import Image

from basicsr.utils import FileClient, get_root_logger, imfrombytes

EXIF_ORIENTATION_TAG = 0x0112
FLOAT_RANGE_WARNING = 1.5  # float pixels above this are no [0, 1] image (e.g. stored in 0..255)
# EXIF orientation -> (counter-clockwise quarter turns of np.rot90, flip left-right first)
_UPRIGHT = {2: (0, True), 3: (2, False), 4: (2, True), 5: (1, True), 6: (3, False), 7: (3, True), 8: (1, False)}

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
        finite = np.isfinite(img)
        largest = float(img[finite].max()) if finite.any() else 0.0
        if largest > FLOAT_RANGE_WARNING:
            get_root_logger().warning(f'{path!r}: float pixels up to {largest:g}, expected 0..1 (stored in 0..255?); '
                                      'they are clipped to 1. Save the image as 8- or 16-bit, or scaled to 0..1.')
        return np.where(finite, np.clip(img, 0, 1), img).astype(np.float32)  # NaN/Inf kept: the caller reports them
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


def exif_orientation(content: bytes) -> int:
    """The EXIF orientation (1..8) of an encoded image; 1 (upright) when it has none or it cannot be read."""
    try:
        with Image.open(io.BytesIO(content)) as image:
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 -- PIL cannot read it: OpenCV decides whether it is an image at all
        return 1
    return orientation if orientation in _UPRIGHT else 1


def upright(img: np.ndarray, orientation: int) -> np.ndarray:
    """``img`` (H, W, ...) turned as EXIF ``orientation`` says, as image viewers show it."""
    turns, mirrored = _UPRIGHT.get(orientation, (0, False))
    return np.ascontiguousarray(np.rot90(img[:, ::-1] if mirrored else img, turns))


def image_header_size(path: str) -> Optional[Tuple[int, int]]:
    """(height, width) as shown (EXIF orientation applied) from the header of the image file ``path``, without
    decoding its pixels (nor PIL's decompression-bomb limit, which is about decoding); None when PIL cannot read it."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as image:
            height, width = image.height, image.width
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 -- not an image PIL knows: the image fails later, saying why
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def read_image(file_client: FileClient, path: str, client_key: str = 'default') -> np.ndarray:
    """Read ``path`` (a file, or an LMDB key) as float32 HWC RGB in [0, 1] (H, W, 3), EXIF orientation applied."""
    content = _read_bytes(file_client, path, client_key)
    if not content:
        raise ImageReadError(f'{path!r} is empty (0 bytes): an interrupted download or copy; copy it again.')
    try:
        img = imfrombytes(content, flag='unchanged', float32=False)
    except cv2.error as err:
        raise ImageReadError(f'{path!r} is not a readable image ({" ".join(str(err).split())}).') from err
    if img is None or img.size == 0:
        raise ImageReadError(f'{path!r} is corrupt or not an image OpenCV can decode.')
    return upright(_to_rgb(_to_float(img, path), path), exif_orientation(content))


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
