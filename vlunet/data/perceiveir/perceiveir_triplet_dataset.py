"""(degraded, medium, ground-truth) image triplets for Perceive-IR's stage-1 quality prompts.

Options (``type: QualityTripletDataset``), one of two sources::

    meta_info_file: datasets/perceiveir/medium/meta_info.txt   # written by scripts/perceiveir_make_medium.py
    dataroot: ~                 # folder the meta-info paths are relative to (default: the file's folder)
  or
    dataroot_lq: .../degraded   # folders matched by file name: every degraded file needs a
    dataroot_medium: .../medium #   medium and a ground-truth file of the same name
    dataroot_gt: .../gt
  and
    crop_size: 224              # synchronised crop of the three images (release: random 224 crop)
    use_hflip: true             # training only: the same horizontal flip of all three (p 0.5)
    small_image: pad            # image smaller than crop_size: pad (reflect) or error
    subset: ~                   # an integer n: only n evenly spaced triplets (e.g. a quick validation set)
    sampling: task_balanced     # training only: task_balanced (the release) or uniform over the triplets

**Meta-info format.** UTF-8 text, one triplet per line: ``degraded,medium,gt`` — three paths
relative to ``dataroot`` (or absolute), separated by commas (so paths must not contain commas).
Blank lines and lines starting with ``#`` are ignored. Example::

    # degraded,medium,gt
    derain/degraded/rain-001.png,derain/medium/rain-001.png,derain/gt/norain-001.png

The three images of a triplet must have the same size. In the training phase each sample is a
random ``crop_size`` crop at the same position in all three (plus the same flip); in ``val`` /
``test`` it is the centre crop, unflipped.

**Sampling.** A triplet's task is the first folder of its medium image's path relative to ``dataroot`` (the
meta-info file's folder; ``scripts/perceiveir_make_medium.py`` writes ``<task>/medium/...``), or relative to
``dataroot_medium`` for folders (files directly in it: one task). ``task_balanced`` (default, as the release):
training sample k is a random triplet of task k mod n (n tasks), so every task is seen equally often whatever its
size (uniform sampling of the 5-task set: dehaze 80 %, denoise 17 %, deblur 2.3 %, low-light 0.5 %, derain
0.2 %); the epoch keeps its length (the number of triplets). ``uniform``: every triplet once per epoch.
Validation and testing always go through the triplets in order.

Sample: ``lq`` (degraded), ``medium``, ``gt``: float32 (3, crop_size, crop_size) RGB in [0, 1];
``lq_path``, ``medium_path``, ``gt_path``. Images are read from disk (no LMDB).
"""
import os.path as osp
import random
from typing import Dict, List, Optional

import numpy as np
from torch.utils import data

from vlunet.data.daclip.daclip_universal_dataset import BalancedDraws
from vlunet.data.image_io import SMALL_IMAGE_MODES, centre_crop, check_same_size, fit_to_crop, read_image
from vlunet.data.pair_sources import IMAGE_EXTENSIONS

from basicsr.utils import FileClient, img2tensor, scandir
from basicsr.utils.registry import DATASET_REGISTRY

IMAGE_KINDS = ('lq', 'medium', 'gt')
TASK_BALANCED = 'task_balanced'
SAMPLING_MODES = (TASK_BALANCED, 'uniform')
FOLDER_KEYS = tuple(f'dataroot_{kind}' for kind in IMAGE_KINDS)


def read_triplet_meta_info(path: str, dataroot: Optional[str] = None) -> List[Dict[str, str]]:
    """Triplets ``{'lq_path', 'medium_path', 'gt_path'}`` of a meta-info file (see the module docstring)."""
    root = dataroot if dataroot is not None else osp.dirname(osp.abspath(path))
    triplets = []
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            parts = [p.strip() for p in line.split(',')]
            if len(parts) != 3 or not all(parts):
                raise ValueError(f'{path}:{number}: expected "degraded,medium,gt" (three paths), got {line!r}.')
            triplets.append({f'{kind}_path': osp.join(root, part) for kind, part in zip(IMAGE_KINDS, parts)})
    if not triplets:
        raise ValueError(f'meta_info_file: {path!r} lists no triplets.')
    return triplets


def format_triplet_meta_info(triplets: List[Dict[str, str]], dataroot: str) -> str:
    """Meta-info text of ``triplets``, paths relative to ``dataroot`` (read back by :func:`read_triplet_meta_info`)."""
    lines = ['# degraded,medium,gt (relative to this folder)']
    for triplet in triplets:
        paths = [osp.relpath(triplet[f'{kind}_path'], dataroot).replace(osp.sep, '/') for kind in IMAGE_KINDS]
        if any(',' in p for p in paths):
            raise ValueError(f'meta-info paths must not contain commas: {paths}.')
        lines.append(','.join(paths))
    return '\n'.join(lines) + '\n'


