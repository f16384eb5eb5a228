"""Degradation-aware CLIP: a frozen open_clip model with trainable image and text adapters (paper Sec. 3.2).

``DegradationCLIP(backbone='ViT-B-32', pretrained=None, adapter_activation='gelu')``:

- ``backbone``: an open_clip model name (``ViT-B-32``, VLU-Net's), or the path of an open_clip
  model-config JSON file (``<name>.json``), which is registered with ``open_clip.add_model_config``
  and then built by its file stem: custom or tiny test configs work in every process this way.
- ``pretrained``: ``None`` (random weights), an open_clip tag (``laion2b_s34b_b79k``, VLU-Net's;
  downloaded or taken from the Hugging Face cache), or a local file: an open_clip checkpoint (e.g.
  ``open_clip_pytorch_model.bin``) or a converted ``*_clip.pth`` carrying ``backbone.*`` tensors
  (``scripts/convert_official_checkpoint.py`` on an official ``.ckpt``).
- ``adapter_activation``: ``gelu`` (exact erf GELU, what the official restoration code computes d_I
  with) or ``leaky_relu`` (slope 0.01, the official fine-tuning notebook's).

Submodules: ``backbone`` (the open_clip model: frozen, always in eval mode, run under ``no_grad``),
``image_adapter`` and ``text_adapter``: ``nn.Sequential`` with the official indices 0..7 =
Linear, LayerNorm, activation, Linear, LayerNorm, activation, Linear, LayerNorm (all D -> D).

:meth:`DegradationCLIP.load_weights` reads adapter (and optionally backbone) weights from a
converted ``{'params': state_dict}`` file, an official ``clip_tuned.pth`` (``learnable_params``) or
the CLIP part (``model_degradation.*``) of an official Lightning ``.ckpt``; official key names are
mapped by :func:`official_clip_state_dict` (one implementation, shared with the converter).
"""
import os
import os.path as osp
from typing import Dict, List, Optional

import torch
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from vlunet.convert.vlunet_checkpoint import load_official_file, official_clip_state_dict
from vlunet.utils.console_log import without_random_init_warning
from vlunet.utils.safe_load import (
    WrongContentsError,
    check_file,
    load_checked_state_dict,
    one_line,
    require_state_dict,
    safe_torch_load,
)

from basicsr.utils.registry import ARCH_REGISTRY

__all__ = ['DegradationCLIP', 'clip_preprocess', 'official_clip_state_dict']

CLIP_INPUT_SIZE = 224
BACKBONE_PREFIX = 'backbone.'
ADAPTER_PREFIXES = ('image_adapter.', 'text_adapter.')
OFFICIAL_DEGRADATION_PREFIX = 'model_degradation.'
ACTIVATIONS = {'gelu': nn.GELU, 'leaky_relu': nn.LeakyReLU}
BACKBONE_WEIGHTS = 'CLIP backbone weights (pretrained, --clip-pretrained)'
ADAPTER_WEIGHTS = 'degradation-encoder weights (--clip-weights, path.pretrain_network_degradation_encoder)'
ADAPTER_WEIGHTS_FIX = ('give a file written by scripts/convert_official_checkpoint.py (<stem>_clip.pth) or by CLIP '
                       'fine-tuning, an official clip_tuned.pth or an official VLU-Net .ckpt')
OFFICIAL_WEIGHTS_HELP = ('the Hugging Face repo laion/CLIP-ViT-B-32-laion2B-s34B-b79K, '
                         'file open_clip_pytorch_model.bin '
                         '(https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/'
                         'open_clip_pytorch_model.bin)')


