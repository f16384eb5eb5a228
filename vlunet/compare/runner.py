"""Restore every image of every test set with every method, under one protocol, and record what happened.

Layout of the output folder::

    inputs/<set>/<image>.png             the degraded input as the methods saw it
    gt/<set>/<image>.png                 its ground truth (when there is one)
    methods/<method>/<set>/<image>.png   each method's restoration
    methods/<method>/<set>/<image>.json  its record: metrics, seconds, peak memory, detected degradation

Per image, the metrics are the protocol's (``val.metrics``) computed on the restored float image
exactly as a test run computes them (:func:`vlunet.metrics.restoration_metric.metric_arrays`). A
re-run reuses every image whose PNG and record exist and were made under the same protocol and
method files (``overwrite=True`` restores everything again). A method that cannot be built (missing or
wrong weights) or fails on an image (out of memory, NaN output) is recorded as failed with its
one-line reason; the other methods and images go on. Progress: one bar over images x methods, with
the time left.
"""
import json
import os.path as osp
import traceback
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from vlunet.compare.inputs import Sample, TestSet
from vlunet.compare.methods import MethodSpec, MethodStats, build_restorer, fingerprint, method_stats, slug
from vlunet.inference import save_image
from vlunet.metrics.dataset_level import is_dataset_level
from vlunet.metrics.restoration_metric import metric_arrays, metric_input
from vlunet.utils.atomic_write import atomic_write_text
from vlunet.utils.peak_memory import measure

from basicsr.metrics import calculate_metric
from basicsr.utils.registry import METRIC_REGISTRY

OK, FAILED = 'ok', 'failed'


class MethodRun(NamedTuple):
    """A method as run: its spec, folder name, ``stats`` (None if it could not be built), ``device`` and ``error``."""
    spec: MethodSpec
    folder: str
    stats: Optional[MethodStats]
    device: Optional[str]
    error: Optional[str]


class Comparison(NamedTuple):
    """Everything a comparison produced: the ``methods``, the ``sets``, the protocol's ``metrics`` and ``records``
    ({method name: {set name: {image name: record}}}); paths are relative to ``output``."""
    output: str
    methods: List[MethodRun]
    sets: List[TestSet]
    metrics: Dict[str, dict]
    records: Dict[str, Dict[str, Dict[str, dict]]]


MESSAGE_LENGTH = 300


def one_line(error: BaseException) -> str:
    """``error``'s message on one line (its lines joined, at most :data:`MESSAGE_LENGTH` characters; its type when
    it has none)."""
    message = ' '.join(str(error).split()) or type(error).__name__
    return message if len(message) <= MESSAGE_LENGTH else message[:MESSAGE_LENGTH - 1] + '…'



def input_path(set_name: str, image: str) -> str:
    return osp.join('inputs', slug(set_name), f'{image}.png')


def gt_path(set_name: str, image: str) -> str:
    return osp.join('gt', slug(set_name), f'{image}.png')


def output_path(method_folder: str, set_name: str, image: str) -> str:
    return osp.join('methods', method_folder, slug(set_name), f'{image}.png')


def image_metrics(restored: torch.Tensor, gt: torch.Tensor, metrics: Dict[str, dict]) -> Dict[str, float]:
    """The per-image ``metrics`` (dataset-level ones such as FID are left out) of ``restored`` against ``gt``
    ((3, H, W) RGB in [0, 1]), computed as a test run computes them."""
    arrays = metric_arrays(restored, gt)
    values = {}
    for name, metric_opt in metrics.items():
        function = METRIC_REGISTRY.get(metric_opt['type'])
        if not is_dataset_level(function):
            values[name] = float(calculate_metric(arrays[metric_input(function)], metric_opt))
    return values


def _method_folders(methods: Sequence[MethodSpec]) -> List[str]:
    """A distinct folder name per method (names that slug alike get a number)."""
    folders: List[str] = []
    for spec in methods:
        folder, number = slug(spec.name), 2
        while folder in folders:
            folder, number = f'{slug(spec.name)}_{number}', number + 1
        folders.append(folder)
    return folders


def _read_record(path: str) -> Optional[dict]:
    try:
        with open(path, encoding='utf-8') as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


