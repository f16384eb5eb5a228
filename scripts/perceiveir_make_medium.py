"""Perceive-IR medium-quality images by two-fold cross-validation (paper Sec. III-B), in two commands.

1. ``split``: write the two folds of each training meta-info file (stable SHA-1 split, equal halves;
   :mod:`vlunet.data.perceiveir.perceiveir_folds`)::

       python scripts/perceiveir_make_medium.py split datasets/meta_info/denoise_train.txt \\
           datasets/meta_info/derain_rain100l_train.txt ... --out datasets/meta_info/perceiveir_folds

   then train a restorer on each fold (``options/perceiveir/train_restormer_fold{0,1}.yml``).

2. ``restore``: with the model trained on fold k, restore the images of fold 1-k of every training
   task of its option file (each task source's ``meta_info_file`` ``..._fold<k>.txt`` is swapped for
   ``..._fold<1-k>.txt``)::

       python scripts/perceiveir_make_medium.py restore --opt options/perceiveir/train_restormer_fold0.yml \\
           --weights experiments/Restormer_medium_fold0/models/net_g_latest.pth --out datasets/perceiveir_medium

   Run it for both folds into the same ``--out``. Outputs, as 8-bit PNGs written atomically:
   ``<out>/<task>/medium/<relative path>.png``; for tasks with synthetic degradations (clean images
   only, e.g. denoising) also the degraded input it restored, ``<out>/<task>/degraded/<relative
   path>.png`` (degradation seeded by ``--seed`` and the image name, quantised to 8 bits before
   restoring). Each run writes ``<out>/meta_info_restored_by_<option name>.txt`` and rewrites
   ``<out>/meta_info.txt``, the union of these, the ``meta_info_file`` of
   :class:`vlunet.data.perceiveir.perceiveir_triplet_dataset.QualityTripletDataset` (``degraded,medium,gt``
   relative to ``<out>``).
"""
import argparse
import glob
import hashlib
import os.path as osp
import sys
from typing import Dict, List, Optional

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import vlunet  # noqa: F401,E402  (BasicSR compatibility fixes first)
from vlunet.data.pair_sources import resolve_source  # noqa: E402
from vlunet.data.perceiveir.perceiveir_folds import other_fold_file, split_meta_info_file  # noqa: E402
from vlunet.data.perceiveir.perceiveir_triplet_dataset import format_triplet_meta_info  # noqa: E402
from vlunet.data.synthetic_degradations import apply_degradations  # noqa: E402
from vlunet.inference import build_restoration_network, load_image, resolve_device, save_image  # noqa: E402
from vlunet.options import load_option_file  # noqa: E402
from vlunet.tiling.tiles import parse_tile_options, restore  # noqa: E402
from vlunet.utils.atomic_write import atomic_write_text  # noqa: E402
from vlunet.utils.safe_load import report_bad_files  # noqa: E402

META_INFO = 'meta_info.txt'
RUN_META_PREFIX = 'meta_info_restored_by_'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest='command', required=True)
    split = commands.add_parser('split', help='write <stem>_fold0.txt and <stem>_fold1.txt of meta-info files')
    split.add_argument('meta_info_files', nargs='+', help='training meta-info files (lq,gt pair lists or gt lists)')
    split.add_argument('--out', required=True, help='folder of the fold files')
    run = commands.add_parser('restore', help='restore the other fold with a fold model and write medium images')
    run.add_argument('--opt', required=True, help='option file the fold model was trained with')
    run.add_argument('--weights', required=True, help='its trained weights (net_g_<iter>.pth)')
    run.add_argument('--out', required=True, help='output folder (shared by both folds)')
    run.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    run.add_argument('--tile', type=int, default=None, help='tile size for large images (default: whole images)')
    run.add_argument('--tile-overlap', type=int, default=32, help='overlap of neighbouring tiles')
    run.add_argument('--seed', type=int, default=0, help='seed of the synthetic degradations')
    return parser.parse_args(argv)


def name_seed(seed: int, name: str) -> List[int]:
    """A generator seed from ``seed`` and a SHA-1 of ``name`` (the same degradation on every run and machine)."""
    return [seed, int.from_bytes(hashlib.sha1(name.encode('utf-8')).digest()[:8], 'big')]


