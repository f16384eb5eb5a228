"""Where a task's image pairs come from: paired folders, meta-info files, LMDB, or clean images + degradations.

A ``source`` mapping (a task's ``source:`` in :class:`MixedDegradationDataset`, the dataset options
themselves in :class:`BenchmarkPairedDataset`) has these keys:

- ``dataroot_gt`` (required): folder (or ``.lmdb``) of clean images.
- ``dataroot_lq``: folder (or ``.lmdb``) of degraded images. Without it the source is *synthetic*:
  ``degradations`` (a list of :mod:`vlunet.data.synthetic_degradations` specs) are applied on the fly.
- ``io_backend``: BasicSR's ``{type: disk}`` (default) or ``{type: lmdb}``; LMDB pairs match by key
  (the keys of both ``meta_info.txt`` files must agree; ``scripts/prepare_datasets.py --lmdb`` does this).
- ``meta_info_file``: list of the pairs to use, one per line, either BasicSR's format
  ``name.png (h,w,c)`` (same name in both folders) or ``lq/relative/path,gt/relative/path`` (the
  official path-file style, needed when names differ, e.g. ``rain-001.png,norain-001.png``).
- ``filename_tmpl``: BasicSR's lq-name template (default ``'{}'``), folder and meta-info sources.
- ``gt_name_from_lq``: ``[regex, replacement]`` mapping an lq file stem to its gt stem, for folders
  whose names differ (SOTS ``['^(\\d+)_.*$', '\\1']``, Rain100L ``['^rain-(.*)$', 'norain-\\1']``); the gt
  file is found by stem, with any extension.
- ``pair_by: sorted_order``: pair the i-th lq with the i-th gt file of the two sorted folder listings
  (DA-CLIP's ``universal/<split>/<degradation>/{LQ,GT}`` layout, as the original); counts must agree.

Path listing uses BasicSR's ``basicsr.data.data_util`` helpers wherever their pairing rule applies.
"""
import os.path as osp
import re
from typing import Dict, List, NamedTuple, Optional, Tuple

from vlunet.data.synthetic_degradations import check_degradation_spec
from vlunet.data.task_catalog import KNOWN_TASKS, unknown_task_message

from basicsr.data.data_util import (
    paired_paths_from_folder,
    paired_paths_from_lmdb,
    paired_paths_from_meta_info_file,
    paths_from_lmdb,
)
from basicsr.utils import scandir

SOURCE_KEYS = ('dataroot_gt', 'dataroot_lq', 'io_backend', 'meta_info_file', 'filename_tmpl', 'gt_name_from_lq',
               'degradations', 'pair_by')
_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm')
IMAGE_EXTENSIONS = _EXTENSIONS + tuple(ext.upper() for ext in _EXTENSIONS)


class PairSource(NamedTuple):
    """A resolved source: ``items`` (dicts with ``lq_path`` (None if synthetic) and ``gt_path``),
    ``io_backend`` (FileClient kwargs, ``type`` included) and ``degradations`` (None if paired)."""
    items: List[Dict[str, Optional[str]]]
    io_backend: dict
    degradations: Optional[List[dict]]


def _check_name_mapping(key: str, mapping: object) -> List[str]:
    if mapping is None:
        return []
    if not (isinstance(mapping, (list, tuple)) and len(mapping) == 2 and all(isinstance(m, str) for m in mapping)):
        return [f"{key}: expected [regex, replacement], e.g. ['^rain-(.*)$', 'norain-\\1'], got {mapping!r}."]
    try:
        re.compile(mapping[0])
    except re.error as err:
        return [f'{key}: invalid regular expression {mapping[0]!r}: {err}.']
    return []


def source_problems(key: str, name: str, source: object) -> List[str]:
    """Problems of a ``source`` other than missing paths (the option checker lists those once per path)."""
    if not isinstance(source, dict):
        return [f'{key}: expected a mapping with dataroot_gt (and dataroot_lq or degradations).']
    return _check_keys(key, name, source, check_paths=False)


