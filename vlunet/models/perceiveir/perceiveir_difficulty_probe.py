"""The epoch-start PSNR probe that re-weights L_dpl's proxy negatives (Perceive-IR Sec. III-E, Eq. 11).

The paper: "at the start of epoch k", compare the network's average PSNR (weights Θ_{k-1}) with the
PSNR of each non-easy negative N_q: a proxy the network already beats is *hard* (O_k = 1 + γ), one
that beats the network *very hard* (O_k = 1 − γ). What an epoch and the "average PSNR" are is not
stated (docs/perceiveir.md#decisions). Here:

- **epoch** = ``every`` training iterations (option ``train.difficulty_probe.every``; the shipped
  files set it to one pass over the training set, the arithmetic in their headers). The probe runs
  before iterations 1, every + 1, 2·every + 1, ... and on resume (it is not stored in the training
  state, so a resumed run re-measures with the weights it resumed from).
- **probe set** = ``per_task`` evenly spaced training images of every task (release: 24 patches per
  task), each the centre ``gt_size`` crop with its fixed synthetic degradation (the dataset outside
  the training phase): the same patches at every probe.
- **comparison** = per task and proxy, on the probe images of that task that have the proxy: mean
  PSNR(proxy, gt) against the network's mean PSNR(restored, gt) on the *same* images (float RGB,
  clipped to [0, 1]). The release compares every patch with one mean over all tasks, which makes
  every derain proxy (≈ 38 dB) "hard" and every σ = 50 proxy (≈ 28 dB) "very hard" whatever the network
  does; a per-task comparison keeps Eq. 11's meaning (is this proxy better than the network?).
  The weights come from ``difficulty_weights`` of the loss module.

Distributed: rank r restores probe images r, r + world, ... and the PSNR sums are all-reduced, so
every rank gets the same weights.
"""
from typing import Callable, Dict, List, Tuple

import torch
from torch import distributed

from basicsr.utils.dist_util import get_dist_info

PSNR_FLOOR_MSE = 1e-10  # PSNR of identical images: 100 dB instead of infinity
CHUNK = 8  # probe images restored per forward
PROBE_KEYS = ('every', 'per_task', 'gamma')


def psnr_per_image(images: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) of each image against ``gt``: (N, 3, H, W) x (N, 3, H, W) in [0, 1] -> (N,), images clipped."""
    mse = (images.clamp(0, 1) - gt).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(PSNR_FLOOR_MSE))


def probe_problems(probe: object) -> List[str]:
    """Problems of ``train.difficulty_probe`` (``every``, ``per_task``: positive integers; ``gamma`` in [0, 1))."""
    if probe is None:
        return []
    if not isinstance(probe, dict):
        return ['train.difficulty_probe: expected a mapping {every: iterations, per_task: images, gamma: 0.25}.']
    problems = [f'train.difficulty_probe.{key}: unknown key; valid keys: {", ".join(PROBE_KEYS)}.' for key in probe
                if key not in PROBE_KEYS]
    for key in ('every', 'per_task'):
        value = probe.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f'train.difficulty_probe.{key}: {value!r} must be a positive integer.')
    gamma = probe.get('gamma', 0.25)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < 1:
        problems.append(f'train.difficulty_probe.gamma: {gamma!r} must be in [0, 1) (paper: 0.25).')
    return problems


class DifficultyProbe:
    """Measures the network and the proxies on a fixed probe set and gives L_dpl's (task, proxy) weights.

    ``dataset``: a :class:`vlunet.data.perceiveir.perceiveir_restoration_dataset.PerceiveIRRestorationDataset`
    outside the training phase; ``weigh(proxy_psnr, network_psnr) -> {proxy: weight}`` is the loss
    module's ``difficulty_weights``.
    """

    def __init__(self, dataset, every: int, per_task: int,
                 weigh: Callable[[Dict[str, float], float], Dict[str, float]]):
        self.dataset = dataset
        self.every = every
        self.samples: List[Tuple[int, int]] = dataset.probe_samples(per_task)
        self.weigh = weigh
        self.weights = None  # (tasks, proxies) float tensor once measured

    def due(self, current_iter: int) -> bool:
        """True before the first iteration of an epoch, and before the first iteration this process trains."""
        return self.weights is None or (current_iter - 1) % self.every == 0

    def _sums(self, restore: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> torch.Tensor:
        """(3, T, P + 1) sums over this rank's probe images: network PSNR, proxy PSNR, count; column P = all images."""
        tasks, proxies = len(self.dataset.tasks), len(self.dataset.proxy_names)
        sums = torch.zeros(3, tasks, proxies + 1, dtype=torch.float64)
        rank, world_size = get_dist_info()
        mine = self.samples[rank::world_size]
        for start in range(0, len(mine), CHUNK):
            batch = [self.dataset.load(0, t, s) for t, s in mine[start:start + CHUNK]]
            lq, gt = (torch.stack([b[k] for b in batch]).to(device) for k in ('lq', 'gt'))
            network = psnr_per_image(restore(lq).float(), gt).double().cpu()
            for b, sample in enumerate(batch):
                present = torch.cat([sample['proxy_mask'], torch.ones(1, dtype=torch.bool)])
                proxy_psnr = torch.zeros(proxies + 1, dtype=torch.float64)
                if proxies:
                    proxy_psnr[:proxies] = psnr_per_image(sample['proxies'], sample['gt'].expand_as(sample['proxies']))
                t = sample['task_index']
                sums[0, t] += network[b] * present
                sums[1, t] += proxy_psnr * present
                sums[2, t] += present.double()
        if world_size > 1:
            sums = sums.to(device)
            distributed.all_reduce(sums)
        return sums.cpu()

    def update(self, restore: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> str:
        """Measure with ``restore`` ((N, 3, H, W) -> restored, no grad), set :attr:`weights`; return a log text."""
        sums = self._sums(restore, device)
        names = self.dataset.proxy_names
        weights = torch.ones(len(self.dataset.tasks), len(names))
        lines = []
        for t, task in enumerate(self.dataset.tasks):
            network, proxy, count = (sums[k, t] for k in range(3))
            if not count[-1]:
                continue
            parts = [f'network {float(network[-1] / count[-1]):.2f} dB']
            for p, name in enumerate(names):
                if count[p]:
                    proxy_mean, network_mean = float(proxy[p] / count[p]), float(network[p] / count[p])
                    weights[t, p] = float(self.weigh({name: proxy_mean}, network_mean)[name])
                    parts.append(f'{name} {proxy_mean:.2f} dB (network {network_mean:.2f}) -> {weights[t, p]:g}')
            lines.append(f'  {task["name"]}: ' + '; '.join(parts))
        self.weights = weights
        return '\n'.join(lines)
