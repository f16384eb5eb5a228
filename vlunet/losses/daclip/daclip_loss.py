"""DA-CLIP's training loss (``train.clip_opt`` of ``DACLIPModel``): two symmetric CLIP contrastive losses.

``DACLIPLoss()(content, degradation, caption_embeddings, name_embeddings, scale, has_caption)``
returns ``(content_loss, degradation_loss)`` (the model adds them, each with its weight):

- inputs: the content and degradation image embeddings (B, D) of ``DACLIP.forward``, the text
  embeddings (B, D) of each sample's clean-content caption and of its degradation name, s =
  exp(logit_scale) (0-d, shared by both terms), and ``has_caption`` (B,) bool (None: all);
- every embedding is L2-normalised; for a pair (x, y):
  L(x, y) = ½ [CE(s·x yᵀ, arange) + CE(s·y xᵀ, arange)], rows = samples, targets = the diagonal
  (the original code, docs/daclip.md#decisions; the paper's Eq. 1 writes only the image-to-text direction);
- content loss = L(content, captions) over the samples that have a caption (0 when none has one:
  captions are optional; the degradation loss still trains the controller), degradation loss =
  L(degradation, names) over all samples. Identical names in a batch are negatives of each other,
  as in the original (no de-duplication).

Distributed (``gather: true``, open_clip's default ``local_loss=False, gather_with_grad=False``):
the features of every rank are all-gathered, every rank forms the logits over the **global** batch,
and gradients flow through its local features only; the loss value equals one process's loss on the
same global batch. All ranks must have the same batch size (BasicSR drops the last partial batch).

:meth:`DACLIPLoss.prompt_logits` scores degradation embeddings against the degradation names for
zero-shot classification: 100 · cosine (the original README's scale; the argmax is the original
``evaluate.py``'s, the softmax gives the heat-map).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import distributed, nn

from basicsr.utils.dist_util import get_dist_info
from basicsr.utils.registry import LOSS_REGISTRY

CLASSIFICATION_SCALE = 100.0


def gather_with_local_gradients(features: torch.Tensor) -> torch.Tensor:
    """Concatenate ``features`` (B, ...) of all ranks in rank order; only this rank's part keeps its graph."""
    rank, world_size = get_dist_info()
    if world_size == 1:
        return features
    parts = [torch.empty_like(features) for _ in range(world_size)]
    distributed.all_gather(parts, features.detach().contiguous())
    parts[rank] = features
    return torch.cat(parts)


def symmetric_clip_loss(images: torch.Tensor, texts: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """½ [CE(s·I Tᵀ) + CE(s·T Iᵀ)] with diagonal targets; ``images``, ``texts`` (N, D) L2-normalised."""
    logits = scale * images @ texts.t()
    targets = torch.arange(len(images), device=images.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


@LOSS_REGISTRY.register()
class DACLIPLoss(nn.Module):
    """Content (caption) + degradation (name) symmetric contrastive losses (see the module docstring).

    Args:
        content_weight: factor on the content loss (original: 1).
        degradation_weight: factor on the degradation loss (original: 1).
        gather: in distributed runs, contrast over the global batch (original); False: per-rank batch.
    """

    prompt_scorer = ('cosine', CLASSIFICATION_SCALE)  # validation / inference scorer (degradation_classification)

    def __init__(self, content_weight: float = 1.0, degradation_weight: float = 1.0, gather: bool = True):
        super().__init__()
        self.content_weight = content_weight
        self.degradation_weight = degradation_weight
        self.gather = gather

    def _all(self, features: torch.Tensor) -> torch.Tensor:
        return gather_with_local_gradients(features) if self.gather else features

    def forward(self, content: torch.Tensor, degradation: torch.Tensor, caption_embeddings: torch.Tensor,
                name_embeddings: torch.Tensor, scale: torch.Tensor,
                has_caption: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        shapes = {tuple(t.shape) for t in (content, degradation, caption_embeddings, name_embeddings)}
        if len(shapes) != 1 or content.ndim != 2:
            raise ValueError(f'DACLIPLoss expects four (B, D) embeddings of one shape, got {sorted(shapes)}.')
        if has_caption is None:
            has_caption = torch.ones(len(content), dtype=torch.bool, device=content.device)
        content, degradation, captions, names = (self._all(F.normalize(t.float(), dim=-1)) for t in
                                                 (content, degradation, caption_embeddings, name_embeddings))
        with_caption = self._all(has_caption.to(content.device, torch.float32)).bool()
        scale = scale.float()
        degradation_loss = symmetric_clip_loss(degradation, names, scale)
        if with_caption.any():
            content_loss = symmetric_clip_loss(content[with_caption], captions[with_caption], scale)
        else:
            content_loss = (content * 0).sum()  # keeps the graph (DDP) with value 0
        return self.content_weight * content_loss, self.degradation_weight * degradation_loss

    @staticmethod
    def prompt_logits(degradation: torch.Tensor, name_embeddings: torch.Tensor) -> torch.Tensor:
        """100 · cos(degradation embedding, degradation name): (B, K) zero-shot classification scores."""
        return CLASSIFICATION_SCALE * F.normalize(degradation, dim=-1) @ F.normalize(name_embeddings, dim=-1).t()
