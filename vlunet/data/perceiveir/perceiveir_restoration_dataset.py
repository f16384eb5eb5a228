"""Perceive-IR stage-2 training set: mixed-degradation samples with a second crop, a degradation label and proxies.

Everything :class:`vlunet.data.mixed_degradation_dataset.MixedDegradationDataset` takes (``tasks``,
``gt_size``, flips, ``crop_border_base``, ...), plus::

    proxies:                    # L_dpl's hard negatives: restorations of the training images by other models
      - name: medium            # shown in logs and in the difficulty weights
        dataroot: datasets/perceiveir_medium/{task}/medium   # {task} = the task name (one folder per task)
        tasks: [derain, dehaze] # optional: only these tasks (default: every task)
      - name: promptir
        dataroot: datasets/perceiveir_proxies/promptir      # no {task}: one folder for every task
    degradation_types: {}       # task name -> degradation type for L_cl (default: the name up to its first '_')

**Proxy matching.** A proxy folder is searched recursively; a proxy belongs to a training sample
when its file *stem* equals the stem of the sample's degraded image (of its clean image for tasks
with synthetic degradations): ``rain-001.png`` ↔ ``.../rain-001.png`` (any image extension). A stem
found twice in one folder is an error; so is a proxy that matches no training image at all (a wrong
``dataroot``). With ``{task}`` each task has its own folder (a missing one: no proxies of that name
for the task), which avoids clashes when two tasks use the same file names. Samples without a proxy
simply have fewer negatives: ``proxy_mask`` says which are real. Layouts that match directly:
``scripts/perceiveir_make_medium.py restore`` (``<out>/<task>/medium/...``) and
``scripts/inference.py`` (``<output>/<relative path>/<stem>.png``).

A proxy has the size of its degraded image, or the size after ``crop_border_base`` (restorers that
crop to a multiple of 16, e.g. PromptIR's test code); anything else is an error naming the file. It
is prepared, cropped, flipped and rotated exactly like the ground truth. For synthetic tasks the
proxy restored *another* realisation of the degradation (the stored one), which still makes it a
restoration of the same content, i.e. a valid negative.

**Second crop (L_cl positive).** ``lq_positive`` is another random ``gt_size`` crop of the same
degraded image, with its own flips/rotation. Synthetic degradations are applied to the whole
(prepared) clean image before cropping, so both crops share one realisation (the release's
``shared_noise_positive``). Outside training both crops are the centre crop.

**Degradation labels.** ``degradation_label`` indexes :attr:`degradation_names`, the degradation
types in order of first appearance: by default the task name up to its first ``_``, so
``denoise_15/25/50`` are one type "denoise" and are never each other's negatives (the release has one
denoising task with random σ); ``degradation_types`` overrides it per task.

Sample: MixedDegradationDataset's (``lq``, ``gt``, ``lq_path``, ``gt_path``, ``task``, ``task_index``,
``text``) plus ``lq_positive`` (3, gt_size, gt_size), ``degradation_label`` (int), ``proxies``
(P, 3, gt_size, gt_size; zeros where missing) and ``proxy_mask`` (P,) bool, P = len(``proxies``).
"""
import os.path as osp
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from vlunet.data.image_io import ImageReadError, centre_crop, check_same_size, fit_to_crop, read_image
from vlunet.data.mixed_degradation_dataset import MixedDegradationDataset
from vlunet.data.pair_sources import IMAGE_EXTENSIONS
from vlunet.data.synthetic_degradations import apply_degradations

from basicsr.data.transforms import paired_random_crop
from basicsr.utils import FileClient, get_root_logger, img2tensor, scandir
from basicsr.utils.registry import DATASET_REGISTRY

PROXY_KEYS = ('name', 'dataroot', 'tasks')
TASK_PLACEHOLDER = '{task}'


def _proxy_entry_problems(key: str, proxy: object, task_names: List[str]) -> List[str]:
    if not isinstance(proxy, dict):
        return [f'{key}: expected a mapping with name and dataroot (and optionally tasks).']
    problems = [f'{key}.{k}: unknown proxy key; valid keys: {", ".join(PROXY_KEYS)}.' for k in proxy
                if k not in PROXY_KEYS]
    problems += [f'{key}.{k}: missing.' for k in ('name', 'dataroot') if not isinstance(proxy.get(k), str)]
    tasks = proxy.get('tasks')
    if tasks is not None and (not isinstance(tasks, list) or not set(tasks) <= set(task_names)):
        problems.append(f'{key}.tasks: {tasks!r} must be a list of training task names ({", ".join(task_names)}).')
    return problems


def _proxy_folders(proxy: dict, task_names: List[str]) -> Dict[str, str]:
    """Task name -> proxy folder (``{task}`` replaced) for the tasks the proxy serves."""
    served = proxy.get('tasks') or task_names
    return {name: osp.expanduser(proxy['dataroot'].replace(TASK_PLACEHOLDER, name)) for name in served}