def clip_preprocess(images: torch.Tensor, size: int = CLIP_INPUT_SIZE) -> torch.Tensor:
    """VLU-Net's CLIP input: (B, 3, H, W) float in [0, 1] -> (B, 3, size, size) normalised.

    Bicubic antialiased resize of the short side to ``size`` (long side ``int(size * long / short)``),
    centre crop (rounded offsets), OpenAI mean/std; no clamping and no uint8 round trip.
    """
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # on use: open_clip takes seconds to import
    images = TF.resize(images, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    images = TF.center_crop(images, [size, size])
    return TF.normalize(images, list(OPENAI_DATASET_MEAN), list(OPENAI_DATASET_STD))


def make_adapter(width: int, activation: str) -> nn.Sequential:
    """The official 3-layer adapter MLP: indices 0..7 = Linear, LN, act, Linear, LN, act, Linear, LN."""
    act = ACTIVATIONS[activation]
    return nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), act(),
                         nn.Linear(width, width), nn.LayerNorm(width), act(),
                         nn.Linear(width, width), nn.LayerNorm(width))


def register_backbone_config(backbone: str) -> str:
    """The open_clip model name of ``backbone``; a ``*.json`` config path is registered first."""
    import open_clip
    if backbone.endswith('.json'):
        if not osp.isfile(backbone):
            raise FileNotFoundError(f'backbone: the open_clip model config {backbone!r} does not exist.')
        open_clip.add_model_config(backbone)
        return osp.splitext(osp.basename(backbone))[0]
    if open_clip.get_model_config(backbone) is None:
        raise ValueError(f'backbone: unknown open_clip model {backbone!r}; use a name from open_clip.list_models() '
                         '(VLU-Net: ViT-B-32) or the path of an open_clip model-config JSON file.')
    return backbone


def _converted_backbone_state(path: str) -> Optional[Dict[str, torch.Tensor]]:
    """``backbone.*`` tensors (prefix removed) of a converted ``{'params': ...}`` file, or None for other files."""
    checkpoint = safe_torch_load(path, BACKBONE_WEIGHTS)
    if not (isinstance(checkpoint, dict) and isinstance(checkpoint.get('params'), dict)):
        state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else checkpoint
        require_state_dict(state, path, BACKBONE_WEIGHTS, f'give the open_clip weights ({OFFICIAL_WEIGHTS_HELP})')
        return None
    state = require_state_dict(checkpoint['params'], path, BACKBONE_WEIGHTS, ADAPTER_WEIGHTS_FIX)
    state = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    if not state:
        raise WrongContentsError(f'{BACKBONE_WEIGHTS} {path} holds adapters only (no backbone.* tensors): give the '
                                 f'open_clip weights ({OFFICIAL_WEIGHTS_HELP}) as pretrained and this file as the '
                                 'adapter weights.')
    return state


def _download_failure_message(name: str, tag: str, error: Exception) -> str:
    import open_clip
    hf_hub = (open_clip.get_pretrained_cfg(name, tag) or {}).get('hf_hub', '')
    source = (OFFICIAL_WEIGHTS_HELP if (name, tag) == ('ViT-B-32', 'laion2b_s34b_b79k')
              else f'the Hugging Face repo {hf_hub.rstrip("/")}, file open_clip_pytorch_model.bin')
    return (f'pretrained: the open_clip weights {name}/{tag} are neither cached nor downloadable ({error}). '
            f'Download {source} on a machine with internet access and set `pretrained:` to the local file path '
            '(works offline everywhere), or place it in the Hugging Face cache (~/.cache/huggingface/hub, '
            'or $HF_HOME).')


def _unknown_tag_message(name: str, tag: str) -> Optional[str]:
    import open_clip
    tags = open_clip.list_pretrained_tags_by_model(name)
    return None if tag in tags else (f'{tag!r} is neither a file nor an open_clip tag of {name} (tags: '
                                      f'{", ".join(tags) or "none"}).')


