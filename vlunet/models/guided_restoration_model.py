"""CLIP-guided restoration model: BasicSR's SRModel with a frozen degradation encoder beside ``net_g``.

For every batch the model computes ``d = degradation_encoder.encode_degradation(lq)`` (B, D) under
``torch.no_grad()`` and restores with ``net_g(lq, degradation=d)``. Any ARCH_REGISTRY network whose
``forward(image, degradation=None)`` accepts that keyword can be guided this way (VLUNet feeds d to
its gradient-step modules; another network may, e.g., add a projection of d to its features). With
``degradation_encoder`` absent or null the model calls ``net_g(lq)``, so plain BasicSR networks work
and VLUNet runs its "w/o CLIP" setting.

A network may declare the guidance it takes in a ``guidance_inputs`` attribute, a tuple of
``'degradation'`` and ``'content'`` (e.g. NAFNetDACLIP; empty for its plain-NAFNet setting). It then gets
exactly those keywords, and needs an encoder that computes them: ``content=`` is DA-CLIP's content
embedding, from ``encode(images) -> (content, degradation)`` (DACLIP). Networks that declare nothing
get ``degradation=`` whenever there is an encoder, as above.

The encoder lives outside ``net_g``: it is never optimised, never in the EMA copy, never written to
checkpoints, and its weights (``path.pretrain_network_degradation_encoder``) are re-read from the
same file on resume (see :mod:`vlunet.guidance.degradation_encoder`).

Beyond SRModel:

- optimisers ``Adam``, ``AdamW``, ``SGD`` (``train.optim_g.type``); BasicSR's schedulers and linear
  warm-up (``train.warmup_iter``) unchanged;
- checkpoints and training states written atomically;
- optional mixed precision (top-level ``amp: {enabled, dtype}``: bf16 on CPU/CUDA, fp16 on CUDA
  with a GradScaler whose state is kept in the training state for resume) and ``compile: true`` (or
  ``{enabled, mode, backend, dynamic}``: ``torch.compile`` of the training forward), both off by default
  (:mod:`vlunet.utils.precision`);
- validation/testing with optional tiling (top-level ``tile: auto`` or ``{size, overlap, batch}``, see
  :mod:`vlunet.tiling.tiles`; d is computed once from the whole image and passed to every tile),
  BasicSR uint8 metrics and float-RGB metrics (:mod:`vlunet.metrics.restoration_metric`), dataset-level
  metrics such as FID (one value per set, :mod:`vlunet.metrics.dataset_level`), images
  sharded across ranks with summed metrics in distributed runs, and, when testing, a per-dataset
  results table ``results/<name>/results.md`` and ``results.csv`` refreshed after every dataset
  (logged once, after the last);
- several validation sets (BasicSR's "only supported by SRModel" warning is dropped), and BasicSR's
  final validation after the loop labelled ``total_iter`` and skipped when that iteration was already
  validated (:mod:`vlunet.utils.validation_record`).
"""
from collections import OrderedDict
from functools import partial
from os import path as osp
from typing import Dict, List, Optional, Tuple

import torch
from torch import distributed, nn
from tqdm import tqdm

from vlunet.guidance.degradation_encoder import (
    WEIGHTS_KEY,
    build_degradation_encoder,
    guidance_inputs,
    guidance_keywords,
)
from vlunet.metrics.dataset_level import DatasetMetric, build_dataset_metrics, dataset_metric_values
from vlunet.metrics.restoration_metric import metric_arrays, metric_input
from vlunet.models.checkpoint_options import OPTIONS_KEY, carried_options
from vlunet.models.training_state import MULTIPLE_VALIDATION_WARNING, TrainingStateMixin, optimizer_problems
from vlunet.tiling.memory_model import network_memory_key
from vlunet.tiling.tiles import TilePlan, parse_tile_options, restore, tile_problems
from vlunet.utils.atomic_write import atomic_imwrite, atomic_torch_save
from vlunet.utils.console_log import drop_messages
from vlunet.utils.precision import autocast, compile_network, make_grad_scaler, parse_amp_options, parse_compile_options
from vlunet.utils.results_table import format_markdown, write_results_table
from vlunet.utils.validation_record import ValidationRecord

from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, tensor2img
from basicsr.utils.dist_util import get_dist_info, master_only
from basicsr.utils.registry import METRIC_REGISTRY, MODEL_REGISTRY


