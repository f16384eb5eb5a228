"""Check the standard all-in-one restoration downloads and write the meta-info files the options use.

Usage::

    vlunet-prepare-data --root datasets                    # every set found under datasets/
    vlunet-prepare-data --root datasets --rain100l /data/Rain100L --lmdb

Each dataset is looked for at ``--<dataset> PATH`` or, by default, at ``<root>/<folder>`` (the
expected layouts are in :data:`DATASETS` and ``datasets/README.md``). For every set found the
script pairs degraded and clean files, decodes every image (unless ``--skip-image-check``), and
writes ``<out>/<meta>.txt`` (default ``<root>/meta_info``) with paths **relative to --root**:

- paired sets: ``lq_path,gt_path`` per line → options ``dataroot_lq: <root>``, ``dataroot_gt: <root>``,
  ``meta_info_file: <out>/<meta>.txt``;
- clean-only sets (BSD400, WED, CBSD68, Urban100; noise is added by the dataset): ``gt_path`` per
  line → ``dataroot_gt: <root>`` with ``meta_info_file``.

``--lmdb`` also writes ``<out>/<meta>_{lq,gt}.lmdb`` with BasicSR's ``make_lmdb_from_imgs`` (the
same keys in both, so they pair by key). Missing or unpaired files and unreadable images are left
out of the meta files and reported; the exit status is 1 when any requested set had problems, and
also when no dataset at all was found (each missing one is listed with where it comes from; the
sources are in ``datasets/README.md``). Nothing is written then, not even an empty meta folder.
"""
import argparse
import os
import os.path as osp
import sys
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

import vlunet  # noqa: F401  (BasicSR compatibility fixes first)
from vlunet.data.pair_sources import IMAGE_EXTENSIONS, match_by_stem
from vlunet.utils.atomic_write import atomic_write_text

from basicsr.utils import scandir
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

Pair = Tuple[Optional[str], str]  # (lq path or None for clean-only sets, gt path), absolute


class Listing(NamedTuple):
    """The pairs of one meta file and the problems met while listing them."""
    pairs: List[Pair]
    problems: List[str]


def _require(folder: str) -> Optional[str]:
    return None if osp.isdir(folder) else f'missing folder {folder}'


def clean_images(*folders: str) -> Listing:
    """All images under ``folders`` (clean-only sets)."""
    problems = [p for p in map(_require, folders) if p]
    pairs = [(None, osp.join(folder, rel)) for folder in folders if osp.isdir(folder)
             for rel in sorted(scandir(folder, suffix=IMAGE_EXTENSIONS, recursive=True))]
    return Listing(pairs, problems)


def paired_folders(lq_folder: str, gt_folder: str, pattern: str = '^(.*)$', replacement: str = r'\1') -> Listing:
    """Pairs of ``lq_folder`` ↔ ``gt_folder`` by stem mapping; reports unmatched lq and unused gt files."""
    problems = [p for p in (_require(lq_folder), _require(gt_folder)) if p]
    if problems:
        return Listing([], problems)
    items, missing = match_by_stem(lq_folder, gt_folder, pattern, replacement)
    used = {item['gt_path'] for item in items}
    unused = [rel for rel in sorted(scandir(gt_folder, suffix=IMAGE_EXTENSIONS, recursive=True))
              if osp.join(gt_folder, rel) not in used]
    problems = [f'missing pair: {lq_folder}/{m} not found' for m in missing]
    problems += [f'unpaired gt: {gt_folder}/{rel} has no degraded image' for rel in unused]
    return Listing([(item['lq_path'], item['gt_path']) for item in items], problems)


def gopro_split(split_folder: str) -> Listing:
    """GoPro_Large: ``<split>/<sequence>/{blur,sharp}/*.png`` with equal names."""
    if not osp.isdir(split_folder):
        return Listing([], [f'missing folder {split_folder}'])
    pairs, problems = [], []
    for sequence in sorted(os.listdir(split_folder)):
        listing = paired_folders(osp.join(split_folder, sequence, 'blur'), osp.join(split_folder, sequence, 'sharp'))
        pairs += listing.pairs
        problems += listing.problems
    return Listing(pairs, problems or ([] if pairs else [f'no sequences with blur/ and sharp/ in {split_folder}']))


HAZY_TO_CLEAR = (r'^([^_]+)_.*$', r'\1')  # RESIDE: 0001_0.8_0.2.jpg -> 0001
RAIN_TO_NORAIN = (r'^rain-(.*)$', r'norain-\1')  # Rain100L: rain-001.png -> norain-001.png