def _cached_weights(config: dict) -> bool:
    """Whether open_clip would find the weights of a pretrained ``config`` without downloading them."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.pretrained import HF_WEIGHTS_NAME
    model_id, filename = osp.split(config.get('hf_hub', ''))
    if model_id:
        names = (filename or HF_WEIGHTS_NAME, 'open_clip_model.safetensors')  # open_clip tries safetensors first
        return any(isinstance(try_to_load_from_cache(model_id, name), str) for name in names)
    url = config.get('url', '')
    return bool(url) and osp.isfile(osp.join(osp.expanduser('~/.cache/clip'), osp.basename(url)))


def _reachable(url: str, timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse
    if os.environ.get('HF_HUB_OFFLINE', '').lower() in ('1', 'true', 'yes', 'on'):
        return False
    try:
        socket.create_connection((urlparse(url).hostname, 443), timeout=timeout).close()
    except (OSError, ValueError, TypeError):
        return False
    return True


def pretrained_tag_problem(name: str, tag: str) -> Optional[str]:
    """Why open_clip's weights ``name``/``tag`` cannot be loaded here (an unknown tag, or weights neither cached nor
    downloadable: offline), or None; checked before a run, in seconds, instead of open_clip's download retries."""
    import open_clip
    unknown = _unknown_tag_message(name, tag)
    if unknown:
        return unknown
    config = open_clip.get_pretrained_cfg(name, tag)
    if _cached_weights(config):
        return None
    hf_hub = config.get('hf_hub', '')
    source = (f'{os.environ.get("HF_ENDPOINT", "https://huggingface.co")}/{hf_hub}' if hf_hub
              else config.get('url', ''))
    if _reachable(source):
        return None
    return _download_failure_message(name, tag, OSError(f'not cached, and {source} cannot be reached: offline?'))


def build_backbone(name: str, pretrained: Optional[str]) -> nn.Module:
    """An open_clip model ``name`` with weights from ``pretrained`` (None, tag or local file)."""
    import open_clip
    if pretrained is None:
        with without_random_init_warning():  # DegradationCLIP.random_backbone says it (until weights load)
            return open_clip.create_model(name, pretrained=None)
    if osp.isfile(pretrained) or osp.isdir(pretrained):
        check_file(pretrained, BACKBONE_WEIGHTS)
        state = _converted_backbone_state(pretrained)
        if state is None:
            try:  # open_clip reads the file again (safe_torch_load has checked it) and adapts its keys
                return open_clip.create_model(name, pretrained=pretrained)
            except Exception as error:  # noqa: BLE001 -- whatever open_clip raises on a state dict of another model
                raise WrongContentsError(f'{BACKBONE_WEIGHTS} {pretrained} does not fit the open_clip model {name} '
                                         f'({one_line(error, 300)}): give the open_clip weights of {name} '
                                         f'({OFFICIAL_WEIGHTS_HELP} for ViT-B-32).') from error
        with without_random_init_warning():  # the weights are loaded on the next line
            model = open_clip.create_model(name, pretrained=None)
        load_checked_state_dict(model, state, pretrained, BACKBONE_WEIGHTS, f'check the backbone option ({name})')
        return model
    unknown = _unknown_tag_message(name, pretrained)
    if unknown:
        raise ValueError(f'pretrained: {unknown}')
    try:
        return open_clip.create_model(name, pretrained=pretrained)
    except (RuntimeError, OSError) as error:
        raise RuntimeError(_download_failure_message(name, pretrained, error)) from error


def _adapter_state(checkpoint: object, path: str) -> Dict[str, torch.Tensor]:
    """DegradationCLIP keys from a converted file, an official ``clip_tuned.pth`` or an official ``.ckpt``."""
    def tensors(state: object) -> Dict[str, torch.Tensor]:
        return require_state_dict(state, path, ADAPTER_WEIGHTS, ADAPTER_WEIGHTS_FIX)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('params'), dict):
        return tensors(checkpoint['params'])
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('learnable_params'), dict):
        return official_clip_state_dict(tensors(checkpoint['learnable_params']))
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('state_dict'), dict):
        degradation = {k[len(OFFICIAL_DEGRADATION_PREFIX):]: v for k, v in tensors(checkpoint['state_dict']).items()
                       if k.startswith(OFFICIAL_DEGRADATION_PREFIX)}
        if degradation:
            return official_clip_state_dict(degradation)
    raise WrongContentsError(f'{ADAPTER_WEIGHTS} {path} holds no degradation-encoder weights: expected a converted '
                             'file ({"params": ...}), '
                     'an official clip_tuned.pth ("learnable_params") or an official VLU-Net .ckpt '
                     '("state_dict" with model_degradation.* keys).')


