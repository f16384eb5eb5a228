"""The existing file a mistyped path most likely meant (``-opt options/train_demo.yml`` -> ``options/demo/...``)."""
import difflib
import glob
import os.path as osp
from typing import Optional

MAX_CANDIDATES = 2000  # files looked at, so a path under a huge folder stays quick
SEARCH_DEPTH = 2  # folders below the nearest existing one
OUTPUT_FOLDERS = {'experiments', 'results', 'tb_logger'}  # BasicSR's copies of option files are not suggested


def _existing_folder(path: str) -> str:
    folder = osp.dirname(osp.abspath(path))
    while not osp.isdir(folder):
        folder = osp.dirname(folder)
    return folder


def close_file(path: str) -> Optional[str]:
    """An existing file with ``path``'s extension under the nearest existing folder of ``path`` (2 levels down): one
    with the same name if any, else the closest spelling; shown as ``path`` is (relative stays relative), or None."""
    folder = _existing_folder(path)
    extension = osp.splitext(path)[1] or '.*'
    candidates = sorted(found for depth in range(SEARCH_DEPTH + 1)
                        for found in glob.glob(osp.join(glob.escape(folder), *['*'] * depth, f'*{extension}')))
    candidates = [c for c in candidates if not set(osp.relpath(c, folder).split(osp.sep)[:-1]) & OUTPUT_FOLDERS]
    candidates = candidates[:MAX_CANDIDATES]
    names = difflib.get_close_matches(osp.basename(path), [osp.basename(c) for c in candidates], n=1, cutoff=0.8)
    close = [c for c in candidates if names and osp.basename(c) == names[0]]
    if not close:
        return None
    return close[0] if osp.isabs(path) else osp.relpath(close[0])
