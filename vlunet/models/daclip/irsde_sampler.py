"""Restoring images with an IR-SDE noise network (DA-CLIP's ``ConditionalUNet``) outside BasicSR: the Restorer's part.

:class:`IRSDERestoration` runs :meth:`~vlunet.models.daclip.irsde.IRSDE.sample` on an image with

- **contexts computed once per image**: the DA-CLIP embeddings (``text_context``, ``image_context``,
  each (B, D)) are given by the caller, encoded from the whole LQ image, and reused by every step
  and every tile;
- **steps**: ``steps`` (default: ``sde.T``, the steps the network was trained with, 100 for the
  release) builds the cosine schedule with that many steps, and the network is called at time
  ``t · T / steps`` (a float), so it always sees the noise levels of its training range (the
  original's ``sample_scale``, which is T / steps = 1 in its test setting). Fewer steps are faster and
  approximate; the paper's numbers use 100;
- **seed**: a generator seeded with ``seed`` for every image (None: unseeded), so the same image
  and seed give the same result whatever was restored before, and another seed another sample
  (the generator lives on the image's device: CPU and CUDA samples differ);
- **bounded memory on large images: per-step tiling of the network, one noise field**. The SDE state
  and every noise draw cover the whole image (one generator, whole-image tensors of 3·H·W values);
  only each step's noise prediction is computed by ``apply`` (the Restorer's
  :func:`vlunet.tiling.tiles.restore` with its ``tile`` setting: whole, fixed tiles, or ``auto``,
  the largest tiles that fit the memory, planned once per image and kept for every step, so the
  result does not depend on the memory free at each step) on overlapping tiles of ``[x_t, μ]``,
  blended. So the network's memory is that of one tile whatever the image size, and tiles never
  disagree about the noise. Decision: this rather than sampling each tile separately (each tile would need its own crop
  of one noise field and its own 100 steps, and the tiles' samples would drift apart in the
  overlaps) or refusing large images. Tiled and whole-image results differ: the network's
  self-attention at 1/8 resolution sees one tile only. On whole images that self-attention over
  H/8 × W/8 positions dominates the time of large images.

Shapes: images (B, 3, H, W) float in [0, 1]; output (B, 3, H, W) float32, not clamped.
"""
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from vlunet.archs.daclip.irsde_unet_arch import ConditionalUNet
from vlunet.models.daclip.irsde import IRSDE, SAMPLING_MODES
from vlunet.tiling.tiles import ImageFunction, repeat_per_tile, restore

SCHEDULE_KEYS = ('max_sigma', 'T', 'schedule', 'eps')  # IRSDE's settings in an option file's ``sde`` block
SDE_OPTION_KEYS = (*SCHEDULE_KEYS, 'sampling_mode', 'seed')
TRAINED_STEPS = 100  # the release's sde.T


def is_noise_network(net: nn.Module) -> bool:
    """True for an IR-SDE noise network, called ``net(xt, cond, time, text_context=, image_context=)``."""
    return isinstance(net, ConditionalUNet)


def check_encoder(net: nn.Module, encoder: Optional[nn.Module]) -> None:
    """``ValueError`` unless ``encoder`` gives the contexts the noise network ``net`` uses (DACLIP's ``encode``)."""
    flags = [flag for flag in ('use_degra_context', 'use_image_context') if getattr(net, flag, False)]
    if flags and encoder is None:
        raise ValueError(f'{type(net).__name__} with {" and ".join(flags)} needs the DA-CLIP encoder: give its weights '
                         '(clip_weights / --clip-weights / path.pretrain_network_degradation_encoder, e.g. '
                         'pretrained/daclip_ViT-B-32.pt), or an option file with degradation_encoder: {type: DACLIP}.')
    if flags and not callable(getattr(encoder, 'encode', None)):
        raise ValueError(f'degradation_encoder: {type(encoder).__name__} has no encode(images) -> (content, '
                         f'degradation), which {type(net).__name__} needs; use {{type: DACLIP}}.')


