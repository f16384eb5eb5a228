"""DA-CLIP (ICLR 2024): a frozen CLIP whose image tower is steered by a trainable controller.

``DACLIP(backbone='ViT-B-32', pretrained=None)``:

- ``backbone``: an open_clip model name (DA-CLIP: ``ViT-B-32``; the wild-IR variant ``ViT-L-14``) or
  the path of an open_clip model-config JSON (as :class:`~vlunet.archs.degradation_clip_arch.DegradationCLIP`).
- ``pretrained``: ``None`` (random weights), an open_clip tag (DA-CLIP starts from
  ``laion2b_s34b_b79k``), a local open_clip checkpoint for the backbone, or a DA-CLIP file (the
  official ``daclip_ViT-B-32.pt``, a converted ``*_daclip.pth``): then everything is loaded from it.

Submodules (tensor shapes for ViT-B-32: width W = 768, L = 12 blocks, 50 tokens, D = 512):

- ``backbone``: the stock open_clip CLIP, frozen (``requires_grad=False``) and always in eval mode;
- ``controller``: a copy of ``backbone.visual`` made at construction (so a pretrained CLIP's visual
  tower is copied into it, the original's ``initial_controller``), trainable;
- ``control_linears``: L zero-initialised ``Linear(W, W)`` (weight and bias 0), trainable;
- ``logit_scale``: DA-CLIP's own log temperature (a copy of the backbone's at construction), trainable.

Computation (the original ``encode_image(image, control=True)``, docs/daclip.md#the-encoder): the controller
runs its L blocks on the image; after block j its tokens x_j (B, 50, W) give the control
h_j = control_linears[j](x_j), while its own stream continues unchanged. Its head (``ln_post`` on the
class token, ``proj``) gives the **degradation** embedding (B, D). The frozen tower then runs on the
same image and after its block i adds h_{L-1-i} to all tokens: the controls enter in **reverse**
order (block 0 gets the controller's last control), as the original's ``list.pop()``. Its head gives
the **content** embedding (B, D). Both are returned un-normalised (restoration uses them so);
:meth:`DACLIP.encode_text` returns normalised text embeddings (the DA-CLIP loss normalises all four).

Preprocessing (:func:`daclip_preprocess`) reproduces the original restoration pipeline's
``clip_transform`` bit for bit: ``(image * 255).astype(uint8)`` (truncation, computed in the input's
float precision), PIL bicubic resize of the shortest side to 224 (long side ``int(224 * long /
short)``; PIL's two-pass fixed-point filter, so PIL itself is used), centre crop with the offsets
``int(round((n - 224) / 2))`` (round half to even), ``/ 255`` and OpenAI mean/std. Decisions on
points the original leaves open: values outside [0, 1] are clamped to [0, 255] before the
truncation (numpy's cast of out-of-range floats is undefined); fp16/bf16 inputs are first cast to
float32; the networks run in the encoder's precision (fp32 unless the caller uses autocast; the
original restoration code uses fp16 autocast on CUDA).

Loading: :meth:`DACLIP.load_weights` reads the official file, the converted file or a DACLIPModel
checkpoint (key table in :mod:`vlunet.convert.daclip_checkpoint`), never running code from a pickle.
"""
import copy
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from vlunet.archs.degradation_clip_arch import build_backbone, register_backbone_config
from vlunet.convert.daclip_checkpoint import daclip_state_dict, is_daclip_file
from vlunet.utils.safe_load import load_checked_state_dict, safe_torch_load

from basicsr.utils.registry import ARCH_REGISTRY

__all__ = ['DACLIP', 'daclip_preprocess', 'truncate_to_uint8', 'resize_and_centre_crop']

TRAINABLE_PREFIXES = ('controller.', 'control_linears.', 'logit_scale')
BACKBONE_PREFIX = 'backbone.'


def truncate_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float RGB in [0, 1] -> (B, H, W, 3) uint8: ``(x * 255).astype(uint8)`` (truncation).

    The product is taken in the input's precision (float32 or float64; fp16/bf16 are cast to float32),
    as numpy does on the original's float32 arrays; values outside [0, 255] are clamped first.
    """
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f'DACLIP expects float RGB images (B, 3, H, W) in [0, 1], got {tuple(images.shape)} '
                         f'{images.dtype}.')
    values = images.detach().cpu()
    if values.dtype not in (torch.float32, torch.float64):
        values = values.float()
    return (values * 255).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def resize_and_centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8: torchvision ``Resize(size, BICUBIC)`` + ``CenterCrop(size)`` on PIL."""
    height, width = image.shape[:2]
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    resized = np.asarray(Image.fromarray(image).resize((new_width, new_height), Image.BICUBIC))
    top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
    return resized[top:top + size, left:left + size]


