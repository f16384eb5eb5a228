"""Training set mixing several restoration tasks (NHR / NHRBL or user-defined), each with its own source.

Options (``datasets.train`` with ``type: MixedDegradationDataset``)::

    tasks:                      # one entry per task; task_index = position in this list
      - name: denoise_25        # task name (known names: vlunet.data.task_catalog.KNOWN_TASKS)
        text: image with many noise   # CLIP degradation text (default for known names)
        source: {dataroot_gt: datasets/BSD400}   # see vlunet.data.pair_sources (paired/meta/LMDB/synthetic)
        repeat: 3               # each image appears `repeat` times per epoch (official: noise ×3, rain ×120)
      - name: derain
        source: {dataroot_lq: .../rainy, dataroot_gt: .../norain}
        repeat: 120
        captions: datasets/universal/daclip_train.csv   # optional: clean-content captions (DA-CLIP training)
    gt_size: 128                # random crop size (both images)
    use_hflip: true             # BasicSR augment: horizontal flip
    use_rot: true               # BasicSR augment: vertical flip + 90° rotation
    use_vflip: false            # true (with use_rot: false): vertical flip without rotation (flips only)
    noise_quantize: uint8_truncate  # inputs degraded on the fly stored on 8-bit levels by truncation, as the official
                                #   training and the noisy test files; uint8_round, or none (keep float)
    official_augment: false     # true: the official augmentation instead (one of 7 non-identity flips/rotations)
    crop_border_base: 16        # crop to a multiple of 16 before the random crop (official crop_img); ~ = off
    small_image: pad            # image smaller than gt_size: pad (reflect) or error
    seed: 0                     # seed of the epoch composition and of fixed degradations
    fixed_degradations: false   # true: each image always gets the same synthetic degradation

**Epoch composition.** With ``repeat`` (int ≥ 1, default 1) the epoch is the concatenation of each
task's samples × repeat (the official ``PromptTrainDataset``). Alternatively every task gives a
``weight`` (> 0) instead: the epoch has ``samples_per_epoch`` items (default: the number of distinct
samples over all tasks), task *i* gets ``round(weight_i / Σ weight · samples_per_epoch)`` of them
(largest-remainder rounding, exact total), cycling through a seeded permutation of its samples.
Mixing ``repeat`` and ``weight`` is an error. Shuffling is the DataLoader's (``use_shuffle``).

**Synthetic-degradation randomness.** With ``fixed_degradations: false`` the generator of each
sample is seeded from ``(seed, index, random.getrandbits(32))``: Python's ``random`` is seeded by
BasicSR (``manual_seed``, + worker id in workers), so a run is reproducible for the same
``manual_seed`` and ``num_workers``, and an image gets a new degradation every time it is drawn.
With ``true`` the seed is ``(seed, task_index, sample_index)``: the same degradation in every epoch
(like the official pre-computed noisy files).

**Validation and test.** Outside the training phase (``phase: val`` / ``test``, which BasicSR sets
for ``datasets.val*`` / ``test*``) every sample is the *centre* ``gt_size`` crop, without flips or
rotations, with fixed degradations: each validation sees exactly the same images.

Sample: ``lq``, ``gt`` (float32 (3, gt_size, gt_size) RGB in [0, 1]), ``lq_path`` (the gt path for
synthetic samples), ``gt_path``, ``task``, ``task_index``, ``text``; when any task gives ``captions``
(:mod:`vlunet.data.daclip.daclip_captions`), also ``caption`` (``''`` where the file has none).
"""
import random
from typing import Dict, List, Optional, Tuple

import numpy as np
from torch.utils import data

from vlunet.data.benchmark_dataset import NOISE_QUANTIZATION, quantize_to_uint8_levels
from vlunet.data.daclip.daclip_captions import read_captions
from vlunet.data.image_io import (
    SMALL_IMAGE_MODES,
    centre_crop,
    check_same_size,
    fit_to_crop,
    optional_crop_to_multiple,
    read_image,
)
from vlunet.data.pair_sources import PairSource, resolve_source, source_problems
from vlunet.data.synthetic_degradations import apply_degradations
from vlunet.data.task_catalog import KNOWN_TASKS, unknown_task_message

