"""Compare restoration methods on the same images: one table, side-by-side grids and an HTML report.

Usage::

    # every method on the test sets and metrics of one test option file (the protocol)
    vlunet-compare -m VLU-Net=options/test_official_5task.yml \\
        -m "NAFNet+DA-CLIP=options/daclip/test_nafnet_daclip.yml" \\
        -m Perceive-IR=options/perceiveir/test_perceiveir_5task.yml -opt options/test_official_5task.yml
    # paired folders (matched by name), or a folder of your own photos (no ground truth: no metrics)
    vlunet-compare -m A=a.yml -m B=b.yml:experiments/B/models/net_g_5000.pth --lq my/lq --gt my/gt
    vlunet-compare -m A=a.yml -m B=b.yml --photos my_photos -o results/my_comparison

Methods are ``NAME=OPTION_FILE.yml[:WEIGHTS]``, ``NAME=NETWORK.json:WEIGHTS`` or ``NAME=WEIGHTS`` (VLU-Net);
without ``-opt``, ``--lq``/``--gt`` or ``--photos`` the test sets of the first method's option file are used.
Writes into ``-o`` (default results/compare): ``comparison.md``/``.csv``/``.json``, ``results/<method>/results.md``
(as the method's own ``vlunet/test.py`` run reports it), ``grids/<set>/<image>.png`` and ``index.html`` (open
it in a browser). A re-run reuses the restorations already written (``--overwrite`` restores again). A method
that cannot be built or fails on an image is reported and the others go on; the exit status is then 1 (2 for
bad arguments or inputs).
"""
import argparse
import os.path as osp
import sys
import traceback
from typing import List, Optional

VERBOSE_HINT = ' (--verbose shows the traceback)'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='vlunet-compare', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('-m', '--method', action='append', required=True, metavar='NAME=SOURCE',
                        help='a method: NAME=OPTION_FILE.yml[:WEIGHTS], NAME=NETWORK.json:WEIGHTS or NAME=WEIGHTS '
                             '(repeat for each method, in the order of the table and grids)')
    inputs = parser.add_mutually_exclusive_group()
    inputs.add_argument('-opt', help='test option file whose datasets and val.metrics are the protocol (default: the '
                                     "first method's option file)")
    inputs.add_argument('--lq', help='folder of degraded images (with --gt: paired by file name)')
    inputs.add_argument('--photos', help='folder of photos to restore (no ground truth, no metrics)')
    parser.add_argument('--gt', help='folder of ground-truth images for --lq')
    parser.add_argument('-o', '--output', default=osp.join('results', 'compare'),
                        help='output folder (default results/compare)')
    parser.add_argument('--lpips', action='store_true', help='add LPIPS (AlexNet) to the metrics (the metrics extra '
                                                             "and torchvision's AlexNet weights in the hub cache)")
    parser.add_argument('--fid', action='store_true', help='add FID per test set to the metrics (the metrics extra and '
                                                           "torch-fidelity's Inception weights in the hub cache)")
    parser.add_argument('--device', help="cpu, cuda, cuda:N or auto (default: each method's option file)")
    parser.add_argument('--steps', type=int, help='IR-SDE sampling steps (default: sde.T of the option file)')
    parser.add_argument('--seed', type=int, help='IR-SDE noise seed (default: sde.seed of the option file, 0)')
    parser.add_argument('--zoom', help='x,y,width,height: the region zoomed in the grids (default: where the '
                                       'methods differ most, per image)')
    parser.add_argument('--panel-width', type=int, default=256, help='width of each grid panel in pixels (256)')
    parser.add_argument('--overwrite', action='store_true', help='restore again even where outputs exist')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--verbose', action='store_true', help='tracebacks of errors')
    args = parser.parse_args(argv)
    if bool(args.lq) != bool(args.gt):
        parser.error('--lq and --gt go together (paired folders); for photos without ground truth use --photos.')
    if args.panel_width < 16:
        parser.error('--panel-width: at least 16 pixels.')
    return args


def _inputs(args: argparse.Namespace, methods):
    """(test sets, metrics) of the arguments (``--lpips`` / ``--fid`` added, checked before any work)."""
    from vlunet.compare.inputs import (
        FID_METRIC,
        LPIPS_METRIC,
        folder_metrics,
        metric_problem,
        option_file_sets,
        paired_folder_set,
        photo_folder_set,
    )
    if args.photos:
        return [photo_folder_set(args.photos)], {}
    if args.lq:
        sets, metrics = [paired_folder_set(args.lq, args.gt)], folder_metrics()
    else:
        option_file = args.opt or methods[0].option_file
        if not option_file:
            raise ValueError('no test images: give -opt TEST_OPTION_FILE, --lq DIR --gt DIR or --photos DIR '
                             '(or make the first method an option file with datasets).')
        sets, metrics = option_file_sets(option_file)
    for flag, extra in ((args.lpips, LPIPS_METRIC), (args.fid, FID_METRIC)):
        if flag and not any(opt['type'] == next(iter(extra.values()))['type'] for opt in metrics.values()):
            metrics.update(extra)
    for name, metric_opt in metrics.items():
        problem = metric_problem(metric_opt)
        if problem:
            raise ValueError(f'metric {name}: {problem}')
    return sets, metrics


def run(args: argparse.Namespace) -> int:
    import vlunet  # noqa: F401  (BasicSR compatibility fixes and registration first)
    from vlunet.compare.grid import parse_box, write_grids
    from vlunet.compare.methods import parse_method
    from vlunet.compare.report import write_report
    from vlunet.compare.runner import run_comparison
    from vlunet.compare.table import summarize, write_tables

    methods = [parse_method(text) for text in args.method]
    names = [method.name for method in methods]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f'--method: the name {duplicates[0]!r} is given twice; give each method its own name.')
    box = parse_box(args.zoom) if args.zoom else None
    sets, metrics = _inputs(args, methods)
    comparison = run_comparison(methods, sets, metrics, args.output, overwrite=args.overwrite, device=args.device,
                                steps=args.steps, seed=args.seed, progress=not args.no_progress)
    summary = summarize(comparison)
    markdown = write_tables(comparison, summary)
    page = write_report(comparison, summary, write_grids(comparison, box, args.panel_width))
    print(markdown.split('\n## ')[0].rstrip())
    reused = sum(method['reused'] for method in summary['methods'])
    failed = sum(len(method['failures']) for method in summary['methods'])
    print(f'\n{sum(method["restored"] for method in summary["methods"]) - reused} restored, {reused} reused, '
          f'{failed} failed. Report: {osp.abspath(page)}\nTables: {osp.abspath(osp.join(args.output, "comparison.md"))}'
          ' (.csv, .json)')
    return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print('\ninterrupted; the restorations written so far are kept (a re-run reuses them).', file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, ImportError) as error:  # OptionError is a ValueError
        if args.verbose:
            traceback.print_exc()
        message = str(error).strip() or type(error).__name__
        print(f'error: {message}' + ('' if args.verbose else VERBOSE_HINT), file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
