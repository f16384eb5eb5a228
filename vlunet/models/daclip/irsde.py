"""IR-SDE, the mean-reverting SDE of DA-CLIP's restoration: schedule, training targets and samplers.

The forward SDE ``dx = θ_t (μ − x) dt + σ_t dw`` drives a clean image x₀ towards the low-quality
image μ plus Gaussian noise of standard deviation ``max_sigma``. With the cosine θ schedule of the
release (``utils/sde_utils.py`` ``IRSDE``), for steps t = 0…T:

- ᾱ_x = cos²(((x / (T+2)) + s) / (1 + s) · π/2) for x = 0…T+2 (s = 0.008), divided by ᾱ_0;
  θ = 1 − ᾱ[1:−1] (T+1 values);
- σ_t = sqrt(2 · max_sigma² · θ_t); Θ_t = Σ_{i≤t} θ_i − θ_0; dt = −ln(eps) / Θ_T;
- σ̄_t = max_sigma · sqrt(1 − exp(−2 Θ_t dt)); the state mean is μ + (x₀ − μ) · exp(−Θ_t dt).

Training (:meth:`IRSDE.training_targets`): x_t = mean + σ̄_t ε for a random t per image; the
network's noise ε̂ gives the score −ε̂/σ̄_t and the expected previous state
x_t − (θ_t (μ − x_t) − σ_t² score) dt, which is regressed (L1) on the optimum previous state
A(1−C²)/(1−B²)·(x_t − μ) + C(1−A²)/(1−B²)·(x₀ − μ) + μ, with A = e^{−θ_t dt}, B = e^{−Θ_t dt},
C = e^{−Θ_{t−1} dt}.

Restoration (:meth:`IRSDE.sample`) starts from x_T = μ + max_sigma · N(0, 1) and takes T steps:
``posterior`` (the release's test setting) moves to the optimum previous state with x̂₀ recovered
from ε̂ and adds the posterior noise; ``sde`` takes Euler–Maruyama steps of the reverse SDE. The
schedule is computed in fp32, as in the release.

Shapes: images (B, C, H, W); per-image steps ``t`` are (B,) int64 tensors and broadcast as (B, 1, 1, 1).
"""
import math
from typing import Callable, Optional, Tuple

import torch
from tqdm import tqdm

NoiseFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``noise_fn(x_t, t)`` -> predicted noise of x_t (B, C, H, W); ``t`` is a (B,) int64 tensor of steps."""

SAMPLING_MODES = ('posterior', 'sde')
SCHEDULES = ('cosine',)


def cosine_thetas(steps: int, s: float = 0.008) -> torch.Tensor:
    """θ_0…θ_steps (steps + 1 values, fp32) of the cosine schedule (module docstring)."""
    timesteps = steps + 2
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float32)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return 1 - alphas_cumprod[1:-1]


class IRSDE:
    """The IR-SDE of a T-step cosine schedule (module docstring), on ``device``.

    Args:
        max_sigma: Stationary noise level; values ≥ 1 are on the 0–255 scale (the release's 50 = 50/255).
        T: Number of steps (the release: 100).
        schedule: θ schedule; only ``cosine`` (the release's).
        eps: exp(−Θ_T dt): how close x_T's mean is to μ (the release: 0.005).
        device: Where the schedule tensors live.
    """

    def __init__(self, max_sigma: float = 50, T: int = 100, schedule: str = 'cosine', eps: float = 0.005,
                 device: torch.device = torch.device('cpu')):
        if schedule not in SCHEDULES:
            raise ValueError(f'sde.schedule: {schedule!r} is not supported; use one of {", ".join(SCHEDULES)}.')
        if not isinstance(T, int) or T < 1:
            raise ValueError(f'sde.T: the number of steps must be a positive integer, got {T!r}.')
        if not 0 < eps < 1:
            raise ValueError(f'sde.eps: must be in (0, 1), got {eps!r}.')
        if max_sigma <= 0:
            raise ValueError(f'sde.max_sigma: must be positive, got {max_sigma!r}.')
        self.T = T
        self.max_sigma = max_sigma / 255 if max_sigma >= 1 else max_sigma
        thetas = cosine_thetas(T)
        thetas_cumsum = torch.cumsum(thetas, dim=0) - thetas[0]
        dt = -1 / thetas_cumsum[-1] * math.log(eps)
        self.dt = dt.to(device)  # 0-d
        self.thetas = thetas.to(device)  # (T + 1,), like the three below
        self.sigmas = torch.sqrt(self.max_sigma ** 2 * 2 * thetas).to(device)
        self.thetas_cumsum = thetas_cumsum.to(device)
        self.sigma_bars = torch.sqrt(self.max_sigma ** 2 * (1 - torch.exp(-2 * thetas_cumsum * dt))).to(device)

    @staticmethod
    def _column(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return values[t].reshape(-1, 1, 1, 1)

    # ------------------------------------------------------------------ forward process and training targets

    def state_mean(self, x0: torch.Tensor, mu: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """E[x_t | x₀] = μ + (x₀ − μ) e^{−Θ_t dt}."""
        return mu + (x0 - mu) * torch.exp(-self._column(self.thetas_cumsum, t) * self.dt)

    def noisy_state(self, x0: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = E[x_t | x₀] + σ̄_t · noise."""
        return self.state_mean(x0, mu, t) + self._column(self.sigma_bars, t) * noise

    def expected_previous_state(self, xt: torch.Tensor, mu: torch.Tensor, noise: torch.Tensor,
                                t: torch.Tensor) -> torch.Tensor:
        """Reverse-SDE mean step x_t − (θ_t (μ − x_t) − σ_t² · score) dt with score = −noise / σ̄_t."""
        score = -noise / self._column(self.sigma_bars, t)
        drift = (self._column(self.thetas, t) * (mu - xt) - self._column(self.sigmas, t) ** 2 * score) * self.dt
        return xt - drift

    def optimum_previous_state(self, xt: torch.Tensor, x0: torch.Tensor, mu: torch.Tensor,
                               t: torch.Tensor) -> torch.Tensor:
        """The mean of x_{t−1} given x_t and x₀ (module docstring)."""
        a = torch.exp(-self._column(self.thetas, t) * self.dt)
        b = torch.exp(-self._column(self.thetas_cumsum, t) * self.dt)
        c = torch.exp(-self._column(self.thetas_cumsum, t - 1) * self.dt)
        return a * (1 - c ** 2) / (1 - b ** 2) * (xt - mu) + c * (1 - a ** 2) / (1 - b ** 2) * (x0 - mu) + mu

    def random_steps(self, batch: int, device: torch.device,
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(batch,) int64 steps drawn uniformly from 1…T."""
        return torch.randint(1, self.T + 1, (batch,), device=device, generator=generator)

    def training_targets(self, noise_fn: NoiseFunction, gt: torch.Tensor, lq: torch.Tensor,
                         generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(expected, optimum) previous states of a random noisy state per image: the pair the L1 loss compares."""
        t = self.random_steps(gt.shape[0], gt.device, generator)
        noise = torch.randn(gt.shape, device=gt.device, dtype=gt.dtype, generator=generator)
        xt = self.noisy_state(gt, lq, t, noise)
        predicted = noise_fn(xt, t).float()
        return self.expected_previous_state(xt, lq, predicted, t), self.optimum_previous_state(xt, gt, lq, t)

    # ------------------------------------------------------------------ restoration

    def initial_state_from_noise(self, xt: torch.Tensor, mu: torch.Tensor, noise: torch.Tensor,
                                 t: torch.Tensor) -> torch.Tensor:
        """x̂₀ = (x_t − μ − σ̄_t · noise) e^{Θ_t dt} + μ."""
        return (xt - mu - self._column(self.sigma_bars, t) * noise) * torch.exp(
            self._column(self.thetas_cumsum, t) * self.dt) + mu

    def posterior_std(self, t: torch.Tensor) -> torch.Tensor:
        """Standard deviation of x_{t−1} given x_t and x₀, floored at sqrt(1e−20 dt) · max_sigma."""
        a = torch.exp(-2 * self._column(self.thetas, t) * self.dt)
        b = torch.exp(-2 * self._column(self.thetas_cumsum, t) * self.dt)
        c = torch.exp(-2 * self._column(self.thetas_cumsum, t - 1) * self.dt)
        variance = (1 - a) * (1 - c) / (1 - b)
        return (0.5 * torch.log(torch.clamp(variance, min=1e-20 * self.dt))).exp() * self.max_sigma

    def terminal_state(self, mu: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """x_T = μ + max_sigma · N(0, 1)."""
        return mu + torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator) * self.max_sigma

    def posterior_step(self, xt: torch.Tensor, mu: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """x_{t−1}: the optimum previous state with x̂₀ from the predicted noise, plus posterior noise."""
        x0 = self.initial_state_from_noise(xt, mu, noise, t)
        mean = self.optimum_previous_state(xt, x0, mu, t)
        return mean + self.posterior_std(t) * torch.randn(xt.shape, device=xt.device, dtype=xt.dtype,
                                                          generator=generator)

    def sde_step(self, xt: torch.Tensor, mu: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """x_{t−1}: one Euler–Maruyama step of the reverse SDE."""
        dispersion = self._column(self.sigmas, t) * torch.randn(
            xt.shape, device=xt.device, dtype=xt.dtype, generator=generator) * torch.sqrt(self.dt)
        return self.expected_previous_state(xt, mu, noise, t) - dispersion

    def sample(self, noise_fn: NoiseFunction, mu: torch.Tensor, mode: str = 'posterior',
               generator: Optional[torch.Generator] = None, progress: bool = False) -> torch.Tensor:
        """Restore μ (B, C, H, W): x_T -> x_0 in T steps of ``mode`` (``posterior`` or ``sde``); T network calls."""
        if mode not in SAMPLING_MODES:
            raise ValueError(f'sde.sampling_mode: {mode!r} is not supported; use one of {", ".join(SAMPLING_MODES)}.')
        step = self.posterior_step if mode == 'posterior' else self.sde_step
        x = self.terminal_state(mu, generator)
        for t in tqdm(range(self.T, 0, -1), desc='IR-SDE', unit='step', disable=not progress, leave=False):
            steps = torch.full((mu.shape[0],), t, device=mu.device, dtype=torch.int64)
            x = step(x, mu, noise_fn(x, steps).float(), steps, generator)
        return x
