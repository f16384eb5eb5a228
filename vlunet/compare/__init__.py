"""Compare restoration methods on the same images under one protocol (``vlunet-compare``, ``scripts/compare.py``).

:mod:`~vlunet.compare.methods` (what a method is), :mod:`~vlunet.compare.inputs` (the test sets),
:mod:`~vlunet.compare.runner` (restore every image with every method), :mod:`~vlunet.compare.table`
(Markdown, CSV and JSON results), :mod:`~vlunet.compare.grid` (side-by-side images) and
:mod:`~vlunet.compare.report` (one ``index.html``); :mod:`~vlunet.compare.cli` is the command.
"""