def _check_keys(key: str, name: str, source: dict, check_paths: bool = True) -> List[str]:
    errors = [f'{key}.{k}: unknown source key; valid keys: {", ".join(SOURCE_KEYS)}.' for k in source
              if k not in SOURCE_KEYS]
    if 'dataroot_gt' not in source:
        errors.append(f'{key}.dataroot_gt: missing (folder or .lmdb of clean images).')
    for path_key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file') if check_paths else ():
        path = source.get(path_key)
        if path is not None and not osp.exists(osp.expanduser(str(path))):
            errors.append(f'{key}.{path_key}: {path!r} does not exist. Fix the path, or prepare the data '
                          '(scripts/prepare_datasets.py, scripts/make_demo_data.py, datasets/README.md).')
    backend = (source.get('io_backend') or {'type': 'disk'}).get('type')
    if backend not in ('disk', 'lmdb'):
        errors.append(f'{key}.io_backend.type: {backend!r} is not supported; use disk or lmdb.')
    if 'dataroot_lq' in source and 'degradations' in source:
        errors.append(f'{key}: give either dataroot_lq (paired images) or degradations (synthetic), not both.')
    if 'dataroot_lq' not in source and 'degradations' not in source and name not in KNOWN_TASKS:
        errors.append(unknown_task_message(key, name, 'degradations (or a dataroot_lq)'))
    errors += _check_name_mapping(f'{key}.gt_name_from_lq', source.get('gt_name_from_lq'))
    if source.get('pair_by', 'name') not in ('name', 'sorted_order'):
        errors.append(f'{key}.pair_by: {source["pair_by"]!r}; use name (default) or sorted_order.')
    for i, spec in enumerate(source.get('degradations') or []):
        errors += check_degradation_spec(f'{key}.degradations[{i}]', spec)
    if 'degradations' in source and not source['degradations']:
        errors.append(f'{key}.degradations: empty list; give at least one degradation.')
    return errors


def _gt_by_stem(gt_folder: str) -> Dict[str, str]:
    return {osp.splitext(rel)[0]: rel for rel in scandir(gt_folder, suffix=IMAGE_EXTENSIONS, recursive=True)}


def match_by_stem(lq_folder: str, gt_folder: str, pattern: str, replacement: str) -> Tuple[List[dict], List[str]]:
    """Pair each lq image with the gt image whose stem is ``re.sub(pattern, replacement, lq_stem)``.

    Returns the pairs and, for lq images without a partner, ``'lq_rel -> gt_stem.*'`` descriptions.
    """
    gt_stems = _gt_by_stem(gt_folder)
    items, missing = [], []
    for rel in sorted(scandir(lq_folder, suffix=IMAGE_EXTENSIONS, recursive=True)):
        stem = osp.splitext(rel)[0]
        gt_stem = osp.join(osp.dirname(stem), re.sub(pattern, replacement, osp.basename(stem)))
        if gt_stem in gt_stems:
            items.append({'lq_path': osp.join(lq_folder, rel), 'gt_path': osp.join(gt_folder, gt_stems[gt_stem])})
        else:
            missing.append(f'{rel} -> {gt_stem}.*')
    return items, missing


def pairs_by_name_mapping(lq_folder: str, gt_folder: str, pattern: str, replacement: str) -> List[dict]:
    """:func:`match_by_stem`, raising ``ValueError`` listing (up to 5) lq files without a gt partner."""
    items, missing = match_by_stem(lq_folder, gt_folder, pattern, replacement)
    if missing:
        raise ValueError(f'{len(missing)} lq image(s) in {lq_folder!r} have no gt in {gt_folder!r}: '
                         f'{"; ".join(missing[:5])}')
    return items


def pairs_by_sorted_order(lq_folder: str, gt_folder: str) -> List[dict]:
    """The i-th image of each sorted folder listing paired together; ``ValueError`` if the counts differ."""
    lq, gt = (sorted(scandir(folder, suffix=IMAGE_EXTENSIONS, recursive=True)) for folder in (lq_folder, gt_folder))
    if len(lq) != len(gt):
        raise ValueError(f'pair_by sorted_order: {len(lq)} images in {lq_folder!r} but {len(gt)} in {gt_folder!r}.')
    return [{'lq_path': osp.join(lq_folder, a), 'gt_path': osp.join(gt_folder, b)} for a, b in zip(lq, gt)]