class _Runner:
    """Writes the references and restorations of one comparison into ``output``."""

    def __init__(self, output: str, metrics: Dict[str, dict], overwrite: bool, log: Callable[[str], None]):
        self.output, self.metrics, self.overwrite, self.log = output, metrics, overwrite, log
        self.saved_references: set = set()

    def path(self, relative: str) -> str:
        return osp.join(self.output, relative)

    def save_references(self, test_set: TestSet, sample: Sample) -> None:
        """The input (and ground truth) as PNG, once per run (kept from an earlier run unless overwriting)."""
        if (test_set.name, sample.name) in self.saved_references:
            return
        self.saved_references.add((test_set.name, sample.name))
        for relative, image in ((input_path(test_set.name, sample.name), sample.lq),
                                (gt_path(test_set.name, sample.name), sample.gt)):
            if image is not None and (self.overwrite or not osp.isfile(self.path(relative))):
                save_image(self.path(relative), image.permute(1, 2, 0).numpy())

    def restore(self, restorer, key: dict, folder: str, test_set: TestSet, sample: Sample) -> dict:
        relative = output_path(folder, test_set.name, sample.name)
        record_file = self.path(osp.splitext(relative)[0] + '.json')
        record = None if self.overwrite else _read_record(record_file)
        if record and record.get('key') == key and record.get('status') == OK and osp.isfile(self.path(relative)):
            return dict(record, reused=True)
        record = {'key': key, 'output': relative}
        try:
            with measure(restorer.device) as measurement:
                restored, guess = restorer.restore_and_detect(sample.lq.permute(1, 2, 0).numpy())
            save_image(self.path(relative), restored)
            restored_tensor = torch.from_numpy(np.ascontiguousarray(restored)).permute(2, 0, 1)
            metrics = {} if sample.gt is None else image_metrics(restored_tensor, sample.gt, self.metrics)
            record.update(status=OK, metrics=metrics, scored=sample.gt is not None, seconds=measurement.seconds,
                          peak_bytes=measurement.peak_bytes, degradation=guess.prompt if guess else None)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # one method failing on one image must not stop the others
            record.update(status=FAILED, error=one_line(error), trace=traceback.format_exc(limit=-3))
            self.log(f'{folder} failed on {test_set.name}/{sample.name}: {one_line(error)}')
        atomic_write_text(json.dumps(record, indent=1, sort_keys=True), record_file)
        return dict(record, reused=False)


def run_comparison(methods: Sequence[MethodSpec], sets: Sequence[TestSet], metrics: Dict[str, dict], output: str,
                   overwrite: bool = False, device: Optional[str] = None, steps: Optional[int] = None,
                   seed: Optional[int] = None, progress: bool = True,
                   log: Callable[[str], None] = tqdm.write) -> Comparison:
    """Restore every image of ``sets`` with every method into ``output`` (see the module docstring).

    Args:
        methods: the methods, in the order of the table and the grids.
        sets: the test sets (:mod:`vlunet.compare.inputs`).
        metrics: the protocol (``val.metrics`` mapping); empty for photos without ground truth.
        overwrite: restore again even where a matching output exists.
        device: ``cpu``, ``cuda``, ``auto`` (default: each method's option file, else auto).
        steps, seed: IR-SDE sampling steps and noise seed (default: each option file's ``sde``).
        progress: show the bar over images x methods.
        log: where one-line messages (failures) go.
    """
    images = sum(len(test_set) for test_set in sets)
    records: Dict[str, Dict[str, Dict[str, dict]]] = {}
    runs: List[MethodRun] = []
    protocol_key = json.loads(json.dumps(metrics, sort_keys=True, default=str))
    with tqdm(total=images * len(methods), unit='image', disable=not progress, dynamic_ncols=True) as bar:
        runner = _Runner(output, metrics, overwrite, log)
        for spec, folder in zip(methods, _method_folders(methods)):
            bar.set_description(spec.name)
            method_records = records.setdefault(spec.name, {})
            try:
                restorer = build_restorer(spec, device, steps, seed)
                stats = method_stats(spec, restorer)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as error:  # missing or wrong weights: this method fails, the others run
                log(f'{spec.name}: cannot be built: {one_line(error)}')
                runs.append(MethodRun(spec, folder, None, None, one_line(error)))
                for test_set in sets:
                    method_records[test_set.name] = {name: {'status': FAILED, 'error': one_line(error)}
                                                     for name in test_set.names}
                bar.update(sum(len(test_set) for test_set in sets))
                continue
            runs.append(MethodRun(spec, folder, stats, str(restorer.device), None))
            key = {'metrics': protocol_key, 'method': fingerprint(spec, restorer)}
            for test_set in sets:
                set_records = method_records.setdefault(test_set.name, {})
                for sample in test_set:
                    runner.save_references(test_set, sample)
                    set_records[sample.name] = runner.restore(restorer, key, folder, test_set, sample)
                    bar.update(1)
            del restorer
            if device and device.startswith('cuda') and torch.cuda.is_available():
                torch.cuda.empty_cache()
    return Comparison(output, runs, list(sets), dict(metrics), records)
