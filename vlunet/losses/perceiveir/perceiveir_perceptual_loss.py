"""Perceive-IR's difficulty-adaptive perceptual loss L_dpl (paper Eqs. 10-11) and its epoch-start re-weighting.

``DifficultyAdaptivePerceptualLoss(loss_weight=0.1, vgg_weights=None, layer_weights=None (paper's),
easy_weight=2.0, eps=1e-6)``; ``forward(output, gt, negatives, negative_weights, negative_mask) -> 0-d``:

- ``output`` I_r (B, 3, H, W): the anchor, the only input that gets gradients;
- ``gt`` I_g (B, 3, H, W): the positive;
- ``negatives`` (B, K, 3, H, W): negative 0 is the **degraded input I_d** (the easy negative, weight
  ``easy_weight`` = λ = 2 of Eq. 11; column 0 of ``negative_weights`` is not read), negatives 1..K-1
  are proxy restorations N_q (hard or very-hard);
- ``negative_weights`` (B, K) float: O_k(N_q) of Eq. 10 for the proxies (1 + γ hard, 1 - γ very
  hard: :func:`difficulty_weights`);
- ``negative_mask`` (B, K) bool: which negatives exist; a masked one is never passed through VGG and
  adds nothing (its image may hold anything, e.g. zeros or NaN), so a sample without a proxy simply
  has fewer negatives.

All images are float RGB in [0, 1] (clamped, ImageNet-normalised for VGG-16). Per sample b and layer i:

    M_i(x, y) = mean |V_i(x) - V_i(y)|                      (over channels and pixels)
    L_b = Σ_i ξ_i M_i(I_g, I_r) / max(eps, Σ_k mask_bk · w_bk · M_i(negative_bk, I_r)),  w_b0 = λ

and the loss is ``loss_weight`` × the mean of L_b over the batch. V_i: :class:`VGG16Features`,
frozen; the features of ``gt`` and of the negatives are computed without gradient (as the release).

Layers (an open point, docs/perceiveir.md#decisions): the paper's "3rd, 7th, 11th, 15th layers" are read
as 0-based indices of torchvision's ``vgg16().features`` (the release), whose outputs the release
collects *after* module 3, 7, 11, 15 — but torchvision's ReLUs are in place, so the stored output of
index 7 (conv2_2) is overwritten by ReLU 8: the release computes relu1_2, **relu2_2**, relu3_1,
relu3_3. We take those four post-ReLU features, by name (``layer_weights`` keys; any VGG-16 layer
name works, e.g. ``conv2_2`` for the literal pre-ReLU reading), ξ = 1/12, 1/6, 1/3, 1 (paper).

L1 normalisation (the other open point of L_dpl): mean (release). Within a layer the numerator and the
denominator use the same normalisation, so mean and sum give the same ratio (only ``eps`` differs).

``difficulty_weights(proxy_psnr, network_psnr, gamma=0.25)`` is Eq. 10: at the start of each epoch,
each proxy whose PSNR is at most the network's average PSNR is a hard negative (1 + γ), a better one
is very hard (1 - γ).
"""
import math
from typing import Dict, Mapping, Optional

import torch
from torch import nn

from vlunet.archs.perceiveir.vgg16_features import VGG16Features

from basicsr.utils.registry import LOSS_REGISTRY

PAPER_LAYER_WEIGHTS = {'relu1_2': 1 / 12, 'relu2_2': 1 / 6, 'relu3_1': 1 / 3, 'relu3_3': 1.0}
PAPER_EASY_WEIGHT = 2.0  # λ
PAPER_GAMMA = 0.25  # γ


