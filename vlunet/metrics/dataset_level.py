"""Dataset-level metrics: one value per test set (e.g. FID), not an average of per-image values.

A dataset-level metric is a registered METRIC_REGISTRY function marked with
:func:`dataset_level_metric`. Called with its options (the ``val.metrics`` entry without ``type``),
it returns a fresh :class:`DatasetMetric` for one test set. ``GuidedRestorationModel.validation`` (and the models
built on it) then:

1. calls ``add(img=restored, img2=ground_truth)`` for every image of the set on this rank, with the
   arrays of the function's ``metric_input`` (:mod:`vlunet.metrics.restoration_metric`);
2. sums ``statistics()`` over the ranks (a float64 vector: sums of per-image quantities, so the
   result does not depend on how images are sharded), see :func:`dataset_metric_values`;
3. logs ``value(summed statistics)`` like any metric (log, TensorBoard, results table).

Option file::

    val:
      metrics:
        fid: {type: calculate_fid}   # dataset-level
"""
from abc import ABC, abstractmethod
from typing import Callable, Dict, Mapping

import numpy as np
import torch
from torch import distributed

from basicsr.utils.dist_util import get_dist_info
from basicsr.utils.registry import METRIC_REGISTRY


class DatasetMetric(ABC):
    """Running statistics of one test set, summable across ranks, and the metric computed from them."""

    @abstractmethod
    def add(self, img: np.ndarray, img2: np.ndarray) -> None:
        """Take one restored image ``img`` and its ground truth ``img2`` into the statistics."""

    @abstractmethod
    def statistics(self) -> torch.Tensor:
        """The statistics so far as a float64 vector of fixed length; the ranks' vectors are summed."""

    @abstractmethod
    def value(self, statistics: torch.Tensor) -> float:
        """The metric of the whole set from the summed ``statistics`` (NaN if they are too few)."""


def dataset_level_metric(function: Callable) -> Callable:
    """Mark a registered metric function as a factory of :class:`DatasetMetric` (see the module docstring)."""
    function.dataset_level = True
    return function


def is_dataset_level(function: Callable) -> bool:
    """Whether a registered metric function is dataset-level."""
    return getattr(function, 'dataset_level', False)


def build_dataset_metrics(metric_opts: Mapping[str, dict]) -> Dict[str, DatasetMetric]:
    """A fresh :class:`DatasetMetric` for each dataset-level entry of ``val.metrics``, by name."""
    metrics = {}
    for name, metric_opt in metric_opts.items():
        function = METRIC_REGISTRY.get(metric_opt['type'])
        if is_dataset_level(function):
            metrics[name] = function(**{key: value for key, value in metric_opt.items() if key != 'type'})
    return metrics


def dataset_metric_values(metrics: Mapping[str, DatasetMetric], device: torch.device) -> Dict[str, float]:
    """The value of each metric over the whole set, its statistics summed across ranks on ``device``.

    In distributed runs this is a collective: every rank calls it with the same metrics, in the same order.
    """
    world_size = get_dist_info()[1]
    values = {}
    for name, metric in metrics.items():
        statistics = metric.statistics()
        if world_size > 1:
            statistics = statistics.to(device)
            distributed.all_reduce(statistics)
        values[name] = metric.value(statistics.cpu())
    return values
