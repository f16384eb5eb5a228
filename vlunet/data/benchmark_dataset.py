"""Paired benchmark test sets, one task per dataset: CBSD68 / Urban100 (+ fixed-seed noise), SOTS, Rain100L, GoPro, LOL.

Options (``datasets.val_*`` / ``datasets.test_*`` with ``type: BenchmarkPairedDataset``)::

    task: denoise_25            # task name (known names give the default text)
    task_index: 1               # index reported in the samples (default 0)
    text: image with many noise # CLIP degradation text (default for known names)
    dataroot_gt: datasets/CBSD68/original_png
    degradations: [{type: gaussian_noise, sigma: 25}]   # clean-only sets: degraded on the fly
    # or paired: dataroot_lq: datasets/SOTS/outdoor/hazy
    #            gt_name_from_lq: ['^(\\d+)_.*$', '\\1']  # 0001_0.8_0.2.jpg -> 0001.png
    crop_border_base: 16        # crop both images to a multiple of 16 like the official test; ~ = original size
    seed: 0                     # seed of the fixed degradations
    noise_quantize: uint8_truncate  # degraded-on-the-fly inputs stored as 8-bit like the official noisy
                                # test files (default); uint8_round, or none (keep float)
    io_backend: {type: disk}

Source keys are those of :mod:`vlunet.data.pair_sources`. **Fixed-seed degradations**: the generator
of each image is seeded from a SHA-256 of ``(seed, gt file name, degradation specs)`` (never Python's
salted ``hash``), so a clean image gets the same noisy version in every run, process and machine,
and different images (or σ) get different noise. ``crop_border_base`` is applied to the clean image
before degrading it, and to both images of a stored pair.

**Quantised like the official files**: the official noisy CBSD68/Urban100 test images are 8-bit
files, so by default (``noise_quantize: uint8_truncate``) an input degraded on the fly is clipped to
[0, 1], multiplied by 255 and truncated to an integer, as the official (unused) ``Degradation``
class and the published regeneration of the noisy sets do (``astype(uint8)``); ``uint8_round``
rounds instead and ``none`` keeps the float values (a different, slightly easier input: no
quantisation noise). The dataset's ``protocol`` string says how its inputs were made; the results
table prints it.

Sample: ``lq``, ``gt`` (float32 (3, H, W) RGB in [0, 1]), ``lq_path`` (the gt path for synthetic
sets), ``gt_path``, ``task``, ``task_index``, ``text``.
"""
import hashlib
import json
import os.path as osp
from typing import Optional

import numpy as np
from torch.utils import data

from vlunet.data.image_io import check_same_size, optional_crop_to_multiple, read_image
from vlunet.data.pair_sources import SOURCE_KEYS, resolve_source
from vlunet.data.synthetic_degradations import apply_degradations
from vlunet.data.task_catalog import KNOWN_TASKS, unknown_task_message

from basicsr.utils import FileClient, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY

NOISE_QUANTIZATION = ('uint8_truncate', 'uint8_round', 'none')


def quantize_to_uint8_levels(img: np.ndarray, mode: str) -> np.ndarray:
    """Float (H, W, C) image in [0, 1] -> float32 on the 8-bit levels k / 255 (``mode`` in NOISE_QUANTIZATION).

    ``uint8_truncate`` is ``np.clip(img, 0, 1) * 255`` cast to uint8 (floor), ``uint8_round`` rounds to the
    nearest level, ``none`` returns ``img`` unchanged. Values already on a level (k / 255 in float32) stay on it.
    """
    if mode == 'none':
        return img
    scaled = np.clip(img.astype(np.float64), 0, 1) * 255
    levels = np.round(scaled) if mode == 'uint8_round' else np.floor(scaled + 1e-4)  # 1e-4: float32 k/255 -> k
    return (levels / 255).astype(np.float32)


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from a SHA-256 of ``parts`` (JSON), identical across processes and machines."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode('utf-8')).digest()
    return int.from_bytes(digest[:8], 'little')


@DATASET_REGISTRY.register()
class BenchmarkPairedDataset(data.Dataset):
    """A paired test set of one task at full size (options in the module docstring)."""

    required_options = ('task', 'dataroot_gt')

    def __init__(self, opt: dict):
        super().__init__()
        self.opt = opt
        self.task = opt['task']
        if 'text' not in opt and self.task not in KNOWN_TASKS:
            raise ValueError(unknown_task_message(f'datasets.{opt.get("name", "test")}', self.task, 'text'))
        self.text = opt.get('text') or KNOWN_TASKS[self.task].text
        self.task_index = int(opt.get('task_index', 0))
        source = {key: opt[key] for key in SOURCE_KEYS if key in opt}
        self.source = resolve_source(f'datasets.{opt.get("name", "test")}', self.task, source)
        self.seed = int(opt.get('seed', 0))
        self.noise_quantize = opt.get('noise_quantize', 'uint8_truncate')
        if self.noise_quantize not in NOISE_QUANTIZATION:
            raise ValueError(f'datasets.{opt.get("name", "test")}.noise_quantize: expected one of '
                             f'{", ".join(NOISE_QUANTIZATION)}, got {self.noise_quantize!r}.')
        self.protocol = self._protocol()
        self.file_client = None

    def _protocol(self) -> Optional[str]:
        """How the inputs are made, for the results table; None for stored pairs (the files as they are)."""
        if self.source.degradations is None:
            return None
        specs = ', '.join(' '.join(f'{key} {value}' for key, value in spec.items())
                          for spec in self.source.degradations)
        storage = {'uint8_truncate': 'quantised to uint8 by truncation, like the official noisy test files',
                   'uint8_round': 'quantised to uint8 by rounding',
                   'none': 'kept in float (not quantised: unlike the official 8-bit noisy test files)'}
        return f'clean images degraded on the fly ({specs}; seed {self.seed}), {storage[self.noise_quantize]}'

    def __len__(self) -> int:
        return len(self.source.items)

    def _client(self) -> FileClient:
        if self.file_client is None:  # created lazily: LMDB handles must be opened in each worker
            backend = dict(self.source.io_backend)
            self.file_client = FileClient(backend.pop('type'), **backend)
        return self.file_client

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state['file_client'] = None  # LMDB environments cannot be pickled (spawned DataLoader workers)
        return state

    def __getitem__(self, index: int) -> dict:
        item = self.source.items[index]
        base = self.opt.get('crop_border_base')
        gt = read_image(self._client(), item['gt_path'], 'gt')
        if self.source.degradations is None:
            lq = read_image(self._client(), item['lq_path'], 'lq')
            check_same_size(lq, gt, item['lq_path'], item['gt_path'])
            lq, gt = optional_crop_to_multiple(lq, base), optional_crop_to_multiple(gt, base)
        else:
            gt = optional_crop_to_multiple(gt, base)
            rng = np.random.default_rng(stable_seed(self.seed, osp.basename(item['gt_path']), self.source.degradations))
            lq = quantize_to_uint8_levels(apply_degradations(gt, rng, self.source.degradations), self.noise_quantize)
        lq_tensor, gt_tensor = img2tensor([lq, gt], bgr2rgb=False, float32=True)
        return {'lq': lq_tensor, 'gt': gt_tensor, 'lq_path': item['lq_path'] or item['gt_path'],
                'gt_path': item['gt_path'], 'task': self.task, 'task_index': self.task_index, 'text': self.text}
