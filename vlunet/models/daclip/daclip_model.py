"""Training DA-CLIP's controller (ICLR 2024, docs/daclip.md#training-the-controller) through BasicSR.

Option file (see ``options/daclip/train_daclip.yml``)::

    model_type: DACLIPModel
    network_clip: {type: DACLIP, backbone: ViT-B-32, pretrained: laion2b_s34b_b79k}
    degradation_prompts: [motion-blurry, hazy, ...]   # the degradation names; label k = task_index k
    path:
      pretrain_network_clip: ~      # a DACLIPModel checkpoint / official / converted file to start from
    train:
      clip_opt: {type: DACLIPLoss}
      optim_clip: {type: AdamW, lr: !!float 3e-5, weight_decay: 0.05, betas: [0.9, 0.98], eps: !!float 1e-6}
      scheduler: {type: WarmupCosineLR, warmup: 100}   # the original cosine_lr
      warmup_iter: -1
    amp: {enabled: true, dtype: fp16}   # optional: fp16 + GradScaler on CUDA, bf16 on CPU

Batches: ``lq`` (B, 3, H, W) in [0, 1] (the degraded image, DA-CLIP's CSV ``filepath``), ``task_index``
and ``text`` (the degradation name, checked against ``degradation_prompts``), and optionally
``caption`` (the clean-content caption; ``''`` = none: the content loss skips that sample). Without
any captions only the degradation loss trains: the controller learns, but the zero linears get no
gradient (the degradation embedding does not depend on them), so the content embedding stays the
frozen CLIP's.

One step (the original ``train_one_epoch``): content, degradation = ``DACLIP.encode(lq)`` (the
restoration pipeline's preprocessing: the random augmentation is the dataset's crops and flips, not
open_clip's ``RandomResizedCrop(0.9-1)``, a documented simplification), caption and name embeddings
from the frozen text tower, :class:`~vlunet.losses.daclip.daclip_loss.DACLIPLoss` (content + degradation,
weight 1 each, over the global batch in distributed runs), AdamW step, then ``logit_scale`` clamped
to [0, ln 100]. Optimiser groups as open_clip: tensors with ndim < 2 or names containing ``bn``,
``ln``, ``bias`` or ``logit_scale`` get no weight decay; the frozen CLIP has no optimiser state.

Checkpoints ``models/net_clip_<iter>.pth`` hold ``{'params': controller.*, control_linears.*,
logit_scale}`` (no backbone), loadable by ``DACLIP.load_weights`` and as a restoration model's
``path.pretrain_network_degradation_encoder``. Validation (inherited from
:class:`~vlunet.models.clip_finetune_model.CLIPFinetuneModel`): zero-shot classification of the
degradation embedding against the names (:meth:`DACLIPLoss.prompt_logits`), accuracy per degradation
and overall, similarity heat-map, before training (iteration 0) and at every validation.
"""
import math
from collections import OrderedDict
from typing import List, Tuple

import torch
from torch import nn

from vlunet.models.clip_finetune_model import CLIPFinetuneModel
from vlunet.utils.precision import autocast, make_grad_scaler, parse_amp_options
from vlunet.utils.safe_load import safe_torch_load

from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

MAX_LOGIT_SCALE = math.log(100)
NO_DECAY_NAME_PARTS = ('bn', 'ln', 'bias', 'logit_scale')


def split_weight_decay(named_parameters) -> Tuple[List[nn.Parameter], List[nn.Parameter]]:
    """(no-decay, decay) trainable parameters by open_clip's rule (see the module docstring)."""
    no_decay, decay = [], []
    for name, param in named_parameters:
        if param.requires_grad:
            excluded = param.ndim < 2 or any(part in name for part in NO_DECAY_NAME_PARTS)
            (no_decay if excluded else decay).append(param)
    return no_decay, decay


class WarmupCosineSchedule:
    """open_clip's ``cosine_lr`` as a LambdaLR factor of step k (0-based): (k+1)/warmup, then half a cosine to 0."""

    def __init__(self, warmup: int, total: int):
        if not 0 <= warmup < total:
            raise ValueError(f'train.scheduler.warmup: {warmup} must be in [0, total_iter={total}).')
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - self.warmup) / (self.total - self.warmup)))


