"""What every vlunet model trains with: optimisers by name and atomic resume states with the GradScaler's scale.

:class:`TrainingStateMixin` goes before BasicSR's model class in the bases (``class M(TrainingStateMixin,
SRModel)``), so its methods replace BasicSR's: :class:`~vlunet.models.guided_restoration_model.GuidedRestorationModel`
and the adapter-training models (:class:`~vlunet.models.clip_finetune_model.CLIPFinetuneModel`, DA-CLIP's controller,
Perceive-IR's :class:`~vlunet.models.perceiveir.perceiveir_prompt_model.QualityPromptModel`) share it.
"""
from os import path as osp
from typing import List, Optional

import torch

from vlunet.utils.atomic_write import atomic_torch_save

from basicsr.utils.dist_util import master_only

OPTIMIZERS = {'Adam': torch.optim.Adam, 'AdamW': torch.optim.AdamW, 'SGD': torch.optim.SGD}
MULTIPLE_VALIDATION_WARNING = 'Multiple validation datasets are *only* supported by SRModel.'  # BasicSR's


def optimizer_problems(key: str, section: object) -> List[str]:
    """Problems of an optimizer option (e.g. ``train.optim_g``): a mapping with a supported ``type`` and ``lr``."""
    if not isinstance(section, dict) or section.get('type') not in OPTIMIZERS:
        kind = section.get('type') if isinstance(section, dict) else section
        return [f'{key}.type: {kind!r}; supported optimizers: {", ".join(OPTIMIZERS)} (e.g. {{type: Adam, lr: 1e-4}}).']
    return [] if 'lr' in section else [f'{key}.lr: missing (the learning rate).']


class TrainingStateMixin:
    """``get_optimizer`` by name, and BasicSR's resume state written atomically with the GradScaler's state."""

    grad_scaler: Optional[torch.amp.GradScaler] = None  # set by models that train in fp16

    def get_optimizer(self, optim_type: str, params, lr: float, **kwargs) -> torch.optim.Optimizer:
        if optim_type not in OPTIMIZERS:
            raise ValueError(f'train: unknown optimizer type {optim_type!r}; supported: {", ".join(OPTIMIZERS)}.')
        return OPTIMIZERS[optim_type](params, lr=lr, **kwargs)

    @master_only
    def save_training_state(self, epoch: int, current_iter: int) -> None:
        """BasicSR's resume state (epoch, iter, optimizer and scheduler states, plus the GradScaler's), atomically."""
        if current_iter == -1:
            return
        state = {'epoch': epoch, 'iter': current_iter, 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers]}
        if self.grad_scaler is not None:
            state['grad_scaler'] = self.grad_scaler.state_dict()
        atomic_torch_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state: dict) -> None:
        """BasicSR's optimizer/scheduler restore, plus the GradScaler's loss scale when fp16 AMP is on."""
        super().resume_training(resume_state)
        if self.grad_scaler is not None and 'grad_scaler' in resume_state:
            self.grad_scaler.load_state_dict(resume_state['grad_scaler'])