@MODEL_REGISTRY.register()
class GuidedRestorationModel(TrainingStateMixin, SRModel):
    """SRModel whose ``net_g`` is guided by a frozen degradation encoder (see the module docstring)."""

    @staticmethod
    def check_options(opt: dict, is_train: bool) -> List[str]:
        """Problems of the options found before a run (:mod:`vlunet.options`): the optimizer of ``net_g``, ``tile``."""
        optimizer = optimizer_problems('train.optim_g', (opt.get('train') or {}).get('optim_g')) if is_train else []
        return optimizer + tile_problems(opt.get('tile'))

    def __init__(self, opt: dict):
        super().__init__(opt)
        self.amp = parse_amp_options(opt.get('amp'))
        self.grad_scaler = make_grad_scaler(self.amp, self.device) if self.is_train else None
        self.training_forward_net = compile_network(self.net_g, parse_compile_options(opt.get('compile')))
        self.degradation_encoder = build_degradation_encoder(
            opt.get('degradation_encoder'), opt['path'].get(WEIGHTS_KEY), self.device)
        self.degradation: Optional[torch.Tensor] = None
        self.content: Optional[torch.Tensor] = None  # DA-CLIP content embedding, for networks that take content=
        self.guidance_inputs = self._guidance_inputs()
        self.tile = parse_tile_options(opt.get('tile'))
        self.size_multiple = (opt['tile'] if isinstance(opt.get('tile'), dict) else {}).get('size_multiple') or getattr(
            self.get_bare_model(self.net_g), 'size_multiple', 1)
        self.logged_tiles: Optional[tuple] = None  # (tile size, batch) of the last plan logged
        self.dataset_results: Dict[str, Dict[str, float]] = OrderedDict()
        self.dataset_image_counts: Dict[str, int] = OrderedDict()
        self.dataset_protocols: Dict[str, Optional[str]] = {}  # how each test set's inputs were made
        self.validation_record = ValidationRecord(opt)
        self.tested_sets = 0
        drop_messages(get_root_logger(), MULTIPLE_VALIDATION_WARNING)  # this model validates several sets
        self._log_setup()

    @master_only
    def _log_setup(self) -> None:
        logger = get_root_logger()
        if self.degradation_encoder is None:
            logger.info('Degradation encoder: none (no CLIP guidance, net_g(lq)).')
        else:
            count = sum(p.numel() for p in self.degradation_encoder.parameters())
            logger.info(f'Degradation encoder: {type(self.degradation_encoder).__name__} with {count:,d} frozen '
                        'parameters (outside net_g: not optimised, not in EMA or checkpoints).')
            if getattr(self.degradation_encoder, 'random_backbone', False):
                logger.warning('degradation_encoder: the CLIP backbone has random weights (pretrained: ~ and no '
                               f'backbone weights in path.{WEIGHTS_KEY}).')
        logger.info(f'Inference: {self.tile or "whole images"}, padded to a multiple of {self.size_multiple}.')
        if self.amp.enabled:
            logger.info(f'Mixed precision: {self.amp.dtype} autocast' + (', GradScaler' if self.grad_scaler else ''))

    # ------------------------------------------------------------------ optimisation

    def setup_optimizers(self) -> None:
        """SRModel's, without its warning for each frozen parameter (VLUNet's unused official quirk)."""
        optim_opt = self.opt['train']['optim_g']
        params = [p for p in self.net_g.parameters() if p.requires_grad]
        self.optimizer_g = self.get_optimizer(optim_opt.pop('type'), params, **optim_opt)
        self.optimizers.append(self.optimizer_g)

    def _guidance_inputs(self) -> Tuple[str, ...]:
        """net_g's guidance keywords, checked against the encoder
        (:func:`~vlunet.guidance.degradation_encoder.guidance_inputs`)."""
        net = self.get_bare_model(self.net_g)
        declared = guidance_inputs(net, self.degradation_encoder)
        if not declared and self.degradation_encoder is not None:
            get_root_logger().warning(f'network_g: {type(net).__name__} takes no guidance, so degradation_encoder is '
                                      'not used.')
        return declared

    def encode_degradation(self, images: torch.Tensor) -> Optional[torch.Tensor]:
        """d (B, D) of ``images`` (B, 3, H, W) in [0, 1] from the frozen encoder, or None without one."""
        if self.degradation_encoder is None:
            return None
        with torch.no_grad():
            return self.degradation_encoder.encode_degradation(images)

    def encode_content_and_degradation(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(c, d), each (B, D), of ``images`` (B, 3, H, W) in [0, 1] from the frozen encoder's ``encode`` (DA-CLIP)."""
        with torch.no_grad():
            return tuple(self.degradation_encoder.encode(images))

    def guided_forward(self, net: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``net(images, **guidance)``: of d and c of the current batch, those net_g takes and the encoder gave."""
        available = {'degradation': self.degradation, 'content': self.content}
        return net(images, **guidance_keywords(available, self.guidance_inputs, images.shape[0]))

    def feed_data(self, data: dict) -> None:
        """Take ``lq`` (B, 3, H, W), optional ``gt``; compute the guidance once for the whole (untiled) batch."""
        super().feed_data(data)
        if 'content' in self.guidance_inputs:
            self.content, self.degradation = self.encode_content_and_degradation(self.lq)
        elif 'degradation' in self.guidance_inputs:
            self.degradation = self.encode_degradation(self.lq)

    def _losses(self) -> Dict[str, torch.Tensor]:
        losses = OrderedDict()
        if self.cri_pix:
            losses['l_pix'] = self.cri_pix(self.output, self.gt)
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            losses.update((name, value) for name, value in (('l_percep', l_percep), ('l_style', l_style))
                          if value is not None)
        return losses

    def optimize_parameters(self, current_iter: int) -> None:
        self.optimizer_g.zero_grad()
        with autocast(self.amp, self.device):
            self.output = self.guided_forward(self.training_forward_net, self.lq)
        self.output = self.output.float()  # losses in fp32 also under autocast
        self.backward_and_step(self._losses())
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def backward_and_step(self, losses: Dict[str, torch.Tensor]) -> None:
        """Backpropagate the sum of ``losses`` (through the GradScaler under fp16), step, and log them."""
        total = sum(losses.values())
        if self.grad_scaler is None:
            total.backward()
            self.optimizer_g.step()
        else:
            self.grad_scaler.scale(total).backward()
            self.grad_scaler.step(self.optimizer_g)
            self.grad_scaler.update()
        self.log_dict = self.reduce_loss_dict(losses)

    # ------------------------------------------------------------------ inference and validation

    def test(self) -> None:
        """Restore ``self.lq`` into ``self.output`` with the EMA net if any (tiled if ``tile`` is set)."""
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.get_bare_model(self.net_g)
        was_training = net.training
        net.eval()
        with torch.no_grad(), autocast(self.amp, self.device):
            self.output = restore(partial(self.guided_forward, net), self.lq, self.tile, self.size_multiple,
                                  memory_key=network_memory_key(net, self.device), on_plan=self._log_tile_plan).float()
        net.train(was_training)

    def _log_tile_plan(self, plan: TilePlan) -> None:
        """Log how images are restored (whole, tile size, tiles per forward) when it changes."""
        if (plan.size, plan.batch) != self.logged_tiles:
            self.logged_tiles = (plan.size, plan.batch)
            get_root_logger().info(f'Inference: {plan}.')

    def _metric_values(self, dataset_metrics: Optional[Dict[str, DatasetMetric]] = None) -> torch.Tensor:
        """Every ``val.metrics`` entry for the current output/gt pair, in option order (float64 tensor).

        A metric in ``dataset_metrics`` takes the pair into its statistics instead and gets 0 here.
        """
        arrays = metric_arrays(self.output.detach().cpu(), self.gt.detach().cpu())
        dataset_metrics, values = dataset_metrics or {}, []
        for name, metric_opt in self.opt['val']['metrics'].items():
            data = arrays[metric_input(METRIC_REGISTRY.get(metric_opt['type']))]
            if name in dataset_metrics:
                dataset_metrics[name].add(**data)
                values.append(0.0)
            else:
                values.append(calculate_metric(data, metric_opt))
        return torch.tensor(values, dtype=torch.float64)

    def _image_path(self, image_name: str, dataset_name: str, current_iter) -> str:
        folder = self.opt['path']['visualization']
        if self.opt['is_train']:
            return osp.join(folder, image_name, f'{image_name}_{current_iter}.png')
        suffix = self.opt['val'].get('suffix') or self.opt['name']
        return osp.join(folder, dataset_name, f'{image_name}_{suffix}.png')

    def validation(self, dataloader, current_iter, tb_logger, save_img: bool = False) -> None:
        """Evaluate one dataset; in distributed runs rank r takes images r, r + world, ... and sums are reduced."""
        dataset = dataloader.dataset
        dataset_name = dataset.opt['name']
        current_iter = self.validation_record.iteration(dataset_name, current_iter)
        if current_iter is None:
            return
        self.dataset_protocols[dataset_name] = getattr(dataset, 'protocol', None)
        metric_opts = self.opt['val'].get('metrics') or {}
        rank, world_size = get_dist_info()
        indices = range(rank, len(dataset), world_size)
        sums = torch.zeros(len(metric_opts) + 1, dtype=torch.float64)  # metric sums, then the image count
        dataset_metrics = build_dataset_metrics(metric_opts)  # FID & co.: statistics of the whole set
        show_progress = rank == 0 and self.opt['val'].get('pbar', False)
        for index in tqdm(indices, unit='image', desc=f'Test {dataset_name}', disable=not show_progress):
            data = dataloader.collate_fn([dataset[index]])
            self.feed_data(data)
            self.test()
            if save_img:
                image_name = osp.splitext(osp.basename(data['lq_path'][0]))[0]
                atomic_imwrite(tensor2img([self.output.detach().cpu()]),
                               self._image_path(image_name, dataset_name, current_iter))
            if metric_opts and 'gt' in data:
                sums += torch.cat([self._metric_values(dataset_metrics), torch.ones(1, dtype=torch.float64)])
            del self.lq, self.output
            self.__dict__.pop('gt', None)
        if world_size > 1:
            sums = sums.to(self.device)
            distributed.all_reduce(sums)
        if metric_opts:
            dataset_values = dataset_metric_values(dataset_metrics, self.device)  # collective: on every rank
            self._record_metrics(dataset_name, sums.cpu(), current_iter, tb_logger, dataset_values)
        if not self.is_train:
            self.tested_sets += 1
            if self.tested_sets >= len(self.opt.get('datasets') or {}) and self.dataset_results:
                self._log_results_table()

    def _record_metrics(self, dataset_name: str, sums: torch.Tensor, current_iter, tb_logger,
                        dataset_values: Optional[Dict[str, float]] = None) -> None:
        count = int(sums[-1])
        if count == 0:
            get_root_logger().warning(f'Validation {dataset_name}: no image with a ground truth, no metrics.')
            return
        self.metric_results = {name: float(total) / count for name, total in zip(self.opt['val']['metrics'], sums)}
        self.metric_results.update(dataset_values or {})
        if self.is_train:  # the best value and its iteration; a test has one value per set
            self._initialize_best_metric_results(dataset_name)
            for name, value in self.metric_results.items():
                self._update_best_metric_result(dataset_name, name, value, current_iter)
        self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        self.dataset_results[dataset_name] = dict(self.metric_results)
        self.dataset_image_counts[dataset_name] = count
        if not self.is_train:
            self._write_results_table()

    @master_only
    def _write_results_table(self) -> None:
        """Rewrite results.md and results.csv with every set tested so far (kept if the run stops early)."""
        write_results_table(self.dataset_results, self.dataset_image_counts, self.opt['path']['results_root'],
                            self.dataset_protocols)

    @master_only
    def _log_results_table(self) -> None:
        """Log the table of every test set once, after the last one."""
        folder = self.opt['path']['results_root']
        table = format_markdown(self.dataset_results, self.dataset_image_counts, self.dataset_protocols)
        get_root_logger().info(f'Results table ({osp.join(folder, "results.md")}, results.csv):\n{table}')

    # ------------------------------------------------------------------ saving

    @master_only
    def save_network(self, net, net_label: str, current_iter: int, param_key='params') -> None:
        """BasicSR's checkpoint layout ({param_key: state_dict}), written atomically; ``net_g`` checkpoints also carry
        the options that rebuild the network and its guidance (:mod:`vlunet.models.checkpoint_options`)."""
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        checkpoint = {
            key: {name[len('module.'):] if name.startswith('module.') else name: value.cpu()
                  for name, value in self.get_bare_model(net_).state_dict().items()}
            for net_, key in zip(nets, keys)
        }
        if net_label == 'net_g':
            checkpoint[OPTIONS_KEY] = carried_options(self.opt)
        label = 'latest' if current_iter == -1 else current_iter
        atomic_torch_save(checkpoint, osp.join(self.opt['path']['models'], f'{net_label}_{label}.pth'))


@MODEL_REGISTRY.register()
class VLUNetModel(GuidedRestorationModel):
    """``model_type: VLUNetModel``: the name VLU-Net's option files and earlier releases use for this model."""
