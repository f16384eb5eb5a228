"""Clean-content captions for DA-CLIP training: a task's ``captions`` file, looked up by image path.

A task of :class:`~vlunet.data.mixed_degradation_dataset.MixedDegradationDataset` may give
``captions: <file>``; its samples then carry ``caption`` (the caption of the clean image; ``''`` when
the file has none for that image, and the content loss skips it). Two formats, told apart by the
header line:

- DA-CLIP's CSV (``daclip_train.csv``, written by the original ``generate_captions.py``): tab-separated,
  header ``filepath<TAB>title``; ``filepath`` is the **LQ** image path, ``title`` is
  ``"<caption>: <degradation name>"``. Decision: the title is split at its **last** ``": "`` (the
  original splits at every ``": "`` and fails on captions containing one); the degradation part is
  ignored (the sample's degradation name is its task's ``text``).
- a per-task captions file: no header, one ``<image path or file name><TAB><caption>`` per line.

Lookup: the LQ path (for synthetic tasks: the clean image's path), normalised and made absolute
(relative paths in the file are relative to the working directory, as the original's); failing
that, the longest matching tail of up to 4 path components (``train/noisy/LQ/0001.png``, ...,
``0001.png``) that is unique in the file, so a CSV written on another machine or from another
folder still matches.

Captions cannot be generated offline: the original uses ``clip-interrogator==0.6.0``
``Interrogator(Config(clip_model_name='ViT-L-14/openai')).generate_caption(<GT image>)`` (a BLIP
captioner) on the **clean** image; any captioner writing one of the formats above works.
"""
import csv
import os.path as osp
from typing import Dict, Optional, Tuple

MAX_SUFFIX_PARTS = 4  # e.g. train/noisy/LQ/0001.png
CSV_HEADER = ('filepath', 'title')
TITLE_SEPARATOR = ': '


def _path_key(path: str) -> str:
    return osp.normcase(osp.abspath(osp.expanduser(path)))


def _parts(path: str) -> Tuple[str, ...]:
    return tuple(p for p in osp.normcase(osp.normpath(path)).replace('\\', '/').split('/') if p not in ('', '.'))


class Captions:
    """Captions of one task's images, by path (see the module docstring)."""

    def __init__(self, by_path: Dict[str, str], source: str):
        self.source = source
        self.by_path = {_path_key(path): caption for path, caption in by_path.items()}
        suffixes: Dict[Tuple[str, ...], Optional[str]] = {}
        for path, caption in by_path.items():
            parts = _parts(path)
            for k in range(1, min(len(parts), MAX_SUFFIX_PARTS) + 1):
                suffix = parts[-k:]
                suffixes[suffix] = caption if suffix not in suffixes else None  # None: ambiguous
        self.by_suffix = {suffix: caption for suffix, caption in suffixes.items() if caption is not None}

    def __len__(self) -> int:
        return len(self.by_path)

    def caption(self, image_path: str) -> str:
        """The caption of ``image_path``, or ``''`` when the file has none."""
        found = self.by_path.get(_path_key(image_path))
        if found is not None:
            return found
        parts = _parts(image_path)
        for k in range(min(len(parts), MAX_SUFFIX_PARTS), 0, -1):
            if parts[-k:] in self.by_suffix:
                return self.by_suffix[parts[-k:]]
        return ''


def _caption_of_title(title: str, where: str) -> str:
    caption, separator, _ = title.rpartition(TITLE_SEPARATOR)
    if not separator or not caption.strip():
        raise ValueError(f'{where}: title {title!r} is not "<caption>: <degradation name>".')
    return caption.strip()


def read_captions(path: str) -> Captions:
    """Read a DA-CLIP CSV or a per-task captions file; ``ValueError`` names the file and line of a bad row."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'captions file {path!r} does not exist (see vlunet/data/daclip/daclip_captions.py for '
                                'the formats and how to make one).')
    with open(path, encoding='utf-8', newline='') as f:
        rows = list(csv.reader(f, delimiter='\t', quoting=csv.QUOTE_NONE))
    is_daclip_csv = bool(rows) and tuple(rows[0][:2]) == CSV_HEADER
    by_path = {}
    for number, row in enumerate(rows[1:] if is_daclip_csv else rows, 2 if is_daclip_csv else 1):
        if not row or not any(cell.strip() for cell in row):
            continue
        where = f'{path}:{number}'
        if len(row) != 2 or not row[0].strip():
            raise ValueError(f'{where}: expected "<image path><TAB><{"title" if is_daclip_csv else "caption"}>", '
                             f'got {row!r}.')
        by_path[row[0].strip()] = _caption_of_title(row[1], where) if is_daclip_csv else row[1].strip()
    if not by_path:
        raise ValueError(f'captions file {path!r} holds no captions.')
    return Captions(by_path, path)
