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

Guidance (shared by :class:`~vlunet.models.guided_restoration_model.GuidedRestorationModel`,
:class:`vlunet.inference.Restorer` and
``scripts/model_stats.py``): a network may declare the keyword embeddings its forward takes in a
``guidance_inputs`` attribute, a tuple of :data:`GUIDANCE_INPUTS` (NAFNetDACLIP: ``degradation`` and/or
``content``, DA-CLIP's content embedding; empty for plain NAFNet). A network that declares nothing may
take ``degradation=`` (:data:`UNDECLARED_GUIDANCE`, VLUNet). :func:`guidance_inputs` checks the declaration
against the encoder, :func:`encode_guidance` computes the embeddings once per image (``content`` with
``degradation`` from ``encoder.encode(images) -> (content, degradation)``, DACLIP) and
:func:`guidance_keywords` gives the network its keywords, repeated for tiles stacked along the batch.
"""
import contextlib
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from vlunet.tiling.tiles import repeat_per_tile
from vlunet.utils.weight_files import seeded_random_weights

from basicsr.archs import build_network
from basicsr.utils import get_root_logger

WEIGHTS_KEY = 'pretrain_network_degradation_encoder'
GUIDANCE_INPUTS = ('degradation', 'content')  # keywords a network can declare in its guidance_inputs
SEEDED_ENCODERS = ('DegradationCLIP', 'DACLIP')  # random weights reproducible (build_degradation_encoder)
UNDECLARED_GUIDANCE = ('degradation',)  # a network without guidance_inputs may take d (VLUNet: optional)
Guidance = Dict[str, torch.Tensor]  # {'degradation': d, 'content': c}, each (B, D)


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
    """The frozen encoder in eval mode on ``device``, or None when ``encoder_opt`` is absent/null.

    The weights of vlunet's CLIP encoders (:data:`SEEDED_ENCODERS`) that no file gives are drawn with a fixed seed
    (global random state untouched), so a random encoder (an offline demo) is the same in training, testing and
    inference."""
    if not encoder_opt:
        return None
    with seeded_random_weights() if encoder_opt.get('type') in SEEDED_ENCODERS else contextlib.nullcontext():
        encoder = build_network(encoder_opt)
    if not callable(getattr(encoder, 'encode_degradation', None)):
        raise TypeError(f'degradation_encoder.type: {encoder_opt["type"]} has no encode_degradation(images) method.')
    if weights_path:
        _load_weights(encoder, weights_path)
    else:
        get_root_logger().warning(f'path.{WEIGHTS_KEY} is not set: the degradation encoder adapters are random, '
                                  'so the CLIP guidance carries no degradation information.')
    return encoder.requires_grad_(False).eval().to(device)


def declared_guidance(net: nn.Module, network_key: str = 'network_g') -> Optional[Tuple[str, ...]]:
    """``net``'s ``guidance_inputs`` (names checked against :data:`GUIDANCE_INPUTS`), or None when it declares none."""
    declared = getattr(net, 'guidance_inputs', None)
    if declared is None:
        return None
    declared = tuple(declared)
    unknown = sorted(set(declared) - set(GUIDANCE_INPUTS))
    if unknown:
        raise ValueError(f'{network_key}: {type(net).__name__}.guidance_inputs has unknown names {unknown}; known: '
                         f'{", ".join(GUIDANCE_INPUTS)}.')
    return declared


def guidance_inputs(net: nn.Module, encoder: Optional[nn.Module], network_key: str = 'network_g') -> Tuple[str, ...]:
    """The guidance keywords ``net`` takes: its declared ones, checked against ``encoder`` (an encoder is needed,
    with ``encode(images) -> (content, degradation)`` for ``content``), else :data:`UNDECLARED_GUIDANCE`."""
    declared = declared_guidance(net, network_key)
    if declared is None:
        return UNDECLARED_GUIDANCE
    name = type(net).__name__
    if declared and encoder is None:
        raise ValueError(f'{network_key}: {name} takes {" and ".join(declared)} embeddings from a degradation '
                         'encoder: set degradation_encoder (e.g. {type: DACLIP}) with its weights (path.'
                         f'{WEIGHTS_KEY}; scripts/inference.py: --clip-weights), or turn that guidance off in '
                         f'{network_key}.')
    if 'content' in declared and not callable(getattr(encoder, 'encode', None)):
        raise TypeError(f'degradation_encoder.type: {type(encoder).__name__} has no encode(images) -> (content, '
                        f'degradation) method, which {network_key} {name} needs for its content embedding (use '
                        'DACLIP).')
    return declared


def encode_guidance(encoder: Optional[nn.Module], images: torch.Tensor, inputs: Sequence[str]) -> Guidance:
    """The embeddings of ``images`` (B, 3, H, W) in [0, 1] for the guidance ``inputs``, frozen (no gradient):
    ``{'content': c, 'degradation': d}`` from ``encoder.encode`` when ``content`` is among them, else
    ``{'degradation': d}`` from ``encoder.encode_degradation``; ``{}`` without an encoder or inputs."""
    if encoder is None or not inputs:
        return {}
    with torch.no_grad():
        if 'content' in inputs:
            content, degradation = encoder.encode(images)
            return {'content': content, 'degradation': degradation}
        return {'degradation': encoder.encode_degradation(images)}


def guidance_keywords(guidance: Guidance, inputs: Sequence[str], batch: int) -> Guidance:
    """The keyword arguments of a network taking ``inputs``: each embedding of ``guidance`` it takes and that is
    there (per image, (B, D)), repeated for ``batch`` = k * B stacked tiles ((k * B, D), as tiling stacks them)."""
    return {name: repeat_per_tile(guidance[name], batch) for name in inputs if guidance.get(name) is not None}
