"""IR-SDE schedule and sampler (vlunet.models.daclip.irsde) against an independent float64 computation.

The reference functions below are written from the formulas of docs/daclip.md#the-sde (max_sigma 50/255,
T 100, cosine schedule with s = 0.008 over T + 2 steps, eps 0.005), in numpy, not from the module.
"""
import math

import numpy as np
import pytest
import torch

from vlunet.models.daclip.irsde import IRSDE

MAX_SIGMA = 50 / 255
T = 100
EPS = 0.005


def reference_schedule(steps: int = T, max_sigma: float = MAX_SIGMA, eps: float = EPS) -> dict:
    """θ, σ, Θ, dt, σ̄ from the IR-SDE formulas in float64."""
    x = np.arange(steps + 3, dtype=np.float64)
    alpha_bar = np.cos((x / (steps + 2) + 0.008) / 1.008 * math.pi / 2) ** 2
    alpha_bar = alpha_bar / alpha_bar[0]
    theta = 1 - alpha_bar[1:-1]
    cumsum = np.cumsum(theta) - theta[0]
    dt = -math.log(eps) / cumsum[-1]
    return {'theta': theta, 'sigma': np.sqrt(2 * max_sigma ** 2 * theta), 'cumsum': cumsum, 'dt': dt,
            'sigma_bar': max_sigma * np.sqrt(1 - np.exp(-2 * cumsum * dt))}


def test_schedule_matches_the_formulas_at_several_steps():
    sde, ref = IRSDE(), reference_schedule()
    assert sde.T == 100 and sde.max_sigma == pytest.approx(0.19608, abs=1e-5)
    assert len(sde.thetas) == 101
    steps = [0, 1, 2, 25, 50, 99, 100]  # fp32 like the release: 1 − ᾱ_1 loses ~1e-4 relative at t = 0
    for name, values in (('thetas', 'theta'), ('sigmas', 'sigma'), ('thetas_cumsum', 'cumsum'),
                         ('sigma_bars', 'sigma_bar')):
        np.testing.assert_allclose(getattr(sde, name)[steps].double().numpy(), ref[values][steps], rtol=1e-4,
                                   atol=1e-7, err_msg=name)
    assert float(sde.dt) == pytest.approx(ref['dt'], rel=1e-5)
    # Consequences of the definitions: Θ_0 = 0, e^{−Θ_T dt} = eps, σ̄_T = max_sigma·sqrt(1 − eps²).
    assert float(sde.thetas_cumsum[0]) == 0.0
    assert math.exp(-float(sde.thetas_cumsum[-1] * sde.dt)) == pytest.approx(EPS, rel=1e-5)
    assert float(sde.sigma_bars[-1]) == pytest.approx(MAX_SIGMA * math.sqrt(1 - EPS ** 2), rel=1e-5)
    # Absolute values of the release's schedule (the float64 reference, rounded).
    assert float(sde.dt) == pytest.approx(0.1040938, rel=1e-5)
    assert float(sde.thetas_cumsum[-1]) == pytest.approx(50.89945, rel=1e-5)
    np.testing.assert_allclose(sde.thetas[[0, 1, 50, 100]].numpy(), [6.1424e-4, 1.69462e-3, 0.506156, 0.999767],
                               rtol=2e-4)
    np.testing.assert_allclose(sde.sigma_bars[[1, 50, 100]].numpy(), [3.6826e-3, 0.182870, 0.196076], rtol=1e-4)


def test_max_sigma_below_one_is_already_on_the_unit_scale_and_bad_settings_are_rejected():
    assert IRSDE(max_sigma=0.1).max_sigma == 0.1
    with pytest.raises(ValueError, match='sde.schedule'):
        IRSDE(schedule='linear')
    with pytest.raises(ValueError, match='sde.T'):
        IRSDE(T=0)
    with pytest.raises(ValueError, match='sde.eps'):
        IRSDE(eps=1.5)


def _images(seed: int = 0, shape=(3, 3, 6, 5)):
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=generator, dtype=torch.float64) for _ in range(3)]


def test_noisy_state_and_training_pair_follow_the_formulas():
    sde, ref = IRSDE(), reference_schedule()
    x0, mu, noise = _images()
    t = torch.tensor([1, 40, 100])
    xt = sde.noisy_state(x0, mu, t, noise)
    decay = torch.tensor(np.exp(-ref['cumsum'][[1, 40, 100]] * ref['dt'])).reshape(-1, 1, 1, 1)
    expected = mu + (x0 - mu) * decay + torch.tensor(ref['sigma_bar'][[1, 40, 100]]).reshape(-1, 1, 1, 1) * noise
    torch.testing.assert_close(xt, expected, rtol=1e-5, atol=1e-6)
    # Expected previous state: x_t − (θ_t (μ − x_t) − σ_t² · (−ε/σ̄_t)) dt.
    theta, sigma, sigma_bar = (torch.tensor(ref[k][[1, 40, 100]]).reshape(-1, 1, 1, 1)
                               for k in ('theta', 'sigma', 'sigma_bar'))
    reverse = xt - (theta * (mu - xt) + sigma ** 2 * noise / sigma_bar) * ref['dt']
    torch.testing.assert_close(sde.expected_previous_state(xt, mu, noise, t), reverse, rtol=1e-5, atol=1e-6)


