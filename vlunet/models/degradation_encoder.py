"""Building and loading the frozen degradation encoder (CLIP + image adapter) of a guided model.

Option file::

    degradation_encoder:            # absent or null: no CLIP guidance (the paper's "w/o CLIP")
      type: DegradationCLIP         # any ARCH_REGISTRY module with encode_degradation(images) -> (B, D)
      backbone: ViT-B-32
      pretrained: ~                 # open_clip tag; ~ = weights only from the file below
    path:
      pretrain_network_degradation_encoder: pretrained/clip_tuned_vlunet.pth  # {'params': state_dict}

The key is not named ``network_*`` on purpose: BasicSR's resume rewrites every
``pretrain_network_<x>`` of a ``network_<x>`` to the experiment's models folder, where the frozen
encoder is never saved. The weight file holds the adapters (``image_adapter.*``, ``text_adapter.*``)
and optionally the CLIP backbone (``backbone.*``); without backbone keys the backbone keeps the
weights it was built with (``pretrained``).
"""
import os.path as osp
from typing import Optional

import torch
from basicsr.archs import build_network
from basicsr.utils import get_root_logger
from torch import nn

WEIGHTS_KEY = 'pretrain_network_degradation_encoder'
BACKBONE_PREFIX = 'backbone.'


def _load_weights(encoder: nn.Module, path: str) -> None:
    if not osp.isfile(path):
        raise FileNotFoundError(f'path.{WEIGHTS_KEY}: {path!r} does not exist. Convert the official clip_tuned.pth '
                                'with scripts/convert_official_checkpoint.py, or set it to ~ (random adapters).')
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('params'), dict):
        raise ValueError(f'path.{WEIGHTS_KEY}: {path!r} is not a converted encoder file ({{"params": state_dict}}); '
                         'convert official files with scripts/convert_official_checkpoint.py.')
    missing, unexpected = encoder.load_state_dict(checkpoint['params'], strict=False)
    has_backbone = any(key.startswith(BACKBONE_PREFIX) for key in checkpoint['params'])
    missing = [key for key in missing if has_backbone or not key.startswith(BACKBONE_PREFIX)]
    if missing or unexpected:
        raise ValueError(f'path.{WEIGHTS_KEY}: {path!r} does not fit {type(encoder).__name__}: missing keys '
                         f'{missing[:5]}{"..." if len(missing) > 5 else ""}, unexpected keys {unexpected[:5]}'
                         f'{"..." if len(unexpected) > 5 else ""}. Check degradation_encoder.backbone.')
    source = 'adapters and backbone' if has_backbone else 'adapters (backbone as built)'
    get_root_logger().info(f'Loaded the degradation encoder {source} from {path}.')


def build_degradation_encoder(encoder_opt: Optional[dict], weights_path: Optional[str],
                              device: torch.device) -> Optional[nn.Module]:
    """The frozen encoder in eval mode on ``device``, or None when ``encoder_opt`` is absent/null."""
    if not encoder_opt:
        return None
    encoder = build_network(encoder_opt)
    if not callable(getattr(encoder, 'encode_degradation', None)):
        raise TypeError(f'degradation_encoder.type: {encoder_opt["type"]} has no encode_degradation(images) method.')
    if weights_path:
        _load_weights(encoder, weights_path)
    else:
        get_root_logger().warning(f'path.{WEIGHTS_KEY} is not set: the degradation encoder adapters are random, '
                                  'so the CLIP guidance carries no degradation information.')
    return encoder.requires_grad_(False).eval().to(device)
