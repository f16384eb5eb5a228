"""Zero-shot degradation classification by the degradation-aware CLIP: accuracy and similarity matrix.

Input convention (``CLIPFinetuneModel`` builds it for every ``val.metrics`` entry): ``probabilities``
(N, K) float array, row n = softmax over the K degradation prompts of image n's prompt scores, and
``labels`` (N,) int array, the index of image n's true prompt. The predicted degradation is the
best-matching prompt (argmax). Option file::

    val:
      metrics:
        accuracy: {type: calculate_degradation_accuracy}               # overall, in %
        accuracy_haze: {type: calculate_degradation_accuracy, label: 3}  # one degradation (prompt index)

The model also logs the accuracy of every degradation present and writes :func:`similarity_matrix`
as a heat-map (the paper's Fig. 5).
"""
from typing import Optional

import numpy as np

from basicsr.utils.registry import METRIC_REGISTRY


def _check(probabilities: np.ndarray, labels: np.ndarray) -> None:
    if probabilities.ndim != 2 or labels.shape != probabilities.shape[:1]:
        raise ValueError(f'expected probabilities (N, K) and labels (N,), got {probabilities.shape} and {labels.shape}')
    if len(labels) and (labels.min() < 0 or labels.max() >= probabilities.shape[1]):
        raise ValueError(f'labels must be prompt indices in [0, {probabilities.shape[1]}), got {np.unique(labels)}')


@METRIC_REGISTRY.register()
def calculate_degradation_accuracy(probabilities: np.ndarray, labels: np.ndarray, label: Optional[int] = None,
                                   **kwargs) -> float:
    """Top-1 accuracy in % of argmax(probabilities) against ``labels`` (only images of class ``label`` if given).

    NaN when no image qualifies (e.g. ``label`` absent from the validation set).
    """
    _check(probabilities, labels)
    selected = np.ones(len(labels), dtype=bool) if label is None else labels == label
    if not selected.any():
        return float('nan')
    return float(100.0 * np.mean(probabilities[selected].argmax(axis=1) == labels[selected]))


def similarity_matrix(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K, K) mean softmax similarity: row r = average over images of true class r (NaN row if none)."""
    _check(probabilities, labels)
    matrix = np.full((probabilities.shape[1],) * 2, np.nan)
    for label in np.unique(labels):
        matrix[label] = probabilities[labels == label].mean(axis=0)
    return matrix
