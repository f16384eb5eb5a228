"""The comparison's results: ``comparison.md``, ``comparison.csv``, ``comparison.json``, and each method's own table.

Per method and test set, each metric is the mean over the set's images (summed in image order in
float64, as a test run sums them), dataset-level metrics (FID) are computed once per set from the
saved 8-bit restorations (what a test run gives them), and the "Average" row averages the sets (each
set counts once). ``results/<method>/results.md`` and ``results.csv`` are written by
:func:`vlunet.utils.results_table.write_results_table`, so they read exactly as the ``results/<name>/``
table that ``vlunet/test.py`` writes for the method's own test option file with the same test sets
and metrics. Besides the metrics: parameters, GMACs at 256 x 256 (IR-SDE: per sampling step), IR-SDE
sampling steps, mean seconds per image (encoder, restoration and detection; the first image includes
warm-up) and the peak memory of one image on the device used (CUDA: allocated tensors; CPU: the
process's peak resident memory).
"""
import csv
import io
import json
import math
import os.path as osp
from typing import Dict, List, Optional

import cv2
import numpy as np

from vlunet.compare.runner import OK, Comparison, gt_path
from vlunet.metrics.dataset_level import build_dataset_metrics
from vlunet.metrics.restoration_metric import FLOAT_RGB, metric_input
from vlunet.utils.atomic_write import atomic_write_text
from vlunet.utils.results_table import AVERAGE_ROW, format_markdown, write_results_table

from basicsr.utils.registry import METRIC_REGISTRY

LOWER_IS_BETTER = ('calculate_lpips', 'calculate_fid', 'calculate_niqe')
MARKDOWN_NAME, CSV_NAME, JSON_NAME = 'comparison.md', 'comparison.csv', 'comparison.json'


def higher_is_better(metric_opt: dict) -> bool:
    return metric_opt['type'] not in LOWER_IS_BETTER


def _read_png(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f'{path}: missing or unreadable image')
    return image


def _dataset_level_values(comparison: Comparison, set_name: str, records: Dict[str, dict]) -> dict:
    """The dataset-level metrics of one method on one set, from the saved uint8 restorations and ground truths."""
    metrics = build_dataset_metrics(comparison.metrics)
    if not metrics:
        return {}
    for image, record in records.items():
        if record.get('status') != OK or not record.get('scored'):
            continue
        restored = _read_png(osp.join(comparison.output, record['output']))
        reference = _read_png(osp.join(comparison.output, gt_path(set_name, image)))
        for name, metric in metrics.items():
            if metric_input(METRIC_REGISTRY.get(comparison.metrics[name]['type'])) == FLOAT_RGB:
                metric.add(img=restored[..., ::-1] / 255.0, img2=reference[..., ::-1] / 255.0)
            else:
                metric.add(img=restored, img2=reference)
    return {name: metric.value(metric.statistics()) for name, metric in metrics.items()}


def _set_results(comparison: Comparison, method: str, set_name: str) -> Optional[Dict[str, float]]:
    """{metric: value} of one method on one set (None when no image with a ground truth was restored)."""
    records = comparison.records[method][set_name]
    scored = [record['metrics'] for record in records.values() if record.get('status') == OK and record.get('scored')]
    if not scored:
        return None
    results = {}
    for name in comparison.metrics:
        if name in scored[0]:
            total = 0.0
            for values in scored:
                total += values[name]
            results[name] = total / len(scored)
    results.update(_dataset_level_values(comparison, set_name, records))
    return {name: results[name] for name in comparison.metrics if name in results}


def summarize(comparison: Comparison) -> dict:
    """The JSON-able summary of a comparison (what every output of :mod:`vlunet.compare` is made from)."""
    methods = []
    for run in comparison.methods:
        name = run.spec.name
        records = comparison.records[name]
        ok = [record for set_records in records.values() for record in set_records.values()
              if record.get('status') == OK]
        results, counts = {}, {}
        for test_set in comparison.sets:
            values = _set_results(comparison, name, test_set.name)
            if values is not None:
                results[test_set.name] = values
                counts[test_set.name] = sum(1 for record in records[test_set.name].values()
                                            if record.get('status') == OK and record.get('scored'))
        metric_names = list(next(iter(results.values()))) if results else []
        average = {metric: sum(values[metric] for values in results.values()) / len(results)
                   for metric in metric_names}
        peaks = [record['peak_bytes'] for record in ok if record.get('peak_bytes') is not None]
        methods.append({
            'name': name, 'folder': run.folder, 'option_file': run.spec.option_file, 'weights': run.spec.weights,
            'network_file': run.spec.network_file, 'device': run.device, 'error': run.error,
            'parameters': run.stats.parameters if run.stats else None,
            'gmacs_256': run.stats.gmacs if run.stats else None, 'steps': run.stats.steps if run.stats else None,
            'seconds_per_image': sum(record['seconds'] for record in ok) / len(ok) if ok else None,
            'peak_memory_bytes': max(peaks) if peaks else None,
            'restored': len(ok), 'reused': sum(1 for record in ok if record.get('reused')),
            'failures': [{'set': set_name, 'image': image, 'error': record.get('error')}
                         for set_name, set_records in records.items() for image, record in set_records.items()
                         if record.get('status') != OK],
            'results': results, 'counts': counts, 'average': average})
    return {'metrics': {name: {**opt, 'higher_is_better': higher_is_better(opt)}
                        for name, opt in comparison.metrics.items()},
            'sets': [{'name': test_set.name, 'images': list(test_set.names), 'protocol': test_set.protocol,
                      'has_gt': test_set.has_gt} for test_set in comparison.sets],
            'methods': methods}