class DatasetLayout(NamedTuple):
    """A download: default folder under --root, layout description, its meta files and where it comes from."""
    folder: str
    layout: str
    meta_files: Dict[str, Callable[[str], Listing]]
    source: str


DATASETS: Dict[str, DatasetLayout] = {
    'bsd400': DatasetLayout('BSD400', '<images>', {'denoise_train': clean_images},  # BSD400 + WED together
                            "DnCNN's training data Train400: github.com/cszn/DnCNN"),
    'wed': DatasetLayout('WED', '<images>', {'denoise_train': clean_images},
                         'Waterloo Exploration Database: ece.uwaterloo.ca/~k29ma/exploration'),
    'ots': DatasetLayout('OTS', 'hazy/<id>_<A>_<beta>.jpg, clear/<id>.jpg', {
        'dehaze_ots_train': lambda r: paired_folders(osp.join(r, 'hazy'), osp.join(r, 'clear'), *HAZY_TO_CLEAR)},
        'RESIDE-beta Outdoor Training Set: sites.google.com/view/reside-dehaze-datasets'),
    'sots': DatasetLayout('SOTS', 'outdoor/hazy/<id>_<A>_<beta>.jpg, outdoor/gt/<id>.png', {
        'dehaze_sots_outdoor_test': lambda r: paired_folders(
            osp.join(r, 'outdoor', 'hazy'), osp.join(r, 'outdoor', 'gt'), *HAZY_TO_CLEAR)},
        'RESIDE SOTS (outdoor part): sites.google.com/view/reside-dehaze-datasets'),
    'rain100l': DatasetLayout('Rain100L', '{train,test}/rainy/rain-<n>.png, {train,test}/norain/norain-<n>.png', {
        'derain_rain100l_train': lambda r: paired_folders(
            osp.join(r, 'train', 'rainy'), osp.join(r, 'train', 'norain'), *RAIN_TO_NORAIN),
        'derain_rain100l_test': lambda r: paired_folders(
            osp.join(r, 'test', 'rainy'), osp.join(r, 'test', 'norain'), *RAIN_TO_NORAIN)},
        'Rain100L / RainTrainL (JORDER project page; also redistributed with AirNet and PromptIR)'),
    'gopro': DatasetLayout('GoPro', '{train,test}/<sequence>/{blur,sharp}/<n>.png', {
        'deblur_gopro_train': lambda r: gopro_split(osp.join(r, 'train')),
        'deblur_gopro_test': lambda r: gopro_split(osp.join(r, 'test'))},
        'GoPro_Large: seungjunnah.github.io/Datasets/gopro'),
    'lol': DatasetLayout('LOL', '{our485,eval15}/{low,high}/<n>.png', {
        'delowlight_lol_train': lambda r: paired_folders(osp.join(r, 'our485', 'low'), osp.join(r, 'our485', 'high')),
        'delowlight_lol_test': lambda r: paired_folders(osp.join(r, 'eval15', 'low'), osp.join(r, 'eval15', 'high'))},
        'LOL (RetinexNet): daooshee.github.io/BMVC2018website'),
    'cbsd68': DatasetLayout('CBSD68', '<images> (e.g. original_png/*.png)', {'denoise_cbsd68_test': clean_images},
                            'github.com/clausmichele/CBSD68-dataset'),
    'urban100': DatasetLayout('Urban100', '<images> (HR)', {'denoise_urban100_test': clean_images},
                              'github.com/jbhuang0604/SelfExSR'),
}


def unreadable(pairs: List[Pair], desc: str) -> List[str]:
    """Files among ``pairs`` OpenCV cannot decode (progress bar)."""
    bad = []
    for pair in tqdm(pairs, desc=f'check {desc}', unit='pair', leave=False):
        for path in filter(None, pair):
            if cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED) is None:
                bad.append(path)
    return bad


def meta_lines(pairs: List[Pair], root: str) -> List[str]:
    """``lq,gt`` (or ``gt``) lines relative to ``root``."""
    rel = [(osp.relpath(lq, root) if lq else None, osp.relpath(gt, root)) for lq, gt in pairs]
    return [f'{lq},{gt}' if lq else gt for lq, gt in rel]


