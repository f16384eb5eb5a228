"""Perceive-IR's degradation contrastive loss L_cl (paper Eq. 12) on the compact degradation representations Z.

``DegradationPatchContrastiveLoss(loss_weight=0.1, temperature=0.1, gather=True)``;
``forward(anchor (B, D), positive (B, D), labels (B,) int64) -> 0-d``:

- ``anchor`` Z_i: CFE's representation of a crop of degraded image i; ``positive`` Z_i⁺: of another
  crop of the same degraded image (same size); ``labels``: each sample's degradation type (any ints);
- negatives of sample i: the anchors Z_j of every sample j of the **global** batch (all ranks, in
  distributed runs with ``gather``) whose label differs from i's; they are detached (the release):
  only Z_i and Z_i⁺ get gradients from sample i's term;
- S = cosine similarity (the inputs are L2-normalised here), τ = ``temperature``:

    ℓ_i = -log[ exp(S(Z_i, Z_i⁺)/τ) / (exp(S(Z_i, Z_i⁺)/τ) + Σ_{j: label_j ≠ label_i} exp(S(Z_i, Z_j)/τ)) ]

- a sample with no negative (every sample of the global batch has its label) gets ℓ_i = -log 1 = 0
  (Eq. 12 with n = 0) and still counts in the mean (the release skips it instead);
- the loss is ``loss_weight`` × the mean of ℓ_i over this rank's samples.

Distributed: the anchors and labels of all ranks are all-gathered (``gather_with_local_gradients``);
each rank computes the terms of its own samples. With equal per-rank batches (BasicSR drops the last
partial batch; all_gather needs equal shapes) the mean of the ranks' losses is the one-process loss
on the global batch, and DDP's average of the ranks' gradients is the one-process gradient, so L_cl
keeps its weight relative to per-rank losses such as L_rec. ``gather: false`` contrasts within each
rank's batch only.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from vlunet.losses.daclip.daclip_loss import gather_with_local_gradients

from basicsr.utils.registry import LOSS_REGISTRY

RELEASE_TEMPERATURE = 0.1


def _check_inputs(anchor: torch.Tensor, positive: torch.Tensor, labels: torch.Tensor) -> None:
    if anchor.ndim != 2 or positive.shape != anchor.shape or len(anchor) == 0:
        raise ValueError(f'DegradationPatchContrastiveLoss expects anchor and positive (B, D) of one shape, got '
                         f'{tuple(anchor.shape)} and {tuple(positive.shape)}.')
    if labels.shape != anchor.shape[:1] or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f'DegradationPatchContrastiveLoss labels: expected ({len(anchor)},) int64 degradation '
                         f'labels, got {tuple(labels.shape)} {labels.dtype}.')


@LOSS_REGISTRY.register()
class DegradationPatchContrastiveLoss(nn.Module):
    """L_cl, Eq. 12 (see the module docstring).

    Args:
        loss_weight: factor on the loss (λ1 of Eq. 13: 0.1).
        temperature: τ (the paper gives none; the release 0.1).
        gather: negatives from the global batch of all ranks (paper's "patches of different
            degradation types" across the whole batch, as the release); False: this rank's batch.
    """

    def __init__(self, loss_weight: float = 0.1, temperature: float = RELEASE_TEMPERATURE, gather: bool = True):
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                math.isfinite(temperature) and temperature > 0):
            raise ValueError(f'DegradationPatchContrastiveLoss temperature: {temperature!r} must be > 0 '
                             '(release: 0.1).')
        self.loss_weight = loss_weight
        self.temperature = float(temperature)
        self.gather = gather

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_inputs(anchor, positive, labels)
        anchor, positive = F.normalize(anchor.float(), dim=-1), F.normalize(positive.float(), dim=-1)
        labels = labels.to(anchor.device, torch.int64)
        all_anchors, all_labels = anchor.detach(), labels
        if self.gather:
            all_anchors, all_labels = gather_with_local_gradients(all_anchors), gather_with_local_gradients(labels)
        positive_logit = (anchor * positive).sum(dim=1, keepdim=True) / self.temperature  # (B, 1)
        negative_logits = anchor @ all_anchors.t() / self.temperature  # (B, N)
        negative_logits = negative_logits.masked_fill(labels[:, None] == all_labels[None, :], float('-inf'))
        logits = torch.cat([positive_logit, negative_logits], dim=1)
        per_sample = logits.logsumexp(dim=1) - positive_logit[:, 0]
        return self.loss_weight * per_sample.mean()