def proxy_problems(proxies: object, task_names: List[str]) -> List[str]:
    """Problems of the ``proxies`` option, folders included (each naming ``proxies[i].key``)."""
    if proxies is None:
        return []
    if not isinstance(proxies, list):
        return ['proxies: expected a list of {name, dataroot, tasks} mappings (or leave it out: no proxies).']
    problems = [p for i, proxy in enumerate(proxies) for p in _proxy_entry_problems(f'proxies[{i}]', proxy, task_names)]
    if problems:
        return problems
    names = [proxy['name'] for proxy in proxies]
    problems += [f'proxies: the name {n!r} appears more than once.' for n in sorted(set(names)) if names.count(n) > 1]
    for i, proxy in enumerate(proxies):
        if not any(osp.isdir(folder) for folder in _proxy_folders(proxy, task_names).values()):
            where = ' for any task' if TASK_PLACEHOLDER in proxy['dataroot'] else ''
            problems.append(f'proxies[{i}].dataroot: {proxy["dataroot"]!r} does not exist{where}. Write the proxy '
                            'restorations there (scripts/inference.py, scripts/perceiveir_make_medium.py) or fix '
                            'the path.')
    return problems


def degradation_type_problems(types: object, task_names: List[str]) -> List[str]:
    """Problems of the ``degradation_types`` option (task name -> type name)."""
    if types is None:
        return []
    if not isinstance(types, dict) or not all(isinstance(v, str) and v for v in types.values()):
        return ['degradation_types: expected a mapping of task names to degradation type names.']
    return [f'degradation_types.{name}: not a training task ({", ".join(task_names)}).' for name in types
            if name not in task_names]


def degradation_type(task_name: str, types: Optional[dict]) -> str:
    """The L_cl degradation type of a task: ``types[task_name]`` or the name up to its first ``_``."""
    return (types or {}).get(task_name) or task_name.split('_')[0]


def index_by_stem(folder: str) -> Dict[str, str]:
    """Stem -> path of every image below ``folder`` (recursive); a repeated stem is an error."""
    index: Dict[str, str] = {}
    for relative in sorted(scandir(folder, suffix=IMAGE_EXTENSIONS, recursive=True)):
        stem = osp.splitext(osp.basename(relative))[0]
        if stem in index:
            raise ValueError(f'proxy folder {folder!r}: the name {stem!r} appears twice ({index[stem]}, '
                             f'{osp.join(folder, relative)}); proxies are matched by file name, so it must be unique '
                             f'(use one folder per task with {TASK_PLACEHOLDER} in dataroot).')
        index[stem] = osp.join(folder, relative)
    return index


def sample_stem(item: dict) -> str:
    """The name a sample's proxies are matched by: the degraded image's stem (the clean one's if synthetic)."""
    return osp.splitext(osp.basename(item['lq_path'] or item['gt_path']))[0]