def difficulty_weights(proxy_psnr: Mapping[str, float], network_psnr: float,
                       gamma: float = PAPER_GAMMA) -> Dict[str, float]:
    """Eq. 10: ``{proxy: 1 + γ if network_psnr >= proxy_psnr[proxy] else 1 - γ}``.

    Args:
        proxy_psnr: PSNR (dB) of each proxy negative against the ground truth, keyed by any name
            (a proxy model, or a proxy and a sample); ``inf`` for an output equal to the ground truth.
        network_psnr: the network's average PSNR (dB) with the weights of the previous epoch.
        gamma: γ in [0, 1) (paper 0.25): the hard weight is 1 + γ, the very-hard weight 1 - γ > 0.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < 1:
        raise ValueError(f'difficulty_weights gamma: {gamma!r} must be in [0, 1) (paper: 0.25).')
    if not isinstance(network_psnr, (int, float)) or not math.isfinite(network_psnr):
        raise ValueError(f'difficulty_weights network_psnr: {network_psnr!r} must be a finite PSNR in dB.')
    weights = {}
    for name, psnr in proxy_psnr.items():
        psnr = float(psnr)
        if math.isnan(psnr):
            raise ValueError(f'difficulty_weights: the PSNR of the proxy {name!r} is NaN.')
        weights[name] = 1 + gamma if network_psnr >= psnr else 1 - gamma
    return weights


def _check_layer_weights(layer_weights: Mapping[str, float]) -> None:
    if not isinstance(layer_weights, Mapping) or not layer_weights or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0
            for w in layer_weights.values()):
        raise ValueError(f'DifficultyAdaptivePerceptualLoss layer_weights: {layer_weights!r} must map VGG-16 layer '
                         f'names to positive weights (paper: {PAPER_LAYER_WEIGHTS}).')


def _check_inputs(output: torch.Tensor, gt: torch.Tensor, negatives: torch.Tensor, negative_weights: torch.Tensor,
                  negative_mask: torch.Tensor) -> None:
    batch, count = negatives.shape[:2]
    problems = []
    if output.ndim != 4 or output.shape[1] != 3 or gt.shape != output.shape:
        problems.append(f'output and gt must be (B, 3, H, W) of one shape, got {tuple(output.shape)} and '
                        f'{tuple(gt.shape)}')
    if negatives.ndim != 5 or negatives.shape[:1] + negatives.shape[2:] != output.shape or count < 1:
        problems.append(f'negatives must be (B, K >= 1, 3, H, W) with the output\'s B, H, W, got '
                        f'{tuple(negatives.shape)}')
    if negative_weights.shape != (batch, count) or negative_mask.shape != (batch, count):
        problems.append(f'negative_weights and negative_mask must be (B, K) = {(batch, count)}, got '
                        f'{tuple(negative_weights.shape)} and {tuple(negative_mask.shape)}')
    if negative_mask.dtype != torch.bool:
        problems.append(f'negative_mask must be bool, got {negative_mask.dtype}')
    if problems:
        raise ValueError('DifficultyAdaptivePerceptualLoss: ' + '; '.join(problems) + '.')


def layer_distance(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """M_i: mean absolute difference per sample, (N, C, h, w) x (N, C, h, w) -> (N,)."""
    return (first.float() - second.float()).abs().flatten(1).mean(dim=1)


@LOSS_REGISTRY.register()
class DifficultyAdaptivePerceptualLoss(nn.Module):
    """L_dpl, Eqs. 10-11 (see the module docstring for the inputs, the layers and the formula).

    Args:
        loss_weight: factor on the loss (λ3 of Eq. 13: 0.1).
        vgg_weights: ImageNet VGG-16 weights: ~ = ``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``,
            a file path, or ``random`` (tests only).
        layer_weights: {VGG-16 layer name: ξ} (paper: relu1_2 1/12, relu2_2 1/6, relu3_1 1/3, relu3_3 1).
        easy_weight: λ, the weight of negative 0, the degraded input (paper 2).
        eps: lower bound of each denominator (release 1e-6).
    """

    def __init__(self, loss_weight: float = 0.1, vgg_weights: Optional[str] = None,
                 layer_weights: Optional[Mapping[str, float]] = None, easy_weight: float = PAPER_EASY_WEIGHT,
                 eps: float = 1e-6):
        super().__init__()
        layer_weights = dict(PAPER_LAYER_WEIGHTS if layer_weights is None else layer_weights)
        _check_layer_weights(layer_weights)
        if isinstance(easy_weight, bool) or not isinstance(easy_weight, (int, float)) or easy_weight < 0:
            raise ValueError(f'DifficultyAdaptivePerceptualLoss easy_weight: {easy_weight!r} must be >= 0 (paper: 2).')
        self.loss_weight = loss_weight
        self.layer_weights = layer_weights
        self.easy_weight = float(easy_weight)
        self.eps = eps
        self.vgg = VGG16Features(list(layer_weights), vgg_weights)

    def _negative_distances(self, output_features: Dict[str, torch.Tensor], negatives: torch.Tensor,
                            negative_mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """{layer: (B, K)} M_i(negative_bk, I_r) for the unmasked negatives, 0 for the masked ones."""
        batch, count = negative_mask.shape
        present = negative_mask.flatten().nonzero()[:, 0]  # indices b * K + k of the present negatives
        distances = {name: output_features[name].new_zeros(batch * count, dtype=torch.float32)
                     for name in self.layer_weights}
        if len(present):
            with torch.no_grad():
                features = self.vgg(negatives.flatten(0, 1)[present])
            for name, value in features.items():
                anchors = output_features[name][present // count]
                distances[name] = distances[name].index_put((present,), layer_distance(value, anchors))
        return {name: value.view(batch, count) for name, value in distances.items()}

    def forward(self, output: torch.Tensor, gt: torch.Tensor, negatives: torch.Tensor, negative_weights: torch.Tensor,
                negative_mask: torch.Tensor) -> torch.Tensor:
        _check_inputs(output, gt, negatives, negative_weights, negative_mask)
        output_features = self.vgg(output)
        with torch.no_grad():
            gt_features = self.vgg(gt)
        negative_distances = self._negative_distances(output_features, negatives, negative_mask)
        weights = negative_weights.float().clone()
        weights[:, 0] = self.easy_weight
        weights = torch.where(negative_mask, weights, torch.zeros_like(weights))
        if not bool(torch.isfinite(weights).all() and (weights >= 0).all()):
            raise ValueError(f'DifficultyAdaptivePerceptualLoss: negative_weights of the present negatives must be '
                             f'finite and >= 0, got {negative_weights.tolist()}.')
        per_sample = 0
        for name, xi in self.layer_weights.items():
            positive = layer_distance(gt_features[name], output_features[name])
            denominator = (weights * negative_distances[name]).sum(dim=1).clamp(min=self.eps)
            per_sample = per_sample + xi * positive / denominator
        return self.loss_weight * per_sample.mean()
