"""Synthetic degradations of clean images, for training all-in-one models without paired sets.

Every degradation is a function ``f(img, rng, **params) -> degraded`` where ``img`` is a float32
HWC RGB image in [0, 1], ``rng`` a ``numpy.random.Generator`` (all randomness comes from it, so a
seeded generator gives the same result on every machine) and the result is float32 HWC in [0, 1]
of the same size. Each parameter is fixed (``sigma: 25``) or a ``[low, high]`` range drawn
uniformly per image (``sigma: [15, 50]``, the random-σ setting of the paper's Table 6).

In option files a degradation is a mapping ``{type: <name>, <param>: <value or [low, high]>}``;
:func:`check_degradation_spec` validates it and :func:`apply_degradations` applies a list of them
in order (e.g. haze then noise). The names are the keys of :data:`DEGRADATIONS`.
"""
import inspect
from typing import Callable, Dict, List, Sequence, Union

import cv2
import numpy as np

Param = Union[float, Sequence[float]]


def draw(value: Param, rng: np.random.Generator) -> float:
    """A fixed value as is, or a uniform draw from a ``[low, high]`` range."""
    if isinstance(value, (list, tuple)):
        low, high = value
        return float(rng.uniform(low, high))
    return float(value)


def gaussian_noise(img: np.ndarray, rng: np.random.Generator, *, sigma: Param = 25) -> np.ndarray:
    """Additive white Gaussian noise, ``sigma`` on the 0..255 scale (15, 25, 50 in the paper), clipped."""
    noise = rng.normal(0.0, draw(sigma, rng) / 255.0, size=img.shape)
    return np.clip(img + noise, 0, 1).astype(np.float32)


