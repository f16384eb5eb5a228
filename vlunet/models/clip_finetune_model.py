"""Fine-tuning the degradation-aware CLIP adapters on degraded images and their degradation prompts (paper Sec. 3.2).

Option file (see ``options/train_clip_nhrbl.yml``)::

    model_type: CLIPFinetuneModel
    network_clip: {type: DegradationCLIP, backbone: ViT-B-32, pretrained: laion2b_s34b_b79k}
    degradation_prompts: [image with noise, ...]   # label k = task_index k of the dataset (same order)
    path:
      pretrain_network_clip: ~      # initial adapters (converted / clip_tuned.pth / .ckpt); ~ = random
    train:
      clip_opt: {type: MultiPositiveContrastiveLoss}   # or DegradationContrastiveLoss, PromptCrossEntropyLoss
      optim_clip: {type: Adam, lr: !!float 1e-5}       # Adam, AdamW or SGD
    val:
      val_freq: 500
      before_training: true         # also evaluate the initial adapters, labelled iteration 0
      metrics: {accuracy: {type: calculate_degradation_accuracy}}

Batches are dataset samples with ``lq`` (B, 3, H, W) in [0, 1], ``task_index`` (the label, an index
into ``degradation_prompts``; see :mod:`vlunet.guidance.degradation_classification` for the required
alignment, checked on every batch), and optionally ``text`` and ``task``.

Only the adapters (and the loss's temperature, if learnable) are optimised; the backbone is frozen,
runs under ``no_grad`` and has no optimiser state. There is no EMA copy of the adapters: a
``train.ema_decay`` > 0 is rejected before the run (:meth:`CLIPFinetuneModel.check_options`).
Checkpoints ``models/net_clip_<iter>.pth`` hold
``{'params': adapter weights, 'loss': loss state, 'scorer': the loss's prompt scorer}`` (the converter's
format plus how images are scored against prompts, so the file is directly
``path.pretrain_network_degradation_encoder`` of a restoration model); BasicSR's resume rewrites
``path.pretrain_network_clip`` to that file. Validation logs the zero-shot accuracy (the ``val.metrics``,
overall and per degradation) and writes ``visualization/<dataset>/similarity_<iter>.png`` and ``.csv``.
"""
import copy
import os.path as osp
from collections import OrderedDict
from typing import Dict, List

import torch
from torch import distributed, nn

from vlunet.convert.vlunet_checkpoint import load_official_file
from vlunet.guidance.degradation_classification import (
    SCORER_KEY,
    Classification,
    check_labels,
    classify,
    format_accuracy_table,
    parse_prompts,
    scorer_of_loss,
    write_heatmap,
)
from vlunet.losses.vlunet.degradation_contrastive_loss import DegradationContrastiveLoss
from vlunet.models.training_state import MULTIPLE_VALIDATION_WARNING, TrainingStateMixin, optimizer_problems
from vlunet.utils.atomic_write import atomic_torch_save
from vlunet.utils.console_log import drop_messages
from vlunet.utils.validation_record import ValidationRecord

from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info, master_only
from basicsr.utils.registry import MODEL_REGISTRY

NETWORK_KEY = 'network_clip'
WEIGHTS_KEY = 'pretrain_network_clip'
LOSS_KEY = 'clip_opt'
OPTIMIZER_KEY = 'optim_clip'


