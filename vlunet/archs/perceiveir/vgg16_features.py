"""Frozen ImageNet VGG-16 features by layer name, loaded offline (Perceive-IR's L_dpl, paper Eq. 11).

``VGG16Features(layers, weights=None)(images (B, 3, H, W) in [0, 1]) -> {name: (B, C, h, w)}``:

- ``layers``: names from BasicSR's ``NAMES['vgg16']`` (``conv1_1``, ``relu1_1``, ..., ``pool5``), i.e.
  the modules of torchvision's ``vgg16().features`` in order (name k = ``features[k]``). A ``conv*``
  layer is the convolution's output *before* its ReLU and a ``relu*`` layer the output after it: the
  ReLUs are not in place here, so a requested pre-ReLU feature is not overwritten (the in-place
  subtlety of the Perceive-IR release, docs/perceiveir.md#decisions).
- ``weights``: where the ImageNet weights come from (see :func:`resolve_vgg16_weights`):
  ``None`` = torchvision's cached file ``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``; a path =
  that file (torchvision's ``vgg16-397923af.pth`` or any state dict with its ``features.*`` keys);
  ``'random'`` = random weights, for tests only.

Only ``features`` up to the deepest requested layer is built (torchvision's own ``make_layers``
with VGG-16's configuration ``'D'``, the exact ``vgg16().features``; the 123 M-parameter classifier
is neither built nor kept). Inputs are clamped to [0, 1] and normalised with ImageNet mean/std (the
release's preprocessing). The network is frozen (``requires_grad=False``), always in eval mode,
and belongs to a loss, which no model saves.
"""
import os.path as osp
from typing import Dict, Optional, Sequence

import torch
from torch import nn
from torchvision.models import VGG16_Weights, vgg

from vlunet.utils.safe_load import WrongContentsError, safe_torch_load
from vlunet.utils.weight_files import RANDOM_WEIGHTS, resolve_weights_file

from basicsr.archs.vgg_arch import NAMES
from basicsr.utils import get_root_logger

VGG16_LAYER_NAMES = tuple(NAMES['vgg16'])
VGG16_WEIGHTS_URL = VGG16_Weights.IMAGENET1K_V1.url  # https://download.pytorch.org/models/vgg16-397923af.pth
VGG16_WEIGHTS_FILE = osp.basename(VGG16_WEIGHTS_URL)
FEATURES_PREFIX = 'features.'


def resolve_vgg16_weights(weights: Optional[str], option: str = 'vgg_weights') -> Optional[str]:
    """The weights file for ``weights`` (None: torchvision's cache; a path), or None for ``'random'``.

    Raises:
        FileNotFoundError: the file does not exist; the message names it, the download URL and where to put it.
    """
    return resolve_weights_file(weights, option, VGG16_WEIGHTS_URL,
                                'ImageNet VGG-16 weights (torchvision VGG16_Weights.IMAGENET1K_V1, 528 MB)')


def _check_layers(layers: Sequence[str]) -> None:
    if isinstance(layers, str) or not layers or any(name not in VGG16_LAYER_NAMES for name in layers):
        raise ValueError(f'VGG-16 layers: {layers!r}; use a non-empty list of names from '
                         f'{", ".join(VGG16_LAYER_NAMES)}.')


def _load_features(features: nn.Sequential, path: str, option: str) -> None:
    """Copy the ``features.*`` tensors of the file at ``path`` into ``features`` (a prefix of VGG-16's)."""
    state = safe_torch_load(path, f'{option} (VGG-16 weights)')
    if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
        state = state['state_dict']
    needed = features.state_dict()
    found = {key[len(FEATURES_PREFIX):]: value for key, value in state.items()
             if isinstance(key, str) and key.startswith(FEATURES_PREFIX)} if isinstance(state, dict) else {}
    missing = [key for key in needed if key not in found]
    wrong = [key for key in needed if key in found and getattr(found[key], 'shape', None) != needed[key].shape]
    if missing or wrong:
        raise WrongContentsError(f'{option}: {path} is not a VGG-16 state dict ({VGG16_WEIGHTS_FILE}, '
                                 f'{VGG16_WEIGHTS_URL}): '
                         f'missing {[FEATURES_PREFIX + k for k in missing][:4]}, wrong shapes '
                         f'{[FEATURES_PREFIX + k for k in wrong][:4]}.')
    features.load_state_dict({key: found[key] for key in needed})


class VGG16Features(nn.Module):
    """Frozen VGG-16 ``features`` returning the named layers (see the module docstring)."""

    def __init__(self, layers: Sequence[str], weights: Optional[str] = None, option: str = 'vgg_weights'):
        super().__init__()
        _check_layers(layers)
        path = resolve_vgg16_weights(weights, option)
        self.layers = list(layers)
        self.indices = {VGG16_LAYER_NAMES.index(name): name for name in self.layers}
        features = vgg.make_layers(vgg.cfgs['D'])[:max(self.indices) + 1]
        for module in features:
            if isinstance(module, nn.ReLU):
                module.inplace = False  # keep requested pre-ReLU (conv*) outputs intact
        if path is None:
            get_root_logger().warning(f'{option}: {RANDOM_WEIGHTS}: VGG-16 has random weights (tests only).')
        else:
            _load_features(features, path, option)
        self.features = features.requires_grad_(False).eval()
        transform = VGG16_Weights.IMAGENET1K_V1.transforms()
        self.register_buffer('mean', torch.tensor(transform.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(transform.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> 'VGG16Features':
        """The frozen network always stays in eval mode, whatever ``mode``."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{name: (B, C, h, w)}`` for ``images`` (B, 3, H, W) float RGB in [0, 1] (clamped)."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f'VGG16Features expects float RGB images (B, 3, H, W) in [0, 1], got '
                             f'{tuple(images.shape)} {images.dtype}.')
        x = (images.clamp(0, 1) - self.mean) / self.std
        outputs = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self.indices:
                outputs[self.indices[index]] = x
        return outputs
