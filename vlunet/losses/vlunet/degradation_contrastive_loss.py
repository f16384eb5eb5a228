"""Losses for fine-tuning the degradation-aware CLIP adapters (``train.clip_loss`` of ``CLIPFinetuneModel``).

All three take ``(image_embeddings (B, D), prompt_embeddings (K, D), labels (B,) int64)``: the
adapted image embeddings of a batch, the adapted embeddings of the K degradation prompts, and each
image's prompt index. They also give ``prompt_logits(image_embeddings, prompt_embeddings) -> (B, K)``,
the image-prompt scores whose argmax classifies an image and whose softmax is the heat-map.

Which one to use:

- :class:`DegradationContrastiveLoss` (paper Eq. 5): InfoNCE over the *batch*, image i against the
  texts of the B batch samples, cosine similarity times a learnable temperature τ. Reproduces the
  paper. With few degradation classes most "negatives" carry the same text as the anchor (batch 32,
  7 classes: ~4 copies of the positive), so the loss cannot go below ~log(copies) and its gradient
  is noisy. Preferable with many distinct texts per batch (captions, many classes).
- :class:`PromptCrossEntropyLoss` (official notebook): cross-entropy of the raw (unnormalised)
  image·prompt dot products over the fixed list of K prompts; no temperature. Reproduces
  ``clip_tuned.pth``; an exact K-way classification objective, but the unbounded dot products let
  embedding norms grow. Preferable to re-create the released adapters.
- :class:`MultiPositiveContrastiveLoss` (the paper's future work, Sec. 10): every sample with the
  same degradation is a positive. Image i is contrasted against the K prompts *and* the other B-1
  images; the positives are its own prompt and the other images of its class (SupCon-style mean of
  log-probabilities over positives), cosine similarity times a learnable τ. No false negatives, and
  images of one class are pulled together, so it suits the small-K, large-batch setting of
  all-in-one restoration; recommended for new fine-tuning.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from basicsr.utils.registry import LOSS_REGISTRY

CLIP_INITIAL_TEMPERATURE = 1 / 0.07  # CLIP's initial logit scale
CLIP_MAX_TEMPERATURE = 100.0  # CLIP's clamp of the logit scale


def cosine_logits(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale * cos(image_i, text_j)``: (B, D) x (N, D) -> (B, N)."""
    return scale * F.normalize(image_embeddings, dim=-1) @ F.normalize(text_embeddings, dim=-1).t()


