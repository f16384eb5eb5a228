"""Perceive-IR stage 2: the restoration network trained with L_rec + λ1·L_cl + λ2·L_clip + λ3·L_dpl (Eq. 13).

Option file (see ``options/perceiveir/train_perceiveir_3task.yml``)::

    model_type: PerceiveIRModel
    network_g: {type: PerceiveIR, ...}          # CFE + frozen DINO-v2 inside; forward(lq) -> restored
    datasets: {train: {type: PerceiveIRRestorationDataset, proxies: [...], ...}}
    train:
      pixel_opt: {type: L1Loss, loss_weight: 1.0}                                   # L_rec
      contrastive_opt: {type: DegradationPatchContrastiveLoss, loss_weight: 0.1, temperature: 0.1}  # L_cl
      clip_opt: {type: QualityPromptLoss, loss_weight: 0.05, prompts_path: .../net_prompts_latest.pth, ...}  # L_clip
      dpl_opt: {type: DifficultyAdaptivePerceptualLoss, loss_weight: 0.1, ...}     # L_dpl
      difficulty_probe: {every: 34310, per_task: 24, gamma: 0.25}                   # L_dpl re-weighting (Eq. 10)

Each of ``contrastive_opt``, ``clip_opt`` and ``dpl_opt`` is optional (leave it out or set it to ~:
that loss is off, e.g. the paper's Table VII ablations); the weights λ are the losses' ``loss_weight``.
Logged: ``l_pix`` (L_rec), ``l_cl``, ``l_clip``, ``l_dpl`` (each already weighted).

A training step, with ``lq``/``gt`` (B, 3, H, W) from :class:`PerceiveIRRestorationDataset`:

- ``restored, z = net_g(lq, return_degradation=True)`` (z: the CFE representation (B, 128));
- L_cl: anchor z, positive ``z⁺ = degradation_representation(lq_positive)`` (another crop of the
  same degraded image, with gradient), labels ``degradation_label``; negatives are the anchors of
  other degradation types in the global batch (the loss gathers them across ranks);
- L_clip on ``restored``;
- L_dpl: anchor ``restored``, positive ``gt``, negatives ``[lq, proxy_1, ..., proxy_P]`` (B, 1 + P, 3, H, W)
  with weights ``[1, O(task, proxy_1), ...]`` and mask ``[True, proxy_mask]``: the degraded input is the easy
  negative (the loss weights it by its ``easy_weight``, λ = 2), the proxies the hard / very-hard ones, re-weighted
  at every epoch start (``train.difficulty_probe``: ``every`` iterations, required with L_dpl)
  by :class:`vlunet.models.perceiveir.perceiveir_difficulty_probe.DifficultyProbe` (its docstring says what an
  epoch and the average PSNR are).

``z⁺`` is computed by the bare network outside DDP's forward. This is safe under DDP: the CFE
parameters are also used by the DDP forward (the anchor), so autograd sums both paths into one
gradient before DDP's reducer hook fires.

Everything else is :class:`GuidedRestorationModel`'s: optimisers, EMA, AMP, validation and tiling, results
tables, atomic checkpoints and resume. The frozen parts never reach a checkpoint: DINO-v2 is
excluded from ``PerceiveIR``'s state dict, and CLIP (L_clip) and VGG-16 (L_dpl) live in the losses,
which no model saves. Only parameters with ``requires_grad`` are optimised (no per-parameter
"will not be optimized" warnings for the frozen DINO). ``degradation_encoder`` is not used:
Perceive-IR guides itself.
"""
import copy
import os.path as osp
from collections import OrderedDict
from functools import partial
from typing import Dict, List

import torch
from torch import nn

from vlunet.losses.perceiveir.perceiveir_perceptual_loss import difficulty_weights
from vlunet.models.guided_restoration_model import GuidedRestorationModel
from vlunet.models.perceiveir.perceiveir_difficulty_probe import DifficultyProbe, probe_problems
from vlunet.utils.precision import autocast

from basicsr.data import build_dataset
from basicsr.losses import build_loss
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import MODEL_REGISTRY