def daclip_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """The original ``clip_transform`` of a batch: (B, 3, H, W) float RGB in [0, 1] -> (B, 3, size, size) float32.

    Runs on the CPU (PIL); the result is on ``images.device``. See the module docstring.
    """
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    crops = np.stack([resize_and_centre_crop(image, size) for image in truncate_to_uint8(images)])
    pixels = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255)
    mean = torch.as_tensor(OPENAI_DATASET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(OPENAI_DATASET_STD, dtype=torch.float32)[:, None, None]
    return pixels.sub_(mean).div_(std).to(images.device)


def _zero_linear(width: int) -> nn.Linear:
    linear = nn.Linear(width, width, bias=True)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class _Tower:
    """Block-by-block access to an open_clip ``VisionTransformer`` (batch-first or sequence-first blocks)."""

    def __init__(self, visual: nn.Module):
        self.visual = visual
        self.batch_first = getattr(visual.transformer, 'batch_first', True)

    def tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch + class tokens after ``ln_pre``, in the blocks' layout."""
        tokens = self.visual._embeds(pixels)  # (B, N, W)
        return tokens if self.batch_first else tokens.transpose(0, 1)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    def head(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post`` of the class token, then ``proj``: (B, D)."""
        pooled, _ = self.visual._pool(tokens if self.batch_first else tokens.transpose(0, 1))
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled


@ARCH_REGISTRY.register()
class DACLIP(nn.Module):
    """Frozen open_clip CLIP + trainable controller, zero linears and temperature (see the module docstring)."""

    def __init__(self, backbone: str = 'ViT-B-32', pretrained: Optional[str] = None):
        super().__init__()
        import open_clip
        self.backbone_name = register_backbone_config(backbone)
        daclip_file = pretrained if pretrained and is_daclip_file(pretrained) else None
        self.backbone = build_backbone(self.backbone_name, None if daclip_file else pretrained)
        self.backbone.requires_grad_(False).eval()
        visual = self.backbone.visual
        self.controller = copy.deepcopy(visual).requires_grad_(True)
        self.control_linears = nn.ModuleList(_zero_linear(visual.transformer.width)
                                             for _ in visual.transformer.resblocks)
        self.logit_scale = nn.Parameter(self.backbone.logit_scale.detach().clone())
        self.image_size = int(np.atleast_1d(visual.image_size)[0])
        self.tokenizer = open_clip.get_tokenizer(self.backbone_name)
        if daclip_file:
            self.load_weights(daclip_file)

    def train(self, mode: bool = True) -> 'DACLIP':
        """Set the trainable parts' mode; the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    # ------------------------------------------------------------------ image side

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """:func:`daclip_preprocess` to this encoder's input size, on its device: (B, 3, S, S)."""
        return daclip_preprocess(images, self.image_size).to(self.logit_scale.device)

    def degradation_and_controls(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Controller on preprocessed ``pixels``: degradation embedding (B, D) and controls [h_0 .. h_{L-1}]."""
        tower = _Tower(self.controller)
        tokens, controls = tower.tokens(pixels), []
        for block, linear in zip(tower.blocks, self.control_linears):
            tokens = block(tokens)
            controls.append(linear(tokens))
        return tower.head(tokens), controls

    def controlled_content(self, pixels: torch.Tensor, controls: List[torch.Tensor]) -> torch.Tensor:
        """Frozen tower on ``pixels`` with control h_{L-1-i} added after block i: content embedding (B, D)."""
        tower = _Tower(self.backbone.visual)
        tokens = tower.tokens(pixels)
        for block, control in zip(tower.blocks, reversed(controls)):
            tokens = block(tokens) + control
        return tower.head(tokens)

    def encode_pixels(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(content, degradation), each (B, D) un-normalised, of already preprocessed ``pixels`` (B, 3, S, S)."""
        degradation, controls = self.degradation_and_controls(pixels)
        return self.controlled_content(pixels, controls), degradation

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(content, degradation), each (B, D) un-normalised, of float RGB ``images`` (B, 3, H, W) in [0, 1].

        Exactly the original ``encode_image(clip_transform(LQ), control=True)``; an inference API (no
        gradient, like the original restoration code): training uses :meth:`forward`.
        """
        return self.encode_pixels(self.preprocess(images))

    @torch.no_grad()
    def encode_degradation(self, images: torch.Tensor) -> torch.Tensor:
        """The degradation embedding (B, D) of :meth:`encode` (only the controller runs; no gradient)."""
        tower = _Tower(self.controller)
        tokens = tower.tokens(self.preprocess(images))
        for block in tower.blocks:
            tokens = block(tokens)
        return tower.head(tokens)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training forward, with gradients: (content (B, D), degradation (B, D), exp(logit_scale) (0-d))."""
        content, degradation = self.encode_pixels(self.preprocess(images))
        return content, degradation, self.logit_scale.exp()

    # ------------------------------------------------------------------ text side

    def encode_text(self, texts: List[str]) -> torch.Tensor:
        """L2-normalised text embeddings (len(texts), D) from the frozen text tower (no gradient)."""
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f'encode_text expects a non-empty list of strings, got {texts!r}.')
        tokens = self.tokenizer(list(texts)).to(self.logit_scale.device)
        with torch.no_grad():
            return self.backbone.encode_text(tokens, normalize=True)

    # ------------------------------------------------------------------ weights

    def trainable_state_dict(self) -> Dict[str, torch.Tensor]:
        """What training changes and checkpoints hold: ``controller.*``, ``control_linears.*``, ``logit_scale``."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(TRAINABLE_PREFIXES)}

    adapter_state_dict = trainable_state_dict  # DegradationCLIP's name of the trainable weights (CLIPFinetuneModel)

    def load_weights(self, path: str) -> str:
        """Load an official ``daclip_*.pt``, a converted ``*_daclip.pth`` or a DACLIPModel checkpoint; say what.

        Files with ``backbone.*`` tensors (official, converted) replace the backbone too; training
        checkpoints only the controller, zero linears and temperature.
        """
        return self.load_checkpoint(safe_torch_load(path, 'DA-CLIP checkpoint'), path)

    def load_checkpoint(self, checkpoint: object, path: str) -> str:
        """:meth:`load_weights` on an already loaded ``checkpoint`` (``path`` names it in errors)."""
        state = daclip_state_dict(checkpoint, path)
        has_backbone = any(k.startswith(BACKBONE_PREFIX) for k in state)
        load_checked_state_dict(self, state, path, 'DA-CLIP checkpoint',
                                f'check the backbone option ({self.backbone_name})',
                                optional=() if has_backbone else (BACKBONE_PREFIX,))
        return 'backbone, controller, zero linears and temperature' if has_backbone else \
            'controller, zero linears and temperature'
