"""The test sets of a comparison: the datasets of a test option file, paired folders, or a folder of photos.

Images of a test option file are made exactly as ``vlunet/test.py`` makes them (the dataset classes
build them: crops, noise added on the fly with its seed, quantisation), so every method sees the
inputs its own test run sees, and the metrics are the option file's ``val.metrics``. Paired folders
(``--lq DIR --gt DIR``) are matched by file name; a folder of photos has no ground truth (no metrics).
"""
import os.path as osp
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch

from vlunet.data.benchmark_dataset import BenchmarkPairedDataset
from vlunet.data.pair_sources import IMAGE_EXTENSIONS
from vlunet.inference import load_image
from vlunet.options import OptionError, load_option_file
from vlunet.utils.weight_files import resolve_weights_file

from basicsr.data import build_dataset
from basicsr.utils import img2tensor, scandir

# The metrics of folder inputs: BasicSR's uint8-RGB PSNR / SSIM and the papers' float-RGB ones (+ LPIPS when available).
DEFAULT_METRICS = {
    'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
    'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': False},
    'psnr_float': {'type': 'calculate_psnr_float_rgb'},
    'ssim_float': {'type': 'calculate_ssim_float_rgb'},
}
LPIPS_METRIC = {'lpips': {'type': 'calculate_lpips', 'net': 'alex'}}
FID_METRIC = {'fid': {'type': 'calculate_fid'}}
FOLDER_TASK = {'task': 'paired', 'text': 'unknown degradation'}  # paired folders: no task of the catalogue


class Sample(NamedTuple):
    """One image: ``name`` (file stem, unique in its set), ``lq`` (3, H, W) float RGB in [0, 1], ``gt`` or None."""
    name: str
    lq: torch.Tensor
    gt: Optional[torch.Tensor]


class TestSet:
    """A named sequence of :class:`Sample` read on demand: ``names`` (in order), ``protocol`` (how the inputs were
    made, or None), ``has_gt``."""

    def __init__(self, name: str, names: List[str], load: Callable[[int], Sample], has_gt: bool,
                 protocol: Optional[str] = None):
        self.name, self.names, self.has_gt, self.protocol = name, names, has_gt, protocol
        self._load = load

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[Sample]:
        return (self._load(index) for index in range(len(self.names)))


def _unique_names(paths: List[str]) -> List[str]:
    """File stems of ``paths``; a stem met twice (a.png, a.jpg) gets its extension appended, and a name still taken
    (sub/a.png, other/a.png) a number."""
    stems = [osp.splitext(osp.basename(path))[0] for path in paths]
    names: List[str] = []
    for stem, path in zip(stems, paths):
        name = f'{stem}_{osp.splitext(path)[1].lstrip(".")}' if stems.count(stem) > 1 else stem
        candidate, number = name, 2
        while candidate in names:
            candidate, number = f'{name}_{number}', number + 1
        names.append(candidate)
    return names


def _dataset_set(dataset) -> TestSet:
    """A :class:`TestSet` over a BasicSR dataset whose samples have ``lq``, ``lq_path`` and maybe ``gt``."""
    paths = [item['lq_path'] or item['gt_path'] for item in dataset.source.items] \
        if hasattr(dataset, 'source') else [dataset[index]['lq_path'] for index in range(len(dataset))]
    names = _unique_names(paths)

    def load(index: int) -> Sample:
        sample = dataset[index]
        return Sample(names[index], sample['lq'], sample.get('gt'))

    has_gt = 'dataroot_gt' in dataset.opt or hasattr(dataset, 'source')
    return TestSet(dataset.opt['name'], names, load, has_gt, getattr(dataset, 'protocol', None))


def option_file_sets(path: str) -> Tuple[List[TestSet], Dict[str, dict]]:
    """The test sets (``datasets``, phase ``test``) and the ``val.metrics`` of a test option file."""
    opt = load_option_file(path)
    datasets = opt.get('datasets')
    if not isinstance(datasets, dict) or not datasets:
        raise OptionError(f'{path}: no `datasets` section (the test sets to compare on).')
    sets = []
    for phase, dataset_opt in datasets.items():
        if not isinstance(dataset_opt, dict) or 'type' not in dataset_opt:
            raise OptionError(f'{path}: datasets.{phase}: expected a mapping with a `type`.')
        dataset_opt = dict(dataset_opt, phase=phase.split('_')[0])
        if 'scale' in opt:
            dataset_opt['scale'] = opt['scale']
        for key in ('dataroot_gt', 'dataroot_lq'):
            if dataset_opt.get(key) is not None:
                dataset_opt[key] = osp.expanduser(dataset_opt[key])
        try:
            sets.append(_dataset_set(build_dataset(dataset_opt)))
        except (ValueError, OSError, KeyError, AssertionError) as error:
            raise OptionError(f'{path}: datasets.{phase}: {str(error).strip()}') from None
    return sets, dict((opt.get('val') or {}).get('metrics') or {})


def paired_folder_set(lq_folder: str, gt_folder: str) -> TestSet:
    """The pairs of two folders matched by file name, named after the degraded folder."""
    for flag, folder in (('--lq', lq_folder), ('--gt', gt_folder)):
        if not osp.isdir(folder):
            raise ValueError(f'{flag} {folder}: no such folder.')
    name = osp.basename(osp.normpath(lq_folder))
    return _dataset_set(BenchmarkPairedDataset({'name': name, **FOLDER_TASK, 'dataroot_lq': lq_folder,
                                                'dataroot_gt': gt_folder}))


def photo_folder_set(folder: str) -> TestSet:
    """Every image under ``folder`` (recursively, sorted), without ground truth."""
    if not osp.isdir(folder):
        raise ValueError(f'--photos {folder}: no such folder.')
    paths = sorted(osp.join(folder, name) for name in scandir(folder, suffix=IMAGE_EXTENSIONS, recursive=True))
    if not paths:
        raise ValueError(f'--photos {folder}: no images (supported: {", ".join(IMAGE_EXTENSIONS[:8])}).')
    names = _unique_names(paths)

    def load(index: int) -> Sample:
        return Sample(names[index], img2tensor(load_image(paths[index]), bgr2rgb=False, float32=True), None)

    return TestSet(osp.basename(osp.normpath(folder)), names, load, has_gt=False)


def metric_problem(metric_opt: dict) -> Optional[str]:
    """Why the LPIPS or FID metric ``metric_opt`` cannot run here (package or weight file missing), or None."""
    from basicsr.utils.registry import METRIC_REGISTRY
    kind = metric_opt['type']
    try:
        if kind == 'calculate_lpips':
            from vlunet.metrics.lpips_metric import BACKBONE_WEIGHTS, default_head_weights
            net = metric_opt.get('net', 'alex')
            default_head_weights(net)  # ImportError naming the metrics extra when lpips is missing
            resolve_weights_file(metric_opt.get('backbone_weights'), 'calculate_lpips.backbone_weights',
                                 BACKBONE_WEIGHTS[net].url, f'ImageNet {net} weights')
        elif kind == 'calculate_fid':
            METRIC_REGISTRY.get(kind)(**{key: value for key, value in metric_opt.items() if key != 'type'})
    except (ImportError, FileNotFoundError, ValueError) as error:
        return ' '.join(str(error).split())
    return None


def folder_metrics() -> Dict[str, dict]:
    """:data:`DEFAULT_METRICS`, with LPIPS when the metrics extra and its weights are installed."""
    return {**DEFAULT_METRICS, **({} if metric_problem(LPIPS_METRIC['lpips']) else LPIPS_METRIC)}