def _line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A normalised straight-line kernel of ``length`` pixels at ``angle_deg`` (motion blur, rain)."""
    size = max(3, int(np.ceil(length)) | 1)
    kernel = np.zeros((size, size), np.float32)
    kernel[size // 2, (size - int(round(length))) // 2:(size + int(round(length))) // 2 + 1] = 1
    rotation = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), angle_deg, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (size, size), flags=cv2.INTER_LINEAR)
    return kernel / max(kernel.sum(), 1e-8)


def rain(img: np.ndarray, rng: np.random.Generator, *, density: Param = 0.008, length: Param = (10, 25),
         angle: Param = (-15, 15), intensity: Param = (0.3, 0.7)) -> np.ndarray:
    """Rain streaks: sparse random drops smeared along a line and added (screen-like) to the image.

    ``density`` is the fraction of pixels seeding a drop, ``length`` the streak length in pixels,
    ``angle`` its tilt from vertical in degrees, ``intensity`` the peak streak brightness.
    """
    height, width = img.shape[:2]
    drops = (rng.random((height, width)) < draw(density, rng)).astype(np.float32)
    streak_length = draw(length, rng)
    streaks = cv2.filter2D(drops, -1, _line_kernel(streak_length, 90 + draw(angle, rng)), borderType=cv2.BORDER_REFLECT)
    streaks = np.clip(streaks * streak_length * draw(intensity, rng), 0, 1)[..., None]
    return np.clip(img + streaks * (1 - img), 0, 1).astype(np.float32)


def haze(img: np.ndarray, rng: np.random.Generator, *, beta: Param = (0.8, 2.0),
         airlight: Param = (0.75, 0.95)) -> np.ndarray:
    """Atmospheric scattering ``I = J·t + A·(1 − t)`` with ``t = exp(−beta·depth)``.

    The depth proxy (0 near, 1 far) grows towards the top of the frame (the horizon is usually up)
    and with smoothed brightness (bright regions such as sky tend to be far), normalised to [0, 1].
    ``airlight`` is the grey level A of the haze, ``beta`` the scattering coefficient.
    """
    height, width = img.shape[:2]
    rows = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None] * np.ones((1, width), np.float32)
    brightness = cv2.GaussianBlur(img.mean(axis=2), (0, 0), sigmaX=max(height, width) / 20)
    depth = 0.7 * rows + 0.3 * brightness
    depth = (depth - depth.min()) / max(float(depth.max() - depth.min()), 1e-6)
    transmission = np.exp(-draw(beta, rng) * depth)[..., None]
    return np.clip(img * transmission + draw(airlight, rng) * (1 - transmission), 0, 1).astype(np.float32)


def motion_blur(img: np.ndarray, rng: np.random.Generator, *, length: Param = (5, 15),
                angle: Param = (0, 180)) -> np.ndarray:
    """Linear camera-shake blur: a line kernel of ``length`` pixels at ``angle`` degrees (reflect border)."""
    kernel = _line_kernel(draw(length, rng), draw(angle, rng))
    return np.clip(cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT), 0, 1).astype(np.float32)


def defocus_blur(img: np.ndarray, rng: np.random.Generator, *, radius: Param = (2, 5)) -> np.ndarray:
    """Out-of-focus blur: a uniform disk kernel of ``radius`` pixels (reflect border)."""
    r = draw(radius, rng)
    size = 2 * int(np.ceil(r)) + 1
    yy, xx = np.mgrid[:size, :size] - size // 2
    kernel = (yy ** 2 + xx ** 2 <= r ** 2).astype(np.float32)
    kernel /= kernel.sum()
    return np.clip(cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT), 0, 1).astype(np.float32)


def low_light(img: np.ndarray, rng: np.random.Generator, *, gamma: Param = (1.5, 2.5), exposure: Param = (0.1, 0.3),
              shot_noise: Param = 0.01, read_noise: Param = 0.01) -> np.ndarray:
    """Under-exposure: ``exposure · img^gamma`` plus signal-dependent (Poisson-Gaussian) sensor noise.

    The noise standard deviation is ``sqrt(shot_noise · signal + read_noise²)`` (both on the [0, 1] scale).
    """
    dark = draw(exposure, rng) * np.power(img, draw(gamma, rng))
    std = np.sqrt(draw(shot_noise, rng) * dark + draw(read_noise, rng) ** 2)
    return np.clip(dark + rng.normal(size=img.shape) * std, 0, 1).astype(np.float32)


def jpeg(img: np.ndarray, rng: np.random.Generator, *, quality: Param = (10, 40)) -> np.ndarray:
    """JPEG compression at ``quality`` (1..100, rounded) with OpenCV: 8×8 blocking and ringing."""
    bgr = (np.clip(img[..., ::-1], 0, 1) * 255).round().astype(np.uint8)
    quality_value = int(np.clip(round(draw(quality, rng)), 1, 100))
    ok, encoded = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, quality_value])
    if not ok:
        raise RuntimeError('OpenCV could not JPEG-encode the image.')
    return (cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1] / 255.0).astype(np.float32)


DEGRADATIONS: Dict[str, Callable[..., np.ndarray]] = {
    'gaussian_noise': gaussian_noise,
    'rain': rain,
    'haze': haze,
    'motion_blur': motion_blur,
    'defocus_blur': defocus_blur,
    'low_light': low_light,
    'jpeg': jpeg,
}


def degradation_parameters(name: str) -> List[str]:
    """The YAML parameter names of degradation ``name``."""
    signature = inspect.signature(DEGRADATIONS[name])
    return [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _check_param(key: str, value: object) -> List[str]:
    numbers = (int, float)
    if isinstance(value, numbers) and not isinstance(value, bool):
        return []
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, numbers) for v in value):
        return [] if value[0] <= value[1] else [f'{key}: range {list(value)} has low > high.']
    return [f'{key}: expected a number or a [low, high] range, got {value!r}.']


def check_degradation_spec(key: str, spec: object) -> List[str]:
    """Problems of one option-file degradation ``{type: name, **params}``, each naming ``key``."""
    if not isinstance(spec, dict) or 'type' not in spec:
        return [f'{key}: expected a mapping with a `type` key (one of {", ".join(DEGRADATIONS)}).']
    name = spec['type']
    if name not in DEGRADATIONS:
        return [f'{key}.type: unknown degradation {name!r}; valid names: {", ".join(DEGRADATIONS)}.']
    valid = degradation_parameters(name)
    errors = []
    for param, value in spec.items():
        if param == 'type':
            continue
        if param not in valid:
            errors.append(f'{key}.{param}: unknown parameter of {name}; valid parameters: {", ".join(valid)}.')
        else:
            errors += _check_param(f'{key}.{param}', value)
    return errors


def apply_degradations(img: np.ndarray, rng: np.random.Generator, specs: Sequence[dict]) -> np.ndarray:
    """Apply the checked degradation ``specs`` in order to float32 HWC RGB ``img`` in [0, 1]."""
    for spec in specs:
        params = {k: v for k, v in spec.items() if k != 'type'}
        img = DEGRADATIONS[spec['type']](img, rng, **params)
    return img