from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, get_root_logger, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY

TASK_KEYS = ('name', 'text', 'source', 'repeat', 'weight', 'captions')


def _check_task(key: str, task: object) -> List[str]:
    if not isinstance(task, dict):
        return [f'{key}: expected a mapping with name, source and repeat or weight.']
    errors = [f'{key}.{k}: unknown task key; valid keys: {", ".join(TASK_KEYS)}.' for k in task if k not in TASK_KEYS]
    errors += [f'{key}.{k}: missing.' for k in ('name', 'source') if k not in task]
    if not task.get('text') and task.get('name') not in KNOWN_TASKS:
        errors.append(unknown_task_message(key, task.get('name'), 'text'))
    if 'repeat' in task and 'weight' in task:
        errors.append(f'{key}: give repeat or weight, not both.')
    repeat = task.get('repeat', 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        errors.append(f'{key}.repeat: {repeat!r} must be an integer >= 1.')
    weight = task.get('weight', 1)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
        errors.append(f'{key}.weight: {weight!r} must be a number > 0.')
    return errors


def task_problems(tasks: object) -> List[str]:
    """Every problem of the ``tasks`` option (each naming ``tasks[i].key``); empty when valid."""
    if not isinstance(tasks, list) or not tasks:
        return ['tasks: expected a non-empty list of tasks (name, text, source, repeat or weight).']
    errors = [e for i, task in enumerate(tasks) for e in _check_task(f'tasks[{i}]', task)]
    weighted = sum(isinstance(t, dict) and 'weight' in t for t in tasks)
    if 0 < weighted < len(tasks):
        errors.append('tasks: either every task gives a weight or none does (then repeat, default 1, applies).')
    names = [t.get('name') for t in tasks if isinstance(t, dict)]
    repeated = sorted({str(n) for n in names if names.count(n) > 1})
    return errors + [f'tasks: task name {n!r} appears more than once.' for n in repeated]


def check_tasks(tasks: object) -> None:
    """Raise ``ValueError`` listing every problem of the ``tasks`` option (each naming ``tasks[i].key``)."""
    errors = task_problems(tasks)
    if errors:
        raise ValueError('\n  '.join(['invalid MixedDegradationDataset options:'] + errors))


def official_augment(imgs: List[np.ndarray]) -> List[np.ndarray]:
    """The official ``random_augmentation``: one mode of 1..7 (never the identity) applied to every HWC image.

    Modes: 1 flip up-down; 2 rot90; 3 flip∘rot90; 4 rot180; 5 flip∘rot180; 6 rot270; 7 flip∘rot270.
    """
    mode = random.randint(1, 7)
    rotated = [np.rot90(img, mode // 2) for img in imgs]
    return [np.ascontiguousarray(np.flipud(img) if mode % 2 else img) for img in rotated]


def split_by_weight(weights: List[float], total: int) -> List[int]:
    """Largest-remainder split of ``total`` items in proportion to ``weights`` (sums exactly to ``total``)."""
    shares = np.asarray(weights, dtype=np.float64) / sum(weights) * total
    counts = np.floor(shares).astype(int)
    order = np.argsort(-(shares - counts), kind='stable')
    counts[order[:total - counts.sum()]] += 1
    return counts.tolist()


def epoch_composition(tasks: List[dict], sizes: List[int], samples_per_epoch: int, seed: int) -> List[Tuple[int, int]]:
    """The epoch as a flat list of ``(task_index, sample_index)`` (see the module docstring)."""
    if 'weight' not in tasks[0]:
        return [(t, s) for t, task in enumerate(tasks) for _ in range(task.get('repeat', 1)) for s in range(sizes[t])]
    counts = split_by_weight([task['weight'] for task in tasks], samples_per_epoch)
    rng = np.random.default_rng(seed)
    composition = []
    for t, (size, count) in enumerate(zip(sizes, counts)):
        order = rng.permutation(size)
        composition += [(t, int(order[k % size])) for k in range(count)]
    return composition


@DATASET_REGISTRY.register()
class MixedDegradationDataset(data.Dataset):
    """A mixture of restoration tasks for all-in-one training (options in the module docstring)."""

    required_options = ('tasks',)
    known_options = ('gt_size', 'use_hflip', 'use_rot', 'use_vflip', 'official_augment', 'crop_border_base',
                     'small_image', 'seed', 'fixed_degradations', 'samples_per_epoch', 'io_backend', 'noise_quantize')

    @staticmethod
    def check_options(opt: dict) -> List[str]:
        """Problems of ``tasks`` found without reading images (run by :mod:`vlunet.options` before a run)."""
        errors = task_problems(opt.get('tasks'))
        if opt.get('noise_quantize', NOISE_QUANTIZATION[0]) not in NOISE_QUANTIZATION:
            errors.append(f'noise_quantize: {opt["noise_quantize"]!r}; use one of {", ".join(NOISE_QUANTIZATION)}.')
        if opt.get('use_vflip') and opt.get('use_rot', True):
            errors.append('use_vflip: use_rot already flips vertically (with 90° rotations); set use_rot: false.')
        return errors or [e for i, task in enumerate(opt['tasks'])
                          for e in source_problems(f'tasks[{i}].source', task['name'], task['source'])]

    def __init__(self, opt: dict):
        super().__init__()
        self.opt = opt
        check_tasks(opt.get('tasks'))
        self.tasks: List[dict] = opt['tasks']
        self.texts = [task.get('text') or KNOWN_TASKS[task['name']].text for task in self.tasks]
        self.sources: List[PairSource] = [
            resolve_source(f'tasks[{i}].source', task['name'], task['source']) for i, task in enumerate(self.tasks)]
        self.captions = [read_captions(task['captions']) if task.get('captions') else None for task in self.tasks]
        self.gt_size = int(opt.get('gt_size', 128))
        self.small_image = opt.get('small_image', 'pad')
        if self.small_image not in SMALL_IMAGE_MODES:
            raise ValueError(f'small_image: {self.small_image!r}; use one of {", ".join(SMALL_IMAGE_MODES)}.')
        self.seed = int(opt.get('seed', 0))
        sizes = [len(source.items) for source in self.sources]
        samples_per_epoch = int(opt.get('samples_per_epoch', sum(sizes)))
        self.composition = epoch_composition(self.tasks, sizes, samples_per_epoch, self.seed)
        self.file_clients: Dict[int, FileClient] = {}
        self.training = opt.get('phase', 'train') == 'train'
        get_root_logger().info(self._describe_sources())

    def _describe_sources(self) -> str:
        """Which images each task uses: paired degraded images, or clean images with synthetic degradations."""
        lines = [f'{type(self).__name__} {self.opt.get("name", "")}: {len(self.tasks)} tasks']
        for i, (task, source) in enumerate(zip(self.tasks, self.sources)):
            if source.degradations is None:
                origin = f'degraded images from dataroot_lq {task["source"]["dataroot_lq"]}'
            else:
                kinds = ', '.join(str(spec.get('type')) for spec in source.degradations)
                origin = (f'synthetic degradations ({kinds}; no dataroot_lq) on clean images from '
                          f'{task["source"]["dataroot_gt"]}')
            lines.append(f'  tasks[{i}] {task["name"]}: {len(source.items)} images, {origin}')
        return '\n'.join(lines)

    def __len__(self) -> int:
        return len(self.composition)

    def task_counts(self) -> Dict[str, int]:
        """Samples per task name in one epoch."""
        counts = {task['name']: 0 for task in self.tasks}
        for task_index, _ in self.composition:
            counts[self.tasks[task_index]['name']] += 1
        return counts

    def _file_client(self, task_index: int) -> FileClient:
        if task_index not in self.file_clients:  # created lazily: LMDB handles must be opened in each worker
            backend = dict(self.sources[task_index].io_backend)
            self.file_clients[task_index] = FileClient(backend.pop('type'), **backend)
        return self.file_clients[task_index]

    def _prepare(self, img: np.ndarray, path: str) -> np.ndarray:
        img = optional_crop_to_multiple(img, self.opt.get('crop_border_base'))
        return fit_to_crop(img, self.gt_size, self.small_image, path)

    def _crop(self, gt: np.ndarray, lq: np.ndarray, gt_path: str) -> Tuple[np.ndarray, np.ndarray]:
        if self.training:
            return paired_random_crop(gt, lq, self.gt_size, 1, gt_path)
        return centre_crop(gt, self.gt_size), centre_crop(lq, self.gt_size)

    def _augment(self, imgs: List[np.ndarray]) -> List[np.ndarray]:
        if not self.training:
            return imgs
        if self.opt.get('official_augment', False):
            return official_augment(imgs)
        augmented = augment(imgs, self.opt.get('use_hflip', True), self.opt.get('use_rot', True))
        augmented = augmented if isinstance(augmented, list) else [augmented]  # BasicSR unwraps a single image
        if self.opt.get('use_vflip', False) and random.random() < 0.5:
            augmented = [np.ascontiguousarray(img[::-1]) for img in augmented]
        return augmented

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state['file_clients'] = {}  # LMDB environments cannot be pickled (spawned DataLoader workers)
        return state

    def _degradation_rng(self, index: int, task_index: int, sample_index: int) -> np.random.Generator:
        if self.opt.get('fixed_degradations', False) or not self.training:
            return np.random.default_rng([self.seed, task_index, sample_index])
        return np.random.default_rng([self.seed, index, random.getrandbits(32)])

    def _read_sample(self, task_index: int, sample_index: int) -> Tuple[dict, np.ndarray, Optional[np.ndarray]]:
        """(item, gt, lq) of a sample as read; lq is None for a synthetic task, a real pair's sizes are checked."""
        source = self.sources[task_index]
        item = source.items[sample_index]
        client = self._file_client(task_index)
        gt = read_image(client, item['gt_path'], 'gt')
        if source.degradations is not None:
            return item, gt, None
        lq = read_image(client, item['lq_path'], 'lq')
        check_same_size(lq, gt, item['lq_path'], item['gt_path'])
        return item, gt, lq

    def __getitem__(self, index: int) -> dict:
        task_index, sample_index = self.composition[index]
        source = self.sources[task_index]
        item, gt, lq = self._read_sample(task_index, sample_index)
        if lq is not None:
            gt, lq = self._crop(self._prepare(gt, item['gt_path']), self._prepare(lq, item['lq_path']), item['gt_path'])
            gt, lq = self._augment([gt, lq])
        else:
            gt = self._prepare(gt, item['gt_path'])
            gt, _ = self._crop(gt, gt, item['gt_path'])
            [gt] = self._augment([gt])
            lq = quantize_to_uint8_levels(apply_degradations(
                gt, self._degradation_rng(index, task_index, sample_index), source.degradations),
                self.opt.get('noise_quantize', NOISE_QUANTIZATION[0]))  # as the test sets' inputs (8-bit files)
        lq_tensor, gt_tensor = img2tensor([lq, gt], bgr2rgb=False, float32=True)
        sample = {'lq': lq_tensor, 'gt': gt_tensor, 'lq_path': item['lq_path'] or item['gt_path'],
                  'gt_path': item['gt_path'], 'task': self.tasks[task_index]['name'], 'task_index': task_index,
                  'text': self.texts[task_index]}
        if any(captions is not None for captions in self.captions):
            captions = self.captions[task_index]
            sample['caption'] = captions.caption(sample['lq_path']) if captions is not None else ''
        return sample
