"""Perceive-IR stage 1: three learnable quality prompts scored by a frozen CLIP (paper Sec. III-B, Eq. 1).

``QualityPrompts(backbone='ViT-B-32-quickgelu', pretrained=None, words=('terrible', 'mediocre',
'excellent'), num_vectors=16, init_std=0.02)``:

- ``backbone``: an open_clip model name or model-config JSON path (as :class:`DegradationCLIP`).
  The default ``ViT-B-32-quickgelu`` is ViT-B/32 with QuickGELU, the architecture of OpenAI's
  weights, which the release loads (``clip.load("ViT-B/32")``).
- ``pretrained``: ``None`` (random weights), an open_clip tag (``openai``) or a local open_clip
  checkpoint file (see :func:`vlunet.archs.degradation_clip_arch.build_backbone`).
- ``words``: one word per quality level, worst first (label k = words[k]); ``num_vectors`` N: the
  learnable token vectors per prompt.

Prompt layout (CoOp, as the release): the token sequence of a placeholder of N words
``X X ... X`` is ``[SOT] x1..xN [EOT] pad``; the N vectors x1..xN of prompt k are the learnable
``prompt_vectors[k]`` (3, N, width), initialised N(0, ``init_std``) with the **last** slots set to
the token embedding of the word (a word of m BPE tokens fills the last m slots: one for each
default word). SOT, EOT and padding keep CLIP's fixed token embeddings. The sequence gets CLIP's
positional embedding, runs through the text transformer and ``ln_final``; the EOT feature
(position N + 1) times ``text_projection``, L2-normalised, is the prompt embedding.

The CLIP model (``clip``) is frozen, always in eval mode, and not part of :meth:`prompt_state_dict`
(the only trainable tensor is ``prompt_vectors``). Gradients flow *through* the frozen towers: into
the prompt vectors from the text side, and into the images from the image side when they require
grad (the stage-2 CLIP-aware loss).

``forward(images (B, 3, H, W) in [0, 1]) -> (B, K)`` cosine similarities to the K prompts.
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlunet.archs.degradation_clip_arch import CLIP_INPUT_SIZE, build_backbone, register_backbone_config
from vlunet.utils.safe_load import WrongContentsError

from basicsr.utils.registry import ARCH_REGISTRY

QUALITY_WORDS = ('terrible', 'mediocre', 'excellent')
PLACEHOLDER_WORD = 'X'
PROMPT_KEY = 'prompt_vectors'


def clip_resize_normalize(images: torch.Tensor, size: int = CLIP_INPUT_SIZE) -> torch.Tensor:
    """The release's CLIP input: (B, 3, H, W) in [0, 1] -> clamped, bicubic-resized to size², OpenAI mean/std."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # on use: open_clip imports slowly
    images = F.interpolate(images.clamp(0, 1), size=(size, size), mode='bicubic', align_corners=False)
    mean = images.new_tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def _word_tokens(tokens: torch.Tensor, end_token: int) -> torch.Tensor:
    """The BPE ids of ``word`` from its tokenised row ``[SOT] ids [EOT] pad``."""
    end = int((tokens == end_token).nonzero()[0])
    return tokens[1:end]


def _check_options(words: Sequence[str], num_vectors: int) -> None:
    if isinstance(words, str) or len(words) < 2 or not all(isinstance(w, str) and w.strip() for w in words):
        raise ValueError(f'QualityPrompts words: expected a list of at least 2 words, worst quality first, got '
                         f'{words!r} (paper: [terrible, mediocre, excellent]).')
    if len(set(words)) != len(words):
        raise ValueError(f'QualityPrompts words: every word must be distinct, got {list(words)}.')
    if not isinstance(num_vectors, int) or isinstance(num_vectors, bool) or num_vectors < 1:
        raise ValueError(f'QualityPrompts num_vectors: {num_vectors!r} must be an integer >= 1 (paper: 16).')