def write_lmdb(pairs: List[Pair], root: str, out: str, meta: str) -> List[str]:
    """``<out>/<meta>_{lq,gt}.lmdb`` with one key per pair (from the lq path, else the gt path); returns problems."""
    keys = [osp.splitext(osp.relpath(lq or gt, root))[0].replace(os.sep, '_') for lq, gt in pairs]
    sides = [('gt', 1)] + ([('lq', 0)] if pairs[0][0] else [])
    problems = []
    for side, column in sides:
        lmdb_path = osp.join(out, f'{meta}_{side}.lmdb')
        if osp.exists(lmdb_path):  # BasicSR's writer would exit the process
            problems.append(f'{lmdb_path} exists; delete it to rebuild')
            continue
        paths = [osp.relpath(pair[column], root) for pair in pairs]
        # Images are stored re-encoded as PNG, up to ~10x their JPEG size; LMDB only reserves the address space.
        map_size = 20 * sum(osp.getsize(pair[column]) for pair in pairs) + (64 << 20)
        make_lmdb_from_imgs(root, lmdb_path, paths, keys, multiprocessing_read=False, map_size=map_size)
    return problems


def list_dataset(name: str, folder: str, check_images: bool) -> Tuple[Dict[str, List[Pair]], List[str]]:
    """The usable pairs of one download per meta file, and the problems (missing, unpaired, unreadable)."""
    pairs_by_meta, problems = {}, []
    for meta, lister in DATASETS[name].meta_files.items():
        listing = lister(folder)
        problems += listing.problems
        bad = set(unreadable(listing.pairs, meta)) if check_images else set()
        problems += [f'unreadable image: {path}' for path in sorted(bad)]
        pairs_by_meta[meta] = [pair for pair in listing.pairs if not set(filter(None, pair)) & bad]
    return pairs_by_meta, problems


def report(name: str, problems: List[str], limit: int = 20) -> None:
    for problem in problems[:limit]:
        print(f'[{name}] PROBLEM {problem}')
    if len(problems) > limit:
        print(f'[{name}] ... and {len(problems) - limit} more problems')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='vlunet-prepare-data', description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', default='datasets', help='common parent of the downloads; meta paths are relative '
                        'to it (default datasets)')
    parser.add_argument('--out', help='folder of the meta-info files (default <root>/meta_info)')
    for name, spec in DATASETS.items():
        parser.add_argument(f'--{name}', metavar='PATH', help=f'{spec.folder} download (default <root>/{spec.folder}; '
                            f'layout: {spec.layout})')
    parser.add_argument('--lmdb', action='store_true', help='also write LMDB files next to the meta files')
    parser.add_argument('--skip-image-check', action='store_true', help='do not decode every image')
    args = parser.parse_args(argv)
    args.out = args.out or osp.join(args.root, 'meta_info')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    failed, all_pairs, found = False, {}, 0
    for name, spec in DATASETS.items():
        requested = getattr(args, name)
        folder = requested or osp.join(args.root, spec.folder)
        if not osp.isdir(folder):
            where = f'MISSING {folder}' if requested else f'not found at {folder} (or give --{name} PATH)'
            print(f'[{name}] {where}; download: {spec.source}; layout: {spec.layout}')
            failed |= bool(requested)
            continue
        found += 1
        pairs_by_meta, problems = list_dataset(name, folder, not args.skip_image_check)
        for meta, pairs in pairs_by_meta.items():
            print(f'[{name}] {meta}: {len(pairs)} pairs')
            all_pairs.setdefault(meta, []).extend(pairs)
        report(name, problems)
        if problems or not any(pairs_by_meta.values()):
            print(f'[{name}] expected layout under {folder}: {spec.layout}')
            failed = True
    if not found:
        print(f'error: no dataset found under {osp.abspath(args.root)}: download them (sources above and in '
              'datasets/README.md) into these folders; for a first try without downloads: '
              'python scripts/make_demo_data.py', file=sys.stderr)
        return 1
    for meta, pairs in all_pairs.items():
        if pairs:
            path = osp.join(args.out, f'{meta}.txt')
            atomic_write_text('\n'.join(meta_lines(pairs, args.root)) + '\n', path)
            print(f'wrote {path} ({len(pairs)} lines)')
            lmdb_problems = write_lmdb(pairs, args.root, args.out, meta) if args.lmdb else []
            report('lmdb', lmdb_problems)
            failed |= bool(lmdb_problems)
    return int(failed)


if __name__ == '__main__':
    sys.exit(main())
