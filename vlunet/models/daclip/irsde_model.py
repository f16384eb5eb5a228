"""IR-SDE restoration guided by DA-CLIP (DA-CLIP's universal image restoration) as a BasicSR model.

``net_g`` is a noise-prediction network called as ``net_g(xt, lq, t, text_context=d, image_context=c)``
(:class:`~vlunet.archs.daclip.irsde_unet_arch.ConditionalUNet`); the SDE is :class:`~vlunet.models.daclip.irsde.IRSDE`.
Option file (besides BasicSR's)::

    degradation_encoder: {type: DACLIP, backbone: ViT-B-32}   # any module with encode(images) -> (content, degradation)
    path:
      pretrain_network_degradation_encoder: pretrained/daclip_ViT-B-32.pt
    sde:
      max_sigma: 50           # stationary noise level (0-255 scale)
      T: 100                  # steps: training draws t in 1..T, restoration takes T network evaluations
      schedule: cosine
      eps: 0.005
      sampling_mode: posterior  # or sde (Euler-Maruyama)
      seed: 0                 # noise of every validation/test restoration (~: unseeded)
    train:
      pixel_opt: {type: L1Loss, loss_weight: 1.0}   # between expected and optimum previous states
      ema_decay: 0.995
      ema_update_every: 10    # the EMA is updated every N iterations (the release: ema_pytorch, every 10)

The DA-CLIP embeddings of each LQ image are computed once per batch by the frozen encoder
(:mod:`vlunet.guidance.degradation_encoder`, shared with
:class:`~vlunet.models.guided_restoration_model.GuidedRestorationModel`):
they get no gradient, are not in the EMA copy and are never saved. Without ``degradation_encoder``
the network gets no contexts (plain IR-SDE: ``use_degra_context``/``use_image_context`` false).

Training step: a random step per image, its noisy state, the predicted noise, and the L1 loss
(``l_pix``) between the expected and the optimum previous state. Validation and testing restore by
sampling (T steps of ``sde.sampling_mode``) from the EMA network when there is one, with a generator
seeded with ``sde.seed`` for every image, so each result is reproducible and independent of the
order or rank it is processed in. Metrics, results tables, logging and checkpoints are
GuidedRestorationModel's. The release's EMA (ema_pytorch) also copies the weights for its first 100 updates and
warms its decay up; here the decay is fixed (BasicSR's EMA).
"""
from functools import partial
from typing import List, NamedTuple, Optional

import torch
from torch import nn

from vlunet.models.daclip.irsde import IRSDE, SAMPLING_MODES
from vlunet.models.guided_restoration_model import GuidedRestorationModel
from vlunet.utils.precision import autocast

from basicsr.utils.registry import MODEL_REGISTRY

SDE_KEYS = ('max_sigma', 'T', 'schedule', 'eps')


class DAClipContexts(NamedTuple):
    """DA-CLIP embeddings of the LQ images, as ConditionalUNet's keyword arguments."""

    text_context: Optional[torch.Tensor]  # degradation embedding (B, D)
    image_context: Optional[torch.Tensor]  # content embedding (B, D)


def build_sde(sde_opt: Optional[dict], device: torch.device) -> IRSDE:
    """The IRSDE of the ``sde`` option block (defaults: the release's settings); ValueError naming a bad key."""
    sde_opt = sde_opt or {}
    unknown = set(sde_opt) - {*SDE_KEYS, 'sampling_mode', 'seed'}
    if unknown:
        raise ValueError(f'sde: unknown keys {sorted(unknown)}; known: {", ".join(SDE_KEYS)}, sampling_mode, seed.')
    mode = sde_opt.get('sampling_mode', 'posterior')
    if mode not in SAMPLING_MODES:
        raise ValueError(f'sde.sampling_mode: {mode!r} is not supported; use one of {", ".join(SAMPLING_MODES)}.')
    seed = sde_opt.get('seed', 0)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError(f'sde.seed: an integer or ~ (unseeded), got {seed!r}.')
    return IRSDE(**{key: sde_opt[key] for key in SDE_KEYS if key in sde_opt}, device=device)


