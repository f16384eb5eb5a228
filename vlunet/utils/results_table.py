"""Per-dataset results table (Markdown and CSV), one row per test set plus their average.

Like the paper's Tables 1-2: rows are the test sets in the order they were evaluated, columns the
option file's ``val.metrics`` names; the last row averages each metric over the datasets (each
dataset counts once, whatever its number of images).
"""
import csv
import io
import os.path as osp
from typing import Dict, List, Mapping, Optional

from vlunet.utils.atomic_write import atomic_write_text

MARKDOWN_NAME = 'results.md'
CSV_NAME = 'results.csv'
AVERAGE_ROW = 'Average'


def _rows(results: Mapping[str, Mapping[str, float]], counts: Mapping[str, int]) -> List[List[str]]:
    metrics = list(next(iter(results.values())))
    rows = [[name, str(counts[name])] + [f'{values[m]:.4f}' for m in metrics] for name, values in results.items()]
    average = [sum(values[m] for values in results.values()) / len(results) for m in metrics]
    rows.append([AVERAGE_ROW, str(sum(counts.values()))] + [f'{value:.4f}' for value in average])
    return [['Dataset', 'Images'] + metrics] + rows


def format_markdown(results: Mapping[str, Mapping[str, float]], counts: Mapping[str, int],
                    protocols: Optional[Mapping[str, Optional[str]]] = None) -> str:
    """A Markdown table of ``results`` ({dataset: {metric: value}}) with image ``counts``.

    ``protocols`` ({dataset: how its inputs were made, or None}) adds a "Protocol" line per described
    dataset below the table (e.g. noise added on the fly and quantised to uint8).
    """
    header, *rows = _rows(results, counts)
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(['---'] + ['---:'] * (len(header) - 1)) + '|']
    notes = [f'Protocol, {name}: {note}.' for name, note in (protocols or {}).items() if note and name in results]
    return '\n'.join(lines + ['| ' + ' | '.join(row) + ' |' for row in rows] + ([''] + notes if notes else [])) + '\n'


def format_csv(results: Mapping[str, Mapping[str, float]], counts: Mapping[str, int]) -> str:
    """The same table as CSV (inf PSNR of identical images is written as ``inf``)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator='\n').writerows(_rows(results, counts))
    return buffer.getvalue()


def write_results_table(results: Dict[str, Dict[str, float]], counts: Dict[str, int], folder: str,
                        protocols: Optional[Mapping[str, Optional[str]]] = None) -> str:
    """Write ``results.md`` (with the ``protocols`` lines) and ``results.csv`` into ``folder`` (atomically).

    Returns the Markdown.
    """
    if not results:
        raise ValueError('no dataset results to write')
    markdown = format_markdown(results, counts, protocols)
    atomic_write_text(markdown, osp.join(folder, MARKDOWN_NAME))
    atomic_write_text(format_csv(results, counts), osp.join(folder, CSV_NAME))
    return markdown
