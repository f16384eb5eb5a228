"""FID (Fréchet Inception Distance) between the restored images and the ground truths of one test set.

A dataset-level metric (:mod:`vlunet.metrics.dataset_level`): each restored image and its ground
truth go through the FID Inception-v3 of ``torch-fidelity`` (the TensorFlow FID network ported
bit-exactly, with TensorFlow's bilinear resize to 299x299), the ``dims``-dimensional pool features
of both sets are accumulated as sufficient statistics (count, sum, sum of outer products, float64),
summed over the ranks in distributed runs, and at the end of the set

    FID = |mu_r - mu_g|^2 + tr(S_r) + tr(S_g) - 2 tr((S_r S_g)^(1/2))

with unbiased covariances (as ``numpy.cov``, like pytorch-fid and torch-fidelity). FID needs many
images: with fewer images than ``dims`` the covariances are singular and the value is biased upward
(DA-CLIP's paper reports it per test set all the same; its tool and settings are unspecified,
docs/daclip.md). Lower is better. Requires the ``metrics`` extra (``pip install 'vlunet[metrics]'``).

Input: the uint8 images as saved (BasicSR's ``tensor2img``: clamped, rounded, BGR), turned into RGB.

Weights (local files only, see :mod:`vlunet.utils.weight_files`): ``inception_weights`` ~ =
``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity's file,
the weights of the original TensorFlow FID Inception), a path, or ``random`` (tests only). The
network is built once per (dims, weights, device). Option file::

    val:
      metrics:
        fid: {type: calculate_fid}   # dims: 2048 (pool3, the standard FID), 768, 192 or 64
"""
import os.path as osp
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn
from torchvision.models import inception_v3

from vlunet.metrics.dataset_level import DatasetMetric, dataset_level_metric
from vlunet.utils.safe_load import WrongContentsError, one_line, require_state_dict, safe_torch_load
from vlunet.utils.weight_files import metric_device, resolve_weights_file, seeded_random_weights

from basicsr.utils.registry import METRIC_REGISTRY

FEATURE_DIMS = (64, 192, 768, 2048)
INCEPTION_CLASSES = 1008  # the TensorFlow graph's classifier
MISSING_PACKAGE = "calculate_fid needs the 'torch-fidelity' package: pip install 'vlunet[metrics]' (or torch-fidelity)."
NOT_PER_IMAGE = ('calculate_fid is a dataset-level metric (one value per test set): it runs in the validation of '
                 'vlunet models (GuidedRestorationModel, IRSDEModel, ...), '
                 'not through BasicSR\'s per-image calculate_metric.')


def _inception_module():
    try:
        from torch_fidelity import feature_extractor_inceptionv3
    except ImportError as error:
        raise ImportError(MISSING_PACKAGE) from error
    return feature_extractor_inceptionv3


def _random_inception_state() -> dict:
    """Seeded random weights with the FID Inception's keys and shapes (torchvision's Inception-v3 has the same)."""
    with seeded_random_weights():
        network = inception_v3(weights=None, aux_logits=False, num_classes=INCEPTION_CLASSES, init_weights=False)
    return network.state_dict()


@lru_cache(maxsize=None)
def inception_network(dims: int, weights_path: Optional[str], device: torch.device) -> nn.Module:
    """torch-fidelity's frozen FID Inception giving the ``dims`` features; weights from ``weights_path`` (None: random).

    torch-fidelity reads its weights itself, by URL download or ``torch.load(weights_only=False)``;
    here its loader is handed the state dict read safely from the local file instead.
    """
    from unittest import mock  # on use: keeps `import vlunet` light
    module = _inception_module()
    description = 'calculate_fid.inception_weights (FID Inception-v3)'
    state = _random_inception_state() if weights_path is None else require_state_dict(
        safe_torch_load(weights_path, description), weights_path, description,
        f'give {osp.basename(module.URL_INCEPTION_V3)}')
    with mock.patch.object(module, 'load_state_dict_from_url', return_value=state):
        try:
            network = module.FeatureExtractorInceptionV3('inception-v3-compat', [str(dims)])
        except (RuntimeError, TypeError, AttributeError, KeyError, ValueError) as error:
            raise WrongContentsError(f'calculate_fid.inception_weights: {weights_path} is not the FID Inception state '
                                     f'dict ({osp.basename(module.URL_INCEPTION_V3)}): {one_line(error, 300)}') \
                from error
    return network.to(device)


