"""LPIPS (Zhang et al. 2018) as a BasicSR metric, computed by the reference ``lpips`` package.

``calculate_lpips(img, img2)`` = ``lpips.LPIPS(net=...)(img * 2 - 1, img2 * 2 - 1)`` on the whole
image: DA-CLIP's protocol (its test script calls ``lpips.LPIPS(net='alex')`` on the float output and
ground truth mapped to [-1, 1]). Lower is better; identical images give 0. Requires the ``metrics``
extra (``pip install 'vlunet[metrics]'``).

Input: float RGB (H, W, 3) arrays in [0, 1] (``metric_input`` is ``FLOAT_RGB``, see
:mod:`vlunet.metrics.restoration_metric`), clipped to [0, 1] like the float PSNR/SSIM (the saved
image is the clipped one), after cutting ``crop_border`` pixels from each side.

Weights (read from local files only, see :mod:`vlunet.utils.weight_files`):

- ``backbone_weights``: torchvision's ImageNet weights of the trunk, ``~`` =
  ``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`` (``net: alex``) or ``vgg16-397923af.pth``
  (``net: vgg``), the files torchvision (and hence the ``lpips`` package) download; a path; or
  ``random`` (tests only);
- ``head_weights``: the linear heads calibrated on human judgements, ``~`` = the file shipped inside
  the ``lpips`` package (``lpips/weights/v0.1/<net>.pth``), or a path.

The network is built once per (net, weights, device) and kept for the process. Option file::

    val:
      metrics:
        lpips: {type: calculate_lpips, net: alex}   # alex (DA-CLIP, Perceive-IR) or vgg
"""
import os.path as osp
import warnings
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
from torch import nn
from torchvision.models import AlexNet_Weights, VGG16_Weights

from vlunet.metrics.restoration_metric import clipped_float_rgb_pair, float_rgb_metric
from vlunet.utils.safe_load import WrongContentsError, load_checked_state_dict, require_state_dict, safe_torch_load
from vlunet.utils.weight_files import metric_device, resolve_weights_file, seeded_random_weights

from basicsr.utils.registry import METRIC_REGISTRY

BACKBONE_WEIGHTS = {'alex': AlexNet_Weights.IMAGENET1K_V1, 'vgg': VGG16_Weights.IMAGENET1K_V1}
BACKBONE_NAMES = {'alex': 'AlexNet', 'vgg': 'VGG-16'}
LPIPS_VERSION = '0.1'
MISSING_PACKAGE = "calculate_lpips needs the 'lpips' package: pip install 'vlunet[metrics]' (or pip install lpips)."


def _lpips_module():
    try:
        import lpips
    except ImportError as error:
        raise ImportError(MISSING_PACKAGE) from error
    return lpips


def default_head_weights(net: str) -> str:
    """The linear-head file shipped inside the ``lpips`` package for ``net``."""
    return osp.join(osp.dirname(_lpips_module().__file__), 'weights', f'v{LPIPS_VERSION}', f'{net}.pth')


def _load_backbone(trunk: nn.Module, path: str, net: str) -> None:
    """Copy torchvision's ``features.<i>.*`` tensors into the lpips trunk (its ``slice<k>.<i>`` is ``features[i]``)."""
    description = f'calculate_lpips.backbone_weights ({BACKBONE_NAMES[net]})'
    state = require_state_dict(safe_torch_load(path, description), path, description,
                               f'give {osp.basename(BACKBONE_WEIGHTS[net].url)}')
    keys = {key: 'features.' + key.split('.', 1)[1] for key in trunk.state_dict()}
    missing = [source for source in keys.values() if source not in state]
    wrong = [source for key, source in keys.items()
             if source not in missing and state[source].shape != trunk.state_dict()[key].shape]
    if missing or wrong:
        raise WrongContentsError(f'calculate_lpips.backbone_weights: {path} is not a torchvision {BACKBONE_NAMES[net]} '
                         f'state dict ({osp.basename(BACKBONE_WEIGHTS[net].url)}): missing {missing[:4]}, wrong '
                         f'shapes {wrong[:4]}.')
    trunk.load_state_dict({key: state[source] for key, source in keys.items()})


def _load_heads(network: nn.Module, path: str) -> None:
    description = 'calculate_lpips.head_weights (LPIPS linear heads)'
    fix = f'give the lpips package\'s weights/v{LPIPS_VERSION}/<net>.pth'
    heads = require_state_dict(safe_torch_load(path, description), path, description, fix)
    expected = {key for key in network.state_dict() if key.startswith('lin') and not key.startswith('lins.')}
    if set(heads) != expected:
        raise WrongContentsError(f'calculate_lpips.head_weights: {path} is not an LPIPS head file (expected the keys '
                                 f'{sorted(expected)}, found {sorted(heads)[:6]}).')
    load_checked_state_dict(network, heads, path, description, fix, strict=False)


@lru_cache(maxsize=None)
def lpips_network(net: str, backbone_path: Optional[str], head_path: str, device: torch.device) -> nn.Module:
    """The frozen ``lpips.LPIPS``: trunk from ``backbone_path`` (None: seeded random), heads from ``head_path``."""
    lpips = _lpips_module()
    with warnings.catch_warnings(), seeded_random_weights():
        # lpips calls torchvision's deprecated alexnet(pretrained=False): its warnings are about lpips, not the user
        warnings.filterwarnings('ignore', category=UserWarning, module='torchvision.models._utils')
        network = lpips.LPIPS(pretrained=False, net=net, version=LPIPS_VERSION, pnet_rand=True, verbose=False)
    if backbone_path is not None:
        _load_backbone(network.net, backbone_path, net)
    _load_heads(network, head_path)
    return network.requires_grad_(False).eval().to(device)


def _to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W, 3) float array -> (1, 3, H, W) float32 tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None].to(device)


@METRIC_REGISTRY.register()
@float_rgb_metric
def calculate_lpips(img: np.ndarray, img2: np.ndarray, crop_border: int = 0, net: str = 'alex',
                    backbone_weights: Optional[str] = None, head_weights: Optional[str] = None,
                    device: Optional[str] = None, **kwargs) -> float:
    """LPIPS between float RGB (H, W, 3) images in [0, 1] (see the module docstring); ``device`` ~ = CUDA if any."""
    if net not in BACKBONE_WEIGHTS:
        raise ValueError(f'calculate_lpips.net: {net!r}; use one of {", ".join(BACKBONE_WEIGHTS)}.')
    img, img2 = clipped_float_rgb_pair(img, img2, crop_border)
    backbone_path = resolve_weights_file(backbone_weights, 'calculate_lpips.backbone_weights',
                                         BACKBONE_WEIGHTS[net].url, f'ImageNet {BACKBONE_NAMES[net]} weights')
    head_path = osp.expanduser(head_weights) if head_weights is not None else default_head_weights(net)
    torch_device = metric_device(device)
    network = lpips_network(net, backbone_path, head_path, torch_device)
    with torch.no_grad():
        return float(network(_to_tensor(img, torch_device), _to_tensor(img2, torch_device), normalize=True))
