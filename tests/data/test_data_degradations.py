"""Synthetic degradations: each changes the image in the expected direction, deterministically."""
import numpy as np
import pytest

import vlunet  # noqa: F401
from vlunet.data.synthetic_degradations import (
    DEGRADATIONS,
    apply_degradations,
    check_degradation_spec,
    degradation_parameters,
    draw,
)

from helpers import smooth_image


def _clean(seed: int = 0, size: int = 96) -> np.ndarray:
    return (smooth_image(seed, size, size)[..., ::-1] / 255.0).astype(np.float32)


def _high_frequency_energy(img: np.ndarray) -> float:
    gray = img.mean(axis=2)
    laplacian = 4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    return float((laplacian ** 2).mean())


def _blockiness(img: np.ndarray) -> float:
    """Mean |column step| across 8-pixel block borders divided by the mean step inside blocks."""
    steps = np.abs(np.diff(img.mean(axis=2), axis=1))
    at_border = steps[:, 7::8].mean()
    inside = np.delete(steps, np.s_[7::8], axis=1).mean()
    return float(at_border / inside)


def _local_contrast(img: np.ndarray) -> float:
    """Mean RMS contrast (standard deviation) over 16×16 tiles of the gray image."""
    gray = img.mean(axis=2)
    tiles = gray.reshape(gray.shape[0] // 16, 16, gray.shape[1] // 16, 16)
    return float(tiles.std(axis=(1, 3)).mean())


def _apply(name: str, img: np.ndarray, seed: int = 1, **params) -> np.ndarray:
    out = DEGRADATIONS[name](img, np.random.default_rng(seed), **params)
    assert out.shape == img.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    return out


def test_gaussian_noise_raises_variance_by_sigma():
    flat = np.full((64, 64, 3), 0.5, np.float32)
    noisy = _apply('gaussian_noise', flat, sigma=25)
    assert abs(noisy.std() * 255 - 25) < 1.0


def test_low_light_lowers_mean():
    img = _clean()
    assert _apply('low_light', img).mean() < 0.5 * img.mean()


@pytest.mark.parametrize('name', ['motion_blur', 'defocus_blur'])
def test_blur_lowers_high_frequency_energy(name):
    img = _clean()
    assert _high_frequency_energy(_apply(name, img)) < 0.5 * _high_frequency_energy(img)


def test_haze_lowers_contrast_and_brightens_towards_airlight():
    img = _clean()
    hazy = _apply('haze', img, beta=1.5, airlight=0.9)
    assert _local_contrast(hazy) < 0.8 * _local_contrast(img)
    assert hazy.mean() > img.mean()
    # The depth proxy grows towards the top: the top rows are hazier (closer to the airlight).
    assert abs(hazy[:10].mean() - 0.9) < abs(hazy[-10:].mean() - 0.9)


def test_jpeg_introduces_8x8_blocking():
    img = _clean()
    assert _blockiness(_apply('jpeg', img, quality=10)) > 1.5 * _blockiness(img)


def test_rain_adds_bright_near_vertical_streaks():
    img = _clean()
    rainy = _apply('rain', img, angle=0)
    streaks = rainy.mean(axis=2) - img.mean(axis=2)
    assert streaks.min() >= -1e-6 and streaks.mean() > 0.005
    assert np.abs(np.diff(streaks, axis=1)).mean() > 2 * np.abs(np.diff(streaks, axis=0)).mean()


@pytest.mark.parametrize('name', sorted(DEGRADATIONS))
def test_same_generator_seed_same_result(name):
    img = _clean(3, 48)
    assert np.array_equal(_apply(name, img, seed=5), _apply(name, img, seed=5))
    if name not in ('haze', 'motion_blur', 'defocus_blur', 'jpeg'):  # these depend on the draws only through ranges
        assert not np.array_equal(_apply(name, img, seed=5), _apply(name, img, seed=6))


def test_ranges_are_drawn_within_bounds_and_fixed_values_kept():
    rng = np.random.default_rng(0)
    values = [draw([15, 50], rng) for _ in range(200)]
    assert 15 <= min(values) and max(values) <= 50 and max(values) - min(values) > 20
    assert draw(25, rng) == 25.0


def test_apply_degradations_in_order():
    img = _clean()
    specs = [{'type': 'haze', 'beta': 1.0, 'airlight': 0.8}, {'type': 'gaussian_noise', 'sigma': 10}]
    expected = _apply('gaussian_noise', _apply('haze', img, beta=1.0, airlight=0.8), seed=2, sigma=10)
    # haze with fixed parameters draws nothing, so the noise uses the generator's first draws
    assert np.allclose(apply_degradations(img, np.random.default_rng(2), specs), expected)


def test_spec_errors_name_the_key_and_the_valid_names():
    [error] = check_degradation_spec('tasks[0].source.degradations[1]', {'type': 'snow'})
    assert 'tasks[0].source.degradations[1].type' in error and "'snow'" in error and 'gaussian_noise' in error
    [error] = check_degradation_spec('d', {'type': 'gaussian_noise', 'sigmaa': 3})
    assert 'd.sigmaa' in error and 'sigma' in error
    [error] = check_degradation_spec('d', {'type': 'jpeg', 'quality': [40, 10]})
    assert 'low > high' in error
    [error] = check_degradation_spec('d', {'type': 'jpeg', 'quality': 'high'})
    assert 'expected a number' in error
    assert check_degradation_spec('d', {'type': 'low_light', 'gamma': [1.5, 2], 'exposure': 0.2}) == []
    assert degradation_parameters('gaussian_noise') == ['sigma']
