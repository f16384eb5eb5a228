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
weights it was built with (``pretrained``). The encoder's own ``load_weights(path)`` reads the file, so
an official ``clip_tuned.pth`` or ``.ckpt`` also works for :class:`DegradationCLIP`.
"""
import os.path as osp
from typing import Optional

import torch
from basicsr.archs import build_network
from basicsr.utils import get_root_logger
from torch import nn

WEIGHTS_KEY = 'pretrain_network_degradation_encoder'


def _load_weights(encoder: nn.Module, path: str) -> None:
    if not osp.isfile(path):
        raise FileNotFoundError(f'path.{WEIGHTS_KEY}: {path!r} does not exist. Convert the official clip_tuned.pth '
                                'with scripts/convert_official_checkpoint.py, or set it to ~ (random adapters).')
    if not callable(getattr(encoder, 'load_weights', None)):
        raise TypeError(f'degradation_encoder.type: {type(encoder).__name__} has no load_weights(path) method, so '
                        f'path.{WEIGHTS_KEY} cannot be loaded into it.')
    try:
        loaded = encoder.load_weights(path)
    except ValueError as error:
        raise ValueError(f'path.{WEIGHTS_KEY}: {error}') from error
    get_root_logger().info(f'Loaded the degradation encoder {loaded} from {path}.')


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