def _rgb_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 BGR (H, W, 3) array -> uint8 RGB (1, 3, H, W) tensor on ``device``."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'calculate_fid needs uint8 (H, W, 3) BGR images (BasicSR\'s tensor2img), got '
                         f'{image.dtype} {image.shape}.')
    return torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).permute(2, 0, 1)[None].to(device)


def gaussian_statistics(count: float, total: np.ndarray, outer_total: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) from the count, the sum (D,) and the sum of outer products (D, D)."""
    mean = total / count
    return mean, (outer_total - count * np.outer(mean, mean)) / (count - 1)


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians N(mean1, cov1) and N(mean2, cov2) (covariances symmetric PSD).

    tr((cov1 cov2)^(1/2)) = sum of the square roots of the eigenvalues of the symmetric PSD matrix
    cov1^(1/2) cov2 cov1^(1/2), which has the same spectrum (stable also for singular covariances).
    """
    eigenvalues, eigenvectors = np.linalg.eigh(cov1)
    root1 = (eigenvectors * np.sqrt(eigenvalues.clip(min=0))) @ eigenvectors.T
    product = root1 @ cov2 @ root1
    trace_root = np.sqrt(np.linalg.eigvalsh((product + product.T) / 2).clip(min=0)).sum()
    return float(np.sum((mean1 - mean2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * trace_root)


class FrechetInceptionDistance(DatasetMetric):
    """FID of one test set (see the module docstring).

    Statistics: for the restored images, then the ground truths, (count, sum (D,), sum of outer
    products (D, D)), flattened into one float64 vector of 2 (1 + D + D^2) numbers.
    """

    def __init__(self, network: nn.Module, dims: int, device: torch.device):
        self.network, self.dims, self.device = network, dims, device
        self.sums = torch.zeros(2, 1 + dims + dims * dims, dtype=torch.float64, device=device)

    def _features(self, image: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.network(_rgb_tensor(image, self.device))[0].double()  # (1, D)

    def add(self, img: np.ndarray, img2: np.ndarray) -> None:
        """Take the restored uint8 BGR image ``img`` and its ground truth ``img2`` (H, W, 3) into the statistics."""
        for row, image in enumerate((img, img2)):
            features = self._features(image)
            self.sums[row] += torch.cat([features.new_ones(1), features[0], (features.T @ features).flatten()])

    def statistics(self) -> torch.Tensor:
        return self.sums.flatten()

    def value(self, statistics: torch.Tensor) -> float:
        """FID of the summed statistics; NaN with fewer than 2 images."""
        sums = statistics.reshape(2, -1).numpy()
        count = sums[0, 0]
        if count < 2:
            return float('nan')
        dims = self.dims
        restored, ground_truth = (gaussian_statistics(count, row[1:1 + dims], row[1 + dims:].reshape(dims, dims))
                                  for row in sums)
        return frechet_distance(*restored, *ground_truth)


@METRIC_REGISTRY.register()
@dataset_level_metric
def calculate_fid(dims: int = 2048, inception_weights: Optional[str] = None, device: Optional[str] = None,
                  **kwargs) -> FrechetInceptionDistance:
    """A fresh FID accumulator for one test set; ``device`` ~ = CUDA if available (see the module docstring)."""
    if 'img' in kwargs or 'img2' in kwargs:
        raise TypeError(NOT_PER_IMAGE)
    if dims not in FEATURE_DIMS:
        raise ValueError(f'calculate_fid.dims: {dims!r}; use one of {", ".join(map(str, FEATURE_DIMS))} '
                         '(2048 is the standard FID).')
    weights_path = resolve_weights_file(inception_weights, 'calculate_fid.inception_weights',
                                        _inception_module().URL_INCEPTION_V3, 'FID Inception-v3 weights')
    torch_device = metric_device(device)
    return FrechetInceptionDistance(inception_network(dims, weights_path, torch_device), dims, torch_device)