def test_optimum_previous_state_is_the_gaussian_posterior_mean_and_std():
    """Independently: x_{t−1}|x₀ ~ N(μ + C(x₀−μ), m²(1−C²)), x_t|x_{t−1} ~ N(μ + A(x_{t−1}−μ), m²(1−A²))."""
    sde, ref = IRSDE(), reference_schedule()
    x0, mu, xt = _images(1)
    for step in (1, 2, 37, 100):
        a = math.exp(-ref['theta'][step] * ref['dt'])
        c = math.exp(-ref['cumsum'][step - 1] * ref['dt'])
        prior_var, noise_var = MAX_SIGMA ** 2 * (1 - c ** 2), MAX_SIGMA ** 2 * (1 - a ** 2)
        precision = 1 / prior_var + a ** 2 / noise_var if prior_var > 0 else math.inf
        if math.isinf(precision):  # t = 1: x_0 is known exactly
            mean, std = x0, 0.0
        else:
            mean = mu + ((c * (x0 - mu)) / prior_var + a * (xt - mu) / noise_var) / precision
            std = math.sqrt(1 / precision)
        t = torch.full((3,), step)
        # the schedule is fp32 (as in the release): 1 − C² loses digits at small t
        torch.testing.assert_close(sde.optimum_previous_state(xt, x0, mu, t), mean, rtol=1e-3, atol=2e-4)
        floor = math.sqrt(1e-20 * ref['dt']) * MAX_SIGMA
        assert float(sde.posterior_std(t)[0]) == pytest.approx(max(std, floor), rel=1e-4, abs=1e-9)


def test_true_noise_recovers_x0_so_the_posterior_mean_is_the_optimum():
    sde = IRSDE()
    x0, mu, noise = _images(2)
    t = torch.tensor([3, 50, 97])
    xt = sde.noisy_state(x0, mu, t, noise)
    torch.testing.assert_close(sde.initial_state_from_noise(xt, mu, noise, t), x0, rtol=1e-5, atol=1e-5)
    recovered = sde.initial_state_from_noise(xt, mu, noise, t)
    torch.testing.assert_close(sde.optimum_previous_state(xt, recovered, mu, t),
                               sde.optimum_previous_state(xt, x0, mu, t), rtol=1e-6, atol=1e-6)


def _oracle_noise_fn(sde: IRSDE, x0: torch.Tensor, mu: torch.Tensor):
    """The exact noise of x_t given the true x₀ (a perfect network)."""
    def noise_fn(xt, t):
        return (xt - sde.state_mean(x0, mu, t)) / sde.sigma_bars[t].reshape(-1, 1, 1, 1)
    return noise_fn


@pytest.mark.parametrize('mode', ['posterior', 'sde'])
def test_sampling_is_reproducible_with_a_seed_and_a_perfect_network_restores_x0(mode):
    sde = IRSDE(T=20)
    x0, mu, _ = (image.float() for image in _images(3, (2, 3, 7, 9)))
    noise_fn = _oracle_noise_fn(sde, x0, mu)
    first = sde.sample(noise_fn, mu, mode, torch.Generator().manual_seed(5))
    again = sde.sample(noise_fn, mu, mode, torch.Generator().manual_seed(5))
    other = sde.sample(noise_fn, mu, mode, torch.Generator().manual_seed(6))
    assert first.shape == mu.shape
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert (first - other).abs().max() > 0
    error = (first - x0).abs().mean()
    assert error < (0.02 if mode == 'posterior' else 0.1) * (mu - x0).abs().mean() + 0.01, float(error)
    with pytest.raises(ValueError, match='sampling_mode'):
        sde.sample(noise_fn, mu, 'ode')


def test_sampling_calls_the_network_t_times_with_decreasing_integer_steps():
    sde = IRSDE(T=5)
    calls = []

    def noise_fn(xt, t):
        calls.append(t.tolist())
        return torch.zeros_like(xt)

    sde.sample(noise_fn, torch.zeros(2, 3, 4, 4))
    assert calls == [[5, 5], [4, 4], [3, 3], [2, 2], [1, 1]]