DATASET_TYPE = 'PerceiveIRRestorationDataset'
PROBE_KEY = 'difficulty_probe'
PROBE_PHASE = 'probe'  # the training set outside the training phase: centre crops, fixed degradations
DEFAULT_PROBE = {'per_task': 24, 'gamma': 0.25}  # release: 24 patches per task; paper: γ 0.25
# Option key -> logged name; every one optional.
AUXILIARY_LOSSES = OrderedDict([('contrastive_opt', 'l_cl'), ('clip_opt', 'l_clip'), ('dpl_opt', 'l_dpl')])
NEEDS_DATASET = ('contrastive_opt', 'dpl_opt')  # second crops / proxies come from PerceiveIRRestorationDataset
BATCH_KEYS = ('lq_positive', 'degradation_label', 'proxies', 'proxy_mask', 'task_index')


def _auxiliary_problems(opt: dict) -> List[str]:
    train = opt.get('train') or {}
    dataset_type = ((opt.get('datasets') or {}).get('train') or {}).get('type')
    problems = [f'train.{key}: needs datasets.train.type {DATASET_TYPE} (second crops, degradation labels and '
                f'proxies), got {dataset_type!r}.' for key in NEEDS_DATASET if train.get(key)
                and dataset_type != DATASET_TYPE]
    prompts = (train.get('clip_opt') or {}).get('prompts_path')
    if isinstance(prompts, str) and not osp.isfile(osp.expanduser(prompts)):
        problems.append(f'train.clip_opt.prompts_path: {prompts!r} does not exist. It is the output of stage 1: '
                        'python vlunet/train.py -opt options/perceiveir/train_perceiveir_prompts.yml '
                        '(models/net_prompts_*.pth).')
    probe = train.get(PROBE_KEY)
    problems += probe_problems(probe)
    if probe and not train.get('dpl_opt'):
        problems.append(f'train.{PROBE_KEY}: only used by L_dpl; set train.dpl_opt or remove it.')
    if train.get('dpl_opt') and (probe is None or isinstance(probe, dict) and 'every' not in probe):
        problems.append(f'train.{PROBE_KEY}.every: missing; L_dpl re-weights its proxies every epoch: give the '
                        'iterations per epoch (BasicSR logs them), e.g. {every: 34310, per_task: 24, gamma: 0.25}.')
    return problems


