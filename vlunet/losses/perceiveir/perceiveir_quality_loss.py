"""Perceive-IR's CLIP-aware loss L_clip (paper Eq. 9): pull restored images towards the learned "excellent" prompt.

``QualityPromptLoss(loss_weight=0.05, prompts_path=..., clip_backbone='ViT-B-32-quickgelu', clip_pretrained=None,
logit_scale=1.0)``; ``forward(restored (B, 3, H, W) float RGB in [0, 1]) -> 0-d``:

    L_clip = 1 - exp(s·S(Φ_I(I_r), Φ_T(T_e))) / Σ_{k ∈ {e, m, t}} exp(s·S(Φ_I(I_r), Φ_T(T_k)))

averaged over the batch and times ``loss_weight``; S = cosine similarity, T_e the best prompt (the
**last** word of the stage-1 run, ``excellent``), s = ``logit_scale``: 1 is Eq. 9 as printed and the
release's stage-2 loss (raw cosine, no temperature; the softmax of three cosines in [-1, 1] stays
near uniform, so the loss stays near 2/3 with a gentle gradient); CLIP's 100 would match the
release's stage-1 training (``train.logit_scale`` of :class:`QualityPromptModel`).

- ``prompts_path``: the stage-1 output ``experiments/<name>/models/net_prompts_<iter>.pth`` of a
  :class:`QualityPromptModel` run (``options/perceiveir/train_perceiveir_prompts.yml``): ``{'params':
  {'prompt_vectors': (K, N, width)}, 'words', 'num_vectors', 'backbone', 'logit_scale'}``.
- ``clip_backbone`` / ``clip_pretrained``: the CLIP model the prompts were learned with (as
  :class:`QualityPrompts`: an open_clip name or config JSON; ``None`` = random weights (tests only),
  an open_clip tag such as ``openai``, or a local file). The file records the backbone name, which
  must match; the weights are not recorded: use the stage-1 run's ``pretrained``.

The K prompt embeddings are encoded once, here, by the frozen CLIP text tower, and kept as a buffer;
the text tower is then dropped. The frozen CLIP image tower (``image_encoder``, always in eval mode,
``requires_grad=False``) encodes I_r exactly as stage 1 did (clamp to [0, 1], bicubic resize to
224², OpenAI mean/std, L2 normalisation), so gradients flow through it into ``restored`` only.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vlunet.archs.degradation_clip_arch import register_backbone_config
from vlunet.archs.perceiveir.perceiveir_prompts_arch import PROMPT_KEY, QualityPrompts, clip_resize_normalize
from vlunet.utils.safe_load import WrongContentsError, check_file, safe_torch_load

from basicsr.utils import get_root_logger
from basicsr.utils.registry import LOSS_REGISTRY

PROMPTS_FILE_HELP = ('the stage-1 prompts file experiments/<name>/models/net_prompts_<iter>.pth written by '
                     'vlunet/train.py -opt options/perceiveir/train_perceiveir_prompts.yml (QualityPromptModel)')


def read_prompts_file(path: Optional[str]) -> dict:
    """The checked contents of a stage-1 prompts file (see the module docstring)."""
    if not path:
        raise ValueError(f'QualityPromptLoss prompts_path: not set; give {PROMPTS_FILE_HELP}.')
    description = 'QualityPromptLoss prompts_path (stage-1 quality prompts)'
    check_file(path, description, f'give {PROMPTS_FILE_HELP}')
    checkpoint = safe_torch_load(path, description)
    params = checkpoint.get('params') if isinstance(checkpoint, dict) else None
    words = checkpoint.get('words') if isinstance(checkpoint, dict) else None
    if not (isinstance(params, dict) and isinstance(params.get(PROMPT_KEY), torch.Tensor)
            and isinstance(words, list) and isinstance(checkpoint.get('num_vectors'), int)
            and isinstance(checkpoint.get('backbone'), str)):
        found = sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise WrongContentsError(f'QualityPromptLoss prompts_path: {path} is not a stage-1 prompts file (expected '
                                 f'params.{PROMPT_KEY}, words, num_vectors and backbone; found {found}); give '
                                 f'{PROMPTS_FILE_HELP}.')
    return checkpoint


@LOSS_REGISTRY.register()
class QualityPromptLoss(nn.Module):
    """L_clip, Eq. 9, with a frozen CLIP and the frozen stage-1 prompts (see the module docstring).

    Args:
        loss_weight: factor on the loss (λ2 of Eq. 13: 0.05).
        prompts_path: the stage-1 ``net_prompts_<iter>.pth``.
        clip_backbone: open_clip model name or config JSON of the stage-1 run.
        clip_pretrained: its CLIP weights: open_clip tag, local file, or ~ (random: tests only).
        logit_scale: s multiplying the cosine similarities (Eq. 9 and the release: 1).
    """

    def __init__(self, loss_weight: float = 0.05, prompts_path: Optional[str] = None,
                 clip_backbone: str = 'ViT-B-32-quickgelu', clip_pretrained: Optional[str] = None,
                 logit_scale: float = 1.0):
        super().__init__()
        if isinstance(logit_scale, bool) or not isinstance(logit_scale, (int, float)) or not logit_scale > 0:
            raise ValueError(f'QualityPromptLoss logit_scale: {logit_scale!r} must be > 0 (Eq. 9 and the release: 1).')
        checkpoint = read_prompts_file(prompts_path)
        name = register_backbone_config(clip_backbone)
        if checkpoint['backbone'] != name:
            raise ValueError(f'QualityPromptLoss: the prompts in {prompts_path} were learned with the CLIP backbone '
                             f'{checkpoint["backbone"]!r}, but clip_backbone is {name!r}; use the stage-1 backbone.')
        prompts = QualityPrompts(backbone=clip_backbone, pretrained=clip_pretrained, words=checkpoint['words'],
                                 num_vectors=checkpoint['num_vectors'])
        prompts.load_prompt_state_dict(checkpoint['params'], prompts_path)
        if clip_pretrained is None:
            get_root_logger().warning('QualityPromptLoss: the CLIP model has random weights (clip_pretrained: ~); '
                                      'set the stage-1 CLIP weights (e.g. openai) outside tests.')
        with torch.no_grad():
            self.register_buffer('prompt_embeddings', prompts.encode_prompts(), persistent=False)  # (K, D)
        self.words = list(prompts.words)
        self.image_encoder = prompts.clip.visual.requires_grad_(False).eval()
        self.loss_weight = loss_weight
        self.logit_scale = float(logit_scale)

    def train(self, mode: bool = True) -> 'QualityPromptLoss':
        """The frozen CLIP image tower always stays in eval mode."""
        super().train(mode)
        self.image_encoder.eval()
        return self

    def forward(self, restored: torch.Tensor) -> torch.Tensor:
        if restored.ndim != 4 or restored.shape[1] != 3 or not restored.is_floating_point():
            raise ValueError(f'QualityPromptLoss expects restored float RGB images (B, 3, H, W) in [0, 1], got '
                             f'{tuple(restored.shape)} {restored.dtype}.')
        features = F.normalize(self.image_encoder(clip_resize_normalize(restored)).float(), dim=-1)
        probabilities = (self.logit_scale * features @ self.prompt_embeddings.t()).softmax(dim=1)
        return self.loss_weight * (1 - probabilities[:, -1]).mean()