@ARCH_REGISTRY.register()
class QualityPrompts(nn.Module):
    """Learnable quality prompts in the token space of a frozen CLIP (see the module docstring)."""

    def __init__(self, backbone: str = 'ViT-B-32-quickgelu', pretrained: Optional[str] = None,
                 words: Sequence[str] = QUALITY_WORDS, num_vectors: int = 16, init_std: float = 0.02):
        super().__init__()
        _check_options(words, num_vectors)
        import open_clip
        self.backbone_name = register_backbone_config(backbone)
        self.clip = build_backbone(self.backbone_name, pretrained).requires_grad_(False).eval()
        if not isinstance(getattr(self.clip, 'token_embedding', None), nn.Embedding):
            raise ValueError(f'QualityPrompts backbone: {self.backbone_name} has no token-embedding text tower '
                             '(open_clip CLIP class); use a CLIP model such as ViT-B-32-quickgelu.')
        self.random_backbone = pretrained is None
        self.words = list(words)
        self.num_vectors = num_vectors
        tokenizer = open_clip.get_tokenizer(self.backbone_name)
        placeholder = tokenizer([' '.join([PLACEHOLDER_WORD] * num_vectors)])
        end_token = int(placeholder[0].max())  # EOT has the largest id (open_clip's argmax pooling)
        if int(placeholder[0, num_vectors + 1]) != end_token:
            raise ValueError(f'QualityPrompts: the tokenizer of {self.backbone_name} does not give one token per '
                             f'placeholder word ({num_vectors} vectors + SOT + EOT must fit its context length).')
        self.end_position = num_vectors + 1
        with torch.no_grad():
            embedding = self.clip.token_embedding(placeholder)  # (1, L, width)
        self.register_buffer('token_prefix', embedding[:, :1].clone(), persistent=False)  # SOT
        self.register_buffer('token_suffix', embedding[:, num_vectors + 1:].clone(), persistent=False)  # EOT, pad
        self.prompt_vectors = nn.Parameter(self._initial_vectors(tokenizer, end_token, init_std))

    def _initial_vectors(self, tokenizer, end_token: int, init_std: float) -> torch.Tensor:
        """(K, N, width): N(0, init_std), each word's token embeddings in the last slots."""
        width = self.token_prefix.shape[-1]
        vectors = torch.randn(len(self.words), self.num_vectors, width) * init_std
        for k, row in enumerate(tokenizer(self.words)):
            word_tokens = _word_tokens(row, end_token)
            if len(word_tokens) > self.num_vectors:
                raise ValueError(f'QualityPrompts: the word {self.words[k]!r} has {len(word_tokens)} tokens, more '
                                 f'than num_vectors={self.num_vectors}.')
            with torch.no_grad():
                vectors[k, self.num_vectors - len(word_tokens):] = self.clip.token_embedding(word_tokens)
        return vectors

    def train(self, mode: bool = True) -> 'QualityPrompts':
        """Set the mode; the frozen CLIP always stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    def encode_prompts(self) -> torch.Tensor:
        """(K, D) L2-normalised embeddings of the K prompts; differentiable in ``prompt_vectors``."""
        count = len(self.words)
        cast_dtype = self.clip.transformer.get_cast_dtype()
        x = torch.cat([self.token_prefix.expand(count, -1, -1), self.prompt_vectors,
                       self.token_suffix.expand(count, -1, -1)], dim=1).to(cast_dtype)
        x = x + self.clip.positional_embedding.to(cast_dtype)
        x = self.clip.ln_final(self.clip.transformer(x, attn_mask=self.clip.attn_mask))
        x = x[:, self.end_position]
        projection = self.clip.text_projection
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        return F.normalize(x, dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) L2-normalised CLIP embeddings of ``images`` (B, 3, H, W) float RGB in [0, 1], any size."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f'QualityPrompts expects float RGB images (B, 3, H, W) in [0, 1], got '
                             f'{tuple(images.shape)} {images.dtype}.')
        return F.normalize(self.clip.encode_image(clip_resize_normalize(images)), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K) cosine similarities S(Φ_I(image), Φ_T(T_k)) of ``images`` to the prompts (worst first)."""
        return self.encode_image(images) @ self.encode_prompts().t()

    def prompt_state_dict(self) -> Dict[str, torch.Tensor]:
        """The learned tensor only: ``{'prompt_vectors': (K, N, width)}`` (no CLIP weights)."""
        return {PROMPT_KEY: self.prompt_vectors.detach()}

    def load_prompt_state_dict(self, state: Dict[str, torch.Tensor], path: str = 'the prompt weights') -> None:
        """Load :meth:`prompt_state_dict` output; errors name ``path`` and the expected shape."""
        vectors = state.get(PROMPT_KEY) if isinstance(state, dict) else None
        if not isinstance(vectors, torch.Tensor) or vectors.shape != self.prompt_vectors.shape:
            found = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
            raise WrongContentsError(f'{path}: expected {PROMPT_KEY!r} of shape {tuple(self.prompt_vectors.shape)} '
                                     f'(words {self.words}, num_vectors {self.num_vectors}, backbone '
                                     f'{self.backbone_name}), got {found}.')
        with torch.no_grad():
            self.prompt_vectors.copy_(vectors)
