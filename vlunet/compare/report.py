"""``index.html``: the comparison as one self-contained page (no server, no network, no CDN).

The page holds the tables (costs and averages, one table per metric with the best value in bold,
failures), and per image its grid and a before/after slider for each method (the input on the left of
the handle, the method's restoration on the right; drag the slider or use the arrow keys). Styles and
script are inlined; the images are the PNG files next to it (relative links), so the folder can be
copied or zipped as a whole and opened from the file system in any browser.
"""
import html
import os.path as osp
import time
from typing import Dict, List
from urllib.parse import quote

from vlunet.compare.runner import OK, Comparison, input_path
from vlunet.compare.table import COST_HEADER, cost_columns, metric_table
from vlunet.utils.atomic_write import atomic_write_text

PAGE_NAME = 'index.html'
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
.grid { max-width: 100%; display: block; margin: 0.5em 0; }
.sliders { display: flex; flex-wrap: wrap; gap: 1em; }
.ba { position: relative; width: 256px; }
.ba img { display: block; width: 100%; image-rendering: pixelated; }
.ba .after { position: absolute; top: 0; left: 0; clip-path: inset(0 0 0 50%); }
.ba input { width: 100%; margin: 0.3em 0 0; }
.ba .label { font-size: 0.85em; display: flex; justify-content: space-between; }
.failed { color: #a00; }
"""
SCRIPT = """
document.querySelectorAll('.ba input[type=range]').forEach(function (range) {
  var after = range.parentNode.querySelector('.after');
  function update() { after.style.clipPath = 'inset(0 0 0 ' + range.value + '%)'; }
  range.addEventListener('input', update);
  update();
});
"""


def _link(relative: str) -> str:
    return html.escape(quote(relative.replace(osp.sep, '/')), quote=True)


def _table(rows: List[List[str]]) -> str:
    head = ''.join(f'<th>{html.escape(cell)}</th>' for cell in rows[0])
    body = []
    for row in rows[1:]:
        cells = [f'<strong>{html.escape(cell[2:-2])}</strong>' if cell.startswith('**') else html.escape(cell)
                 for cell in row]
        body.append('<tr>' + ''.join(f'<td>{cell}</td>' for cell in cells) + '</tr>')
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _slider(before: str, after: str, method: str, image: str) -> str:
    name = html.escape(method)
    return (f'<div class="ba"><img class="before" src="{_link(before)}" alt="input {html.escape(image)}">'
            f'<img class="after" src="{_link(after)}" alt="{name} {html.escape(image)}">'
            f'<input type="range" min="0" max="100" value="50" aria-label="input / {name}">'
            f'<div class="label"><span>input</span><span>{name}</span></div></div>')


def render_page(comparison: Comparison, summary: dict, grids: Dict[str, Dict[str, str]]) -> str:
    """The HTML of ``index.html``; ``grids``: {set: {image: grid path}} (:func:`vlunet.compare.grid.write_grids`)."""
    parts = ['<h1>Comparison</h1>', f'<p>{len(summary["methods"])} methods, '
             f'{sum(len(s["images"]) for s in summary["sets"])} images in {len(summary["sets"])} test sets; '
             f'written {html.escape(time.strftime("%Y-%m-%d %H:%M"))}. Tables: comparison.md, .csv, .json.</p>']
    cost_rows = [['Method'] + COST_HEADER] + [[method['name']] + cost_columns(method) for method in summary['methods']]
    parts += ['<h2>Methods</h2>', _table(cost_rows)]
    for metric, options in summary['metrics'].items():
        better = 'higher' if options['higher_is_better'] else 'lower'
        parts += [f'<h2>{html.escape(metric)} <small>({html.escape(options["type"])}, {better} is better)</small></h2>',
                  _table(metric_table(summary, metric))]
    failures = [(method['name'], f'{failure["set"]}/{failure["image"]}', failure['error'])
                for method in summary['methods'] for failure in method['failures']]
    if failures:
        parts.append('<h2>Failures</h2><ul class="failed">' + ''.join(
            f'<li>{html.escape(name)}, {html.escape(where)}: {html.escape(str(error))}</li>'
            for name, where, error in failures) + '</ul>')
    for test_set in comparison.sets:
        parts.append(f'<h2>{html.escape(test_set.name)}</h2>')
        if test_set.protocol:
            parts.append(f'<p>{html.escape(test_set.protocol)}</p>')
        for image in test_set.names:
            parts.append(f'<h3>{html.escape(image)}</h3>')
            if image in grids.get(test_set.name, {}):
                parts.append(f'<img class="grid" src="{_link(grids[test_set.name][image])}" '
                             f'alt="grid {html.escape(image)}">')
            sliders = [_slider(input_path(test_set.name, image), record['output'], run.spec.name, image)
                       for run in comparison.methods
                       for record in [comparison.records[run.spec.name][test_set.name][image]]
                       if record.get('status') == OK]
            parts.append('<div class="sliders">' + ''.join(sliders) + '</div>')
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Comparison</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f'<body>{"".join(parts)}<script>{SCRIPT}</script></body></html>\n')


def write_report(comparison: Comparison, summary: dict, grids: Dict[str, Dict[str, str]]) -> str:
    """Write ``index.html`` into the output folder; returns its path."""
    path = osp.join(comparison.output, PAGE_NAME)
    atomic_write_text(render_page(comparison, summary, grids), path)
    return path
