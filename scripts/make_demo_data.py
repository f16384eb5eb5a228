"""Build a small NHRBL-style demo set from the photographs shipped with scikit-image (no download).

Usage::

    python scripts/make_demo_data.py                 # -> datasets/demo/
    python scripts/make_demo_data.py --out /tmp/demo --crops 6 --size 192

Layout (paired folders, same file names in lq/ and gt/)::

    <out>/train/<task>/{lq,gt}/<photo>_<k>.png   # --crops random crops per training photo
    <out>/val/<task>/{lq,gt}/<photo>.png         # one centre crop per validation photo

with tasks denoise_15, denoise_25, denoise_50, dehaze, derain, deblur, delowlight, degraded by
:mod:`vlunet.data.synthetic_degradations`. Deterministic: the same files on every run and machine
(every random draw comes from a generator seeded by --seed, the task and the image).
"""
import argparse
import os
import os.path as osp
import sys
import zlib
from typing import Dict, List

import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import cv2  # noqa: E402
import skimage.data  # noqa: E402
from tqdm import tqdm  # noqa: E402

import vlunet  # noqa: F401,E402  (BasicSR compatibility fixes first)
from vlunet.data.synthetic_degradations import apply_degradations  # noqa: E402
from vlunet.utils.atomic_write import atomic_imwrite  # noqa: E402

TRAIN_PHOTOS = ('astronaut.png', 'chelsea.png', 'coffee.png', 'motorcycle_left.png', 'hubble_deep_field.jpg',
                'camera.png', 'grass.png', 'brick.png')
VAL_PHOTOS = ('rocket.jpg', 'motorcycle_right.png', 'gravel.png')
DEMO_TASKS: Dict[str, List[dict]] = {
    'denoise_15': [{'type': 'gaussian_noise', 'sigma': 15}],
    'denoise_25': [{'type': 'gaussian_noise', 'sigma': 25}],
    'denoise_50': [{'type': 'gaussian_noise', 'sigma': 50}],
    'dehaze': [{'type': 'haze'}],
    'derain': [{'type': 'rain'}],
    'deblur': [{'type': 'motion_blur'}],
    'delowlight': [{'type': 'low_light'}],
}


def available_photos(names: tuple) -> List[str]:
    """Paths of the scikit-image data files among ``names`` that exist locally (never downloaded)."""
    folder = osp.dirname(skimage.data.__file__)
    return [osp.join(folder, name) for name in names if osp.isfile(osp.join(folder, name))]


def load_rgb(path: str) -> np.ndarray:
    """A photo as float32 HWC RGB in [0, 1] (grayscale replicated to 3 channels)."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f'cannot read {path!r}')
    return img[..., ::-1].astype(np.float32) / 255.0


def crops_of(img: np.ndarray, size: int, count: int, rng: np.random.Generator) -> List[np.ndarray]:
    """``count`` random ``size``² crops (the whole image resized down first if it is smaller)."""
    scale = size / min(img.shape[:2])
    if scale > 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    height, width = img.shape[:2]
    tops = rng.integers(0, height - size + 1, count) if count > 1 else [(height - size) // 2]
    lefts = rng.integers(0, width - size + 1, count) if count > 1 else [(width - size) // 2]
    return [img[top:top + size, left:left + size] for top, left in zip(tops, lefts)]


def to_bgr_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img[..., ::-1], 0, 1) * 255).round().astype(np.uint8)


def build_split(out: str, split: str, photos: List[str], crops: int, size: int, seed: int) -> int:
    """Write ``<out>/<split>/<task>/{lq,gt}``; return the number of pairs written."""
    jobs = []
    for photo in photos:
        stem = osp.splitext(osp.basename(photo))[0]
        rng = np.random.default_rng([seed, zlib.crc32(f'{split}/{stem}'.encode())])
        patches = crops_of(load_rgb(photo), size, crops, rng)
        names = [f'{stem}_{k}.png' for k in range(len(patches))] if crops > 1 else [f'{stem}.png']
        jobs += [(task, name, patch) for task in DEMO_TASKS for name, patch in zip(names, patches)]
    for task, name, patch in tqdm(jobs, desc=f'demo {split}', unit='pair'):
        rng = np.random.default_rng([seed, zlib.crc32(f'{split}/{task}/{name}'.encode())])
        lq = apply_degradations(patch, rng, DEMO_TASKS[task])
        atomic_imwrite(to_bgr_uint8(patch), osp.join(out, split, task, 'gt', name))
        atomic_imwrite(to_bgr_uint8(lq), osp.join(out, split, task, 'lq', name))
    return len(jobs)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', default=osp.join('datasets', 'demo'), help='output folder (default datasets/demo)')
    parser.add_argument('--crops', type=int, default=4, help='random crops per training photo (default 4)')
    parser.add_argument('--size', type=int, default=160, help='crop size in pixels (default 160)')
    parser.add_argument('--seed', type=int, default=0, help='seed of crops and degradations (default 0)')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    train, val = available_photos(TRAIN_PHOTOS), available_photos(VAL_PHOTOS)
    if not train or not val:
        raise SystemExit(f'scikit-image data photos not found in {osp.dirname(skimage.data.__file__)!r}.')
    os.makedirs(args.out, exist_ok=True)
    counts = {split: build_split(args.out, split, photos, crops, args.size, args.seed)
              for split, photos, crops in (('train', train, args.crops), ('val', val, 1))}
    print(f'Wrote {counts["train"]} training and {counts["val"]} validation pairs '
          f'({len(DEMO_TASKS)} tasks) to {osp.abspath(args.out)}')


if __name__ == '__main__':
    main()