@MODEL_REGISTRY.register()
class CLIPFinetuneModel(TrainingStateMixin, BaseModel):
    """Trains DegradationCLIP's adapters with a degradation contrastive loss (see the module docstring)."""

    @staticmethod
    def check_options(opt: dict, is_train: bool) -> List[str]:
        """Problems of the options (:mod:`vlunet.options` reports them before a run, the model when built)."""
        train_opt = opt.get('train') or {}
        if not is_train:
            return []
        problems = optimizer_problems(f'train.{OPTIMIZER_KEY}', train_opt.get(OPTIMIZER_KEY))
        if train_opt.get('ema_decay', 0):
            problems.append(f'train.ema_decay: {train_opt["ema_decay"]} is not supported by CLIPFinetuneModel (its '
                            'adapters have no EMA copy); remove the key or set it to 0.')
        return problems

    def __init__(self, opt: dict):
        super().__init__(opt)
        problems = self.check_options(opt, opt['is_train'])
        if problems:
            raise ValueError('\n'.join(problems))
        if not isinstance(opt.get(NETWORK_KEY), dict):
            raise ValueError(f'{NETWORK_KEY}: missing; e.g. {{type: DegradationCLIP, backbone: ViT-B-32, '
                             'pretrained: laion2b_s34b_b79k}.')
        self.prompts = parse_prompts(opt.get('degradation_prompts'))
        self.net_clip = self.model_to_device(build_network(copy.deepcopy(opt[NETWORK_KEY])))
        self.clip = self.get_bare_model(self.net_clip)
        self.print_network(self.net_clip)  # the structure goes to the log file only (vlunet.compat)
        for method in ('encode_degradation', 'encode_text', 'adapter_state_dict', 'load_checkpoint'):
            if not callable(getattr(self.clip, method, None)):
                raise TypeError(f'{NETWORK_KEY}.type: {type(self.clip).__name__} has no {method}() '
                                '(use DegradationCLIP).')
        train_opt = opt.get('train') or {}
        self.cri_clip = build_loss(copy.deepcopy(train_opt[LOSS_KEY])) if LOSS_KEY in train_opt \
            else DegradationContrastiveLoss()
        self.cri_clip = self.cri_clip.to(self.device)
        scorer_of_loss(self.cri_clip)  # validation and inference score with it: an unknown loss fails here
        if opt['path'].get(WEIGHTS_KEY):
            self.load_weights(opt['path'][WEIGHTS_KEY])
        if getattr(self.clip, 'random_backbone', False):
            get_root_logger().warning(f'{NETWORK_KEY}: the CLIP backbone has random weights (pretrained: ~ and no '
                                      'backbone weights loaded).')
        self.validation_record = ValidationRecord(opt)
        drop_messages(get_root_logger(), MULTIPLE_VALIDATION_WARNING)  # this model validates several sets
        self.initial_state = self._trainable_state() if self._evaluates_before_training() else None
        self.evaluated_before_training = set()
        if self.is_train:
            self.init_training_settings()

    def _evaluates_before_training(self) -> bool:
        val = self.opt.get('val') or {}
        return self.is_train and not self.opt['path'].get('resume_state') and val.get('before_training', True)

    # ------------------------------------------------------------------ weights

    def _trainable_state(self) -> Dict[str, dict]:
        """Copies of what training changes: the adapter weights and the loss state (temperature)."""
        return {'params': {k: v.detach().cpu().clone() for k, v in self.clip.adapter_state_dict().items()},
                'loss': {k: v.detach().cpu().clone() for k, v in self.cri_clip.state_dict().items()}}

    def _load_trainable_state(self, state: Dict[str, dict]) -> None:
        self.clip.load_state_dict(state['params'], strict=False)
        self.cri_clip.load_state_dict(state['loss'])

    def load_weights(self, path: str) -> None:
        """Adapters (+ backbone if present) from ``path``; the loss state too when ``path`` is our checkpoint."""
        checkpoint = load_official_file(path)
        loaded = self.clip.load_checkpoint(checkpoint, path)
        loss_state = checkpoint.get('loss') if isinstance(checkpoint, dict) else None
        if loss_state is not None:
            self.cri_clip.load_state_dict(loss_state)
            loaded += ' and loss state'
        get_root_logger().info(f'Loaded the CLIP {loaded} from {path}.')

    # ------------------------------------------------------------------ training

    loss_example, optimizer_example = 'MultiPositiveContrastiveLoss', 'Adam'  # for the missing-section messages

    def optimizer_groups(self, weight_decay: float) -> List[dict]:
        """Parameter groups: the adapters (``weight_decay``), and the loss's temperature without decay."""
        groups = [{'params': [p for p in self.clip.parameters() if p.requires_grad], 'weight_decay': weight_decay}]
        loss_params = [p for p in self.cri_clip.parameters() if p.requires_grad]
        if loss_params:  # the temperature: no weight decay (as CLIP's logit scale)
            groups.append({'params': loss_params, 'weight_decay': 0.0})
        return groups

    def training_summary(self, trainable: int, frozen: int) -> str:
        """The line logged when training starts."""
        return (f'CLIP fine-tuning: {trainable:,d} trainable parameters (adapters + loss), {frozen:,d} frozen backbone '
                f'parameters; {len(self.prompts)} degradation prompts; loss {type(self.cri_clip).__name__}.')

    def init_training_settings(self) -> None:
        train_opt = self.opt['train']
        for key, example in ((LOSS_KEY, self.loss_example), (OPTIMIZER_KEY, self.optimizer_example)):
            if not isinstance(train_opt.get(key), dict):
                raise ValueError(f'train.{key}: missing; e.g. {{type: {example}}}.')
        self.net_clip.train()
        optim_opt = copy.deepcopy(train_opt[OPTIMIZER_KEY])
        optim_type, lr = optim_opt.pop('type'), optim_opt.pop('lr')
        groups = self.optimizer_groups(optim_opt.pop('weight_decay', 0.0))
        self.optimizer_clip = self.get_optimizer(optim_type, groups, lr, **optim_opt)
        self.optimizers.append(self.optimizer_clip)
        if 'scheduler' in train_opt:
            self.setup_schedulers()
        trainable = sum(p.numel() for group in groups for p in group['params'])
        frozen = sum(p.numel() for p in self.clip.parameters() if not p.requires_grad)
        get_root_logger().info(self.training_summary(trainable, frozen))

    def feed_data(self, data: dict) -> None:
        """Take ``lq`` and the labels ``task_index``; check them against the prompts."""
        self.lq = data['lq'].to(self.device)
        labels = torch.as_tensor(data['task_index']).long()
        check_labels(self.prompts, labels, data.get('text'), data.get('task'))
        self.labels = labels.to(self.device)

    def _average_loss_gradients(self) -> None:
        """DDP averages the adapters' gradients; the loss's temperature is outside DDP, so average it here."""
        _, world_size = get_dist_info()
        if world_size == 1:
            return
        for param in self.cri_clip.parameters():
            if param.grad is not None:
                distributed.all_reduce(param.grad)
                param.grad /= world_size

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer_clip.zero_grad()
        image_embeddings, prompt_embeddings = self.net_clip(self.lq, self.prompts)
        loss = self.cri_clip(image_embeddings, prompt_embeddings, self.labels)
        loss.backward()
        self._average_loss_gradients()
        self.optimizer_clip.step()
        with torch.no_grad():
            logits = self.cri_clip.prompt_logits(image_embeddings, prompt_embeddings)
            log = OrderedDict(l_clip=loss.detach(),
                              batch_accuracy=(logits.argmax(1) == self.labels).float().mean() * 100)
            if hasattr(self.cri_clip, 'temperature'):
                log['temperature'] = self.cri_clip.temperature.detach()
        self.log_dict = self.reduce_loss_dict(log)

    # ------------------------------------------------------------------ saving

    @master_only
    def save_network(self, net: nn.Module, net_label: str, current_iter: int, param_key: str = 'params') -> None:
        """``{'params': adapter weights, 'loss': loss state}`` (no backbone), written atomically."""
        label = 'latest' if current_iter == -1 else current_iter
        state = {k: {name: value.cpu() for name, value in v.items()} for k, v in self._trainable_state().items()}
        state[SCORER_KEY] = scorer_of_loss(self.cri_clip).to_dict()  # what Restorer detects with
        atomic_torch_save(state, osp.join(self.opt['path']['models'], f'{net_label}_{label}.pth'))

    def save(self, epoch: int, current_iter: int) -> None:
        self.save_network(self.net_clip, 'net_clip', current_iter)
        self.save_training_state(epoch, current_iter)

    # ------------------------------------------------------------------ validation

    def classify(self, dataloader) -> Classification:
        """Classify the images of this rank's share of ``dataloader`` and gather all ranks' results."""
        dataset = dataloader.dataset
        rank, world_size = get_dist_info()
        indices = range(rank, len(dataset), world_size)
        batches = (dataloader.collate_fn([dataset[i]]) for i in indices)
        was_training = self.clip.training
        self.clip.eval()
        result = classify(self.clip, scorer_of_loss(self.cri_clip), self.prompts, batches, self.device,
                          description=f'Classify {dataset.opt["name"]}', total=len(indices))
        self.clip.train(was_training)
        if world_size > 1:
            parts = [None] * world_size
            distributed.all_gather_object(parts, result)
            result = Classification(
                probabilities=torch.cat([torch.from_numpy(p.probabilities) for p in parts]).numpy(),
                labels=torch.cat([torch.from_numpy(p.labels) for p in parts]).numpy(),
                task_names={k: v for p in parts for k, v in p.task_names.items()})
        return result

    def validation(self, dataloader, current_iter, tb_logger, save_img: bool = False) -> None:
        """Accuracy metrics and the similarity heat-map; first, once per dataset, those of the initial adapters."""
        dataset_name = dataloader.dataset.opt['name']
        current_iter = self.validation_record.iteration(dataset_name, current_iter)
        if current_iter is None:
            return
        if self.initial_state is not None and dataset_name not in self.evaluated_before_training:
            self.evaluated_before_training.add(dataset_name)
            trained = self._trainable_state()
            self._load_trainable_state(self.initial_state)
            self._evaluate(dataloader, 0, tb_logger)
            self._load_trainable_state(trained)
        self._evaluate(dataloader, current_iter, tb_logger)

    def _evaluate(self, dataloader, current_iter, tb_logger) -> None:
        classification = self.classify(dataloader)
        dataset_name = dataloader.dataset.opt['name']
        metric_opts = (self.opt.get('val') or {}).get('metrics') or {}
        data = {'probabilities': classification.probabilities, 'labels': classification.labels}
        self.metric_results = {name: calculate_metric(data, metric_opt) for name, metric_opt in metric_opts.items()}
        if metric_opts and self.is_train:
            self._initialize_best_metric_results(dataset_name)
            for name, value in self.metric_results.items():
                self._update_best_metric_result(dataset_name, name, value, current_iter)
        self._report(classification, dataset_name, current_iter, tb_logger)

    @master_only
    def _report(self, classification: Classification, dataset_name: str, current_iter, tb_logger) -> None:
        lines = [f'Validation {dataset_name} (iteration {current_iter})']
        for name, value in self.metric_results.items():
            best = self.best_metric_results[dataset_name][name] if self.is_train else None
            best_text = f'\tBest: {best["val"]:.4f} @ {best["iter"]} iter' if best else ''
            lines.append(f'\t # {name}: {value:.4f}{best_text}')
        lines.append(format_accuracy_table(classification, self.prompts))
        folder = osp.join(self.opt['path']['visualization'], dataset_name)
        png_path = osp.join(folder, f'similarity_{current_iter}.png')
        write_heatmap(classification, self.prompts, f'{dataset_name}, iteration {current_iter}: mean softmax '
                      'similarity (rows: true degradation, columns: prompts)', png_path,
                      osp.join(folder, f'similarity_{current_iter}.csv'))
        lines.append(f'Similarity heat-map: {png_path} (and .csv)')
        get_root_logger().info('\n'.join(lines))
        if tb_logger and isinstance(current_iter, int):
            for name, value in self.metric_results.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{name}', value, current_iter)
            for name, _, accuracy in classification.accuracies(self.prompts):
                tb_logger.add_scalar(f'metrics/{dataset_name}/accuracy_per_degradation/{name}', accuracy, current_iter)
