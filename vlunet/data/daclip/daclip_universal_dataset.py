"""DA-CLIP's 10-degradation "universal" set: paired LQ/GT folders per degradation, sampled as the original.

Layout (DA-CLIP's README; docs/daclip.md), for each degradation name of :data:`DACLIP_DEGRADATIONS`::

    <dataroot>/<split>/<degradation>/LQ/*.png
    <dataroot>/<split>/<degradation>/GT/*.png      # the i-th GT file pairs with the i-th LQ file (sorted order)

Options (``datasets.train`` / ``datasets.val`` with ``type: DAClipUniversalDataset``)::

    dataroot: datasets/universal
    split: train                # sub-folder; default train in the training phase, val otherwise
    degradations: ~             # a subset of the 10 names (default all); labels stay DA-CLIP's indices
    captions: ~                 # DA-CLIP's daclip_<split>.csv for every degradation (DA-CLIP encoder training)
    samples_per_epoch: ~        # default: the number of pairs (the original dataset length)
    gt_size: 256                # random crop (both images); val: the centre crop
    use_hflip: true             # horizontal flip, p = 0.5
    use_rot: true               # vertical flip and 90-degree rotation, p = 0.5 each (the original's augment)
    crop_border_base: ~         # optional crop to a multiple of N before cropping
    small_image: pad            # an image smaller than gt_size: reflect-pad, or error

**Sampling** (the original's ``MD`` mode, ``data/MD_dataset.py``): sample k has degradation
k mod n (n = the number of degradations) and, in training, an image of that degradation drawn
uniformly at random (Python's ``random``, seeded by BasicSR per worker), so the degradations are
balanced whatever their sizes and every image of the large sets (29,900 inpainting pairs) can be
drawn. Outside training (``phase: val``/``test``) sample k is image ⌊k / n⌋ mod size of its
degradation, centre-cropped and not flipped: every validation sees the same pairs.

Reading, cropping, flips and the sample dict are :class:`MixedDegradationDataset`'s (one task per
degradation, ``pair_by: sorted_order``). Sample: ``lq``, ``gt`` (float32 (3, gt_size, gt_size) RGB
in [0, 1]), ``lq_path``, ``gt_path``, ``task`` and ``text`` (the degradation name), ``task_index``
(its index in :data:`DACLIP_DEGRADATIONS`: DA-CLIP's label, also for a subset), and ``caption`` with
``captions``. A missing folder is an error naming the degradation and the expected path.
"""
import os.path as osp
import random
from collections.abc import Sequence
from typing import Dict, List, Tuple

from vlunet.data.mixed_degradation_dataset import MixedDegradationDataset

from basicsr.utils.registry import DATASET_REGISTRY

DACLIP_DEGRADATIONS = ('motion-blurry', 'hazy', 'jpeg-compressed', 'low-light', 'noisy', 'raindrop', 'rainy',
                       'shadowed', 'snowy', 'uncompleted')
"""DA-CLIP's degradation names in its code's order: the folder names, the CLIP texts and labels 0…9."""

PAPER_NAMES = dict(zip(DACLIP_DEGRADATIONS, ('Blurry', 'Hazy', 'JPEG', 'Low-light', 'Noisy', 'Raindrop', 'Rainy',
                                             'Shadowed', 'Snowy', 'Inpainting')))
"""The paper's name of each degradation (its tables' column headers)."""

PAIR_FOLDERS = ('LQ', 'GT')


def _default_split(opt: dict) -> str:
    return 'train' if opt.get('phase', 'train') == 'train' else 'val'


def selected_degradations(opt: dict) -> List[str]:
    """The ``degradations`` option (default all 10), checked: ``ValueError`` naming unknown or repeated names."""
    names = opt.get('degradations') or list(DACLIP_DEGRADATIONS)
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f'degradations: expected a list of DA-CLIP degradation names, got {names!r}.')
    unknown = [name for name in names if name not in DACLIP_DEGRADATIONS]
    if unknown:
        raise ValueError(f'degradations: {unknown} are not DA-CLIP degradations; use some of '
                         f'{", ".join(DACLIP_DEGRADATIONS)}.')
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f'degradations: {repeated} appear more than once.')
    return list(names)


