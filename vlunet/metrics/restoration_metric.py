"""Float-RGB PSNR/SSIM computed with scikit-image, exactly as VLU-Net's official evaluation.

BasicSR's ``calculate_psnr``/``calculate_ssim`` (uint8 BGR images, RGB or Y channel via
``test_y_channel``, ``crop_border``) stay available unchanged. The two metrics here reproduce the
published protocol instead: restored and ground-truth images clipped to [0, 1] in float, all three
RGB channels, no uint8 quantisation, ``skimage.metrics.peak_signal_noise_ratio(data_range=1)`` and
``structural_similarity(data_range=1, channel_axis=2)`` (7x7 uniform window), averaged per image.

Input convention: a metric function whose attribute ``metric_input`` is ``FLOAT_RGB`` receives
``img``/``img2`` as float (H, W, 3) RGB arrays in [0, 1] (any float dtype; the model passes float32
like the official code); every other metric gets BasicSR's uint8 BGR (H, W, C) arrays from
``tensor2img``. ``GuidedRestorationModel`` reads the attribute to build the right arrays, so a new float metric
only needs the :func:`float_rgb_metric` decorator. Option file example::

    val:
      metrics:
        psnr: {type: calculate_psnr, crop_border: 0, test_y_channel: false}  # BasicSR, uint8
        psnr_float: {type: calculate_psnr_float_rgb}                         # official protocol
        ssim_float: {type: calculate_ssim_float_rgb}
"""
from typing import Callable, Dict, Tuple

import numpy as np
import torch

from basicsr.utils import tensor2img
from basicsr.utils.registry import METRIC_REGISTRY

FLOAT_RGB = 'float_rgb'
UINT8_BGR = 'uint8_bgr'


def float_rgb_metric(function: Callable) -> Callable:
    """Mark a metric function as taking float RGB (H, W, 3) arrays in [0, 1]."""
    function.metric_input = FLOAT_RGB
    return function


def metric_input(function: Callable) -> str:
    """The array format a registered metric function expects (``FLOAT_RGB`` or ``UINT8_BGR``)."""
    return getattr(function, 'metric_input', UINT8_BGR)


def float_rgb_array(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) or (3, H, W) tensor -> float32 (H, W, 3) RGB array (clipping is the metric's job)."""
    return image.detach().reshape(-1, *image.shape[-2:]).permute(1, 2, 0).float().cpu().numpy()


def metric_arrays(output: torch.Tensor, gt: torch.Tensor) -> Dict[str, Dict[str, np.ndarray]]:
    """The ``img`` (restored) and ``img2`` (reference) arrays of each input format, ``{FLOAT_RGB: {...}, UINT8_BGR:
    {...}}``, from (1, 3, H, W) or (3, H, W) RGB tensors in [0, 1]: what every metric of a test run is given."""
    return {FLOAT_RGB: {'img': float_rgb_array(output), 'img2': float_rgb_array(gt)},
            UINT8_BGR: {'img': tensor2img([output]), 'img2': tensor2img([gt])}}


def clipped_float_rgb_pair(img: np.ndarray, img2: np.ndarray, crop_border: int) -> Tuple[np.ndarray, np.ndarray]:
    """Two float (H, W, C) images of one shape, ``crop_border`` pixels cut from each side, clipped to [0, 1]."""
    if img.shape != img2.shape or img.ndim != 3:
        raise ValueError(f'float-RGB metrics need two (H, W, C) images of the same shape, got {img.shape} '
                         f'and {img2.shape}.')
    if not (np.issubdtype(img.dtype, np.floating) and np.issubdtype(img2.dtype, np.floating)):
        raise TypeError(f'float-RGB metrics need float images in [0, 1], got {img.dtype} and {img2.dtype} '
                        '(uint8 images go to calculate_psnr / calculate_ssim).')
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border]
    return np.clip(img, 0, 1), np.clip(img2, 0, 1)


@METRIC_REGISTRY.register()
@float_rgb_metric
def calculate_psnr_float_rgb(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, **kwargs) -> float:
    """PSNR (dB) of float RGB images (H, W, 3) in [0, 1]; ``img2`` is the reference. Identical images: inf."""
    img, img2 = clipped_float_rgb_pair(img, img2, crop_border)
    mse = np.mean((img2.astype(np.float64) - img) ** 2)
    if mse == 0:
        return float('inf')
    from skimage.metrics import peak_signal_noise_ratio  # on use: keeps `import vlunet` light
    return float(peak_signal_noise_ratio(img2, img, data_range=1))


@METRIC_REGISTRY.register()
@float_rgb_metric
def calculate_ssim_float_rgb(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, **kwargs) -> float:
    """SSIM of float RGB images (H, W, 3) in [0, 1]: scikit-image defaults, mean over channels."""
    img, img2 = clipped_float_rgb_pair(img, img2, crop_border)
    from skimage.metrics import structural_similarity  # on use: keeps `import vlunet` light
    return float(structural_similarity(img2, img, data_range=1, channel_axis=2))