def encode_contexts(encoder: Optional[nn.Module], images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The noise network's DA-CLIP keyword arguments for ``images`` (B, 3, H, W) in [0, 1], encoded once:
    ``text_context`` (the degradation embedding) and ``image_context`` (the content embedding), each (B, D)
    float32; empty without an encoder."""
    if encoder is None:
        return {}
    with torch.no_grad():
        content, degradation = encoder.encode(images)
    return {'text_context': degradation.float(), 'image_context': content.float()}


def _checked_count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{what}: the number of IR-SDE sampling steps must be a positive integer, got {value!r}.')
    return value


class IRSDERestoration:
    """IR-SDE sampling settings of a Restorer (see the module docstring).

    Args:
        sde_opt: The option file's ``sde`` block (keys :data:`SDE_OPTION_KEYS`; default: the release's settings).
        steps: Sampling steps (default ``sde_opt['T']``, the network's training steps).
        seed: Noise seed of every image (default ``sde_opt['seed']``, else 0); None in both: unseeded.
        device: Where the schedule lives.
    """

    def __init__(self, sde_opt: Optional[dict] = None, steps: Optional[int] = None, seed: Optional[int] = None,
                 device: torch.device = torch.device('cpu')):
        sde_opt = dict(sde_opt or {})
        unknown = sorted(set(sde_opt) - set(SDE_OPTION_KEYS))
        if unknown:
            raise ValueError(f'sde: unknown keys {unknown}; known: {", ".join(SDE_OPTION_KEYS)}.')
        self.mode: str = sde_opt.get('sampling_mode', 'posterior')
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f'sde.sampling_mode: {self.mode!r} is not supported; use one of '
                             f'{", ".join(SAMPLING_MODES)}.')
        trained = _checked_count(sde_opt.get('T', TRAINED_STEPS), 'sde.T')
        self.steps = _checked_count(trained if steps is None else steps, 'steps')
        self.seed: Optional[int] = sde_opt.get('seed', 0) if seed is None else seed
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f'seed: an integer (or sde.seed: ~ for unseeded sampling), got {self.seed!r}.')
        self.time_scale = trained / self.steps
        schedule = {key: sde_opt[key] for key in SCHEDULE_KEYS if key in sde_opt}
        self.sde = IRSDE(**{**schedule, 'T': self.steps}, device=device)

    def generator(self, device: torch.device) -> Optional[torch.Generator]:
        """A fresh generator seeded with :attr:`seed` (None when unseeded)."""
        return None if self.seed is None else torch.Generator(device=device).manual_seed(int(self.seed))

    def step_network(self, net: nn.Module, contexts: Dict[str, torch.Tensor], time: float) -> ImageFunction:
        """``net`` at diffusion time ``time``: stacked ``[x_t, μ]`` (N, 2C, h, w) -> predicted noise (N, C, h, w).

        ``contexts`` (B, D) are repeated for N = k · B stacked tiles (:func:`~vlunet.tiling.tiles.repeat_per_tile`).
        """
        def network(pairs: torch.Tensor) -> torch.Tensor:
            channels = pairs.shape[1] // 2
            tiled = {name: repeat_per_tile(value, pairs.shape[0]) for name, value in contexts.items()}
            return net(pairs[:, :channels], pairs[:, channels:], time, **tiled)
        return network

    def memory_probe(self, net: nn.Module, contexts: Dict[str, torch.Tensor],
                     images: torch.Tensor) -> Tuple[ImageFunction, torch.Tensor]:
        """(:meth:`step_network` at the first step, its ``[x_T, μ]`` input (B, 2C, H, W) for ``images``): what one
        sampling step runs, for measuring the network's memory (:mod:`vlunet.tiling.memory_model`)."""
        return self.step_network(net, contexts, self.steps * self.time_scale), torch.cat([images, images], dim=1)

    def restore(self, net: nn.Module, images: torch.Tensor, contexts: Dict[str, torch.Tensor],
                apply: Callable[[ImageFunction, torch.Tensor], torch.Tensor] = restore,
                progress: bool = False) -> torch.Tensor:
        """Sample the restoration of ``images`` (B, C, H, W) with ``net`` -> (B, C, H, W) float32.

        ``contexts``: ``net``'s keyword arguments (``text_context``/``image_context`` (B, D)), empty
        for a network without contexts. ``apply(fn, pairs)``: how each step runs :meth:`step_network`
        on the whole-image ``[x_t, μ]`` (B, 2C, H, W): whole (the default) or in tiles (the Restorer's
        :func:`vlunet.tiling.tiles.restore` with its tile settings). ``progress``: a bar over the steps.
        """
        def predicted_noise(state: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
            time = float(steps[0]) * self.time_scale  # every image is at the same step
            return apply(self.step_network(net, contexts, time), torch.cat([state, images], dim=1))

        return self.sde.sample(predicted_noise, images, self.mode, self.generator(images.device), progress)