@ARCH_REGISTRY.register()
class DegradationCLIP(nn.Module):
    """Frozen open_clip backbone + trainable image/text adapters (see the module docstring)."""

    def __init__(self, backbone: str = 'ViT-B-32', pretrained: Optional[str] = None,
                 adapter_activation: str = 'gelu'):
        super().__init__()
        if adapter_activation not in ACTIVATIONS:
            raise ValueError(f'adapter_activation: {adapter_activation!r}; use one of {", ".join(ACTIVATIONS)} '
                             '(gelu: official restoration code; leaky_relu: official fine-tuning notebook).')
        import open_clip
        self.backbone_name = register_backbone_config(backbone)
        self.backbone = build_backbone(self.backbone_name, pretrained).requires_grad_(False).eval()
        self.random_backbone = pretrained is None  # until a file with backbone.* weights is loaded
        width = open_clip.get_model_config(self.backbone_name)['embed_dim']
        self.image_adapter = make_adapter(width, adapter_activation)
        self.text_adapter = make_adapter(width, adapter_activation)
        self.tokenizer = open_clip.get_tokenizer(self.backbone_name)

    def train(self, mode: bool = True) -> 'DegradationCLIP':
        """Set the adapters' mode; the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def encode_degradation(self, images: torch.Tensor) -> torch.Tensor:
        """d_I (B, D) of degraded ``images`` (B, 3, H, W), float RGB in [0, 1], any H and W.

        ``image_adapter(backbone.encode_image(clip_preprocess(images)))``, unnormalised, like the
        official release; gradients flow into the image adapter only.
        """
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f'encode_degradation expects float RGB images (B, 3, H, W) in [0, 1], got '
                             f'{tuple(images.shape)} {images.dtype}.')
        with torch.no_grad():
            features = self.backbone.encode_image(clip_preprocess(images))
        return self.image_adapter(features)

    def encode_text(self, texts: List[str]) -> torch.Tensor:
        """Adapted text embeddings (len(texts), D) of degradation descriptions."""
        if isinstance(texts, str) or not texts:
            raise ValueError(f'encode_text expects a non-empty list of strings, got {texts!r}.')
        tokens = self.tokenizer(list(texts)).to(self.image_adapter[0].weight.device)
        with torch.no_grad():
            features = self.backbone.encode_text(tokens)
        return self.text_adapter(features)

    def forward(self, images: torch.Tensor, texts: Optional[List[str]] = None):
        """:meth:`encode_degradation` (B, D); with ``texts`` the pair (images (B, D), texts (T, D)).

        The pair form lets a training step run both adapters in one call (one DDP forward).
        """
        if texts is None:
            return self.encode_degradation(images)
        return self.encode_degradation(images), self.encode_text(texts)

    def adapter_state_dict(self) -> Dict[str, torch.Tensor]:
        """The trainable weights only: ``image_adapter.*`` and ``text_adapter.*``."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(ADAPTER_PREFIXES)}

    def load_weights(self, path: str) -> str:
        """Load adapters (and ``backbone.*`` when present) from the file ``path``; return what was loaded.

        Accepts a converted ``{'params': state_dict}`` file, an official ``clip_tuned.pth`` or an
        official Lightning ``.ckpt``. Every adapter tensor must be present.
        """
        return self.load_checkpoint(load_official_file(path, description=ADAPTER_WEIGHTS), path)

    def load_checkpoint(self, checkpoint: object, path: str) -> str:
        """:meth:`load_weights` on an already loaded ``checkpoint`` (``path`` names it in errors)."""
        state = _adapter_state(checkpoint, path)
        has_backbone = any(k.startswith(BACKBONE_PREFIX) for k in state)
        load_checked_state_dict(self, state, path, ADAPTER_WEIGHTS, f'{ADAPTER_WEIGHTS_FIX}; check the backbone '
                                f'option ({self.backbone_name})', optional=() if has_backbone else (BACKBONE_PREFIX,))
        self.random_backbone = self.random_backbone and not has_backbone
        return 'adapters and backbone' if has_backbone else 'adapters'