def triplets_from_folders(lq_folder: str, medium_folder: str, gt_folder: str) -> List[Dict[str, str]]:
    """Triplets of the files of ``lq_folder`` (recursive) with the same relative path in the other two."""
    names = sorted(p for p in scandir(lq_folder, recursive=True) if p.endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError(f'dataroot_lq: no images in {lq_folder!r}.')
    triplets = [{'lq_path': osp.join(lq_folder, n), 'medium_path': osp.join(medium_folder, n),
                 'gt_path': osp.join(gt_folder, n)} for n in names]
    missing = [t[key] for t in triplets for key in ('medium_path', 'gt_path') if not osp.isfile(t[key])]
    if missing:
        raise ValueError(f'{len(missing)} degraded images have no medium or ground-truth file of the same name, '
                         f'e.g. {missing[:3]}; give all three folders the same file names or use meta_info_file.')
    return triplets


def triplet_task(medium_path: str, root: str) -> str:
    """The task of a triplet: the first folder of its medium image's path under ``root`` ('' directly in it)."""
    parts = osp.relpath(medium_path, root).replace(osp.sep, '/').split('/')
    return parts[0] if len(parts) > 1 and parts[0] != '..' else ''


def missing_paths(opt: dict) -> List[str]:
    """Problems for a meta-info file or folder of the options that does not exist."""
    problems = []
    for key in ('meta_info_file', *FOLDER_KEYS):
        path = opt.get(key)
        if path and not (osp.isfile(path) if key == 'meta_info_file' else osp.isdir(path)):
            hint = ' (scripts/perceiveir_make_medium.py restore writes it)' if key == 'meta_info_file' else ''
            problems.append(f'{key}: {path!r} does not exist{hint}.')
    return problems


@DATASET_REGISTRY.register()
class QualityTripletDataset(data.Dataset):
    """(degraded, medium, gt) triplets for the quality prompts (see the module docstring)."""

    required_options = ('crop_size',)
    known_options = ('meta_info_file', 'dataroot', *FOLDER_KEYS, 'use_hflip', 'small_image', 'subset', 'sampling')

    @staticmethod
    def check_options(opt: dict) -> List[str]:
        """Problems of the options (:mod:`vlunet.options` reports them before a run)."""
        folders = [key for key in FOLDER_KEYS if opt.get(key)]
        problems = []
        if bool(opt.get('meta_info_file')) == bool(folders):
            problems.append(f'give meta_info_file or the three folders {", ".join(FOLDER_KEYS)}, not both or neither.')
        elif folders and len(folders) != 3:
            problems.append(f'{", ".join(sorted(set(FOLDER_KEYS) - set(folders)))}: '
                            'missing (all three folders needed).')
        size = opt.get('crop_size')
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            problems.append(f'crop_size: {size!r} must be a positive integer (release: 224).')
        subset = opt.get('subset')
        if subset is not None and (not isinstance(subset, int) or isinstance(subset, bool) or subset < 1):
            problems.append(f'subset: {subset!r} must be a positive integer or ~ (all triplets).')
        if opt.get('sampling', TASK_BALANCED) not in SAMPLING_MODES:
            problems.append(f'sampling: {opt["sampling"]!r}; use one of {", ".join(SAMPLING_MODES)}.')
        if opt.get('small_image', 'pad') not in SMALL_IMAGE_MODES:
            problems.append(f'small_image: {opt["small_image"]!r}; use one of {", ".join(SMALL_IMAGE_MODES)}.')
        return problems

    def __init__(self, opt: dict):
        super().__init__()
        problems = self.check_options(opt) + missing_paths(opt)
        if problems:
            raise ValueError('invalid QualityTripletDataset options:\n  ' + '\n  '.join(problems))
        self.opt = opt
        self.file_client = FileClient('disk')
        if opt.get('meta_info_file'):
            self.triplets = read_triplet_meta_info(opt['meta_info_file'], opt.get('dataroot'))
        else:
            self.triplets = triplets_from_folders(*(opt[key] for key in FOLDER_KEYS))
        if opt.get('subset') and opt['subset'] < len(self.triplets):
            positions = np.linspace(0, len(self.triplets) - 1, opt['subset']).round().astype(int)
            self.triplets = [self.triplets[i] for i in positions]
        self.is_train = opt.get('phase') == 'train'
        root = opt.get('dataroot_medium') or opt.get('dataroot') or osp.dirname(osp.abspath(opt.get('meta_info_file')
                                                                                              or '.'))
        members: Dict[str, List[int]] = {}
        for index, triplet in enumerate(self.triplets):
            members.setdefault(triplet_task(triplet['medium_path'], root), []).append(index)
        self.task_members = list(members.values())
        self.task_names = list(members)
        balanced = self.is_train and opt.get('sampling', TASK_BALANCED) == TASK_BALANCED
        self.draws = BalancedDraws([len(m) for m in self.task_members], len(self.triplets), True) if balanced else None

    def __len__(self) -> int:
        return len(self.triplets)

    def _crop(self, images: List[np.ndarray], paths: List[str]) -> List[np.ndarray]:
        """The same crop (and, in training, the same flip) of every image (H, W, 3) -> (size, size, 3)."""
        size, mode = self.opt['crop_size'], self.opt.get('small_image', 'pad')
        images = [fit_to_crop(img, size, mode, path) for img, path in zip(images, paths)]
        if not self.is_train:
            return [centre_crop(img, size) for img in images]
        height, width = images[0].shape[:2]
        top, left = random.randint(0, height - size), random.randint(0, width - size)
        images = [img[top:top + size, left:left + size] for img in images]
        if self.opt.get('use_hflip', True) and random.random() < 0.5:
            images = [np.ascontiguousarray(img[:, ::-1]) for img in images]
        return images

    def __getitem__(self, index: int) -> dict:
        if self.draws is not None:
            task, member = self.draws[index]
            index = self.task_members[task][member]
        triplet = self.triplets[index]
        paths = [triplet[f'{kind}_path'] for kind in IMAGE_KINDS]
        images = [read_image(self.file_client, path) for path in paths]
        for image, path in zip(images[1:], paths[1:]):
            check_same_size(images[0], image, paths[0], path)
        tensors = img2tensor(self._crop(images, paths), bgr2rgb=False, float32=True)
        return {**dict(zip(IMAGE_KINDS, tensors)), **triplet}