def _check_inputs(image_embeddings: torch.Tensor, prompt_embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    if image_embeddings.ndim != 2 or prompt_embeddings.ndim != 2 or image_embeddings.shape[1] != \
            prompt_embeddings.shape[1]:
        raise ValueError(f'expected image embeddings (B, D) and prompt embeddings (K, D), got '
                         f'{tuple(image_embeddings.shape)} and {tuple(prompt_embeddings.shape)}')
    if labels.shape != image_embeddings.shape[:1] or labels.min() < 0 or labels.max() >= len(prompt_embeddings):
        raise ValueError(f'labels must be (B,) prompt indices in [0, {len(prompt_embeddings)}), got {labels.tolist()}')


class _LearnableTemperature(nn.Module):
    """τ = exp(log_temperature), clamped to ``max_temperature``; frozen when ``learnable`` is False; a loss weight."""

    def __init__(self, temperature: float, learnable: bool, max_temperature: float, loss_weight: float):
        super().__init__()
        self.loss_weight = loss_weight
        if not 0 < temperature <= max_temperature:
            raise ValueError(f'temperature: {temperature} must be in (0, max_temperature={max_temperature}].')
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)), requires_grad=learnable)
        self.max_temperature = max_temperature

    @property
    def temperature(self) -> torch.Tensor:
        """The current τ (a 0-d tensor)."""
        return self.log_temperature.exp().clamp(max=self.max_temperature)

    def prompt_logits(self, image_embeddings: torch.Tensor, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """τ · cos(image, prompt): (B, K)."""
        return cosine_logits(image_embeddings, prompt_embeddings, self.temperature)


@LOSS_REGISTRY.register()
class DegradationContrastiveLoss(_LearnableTemperature):
    """Paper Eq. 5: L = -1/B Σ_i log(exp(τ cos(I_i, T_i)) / Σ_j exp(τ cos(I_i, T_j))), T_i = prompt of sample i.

    Args:
        temperature: initial τ (multiplies the cosine; CLIP's 1/0.07 by default).
        learnable_temperature: train τ with the adapters (the paper's "learnable temperature").
        max_temperature: clamp of τ (CLIP's 100).
        symmetric: also add the text-to-image direction and average both (CLIP's loss); Eq. 5 has
            the image-to-text direction only.
        loss_weight: factor on the loss.
    """

    def __init__(self, temperature: float = CLIP_INITIAL_TEMPERATURE, learnable_temperature: bool = True,
                 max_temperature: float = CLIP_MAX_TEMPERATURE, symmetric: bool = False, loss_weight: float = 1.0):
        super().__init__(temperature, learnable_temperature, max_temperature, loss_weight)
        self.symmetric = symmetric

    def forward(self, image_embeddings: torch.Tensor, prompt_embeddings: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        _check_inputs(image_embeddings, prompt_embeddings, labels)
        logits = cosine_logits(image_embeddings, prompt_embeddings[labels], self.temperature)  # (B, B)
        targets = torch.arange(len(labels), device=logits.device)
        loss = F.cross_entropy(logits, targets)
        if self.symmetric:
            loss = (loss + F.cross_entropy(logits.t(), targets)) / 2
        return self.loss_weight * loss


@LOSS_REGISTRY.register()
class PromptCrossEntropyLoss(nn.Module):
    """Official notebook: cross-entropy of raw dot products ``image @ prompts.T`` (B, K) against the labels.

    Args:
        loss_weight: factor on the loss.
    """

    def __init__(self, loss_weight: float = 1.0):
        super().__init__()
        self.loss_weight = loss_weight

    @staticmethod
    def prompt_logits(image_embeddings: torch.Tensor, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """Raw dot products (B, K), no normalisation and no temperature (as the official release)."""
        return image_embeddings @ prompt_embeddings.t()

    def forward(self, image_embeddings: torch.Tensor, prompt_embeddings: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        _check_inputs(image_embeddings, prompt_embeddings, labels)
        return self.loss_weight * F.cross_entropy(self.prompt_logits(image_embeddings, prompt_embeddings), labels)


@LOSS_REGISTRY.register()
class MultiPositiveContrastiveLoss(_LearnableTemperature):
    """Multi-positive (SupCon-style) loss over prompts and images; every same-degradation sample is a positive.

    For image i the candidates are the K prompts and the other B-1 images (scores τ · cosine); the
    positives P(i) are its prompt and the other images with its label:
    L_i = -1/|P(i)| Σ_{p∈P(i)} log softmax_candidates(i)[p]; L = mean_i L_i.

    Args:
        temperature, learnable_temperature, max_temperature: as :class:`DegradationContrastiveLoss`.
        image_to_image: include the other images as candidates (False: K-way cosine cross-entropy).
        loss_weight: factor on the loss.
    """

    def __init__(self, temperature: float = CLIP_INITIAL_TEMPERATURE, learnable_temperature: bool = True,
                 max_temperature: float = CLIP_MAX_TEMPERATURE, image_to_image: bool = True, loss_weight: float = 1.0):
        super().__init__(temperature, learnable_temperature, max_temperature, loss_weight)
        self.image_to_image = image_to_image

    def forward(self, image_embeddings: torch.Tensor, prompt_embeddings: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        _check_inputs(image_embeddings, prompt_embeddings, labels)
        batch, num_prompts = len(labels), len(prompt_embeddings)
        positives = F.one_hot(labels, num_prompts).bool()  # (B, K)
        logits = self.prompt_logits(image_embeddings, prompt_embeddings)
        if self.image_to_image:
            itself = torch.eye(batch, dtype=torch.bool, device=labels.device)
            image_logits = cosine_logits(image_embeddings, image_embeddings, self.temperature)
            logits = torch.cat([logits, image_logits.masked_fill(itself, float('-inf'))], dim=1)  # (B, K + B)
            positives = torch.cat([positives, (labels[:, None] == labels[None, :]) & ~itself], dim=1)
        log_probs = logits.log_softmax(dim=1).masked_fill(~positives, 0)
        per_image = -log_probs.sum(dim=1) / positives.sum(dim=1)
        return self.loss_weight * per_image.mean()