def degradation_folders(opt: dict) -> Dict[str, Dict[str, str]]:
    """``{degradation: {'LQ': path, 'GT': path}}`` of the layout under ``dataroot``/``split``."""
    root = osp.join(osp.expanduser(str(opt['dataroot'])), str(opt.get('split') or _default_split(opt)))
    return {name: {kind: osp.join(root, name, kind) for kind in PAIR_FOLDERS} for name in selected_degradations(opt)}


def missing_folders(opt: dict) -> List[str]:
    """One line per degradation with a missing folder, naming the expected path (empty when all exist)."""
    lines = []
    for name, folders in degradation_folders(opt).items():
        missing = [kind for kind, path in folders.items() if not osp.isdir(path)]
        if len(missing) == len(PAIR_FOLDERS):
            lines.append(f'degradation {name!r}: folder {osp.dirname(folders["LQ"])!r} with LQ/ and GT/ does not exist')
        else:
            lines += [f'degradation {name!r}: {kind} folder {folders[kind]!r} does not exist' for kind in missing]
    return lines


def universal_tasks(opt: dict) -> List[dict]:
    """The :class:`MixedDegradationDataset` tasks of the layout: one per degradation, equal weights."""
    captions = {'captions': opt['captions']} if opt.get('captions') else {}
    return [{'name': name, 'text': name, 'weight': 1, **captions,
             'source': {'dataroot_lq': folders['LQ'], 'dataroot_gt': folders['GT'], 'pair_by': 'sorted_order'}}
            for name, folders in degradation_folders(opt).items()]


class BalancedDraws(Sequence):
    """The epoch as (task_index, sample_index) pairs: task k mod n, and a random (or fixed) image of it."""

    def __init__(self, sizes: List[int], length: int, random_images: bool):
        self.sizes, self.length, self.random_images = sizes, length, random_images

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tuple[int, int]:
        if not 0 <= index < self.length:
            raise IndexError(f'sample {index} of an epoch of {self.length}')
        task = index % len(self.sizes)
        if self.random_images:
            return task, random.randrange(self.sizes[task])
        return task, (index // len(self.sizes)) % self.sizes[task]


@DATASET_REGISTRY.register()
class DAClipUniversalDataset(MixedDegradationDataset):
    """DA-CLIP's universal training/validation pairs (options and sampling in the module docstring)."""

    required_options = ('dataroot',)
    known_options = ('split', 'degradations', 'captions', 'samples_per_epoch', 'gt_size', 'use_hflip', 'use_rot',
                     'crop_border_base', 'small_image', 'seed')

    @staticmethod
    def check_options(opt: dict) -> List[str]:
        """Bad ``degradations`` or ``split``, and missing degradation folders under an existing ``dataroot``."""
        if 'dataroot' not in opt:
            return []  # reported as a missing required option
        split = opt.get('split')
        if split is not None and (not isinstance(split, str) or not split):
            return [f'split: expected a folder name such as train or val, got {split!r}.']
        try:
            selected_degradations(opt)
        except ValueError as error:
            return [str(error)]
        if not osp.isdir(osp.expanduser(str(opt['dataroot']))):
            return []  # the option checker reports the missing dataroot itself
        return [f'dataroot: {line}' for line in missing_folders(opt)]

    def __init__(self, opt: dict):
        if not opt.get('dataroot'):
            raise ValueError('DAClipUniversalDataset: dataroot is missing (the folder holding <split>/<degradation>/'
                             '{LQ,GT}, e.g. datasets/universal).')
        missing = missing_folders(opt)
        if missing:
            raise ValueError('\n  '.join(
                [f'DAClipUniversalDataset {opt.get("name", "")}: the DA-CLIP layout '
                 '<dataroot>/<split>/<degradation>/{LQ,GT} is incomplete:', *missing,
                 'Put each degradation\'s pairs there (docs/daclip.md), or list only '
                 'the degradations you have under `degradations`.']))
        self.degradations = selected_degradations(opt)
        tasks_opt = {key: value for key, value in opt.items() if key != 'samples_per_epoch'}  # its length is set below
        super().__init__({**tasks_opt, 'tasks': universal_tasks(opt)})
        sizes = [len(source.items) for source in self.sources]
        self.composition = BalancedDraws(sizes, int(opt.get('samples_per_epoch') or sum(sizes)), self.training)
        self.labels = [DACLIP_DEGRADATIONS.index(name) for name in self.degradations]

    def __getitem__(self, index: int) -> dict:
        sample = super().__getitem__(index)
        sample['task_index'] = self.labels[sample['task_index']]
        return sample