def _number(value: Optional[float], digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '-'
    return f'{value:.{digits}f}'


def _memory(value: Optional[int]) -> str:
    return '-' if value is None else f'{value / 2 ** 20:.0f} MiB'


def cost_columns(method: dict) -> List[str]:
    """Parameters, GMACs, steps, seconds per image, peak memory and device of one summarised method, as text."""
    parameters = method['parameters']
    return ['-' if parameters is None else f'{parameters / 1e6:.2f} M', _number(method['gmacs_256'], 2),
            '-' if method['steps'] is None else str(method['steps']), _number(method['seconds_per_image'], 3),
            _memory(method['peak_memory_bytes']), method['device'] or '-']


COST_HEADER = ['Parameters', 'GMACs (256²)', 'Steps', 's / image', 'Peak memory', 'Device']


def metric_table(summary: dict, metric: str) -> List[List[str]]:
    """Rows (header first) of one metric: a row per method, a column per test set and the average; the best value
    of each column in bold."""
    sets = [test_set['name'] for test_set in summary['sets']]
    higher = summary['metrics'][metric]['higher_is_better']
    columns = [[method['results'].get(name, {}).get(metric) for method in summary['methods']] for name in sets]
    columns.append([method['average'].get(metric) if method['results'] else None for method in summary['methods']])
    best = []
    for column in columns:
        finite = [value for value in column if value is not None and not math.isnan(value)]
        best.append((max if higher else min)(finite) if finite else None)
    rows = [['Method'] + sets + [AVERAGE_ROW]]
    for index, method in enumerate(summary['methods']):
        cells = [_number(column[index]) for column in columns]
        rows.append([method['name']] + [f'**{cell}**' if column[index] is not None and column[index] == top
                                        and len(summary['methods']) > 1 else cell
                                        for cell, column, top in zip(cells, columns, best)])
    return rows


def _markdown_table(rows: List[List[str]]) -> List[str]:
    return ['| ' + ' | '.join(rows[0]) + ' |', '|' + '|'.join(['---'] + ['---:'] * (len(rows[0]) - 1)) + '|'] + [
        '| ' + ' | '.join(row) + ' |' for row in rows[1:]]


def format_comparison_markdown(summary: dict) -> str:
    """``comparison.md``: costs and averages per method, one table per metric, failures, each method's own table."""
    metrics = list(summary['metrics'])
    lines = ['# Comparison', '']
    rows = [['Method'] + COST_HEADER + [f'{metric} (avg)' for metric in metrics] + ['Failed']]
    for method in summary['methods']:
        failed = 'not run' if method['error'] else str(len(method['failures']))
        rows.append([method['name']] + cost_columns(method)
                    + [_number(method['average'].get(metric)) for metric in metrics] + [failed])
    lines += _markdown_table(rows)
    for metric in metrics:
        better = 'higher' if summary['metrics'][metric]['higher_is_better'] else 'lower'
        lines += ['', f'## {metric} ({summary["metrics"][metric]["type"]}, {better} is better)', '']
        lines += _markdown_table(metric_table(summary, metric))
    protocols = [f'- {test_set["name"]}: {test_set["protocol"]}.' for test_set in summary['sets']
                 if test_set['protocol']]
    if protocols:
        lines += ['', '## Protocol', ''] + protocols
    failures = [f'- {method["name"]}: {method["error"]}' if method['error'] else
                f'- {method["name"]}, {failure["set"]}/{failure["image"]}: {failure["error"]}'
                for method in summary['methods'] for failure in (method['failures'][:1] if method['error']
                                                                 else method['failures'])]
    if failures:
        lines += ['', '## Failures', ''] + failures
    for method in summary['methods']:
        if method['results']:
            lines += ['', f'## {method["name"]} (as its own test run reports it)', '',
                      format_markdown(method['results'], method['counts'], _protocols(summary)).rstrip('\n')]
    return '\n'.join(lines) + '\n'


def _protocols(summary: dict) -> Dict[str, Optional[str]]:
    return {test_set['name']: test_set['protocol'] for test_set in summary['sets']}


def format_comparison_csv(summary: dict) -> str:
    """``comparison.csv``: a row per method and test set, and per method its average (empty metric: not computed)."""
    metrics = list(summary['metrics'])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator='\n')
    writer.writerow(['Method', 'Dataset', 'Images'] + metrics + ['parameters', 'gmacs_256', 'steps',
                                                                 'seconds_per_image', 'peak_memory_bytes', 'device',
                                                                 'failed'])
    for method in summary['methods']:
        costs = [method['parameters'], method['gmacs_256'], method['steps'], method['seconds_per_image'],
                 method['peak_memory_bytes'], method['device'], len(method['failures'])]
        rows = [(name, method['counts'][name], values) for name, values in method['results'].items()]
        if method['results']:
            rows.append((AVERAGE_ROW, sum(method['counts'].values()), method['average']))
        for dataset, count, values in rows or [('', 0, {})]:
            writer.writerow([method['name'], dataset, count] + [values.get(metric, '') for metric in metrics]
                            + ['' if value is None else value for value in costs])
    return buffer.getvalue()


def write_tables(comparison: Comparison, summary: dict) -> str:
    """Write ``comparison.md``/``.csv``/``.json`` and ``results/<method>/results.md``/``.csv``; returns the Markdown."""
    for method in summary['methods']:
        if method['results']:
            write_results_table(method['results'], method['counts'],
                                osp.join(comparison.output, 'results', method['folder']), _protocols(summary))
    markdown = format_comparison_markdown(summary)
    atomic_write_text(markdown, osp.join(comparison.output, MARKDOWN_NAME))
    atomic_write_text(format_comparison_csv(summary), osp.join(comparison.output, CSV_NAME))
    atomic_write_text(json.dumps(summary, indent=1, allow_nan=True), osp.join(comparison.output, JSON_NAME))
    return markdown