def relative_png(path: str, root: str) -> str:
    """``path`` relative to ``root`` with a ``.png`` extension (``/``-separated)."""
    return osp.splitext(osp.relpath(path, root))[0].replace(osp.sep, '/') + '.png'


def quantised(image: np.ndarray) -> np.ndarray:
    """The 8-bit values a PNG of ``image`` stores, as float32 in [0, 1]."""
    return (np.clip(image, 0, 1) * 255).round().astype(np.float32) / 255


def held_out_source(task: dict, option_file: str) -> dict:
    """The task's source with its fold meta-info file swapped for the other fold's."""
    source = dict(task['source'])
    meta = source.get('meta_info_file')
    if not meta:
        raise ValueError(f'{option_file}: task {task["name"]!r} has no meta_info_file; fold training sources must '
                         'read a <stem>_fold<k>.txt file written by the split command.')
    source['meta_info_file'] = other_fold_file(meta)
    if not osp.isfile(source['meta_info_file']):
        raise FileNotFoundError(f'{source["meta_info_file"]!r} does not exist; run the split command first.')
    return source


def restore_task(task: dict, source: dict, restore_image, out: str, seed: int) -> List[Dict[str, str]]:
    """Restore every image of ``source``; return the triplets (degraded, medium, gt paths)."""
    resolved = resolve_source(f'task {task["name"]}', task['name'], source)
    triplets = []
    for item in tqdm(resolved.items, desc=task['name'], unit='image'):
        if resolved.degradations is None:
            name = relative_png(item['lq_path'], source['dataroot_lq'])
            degraded_path, degraded = item['lq_path'], load_image(item['lq_path'])
        else:
            name = relative_png(item['gt_path'], source['dataroot_gt'])
            rng = np.random.default_rng(name_seed(seed, f'{task["name"]}|{name}'))
            degraded = quantised(apply_degradations(load_image(item['gt_path']), rng, resolved.degradations))
            degraded_path = osp.join(out, task['name'], 'degraded', name)
            save_image(degraded_path, degraded)
        medium_path = osp.join(out, task['name'], 'medium', name)
        save_image(medium_path, restore_image(degraded))
        triplets.append({'lq_path': degraded_path, 'medium_path': medium_path, 'gt_path': item['gt_path']})
    return triplets


def merge_meta_info(out: str) -> str:
    """Rewrite ``<out>/meta_info.txt`` as the union of every run's meta-info file; return its path."""
    lines = []
    for path in sorted(glob.glob(osp.join(out, f'{RUN_META_PREFIX}*.txt'))):
        with open(path, encoding='utf-8') as f:
            lines += [line for line in f if line.strip() and not line.startswith('#')]
    path = osp.join(out, META_INFO)
    atomic_write_text('# degraded,medium,gt (relative to this folder)\n' + ''.join(lines), path)
    return path


def run_restore(args: argparse.Namespace) -> str:
    opt = load_option_file(args.opt)
    device = resolve_device(args.device)
    net = build_restoration_network(args.weights, dict(opt['network_g'])).to(device)
    tile = parse_tile_options({'size': args.tile, 'overlap': args.tile_overlap}) if args.tile else None

    def restore_image(image: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(device)
        with torch.no_grad():
            restored = restore(net, tensor, tile)
        return restored[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()

    triplets = []
    for task in opt['datasets']['train']['tasks']:
        triplets += restore_task(task, held_out_source(task, args.opt), restore_image, args.out, args.seed)
    run_name = osp.splitext(osp.basename(args.opt))[0]
    atomic_write_text(format_triplet_meta_info(triplets, args.out),
                      osp.join(args.out, f'{RUN_META_PREFIX}{run_name}.txt'))
    return merge_meta_info(args.out)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.command == 'split':
        for meta_info_file in args.meta_info_files:
            fold0, fold1 = split_meta_info_file(meta_info_file, args.out)
            print(f'{meta_info_file}: {fold0}, {fold1}')
        return
    print(f'Triplets: {run_restore(args)}')


if __name__ == '__main__':
    with report_bad_files():  # a bad weight file: one line (--verbose: the traceback)
        main()