@DATASET_REGISTRY.register()
class PerceiveIRRestorationDataset(MixedDegradationDataset):
    """Mixed-degradation samples for Perceive-IR stage 2 (see the module docstring)."""

    known_options = MixedDegradationDataset.known_options + ('proxies', 'degradation_types')

    @staticmethod
    def check_options(opt: dict) -> List[str]:
        """MixedDegradationDataset's problems, then those of ``proxies`` and ``degradation_types``."""
        problems = MixedDegradationDataset.check_options(opt)
        if problems:
            return problems
        task_names = [task['name'] for task in opt['tasks']]
        return proxy_problems(opt.get('proxies'), task_names) + degradation_type_problems(
            opt.get('degradation_types'), task_names)

    def __init__(self, opt: dict):
        super().__init__(opt)
        task_names = [task['name'] for task in self.tasks]
        problems = self.check_options(opt)
        if problems:
            raise ValueError('invalid PerceiveIRRestorationDataset options:\n  ' + '\n  '.join(problems))
        types = [degradation_type(name, opt.get('degradation_types')) for name in task_names]
        self.degradation_names: List[str] = list(dict.fromkeys(types))
        self.degradation_labels = [self.degradation_names.index(t) for t in types]
        self.proxy_names: List[str] = [proxy['name'] for proxy in opt.get('proxies') or []]
        self.proxy_paths = self._match_proxies(opt.get('proxies') or [], task_names)
        self.proxy_client = FileClient('disk')

    def _match_proxies(self, proxies: List[dict], task_names: List[str]) -> List[List[List[Optional[str]]]]:
        """``[task][sample][proxy]`` -> proxy path or None; logs the matches, refuses a proxy matching nothing."""
        paths = [[[None] * len(proxies) for _ in source.items] for source in self.sources]
        lines = [f'{type(self).__name__} {self.opt.get("name", "")}: L_cl degradation types '
                 f'{dict(zip(task_names, (self.degradation_names[i] for i in self.degradation_labels)))}']
        for p, proxy in enumerate(proxies):
            counts = []
            for name, folder in _proxy_folders(proxy, task_names).items():
                t = task_names.index(name)
                index = index_by_stem(folder) if osp.isdir(folder) else {}
                for s, item in enumerate(self.sources[t].items):
                    paths[t][s][p] = index.get(sample_stem(item))
                counts.append((name, sum(row[p] is not None for row in paths[t]), len(paths[t])))
            if not any(found for _, found, _ in counts):
                raise ValueError(f'proxies[{p}] ({proxy["name"]}): no image in {proxy["dataroot"]!r} has the name of '
                                 'a training image (proxies are matched by file stem to the degraded images).')
            lines.append(f'  proxy {proxy["name"]}: ' + ', '.join(f'{n} {f}/{total}' for n, f, total in counts))
        get_root_logger().info('\n'.join(lines))
        return paths

    # ------------------------------------------------------------------ geometry

    def _prepare_proxy(self, proxy: np.ndarray, degraded_shape: Tuple[int, ...], path: str) -> np.ndarray:
        """A proxy of the degraded image's size is prepared like it; one already cropped to the base only padded."""
        if proxy.shape[:2] == degraded_shape[:2]:
            return self._prepare(proxy, path)
        base = self.opt.get('crop_border_base')
        if base and proxy.shape[:2] == tuple(size - size % base for size in degraded_shape[:2]):
            return fit_to_crop(proxy, self.gt_size, self.small_image, path)
        raise ImageReadError(f'proxy {path!r} is {proxy.shape[1]}x{proxy.shape[0]}, but its degraded image is '
                             f'{degraded_shape[1]}x{degraded_shape[0]} (width x height); a proxy must be a '
                             'restoration of the whole image (or of its crop to crop_border_base).')

    def _crops(self, images: List[np.ndarray], path: str) -> Tuple[List[np.ndarray], np.ndarray]:
        """(one crop of every image, another crop of ``images[1]``, the degraded one); centre crops outside training."""
        if not self.training:
            return [centre_crop(img, self.gt_size) for img in images], centre_crop(images[1], self.gt_size)
        crops = paired_random_crop(images, images[0], self.gt_size, 1, path)[0]
        positive = paired_random_crop(images[1], images[1], self.gt_size, 1, path)[0]
        return crops, positive

    # ------------------------------------------------------------------ samples

    def _degraded_pair(self, index: int, task_index: int, sample_index: int) -> Tuple[np.ndarray, np.ndarray, tuple]:
        """(prepared gt, prepared lq, the degraded image's size before preparation) of a sample, uncropped."""
        item, gt, lq = self._read_sample(task_index, sample_index)
        if lq is not None:
            return self._prepare(gt, item['gt_path']), self._prepare(lq, item['lq_path']), lq.shape
        gt_shape, gt = gt.shape, self._prepare(gt, item['gt_path'])
        rng = self._degradation_rng(index, task_index, sample_index)
        return gt, apply_degradations(gt, rng, self.sources[task_index].degradations), gt_shape

    def load(self, index: int, task_index: int, sample_index: int) -> dict:
        """The sample of ``(task_index, sample_index)`` (``index`` seeds random synthetic degradations)."""
        item = self.sources[task_index].items[sample_index]
        gt, lq, degraded_shape = self._degraded_pair(index, task_index, sample_index)
        proxy_paths = self.proxy_paths[task_index][sample_index]
        present = [path for path in proxy_paths if path is not None]
        proxies = [self._prepare_proxy(read_image(self.proxy_client, path), degraded_shape, path) for path in present]
        for proxy, path in zip(proxies, present):
            check_same_size(proxy, gt, path, item['gt_path'])
        crops, positive = self._crops([gt, lq, *proxies], item['gt_path'])
        crops = self._augment(crops)
        [positive] = self._augment([positive])
        gt_t, lq_t, positive_t, *proxy_t = img2tensor([crops[0], crops[1], positive, *crops[2:]], bgr2rgb=False,
                                                      float32=True)
        stacked = torch.zeros(len(proxy_paths), *gt_t.shape)
        mask = torch.tensor([path is not None for path in proxy_paths], dtype=torch.bool)
        if proxy_t:
            stacked[mask] = torch.stack(proxy_t)
        return {'lq': lq_t, 'gt': gt_t, 'lq_positive': positive_t, 'proxies': stacked, 'proxy_mask': mask,
                'degradation_label': self.degradation_labels[task_index], 'lq_path': item['lq_path'] or item['gt_path'],
                'gt_path': item['gt_path'], 'task': self.tasks[task_index]['name'], 'task_index': task_index,
                'text': self.texts[task_index]}

    def __getitem__(self, index: int) -> dict:
        task_index, sample_index = self.composition[index]
        return self.load(index, task_index, sample_index)

    def probe_samples(self, per_task: int) -> List[Tuple[int, int]]:
        """``(task_index, sample_index)`` of ``per_task`` evenly spaced images of every task (the PSNR probe)."""
        samples = []
        for t, source in enumerate(self.sources):
            count = min(per_task, len(source.items))
            samples += [(t, int(s)) for s in np.linspace(0, len(source.items) - 1, count).round().astype(int)]
        return samples