@MODEL_REGISTRY.register()
class IRSDEModel(GuidedRestorationModel):
    """GuidedRestorationModel whose net predicts IR-SDE noise and restores by sampling (see the module docstring)."""

    def __init__(self, opt: dict):
        problems = self.check_options(opt, opt['is_train'])
        if problems:
            raise ValueError(' '.join(problems))
        super().__init__(opt)
        sde_opt = opt.get('sde') or {}
        self.sde = build_sde(sde_opt, self.device)
        self.sampling_mode: str = sde_opt.get('sampling_mode', 'posterior')
        self.sampling_seed: Optional[int] = sde_opt.get('seed', 0)
        self.ema_update_every: int = (opt.get('train') or {}).get('ema_update_every', 1)
        self._check_contexts()

    @staticmethod
    def check_options(opt: dict, is_train: bool) -> List[str]:
        """Problems of the IR-SDE specific options (``sde``, ``tile``, ``train.ema_update_every``)."""
        problems = []
        try:
            build_sde(opt.get('sde'), torch.device('cpu'))
        except ValueError as error:
            problems.append(str(error))
        if opt.get('tile'):
            problems.append('tile: IRSDEModel restores whole images (the sampler is not tiled); remove the tile block.')
        every = (opt.get('train') or {}).get('ema_update_every', 1)
        if is_train and (not isinstance(every, int) or every < 1):
            problems.append(f'train.ema_update_every: a positive integer, got {every!r}.')
        return problems

    def _check_contexts(self) -> None:
        net = self.get_bare_model(self.net_g)
        if self.degradation_encoder is None:
            for flag in ('use_image_context', 'use_degra_context'):
                if getattr(net, flag, False):
                    raise ValueError(f'network_g: {type(net).__name__} has {flag} on, which needs the DA-CLIP '
                                     'embeddings: set degradation_encoder (e.g. {type: DACLIP}) or '
                                     f'network_g.{flag}: false.')
        elif not callable(getattr(self.degradation_encoder, 'encode', None)):
            raise TypeError(f'degradation_encoder.type: {type(self.degradation_encoder).__name__} has no '
                            'encode(images) -> (content, degradation) method (use DACLIP).')

    def encode_degradation(self, images: torch.Tensor) -> DAClipContexts:
        """Both DA-CLIP embeddings of ``images`` (B, 3, H, W) in [0, 1], frozen; (None, None) without an encoder."""
        if self.degradation_encoder is None:
            return DAClipContexts(None, None)
        with torch.no_grad():
            content, degradation = self.degradation_encoder.encode(images)
        return DAClipContexts(text_context=degradation.float(), image_context=content.float())

    def predict_noise(self, net: nn.Module, xt: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """``net(xt, lq, steps, **contexts)`` for the current batch: predicted noise (B, 3, H, W)."""
        with autocast(self.amp, self.device):
            return net(xt, self.lq, steps, **self.degradation._asdict())

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer_g.zero_grad()
        expected, optimum = self.sde.training_targets(partial(self.predict_noise, self.training_forward_net),
                                                      self.gt, self.lq)
        self.backward_and_step({'l_pix': self.cri_pix(expected, optimum)})
        if self.ema_decay > 0 and current_iter % self.ema_update_every == 0:
            self.model_ema(decay=self.ema_decay)

    def test(self) -> None:
        """Restore ``self.lq`` into ``self.output`` by sampling with the EMA net if any (seeded per image)."""
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.get_bare_model(self.net_g)
        generator = None
        if self.sampling_seed is not None:
            generator = torch.Generator(device=self.lq.device).manual_seed(int(self.sampling_seed))
        was_training = net.training
        net.eval()
        with torch.no_grad():
            self.output = self.sde.sample(partial(self.predict_noise, net), self.lq, self.sampling_mode, generator)
        net.train(was_training)
