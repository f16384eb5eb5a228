"""Perceive-IR stage 1: learning the three quality prompts on (degraded, medium, gt) triplets (paper Eq. 1).

Option file (see ``options/perceiveir/train_perceiveir_prompts.yml``)::

    model_type: QualityPromptModel
    network_prompts: {type: QualityPrompts, backbone: ViT-B-32-quickgelu, pretrained: openai}
    path:
      pretrain_network_prompts: ~   # learned prompts to start from (a net_prompts_<iter>.pth); ~ = initialise
    train:
      logit_scale: 1                # Eq. 1 as printed (no temperature); the release multiplies by 100
      optim_prompts: {type: AdamW, lr: !!float 4e-5}
    val:
      metrics: {accuracy: {type: calculate_degradation_accuracy}}   # 3-way quality accuracy in %

Batches come from :class:`vlunet.data.perceiveir.perceiveir_triplet_dataset.QualityTripletDataset`: ``lq``,
``medium`` and ``gt`` (B, 3, H, W). The 3B images get the labels 0 (degraded: first word,
"terrible"), 1 (medium: "mediocre") and 2 (ground truth: "excellent"), and the loss is Eq. 1:
the cross-entropy of softmax(``logit_scale`` × cosine similarity to the three prompts), averaged
over the 3B images (Eq. 1's 1/3 per triplet, averaged over the batch).

Only the prompt vectors are optimised; the CLIP model is frozen and absent from checkpoints:
``models/net_prompts_<iter>.pth`` holds ``{'params': {'prompt_vectors': (3, N, width)}, 'words',
'num_vectors', 'backbone', 'logit_scale'}`` (BasicSR's resume rewrites
``path.pretrain_network_prompts`` to it). Validation classifies every image of every triplet
(argmax over the prompts), evaluates ``val.metrics`` on the (3N, 3) softmax probabilities and labels
(``calculate_degradation_accuracy``; ``label: k`` for one quality level), logs per-level accuracy
and writes ``visualization/<dataset>/quality_similarity_<iter>.png`` and ``.csv``.
"""
import copy
import math
import os.path as osp
from collections import OrderedDict
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from torch import distributed, nn

from vlunet.metrics.degradation_accuracy_metric import calculate_degradation_accuracy, similarity_matrix
from vlunet.models.training_state import MULTIPLE_VALIDATION_WARNING, TrainingStateMixin, optimizer_problems
from vlunet.utils.atomic_write import atomic_torch_save
from vlunet.utils.console_log import drop_messages
from vlunet.utils.safe_load import safe_torch_load
from vlunet.utils.similarity_heatmap import write_similarity_heatmap
from vlunet.utils.validation_record import ValidationRecord

from basicsr.archs import build_network
from basicsr.metrics import calculate_metric
from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info, master_only
from basicsr.utils.registry import MODEL_REGISTRY

NETWORK_KEY = 'network_prompts'
WEIGHTS_KEY = 'pretrain_network_prompts'
OPTIMIZER_KEY = 'optim_prompts'
IMAGE_KINDS = ('lq', 'medium', 'gt')
IMAGE_LABELS = ('degraded', 'medium', 'ground truth')