class WarmupCosineLR(torch.optim.lr_scheduler.LambdaLR):
    """``train.scheduler: {type: WarmupCosineLR, warmup: 100}``: :class:`WarmupCosineSchedule` to ``total_iter``.

    BasicSR steps schedulers once per iteration from iteration 2 on, so iteration k uses step k - 1,
    as open_clip's ``scheduler(step)``; set ``train.warmup_iter: -1`` (the warm-up is this scheduler's).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int = 0, total_iter: int = 0):
        super().__init__(optimizer, WarmupCosineSchedule(int(warmup), int(total_iter)))


@MODEL_REGISTRY.register()
class DACLIPModel(CLIPFinetuneModel):
    """Trains DACLIP's controller, zero linears and temperature (see the module docstring)."""

    extra_schedulers = {'WarmupCosineLR': WarmupCosineLR}  # beyond BasicSR's (also known to vlunet.options)

    def __init__(self, opt: dict):
        self.amp = parse_amp_options(opt.get('amp'))
        self.grad_scaler = None
        self.name_embeddings = None
        super().__init__(opt)

    def load_weights(self, path: str) -> None:
        """Controller, zero linears, temperature (and the backbone, if the file has it) from ``path``."""
        loaded = self.clip.load_checkpoint(safe_torch_load(path, 'DA-CLIP checkpoint'), path)
        get_root_logger().info(f'Loaded the DA-CLIP {loaded} from {path}.')

    loss_example, optimizer_example = 'DACLIPLoss', 'AdamW'

    def optimizer_groups(self, weight_decay: float) -> list:
        """open_clip's groups: no weight decay on norms, biases, 1-d tensors and the temperature."""
        no_decay, decay = split_weight_decay(self.clip.named_parameters())
        return [{'params': no_decay, 'weight_decay': 0.0}, {'params': decay, 'weight_decay': weight_decay}]

    def training_summary(self, trainable: int, frozen: int) -> str:
        return (f'DA-CLIP training: {trainable:,d} trainable parameters (controller, zero linears, temperature), '
                f'{frozen:,d} frozen CLIP parameters; {len(self.prompts)} degradation names; '
                f'loss {type(self.cri_clip).__name__}.')

    def init_training_settings(self) -> None:
        self.grad_scaler = make_grad_scaler(self.amp, self.device)
        super().init_training_settings()

    def setup_schedulers(self) -> None:
        """BasicSR's schedulers, plus :attr:`extra_schedulers` (``total_iter`` defaults to ``train.total_iter``)."""
        scheduler_opt = dict(self.opt['train']['scheduler'])
        scheduler_class = self.extra_schedulers.get(scheduler_opt.pop('type', None))
        if scheduler_class is None:
            super().setup_schedulers()
            return
        scheduler_opt.setdefault('total_iter', self.opt['train']['total_iter'])
        self.schedulers.extend(scheduler_class(optimizer, **scheduler_opt) for optimizer in self.optimizers)

    def feed_data(self, data: dict) -> None:
        """``lq``, labels (checked against the names) and the optional ``caption`` list ('' = none)."""
        super().feed_data(data)
        captions = data.get('caption')
        self.captions = [str(c) for c in captions] if captions is not None else [''] * len(self.labels)

    def _text_embeddings(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(caption embeddings (B, D), name embeddings (B, D), has_caption (B,)) of the current batch."""
        if self.name_embeddings is None:  # the text tower is frozen: the names' embeddings never change
            self.name_embeddings = self.clip.encode_text(self.prompts)
        names = self.name_embeddings[self.labels]
        has_caption = torch.tensor([bool(c) for c in self.captions], device=self.device)
        captions = torch.zeros_like(names)
        if has_caption.any():
            captions[has_caption] = self.clip.encode_text([c for c in self.captions if c])
        return captions, names, has_caption

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        if self.grad_scaler is None:
            loss.backward()
            self.optimizer_clip.step()
            return
        self.grad_scaler.scale(loss).backward()
        self.grad_scaler.step(self.optimizer_clip)
        self.grad_scaler.update()

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer_clip.zero_grad()
        captions, names, has_caption = self._text_embeddings()
        with autocast(self.amp, self.device):
            content, degradation, scale = self.net_clip(self.lq)
        content_loss, degradation_loss = self.cri_clip(content, degradation, captions, names, scale, has_caption)
        self._backward_and_step(content_loss + degradation_loss)
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            predicted = self.cri_clip.prompt_logits(degradation.float(), self.name_embeddings).argmax(1)
            log = OrderedDict(l_content=content_loss.detach(), l_degradation=degradation_loss.detach(),
                              l_total=(content_loss + degradation_loss).detach(),
                              logit_scale_exp=self.clip.logit_scale.exp().detach(),
                              batch_accuracy=(predicted == self.labels).float().mean() * 100)
        self.log_dict = self.reduce_loss_dict(log)