@MODEL_REGISTRY.register()
class PerceiveIRModel(GuidedRestorationModel):
    """GuidedRestorationModel with Perceive-IR's four training losses (see the module docstring)."""

    @staticmethod
    def check_options(opt: dict, is_train: bool) -> List[str]:
        """Problems of the options (:mod:`vlunet.options` reports them before a run, the model when built)."""
        problems = GuidedRestorationModel.check_options(opt, is_train)
        if opt.get('degradation_encoder'):
            problems.append('degradation_encoder: PerceiveIRModel is guided by its own CFE and DINO-v2; remove the key '
                            '(or set it to ~).')
        return problems + (_auxiliary_problems(opt) if is_train else [])

    def __init__(self, opt: dict):
        problems = self.check_options(opt, opt['is_train'])
        if problems:
            raise ValueError('\n'.join(problems))
        super().__init__(opt)

    @master_only
    def _log_setup(self) -> None:
        super()._log_setup()
        net = self.get_bare_model(self.net_g)
        get_root_logger().info(f'{type(net).__name__}: {sum(p.numel() for p in net.parameters()):,d} trainable '
                               'parameters (its frozen DINO-v2 is not among them, nor in checkpoints).')
        if getattr(net, 'random_semantic_encoder', False):
            get_root_logger().warning('network_g: the DINO-v2 semantic encoder has random weights '
                                      '(semantic_pretrained: ~); set lvd142m or a local file outside tests.')

    # ------------------------------------------------------------------ training settings

    def init_training_settings(self) -> None:
        """SRModel's (L_rec, EMA, optimiser, scheduler), then L_cl, L_clip, L_dpl and the difficulty probe."""
        super().init_training_settings()
        train_opt = self.opt['train']
        self.auxiliary_losses: Dict[str, nn.Module] = OrderedDict(
            (name, build_loss(copy.deepcopy(train_opt[key])).to(self.device))
            for key, name in AUXILIARY_LOSSES.items() if train_opt.get(key))
        self.difficulty_probe = self._build_probe() if 'l_dpl' in self.auxiliary_losses else None
        get_root_logger().info('Perceive-IR losses: l_pix (L_rec)' + ''.join(
            f', {name} ({type(loss).__name__}, weight {getattr(loss, "loss_weight", "?")})'
            for name, loss in self.auxiliary_losses.items()))

    def _build_probe(self) -> DifficultyProbe:
        probe_opt = {**DEFAULT_PROBE, **(self.opt['train'].get(PROBE_KEY) or {})}
        dataset = build_dataset({**self.opt['datasets']['train'], 'phase': PROBE_PHASE})
        return DifficultyProbe(dataset, probe_opt['every'], probe_opt['per_task'],
                               partial(difficulty_weights, gamma=probe_opt['gamma']))

    # ------------------------------------------------------------------ a training step

    def feed_data(self, data: dict) -> None:
        """GuidedRestorationModel's ``lq``/``gt``, plus the stage-2 keys of a training batch when present."""
        super().feed_data(data)
        self.batch = {key: data[key].to(self.device) for key in BATCH_KEYS if key in data}

    def _batch(self, key: str) -> torch.Tensor:
        if key not in self.batch:
            raise ValueError(f'PerceiveIRModel: the training batch has no {key!r}; use datasets.train.type '
                             f'{DATASET_TYPE} with the contrastive or perceptual loss.')
        return self.batch[key]

    def _update_difficulty(self, current_iter: int) -> None:
        net = self.get_bare_model(self.net_g)
        was_training = net.training
        net.eval()
        with torch.no_grad(), autocast(self.amp, self.device):
            text = self.difficulty_probe.update(net, self.device)
        net.train(was_training)
        count = len(self.difficulty_probe.samples)
        get_root_logger().info(f'L_dpl difficulty probe before iteration {current_iter} (mean PSNR on {count} fixed '
                               f'training patches; proxy -> weight):\n{text}')

    def optimize_parameters(self, current_iter: int) -> None:
        if self.difficulty_probe is not None and self.difficulty_probe.due(current_iter):
            self._update_difficulty(current_iter)
        self.optimizer_g.zero_grad()
        with autocast(self.amp, self.device):
            if 'l_cl' in self.auxiliary_losses:
                self.output, self.degradation_anchor = self.training_forward_net(self.lq, return_degradation=True)
                self.degradation_positive = self.get_bare_model(self.net_g).degradation_representation(
                    self._batch('lq_positive'))
            else:
                self.output = self.training_forward_net(self.lq)
        self.output = self.output.float()  # losses in fp32 also under autocast
        self.backward_and_step(self._losses())
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def _dpl_negatives(self) -> tuple:
        """(negatives (B, 1 + P, 3, H, W), weights (B, 1 + P), mask (B, 1 + P)): the degraded input, then the proxies.

        Column 0 of the weights is a placeholder: the loss weights the degraded input by its ``easy_weight`` (λ).
        """
        proxies, proxy_mask = self._batch('proxies'), self._batch('proxy_mask')
        ones = torch.ones(self.lq.shape[0], 1, device=self.device)
        weights = self.difficulty_probe.weights.to(self.device)[self._batch('task_index')]
        return (torch.cat([self.lq[:, None], proxies], dim=1), torch.cat([ones, weights], dim=1),
                torch.cat([ones.bool(), proxy_mask], dim=1))

    def _losses(self) -> Dict[str, torch.Tensor]:
        losses = super()._losses()
        auxiliary = self.auxiliary_losses
        if 'l_cl' in auxiliary:
            losses['l_cl'] = auxiliary['l_cl'](self.degradation_anchor.float(), self.degradation_positive.float(),
                                               self._batch('degradation_label'))
        if 'l_clip' in auxiliary:
            losses['l_clip'] = auxiliary['l_clip'](self.output)
        if 'l_dpl' in auxiliary:
            losses['l_dpl'] = auxiliary['l_dpl'](self.output, self.gt, *self._dpl_negatives())
        return losses