def _logit_scale_problem(value: object) -> List[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return [f'train.logit_scale: {value!r} must be a positive number (1: Eq. 1 as printed; 100: the release).']
    return []


def quality_labels(batch: int, device: torch.device) -> torch.Tensor:
    """(3B,) labels of the images ``cat([lq, medium, gt])``: B zeros, B ones, B twos."""
    return torch.arange(len(IMAGE_KINDS), device=device).repeat_interleave(batch)


@MODEL_REGISTRY.register()
class QualityPromptModel(TrainingStateMixin, BaseModel):
    """Trains :class:`vlunet.archs.perceiveir.perceiveir_prompts_arch.QualityPrompts` with Eq. 1 (module docstring)."""

    @staticmethod
    def check_options(opt: dict, is_train: bool) -> List[str]:
        """Problems of the options (:mod:`vlunet.options` reports them before a run, the model when built)."""
        if not isinstance(opt.get(NETWORK_KEY), dict):
            return [f'{NETWORK_KEY}: missing; e.g. {{type: QualityPrompts, backbone: ViT-B-32-quickgelu, '
                    'pretrained: openai}.']
        train_opt = opt.get('train') or {}
        if not is_train:
            return []
        problems = optimizer_problems(f'train.{OPTIMIZER_KEY}', train_opt.get(OPTIMIZER_KEY))
        problems += _logit_scale_problem(train_opt.get('logit_scale', 1.0))
        if train_opt.get('ema_decay', 0):
            problems.append(f'train.ema_decay: {train_opt["ema_decay"]} is not supported by QualityPromptModel; '
                            'remove the key or set it to 0.')
        return problems

    def __init__(self, opt: dict):
        super().__init__(opt)
        problems = self.check_options(opt, opt['is_train'])
        if problems:
            raise ValueError('\n'.join(problems))
        self.net_prompts = self.model_to_device(build_network(copy.deepcopy(opt[NETWORK_KEY])))
        self.prompts = self.get_bare_model(self.net_prompts)
        for method in ('encode_prompts', 'prompt_state_dict', 'load_prompt_state_dict'):
            if not callable(getattr(self.prompts, method, None)):
                raise TypeError(f'{NETWORK_KEY}.type: {type(self.prompts).__name__} has no {method}() '
                                '(use QualityPrompts).')
        if len(self.prompts.words) != len(IMAGE_KINDS):
            raise ValueError(f'{NETWORK_KEY}.words: QualityPromptModel trains one prompt per image kind (degraded, '
                             f'medium, ground truth), so 3 words worst first; got {self.prompts.words}.')
        self.print_network(self.net_prompts)
        self.logit_scale = float((opt.get('train') or {}).get('logit_scale', 1.0))
        if opt['path'].get(WEIGHTS_KEY):
            self.load_weights(opt['path'][WEIGHTS_KEY])
        if getattr(self.prompts, 'random_backbone', False):
            get_root_logger().warning(f'{NETWORK_KEY}: the CLIP model has random weights (pretrained: ~).')
        self.validation_record = ValidationRecord(opt)
        drop_messages(get_root_logger(), MULTIPLE_VALIDATION_WARNING)
        if self.is_train:
            self.init_training_settings()

    def load_weights(self, path: str) -> None:
        """Prompt vectors from a ``net_prompts_<iter>.pth`` file."""
        checkpoint = safe_torch_load(path, f'path.{WEIGHTS_KEY}')
        params = checkpoint.get('params') if isinstance(checkpoint, dict) else None
        self.prompts.load_prompt_state_dict(params, path)
        get_root_logger().info(f'Loaded the quality prompts from {path}.')

    # ------------------------------------------------------------------ training

    def init_training_settings(self) -> None:
        train_opt = self.opt['train']
        self.net_prompts.train()
        optim_opt = copy.deepcopy(train_opt[OPTIMIZER_KEY])
        optim_type, lr = optim_opt.pop('type'), optim_opt.pop('lr')
        params = [p for p in self.prompts.parameters() if p.requires_grad]
        self.optimizer_prompts = self.get_optimizer(optim_type, params, lr, **optim_opt)
        self.optimizers.append(self.optimizer_prompts)
        if 'scheduler' in train_opt:
            self.setup_schedulers()
        frozen = sum(p.numel() for p in self.prompts.parameters() if not p.requires_grad)
        get_root_logger().info(f'Quality prompts: {sum(p.numel() for p in params):,d} trainable parameters '
                               f'({self.prompts.words}, {self.prompts.num_vectors} vectors each), {frozen:,d} frozen '
                               f'CLIP parameters; logit scale {self.logit_scale:g}.')

    def feed_data(self, data: dict) -> None:
        """Stack ``lq``, ``medium`` and ``gt`` (B, 3, H, W each) into (3B, 3, H, W) with labels 0, 1, 2."""
        missing = [kind for kind in IMAGE_KINDS if kind not in data]
        if missing:
            raise ValueError(f'QualityPromptModel batches need {", ".join(IMAGE_KINDS)} (QualityTripletDataset); '
                             f'missing {", ".join(missing)}.')
        self.images = torch.cat([data[kind] for kind in IMAGE_KINDS]).to(self.device)
        self.labels = quality_labels(data['lq'].shape[0], self.device)

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer_prompts.zero_grad()
        logits = self.logit_scale * self.net_prompts(self.images)
        loss = F.cross_entropy(logits, self.labels)
        loss.backward()
        self.optimizer_prompts.step()
        accuracy = (logits.detach().argmax(1) == self.labels).float().mean() * 100
        self.log_dict = self.reduce_loss_dict(OrderedDict(l_prompt=loss.detach(), batch_accuracy=accuracy))

    # ------------------------------------------------------------------ saving

    @master_only
    def save_network(self, net: nn.Module, net_label: str, current_iter: int, param_key: str = 'params') -> None:
        """The prompt vectors and how they were made (no CLIP weights), written atomically."""
        label = 'latest' if current_iter == -1 else current_iter
        state = {'params': {k: v.cpu() for k, v in self.prompts.prompt_state_dict().items()},
                 'words': list(self.prompts.words), 'num_vectors': self.prompts.num_vectors,
                 'backbone': self.prompts.backbone_name, 'logit_scale': self.logit_scale}
        atomic_torch_save(state, osp.join(self.opt['path']['models'], f'{net_label}_{label}.pth'))

    def save(self, epoch: int, current_iter: int) -> None:
        self.save_network(self.net_prompts, 'net_prompts', current_iter)
        self.save_training_state(epoch, current_iter)

    # ------------------------------------------------------------------ validation

    def _probabilities(self, dataloader) -> tuple:
        """(3N, 3) softmax probabilities and (3N,) labels of this rank's share, gathered over ranks."""
        dataset = dataloader.dataset
        rank, world_size = get_dist_info()
        probabilities, labels = [], []
        was_training = self.prompts.training
        self.prompts.eval()
        with torch.no_grad():
            prompt_embeddings = self.prompts.encode_prompts()
            for index in range(rank, len(dataset), world_size):
                self.feed_data(dataloader.collate_fn([dataset[index]]))
                cosine = self.prompts.encode_image(self.images) @ prompt_embeddings.t()
                probabilities.append((self.logit_scale * cosine).softmax(dim=1).cpu())
                labels.append(self.labels.cpu())
        self.prompts.train(was_training)
        result = (torch.cat(probabilities).double(), torch.cat(labels)) if labels else (
            torch.zeros(0, len(IMAGE_KINDS), dtype=torch.float64), torch.zeros(0, dtype=torch.long))
        if world_size > 1:
            parts = [None] * world_size
            distributed.all_gather_object(parts, result)
            result = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        if not len(result[1]):
            raise ValueError(f'validation: the dataset {dataset.opt["name"]} is empty.')
        return result[0].numpy(), result[1].numpy()

    def validation(self, dataloader, current_iter, tb_logger, save_img: bool = False) -> None:
        """3-way quality accuracy (``val.metrics``), per-level accuracy and the similarity heat-map."""
        dataset_name = dataloader.dataset.opt['name']
        current_iter = self.validation_record.iteration(dataset_name, current_iter)
        if current_iter is None:
            return
        probabilities, labels = self._probabilities(dataloader)
        metric_opts = (self.opt.get('val') or {}).get('metrics') or {}
        data = {'probabilities': probabilities, 'labels': labels}
        self.metric_results = {name: calculate_metric(data, metric_opt) for name, metric_opt in metric_opts.items()}
        if metric_opts and self.is_train:
            self._initialize_best_metric_results(dataset_name)
            for name, value in self.metric_results.items():
                self._update_best_metric_result(dataset_name, name, value, current_iter)
        self._report(probabilities, labels, dataset_name, current_iter, tb_logger)

    @master_only
    def _report(self, probabilities: np.ndarray, labels: np.ndarray, dataset_name: str, current_iter,
                tb_logger) -> None:
        lines = [f'Validation {dataset_name} (iteration {current_iter})']
        for name, value in self.metric_results.items():
            best = self.best_metric_results[dataset_name][name] if self.is_train else None
            best_text = f'\tBest: {best["val"]:.4f} @ {best["iter"]} iter' if best else ''
            lines.append(f'\t # {name}: {value:.4f}{best_text}')
        per_level = {kind: calculate_degradation_accuracy(probabilities, labels, k)
                     for k, kind in enumerate(IMAGE_LABELS)}
        lines.append('\t Accuracy per image kind (%): ' + ', '.join(f'{k} {v:.2f}' for k, v in per_level.items()))
        folder = osp.join(self.opt['path']['visualization'], dataset_name)
        png_path = osp.join(folder, f'quality_similarity_{current_iter}.png')
        write_similarity_heatmap(similarity_matrix(probabilities, labels), list(IMAGE_LABELS), self.prompts.words,
                                 f'{dataset_name}, iteration {current_iter}: mean softmax similarity to the quality '
                                 'prompts', png_path, osp.join(folder, f'quality_similarity_{current_iter}.csv'))
        lines.append(f'Similarity heat-map: {png_path} (and .csv)')
        get_root_logger().info('\n'.join(lines))
        if tb_logger and isinstance(current_iter, int):
            for name, value in self.metric_results.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{name}', value, current_iter)
