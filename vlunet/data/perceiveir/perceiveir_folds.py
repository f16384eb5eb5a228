"""Two-fold split of training meta-info files, for Perceive-IR's medium-quality images (paper Sec. III-B).

The paper divides "the degraded inputs equally into two subsets", trains a Restormer on each and
restores the other. The split here is a stable hash of each image's name:

- the **key** of a meta-info line is its first path as written (relative, ``/``-separated): the
  degraded image of a ``lq,gt`` pair list, the clean image of a clean-only list, the file name of a
  BasicSR ``name (h,w,c)`` line;
- the lines are ordered by ``hashlib.sha1(key.encode('utf-8')).hexdigest()`` (ties by key) and the
  first half (``n // 2`` lines) is fold 0, the rest fold 1.

So the folds are equal (sizes differ by at most one line), independent of the order of the file
and of the machine or Python version (SHA-1, not Python's salted ``hash``), and the same for every
run. (The release hashes ``task|path`` and takes the hash mod 2, which is stable too but only
balanced on average.) Each fold keeps the original lines, so a fold file is a drop-in
``meta_info_file`` for the same ``dataroot_lq`` / ``dataroot_gt``: ``<stem>_fold0.txt`` and
``<stem>_fold1.txt``.
"""
import hashlib
import os.path as osp
import re
from collections import Counter
from typing import List, Sequence, Tuple

from vlunet.utils.atomic_write import atomic_write_text

FOLDS = 2
FOLD_SUFFIX = re.compile(r'_fold([01])\.txt$')


def line_key(line: str) -> str:
    """The name a meta-info line is split by: its first path (``a/b.png,c/d.png`` -> ``a/b.png``)."""
    return line.split()[0].split(',')[0]


def fold_of_keys(keys: Sequence[str]) -> List[int]:
    """Fold (0 or 1) of each key: the first half in SHA-1 order is fold 0 (see the module docstring)."""
    repeated = sorted(key for key, count in Counter(keys).items() if count > 1)[:3]
    if repeated:
        raise ValueError(f'fold split: names must be distinct, found repeats such as {repeated}.')
    order = sorted(range(len(keys)), key=lambda i: (hashlib.sha1(keys[i].encode('utf-8')).hexdigest(), keys[i]))
    folds = [1] * len(keys)
    for i in order[:len(keys) // FOLDS]:
        folds[i] = 0
    return folds


def fold_file_path(meta_info_file: str, fold: int, out_dir: str) -> str:
    """``<out_dir>/<stem>_fold<fold>.txt``."""
    stem = osp.splitext(osp.basename(meta_info_file))[0]
    return osp.join(out_dir, f'{stem}_fold{fold}.txt')


def split_meta_info_file(meta_info_file: str, out_dir: str) -> Tuple[str, str]:
    """Write the two fold files of ``meta_info_file`` into ``out_dir``; return their paths (fold 0, fold 1)."""
    with open(meta_info_file, encoding='utf-8') as f:
        lines = [line.strip() for line in f if line.strip() and not line.lstrip().startswith('#')]
    if len(lines) < FOLDS:
        raise ValueError(f'{meta_info_file}: {len(lines)} images; two folds need at least 2.')
    folds = fold_of_keys([line_key(line) for line in lines])
    paths = tuple(fold_file_path(meta_info_file, fold, out_dir) for fold in range(FOLDS))
    for fold, path in enumerate(paths):
        atomic_write_text(''.join(f'{line}\n' for line, f in zip(lines, folds) if f == fold), path)
    return paths


def other_fold_file(fold_file: str) -> str:
    """The complementary fold file of ``<stem>_fold0.txt`` / ``<stem>_fold1.txt`` (same folder)."""
    match = FOLD_SUFFIX.search(fold_file)
    if not match:
        raise ValueError(f'{fold_file!r} is not a fold file (<stem>_fold0.txt or <stem>_fold1.txt, written by '
                         'scripts/perceiveir_make_medium.py split).')
    return fold_file[:match.start()] + f'_fold{1 - int(match.group(1))}.txt'