def read_pair_list(meta_info_file: str, lq_folder: str, gt_folder: str) -> List[dict]:
    """Pairs from a ``lq_rel,gt_rel`` meta-info file (relative to ``lq_folder`` and ``gt_folder``)."""
    items = []
    with open(meta_info_file, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split(',')]
            if len(parts) != 2 or not all(parts):
                raise ValueError(f'{meta_info_file}:{number}: expected "lq_path,gt_path", got {line.strip()!r}.')
            items.append({'lq_path': osp.join(lq_folder, parts[0]), 'gt_path': osp.join(gt_folder, parts[1])})
    return items


def _is_pair_list(meta_info_file: str) -> bool:
    """True for ``lq,gt`` lines; BasicSR's ``name (h,w,c)`` lines have no comma in their first field."""
    with open(meta_info_file, encoding='utf-8') as f:
        first = next((line for line in f if line.strip()), 'x')
    return ',' in first.split()[0]


def _paired_items(source: dict, backend: str) -> List[dict]:
    folders = [osp.expanduser(source['dataroot_lq']), osp.expanduser(source['dataroot_gt'])]
    tmpl = source.get('filename_tmpl', '{}')
    meta = source.get('meta_info_file')
    if backend == 'lmdb':
        return paired_paths_from_lmdb(folders, ['lq', 'gt'])
    if meta:
        if _is_pair_list(meta):
            return read_pair_list(meta, *folders)
        return paired_paths_from_meta_info_file(folders, ['lq', 'gt'], meta, tmpl)
    if source.get('pair_by') == 'sorted_order':
        return pairs_by_sorted_order(*folders)
    if source.get('gt_name_from_lq'):
        pattern, replacement = source['gt_name_from_lq']
        return pairs_by_name_mapping(*folders, pattern, replacement)
    return sorted(paired_paths_from_folder(folders, ['lq', 'gt'], tmpl), key=lambda item: item['gt_path'])


def _gt_only_items(source: dict, backend: str) -> List[dict]:
    folder = osp.expanduser(source['dataroot_gt'])
    if backend == 'lmdb':
        paths = paths_from_lmdb(folder)
    elif source.get('meta_info_file') and _is_pair_list(source['meta_info_file']):
        paths = [item['gt_path'] for item in read_pair_list(source['meta_info_file'], folder, folder)]
    elif source.get('meta_info_file'):
        with open(source['meta_info_file'], encoding='utf-8') as f:
            paths = [osp.join(folder, line.split()[0]) for line in f if line.strip()]
    else:
        paths = [osp.join(folder, rel) for rel in sorted(scandir(folder, suffix=IMAGE_EXTENSIONS, recursive=True))]
    return [{'lq_path': None, 'gt_path': path} for path in paths]


def _io_backend(source: dict) -> dict:
    backend = dict(source.get('io_backend') or {'type': 'disk'})
    if backend['type'] == 'lmdb':
        roots = [source['dataroot_gt']] + ([source['dataroot_lq']] if 'dataroot_lq' in source else [])
        backend.update(db_paths=[osp.expanduser(r) for r in roots], client_keys=['gt', 'lq'][:len(roots)])
    return backend


def resolve_source(key: str, name: str, source: object) -> PairSource:
    """Check ``source`` (errors name ``key``) and list its pairs; raise ``ValueError`` on any problem."""
    if not isinstance(source, dict):
        raise ValueError(f'{key}: expected a mapping with dataroot_gt (and dataroot_lq or degradations).')
    errors = _check_keys(key, name, source)
    if errors:
        raise ValueError('\n  '.join(['invalid dataset source:'] + errors))
    backend = _io_backend(source)
    try:
        if 'dataroot_lq' in source:
            items, degradations = _paired_items(source, backend['type']), None
        else:
            items = _gt_only_items(source, backend['type'])
            degradations = source.get('degradations') or KNOWN_TASKS[name].degradations
    except (AssertionError, ValueError, OSError) as err:
        raise ValueError(f'{key}: cannot list the image pairs: {err}') from err
    if not items:
        raise ValueError(f'{key}: no images found in {source["dataroot_gt"]!r} '
                         f'(supported: {", ".join(IMAGE_EXTENSIONS)}).')
    return PairSource(items, backend, degradations)
