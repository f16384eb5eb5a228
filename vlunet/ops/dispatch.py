"""Where the speed machinery may run: the device rules, the plain switch and the whole-maps switch, in one place.

The blocks (:mod:`vlunet.archs.restormer_blocks`, :mod:`vlunet.archs.vlunet.gradient_step`, ...) compute the
paper's operations plainly with ``nn.Conv2d`` modules and autograd. Their fast paths were measured faster on
this project's CPU only; each runs only on the device types listed in :data:`MEASURED_DEVICES`:

- ``channels_last_products``: 1x1 convolutions as one matrix product on the pixel rows of channels-last maps, the
  residual sum as the product's accumulator, the attention's weights merged with its output projection
  (:mod:`vlunet.ops.channels_last`, :mod:`vlunet.ops.attention`); the gate of every other fast path of a block;
- ``bands``: without autograd, large maps in bands of rows (cache-sized reused buffers, :mod:`vlunet.ops.bands`);
- ``vector_padding``: without autograd, the GDFN's hidden width zero-padded to whole 64-byte vectors;
- ``in_place``: without autograd, residual sums accumulated in the residual's own memory;
- ``fused_backward``: in float32 training, the attention's hand-written backward
  (:mod:`vlunet.ops.attention_backward`) and the GDFN's separate gate and content maps;
- ``fused_convolutions``: without autograd, IR-SDE's time modulation and SiLU fused into oneDNN's 3x3 convolution,
  and Winograd F(2x2, 3x3) on the deep levels (:mod:`vlunet.ops.fused_convolutions`);
- ``float32_attention_weights``: under bf16 autocast, the channel attention's weights computed from q and k
  converted to float32 (:func:`vlunet.ops.attention.attention_weights`).

Elsewhere (CUDA today) the plain computation runs, in the layout the networks give it (channels-last activations
and 3x3 weights, which suit cuDNN) and the precision of the options (autocast). :func:`plain` or the
environment variable ``VLUNET_PLAIN=1`` turn every fast path off on every device (to debug, or to see the
paper's computation when editing a block); :func:`whole_maps` turns the bands off (the memory planner measures
whole-map peaks). Graph capture (``torch.compile``, ``torch.export``, ONNX, tracing) turns off the paths that
depend on the input size or write into their inputs (bands, the hand-written backward).
"""
import contextlib
import os
from typing import Dict, FrozenSet, Iterator, Optional

import torch

PLAIN_ENV = 'VLUNET_PLAIN'
FAST_PATHS = ('channels_last_products', 'bands', 'vector_padding', 'in_place', 'fused_backward', 'fused_convolutions',
              'float32_attention_weights')
MEASURED_DEVICES: Dict[str, FrozenSet[str]] = {path: frozenset({'cpu'}) for path in FAST_PATHS}
_plain_depth = 0
_whole_maps_depth = 0
_meta_device: Optional[str] = None


@contextlib.contextmanager
def plain() -> Iterator[None]:
    """Within it, every block of every network runs its plain computation (no fast path, on every device)."""
    global _plain_depth
    _plain_depth += 1
    try:
        yield
    finally:
        _plain_depth -= 1


@contextlib.contextmanager
def whole_maps() -> Iterator[None]:
    """Within it, blocks compute their full-size maps at once (no bands): the memory planner measures the
    whole-map peak, an upper bound of the banded one."""
    global _whole_maps_depth
    _whole_maps_depth += 1
    try:
        yield
    finally:
        _whole_maps_depth -= 1


def plain_requested() -> bool:
    """Whether :func:`plain` is active or ``VLUNET_PLAIN`` is set to anything but '', '0', 'false' or 'no'."""
    return _plain_depth > 0 or os.environ.get(PLAIN_ENV, '').strip().lower() not in ('', '0', 'false', 'no')


@contextlib.contextmanager
def meta_decides_as(device: str) -> Iterator[None]:
    """Within it, maps on the ``meta`` device (shapes only: counting operations) take the paths of ``device``."""
    global _meta_device
    previous, _meta_device = _meta_device, device
    try:
        yield
    finally:
        _meta_device = previous


def device_type(x: torch.Tensor) -> str:
    """The device type ('cpu', 'cuda', ...) whose measurements decide for ``x``."""
    return _meta_device if x.device.type == 'meta' and _meta_device else x.device.type


def fast_path_allowed(path: str, x: torch.Tensor) -> bool:
    """The device rule: whether fast path ``path`` (one of :data:`FAST_PATHS`) may run on ``x``'s device."""
    return not plain_requested() and device_type(x) in MEASURED_DEVICES[path]


def capturing_graph() -> bool:
    """Whether ``torch.compile``/``torch.export``/ONNX or ``torch.jit`` is tracing: one graph for every input."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def autocast_enabled(x: torch.Tensor) -> bool:
    """Whether autocast is on for ``x``'s device type."""
    device = x.device.type
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def plain_float32_map(x: torch.Tensor) -> bool:
    """Whether x is a float32, channels-last map outside autocast: what the bands and the training paths expect."""
    return x.dtype == torch.float32 and not autocast_enabled(x) and x.is_contiguous(memory_format=torch.channels_last)


def bands_allowed(x: torch.Tensor) -> bool:
    """Whether blocks may work on ``x`` in bands: on a measured device, without autograd, outside
    :func:`whole_maps` and graph capture (one graph for every size)."""
    return (_whole_maps_depth == 0 and fast_path_allowed('bands', x)
            and not (torch.is_grad_enabled() or capturing_graph()))


def fused_backward_allowed(x: torch.Tensor) -> bool:
    """Whether a block may take its training path (the attention's hand-written backward, the GDFN's separate
    halves): with autograd, on a measured device (what it saves, layout reorders of oneDNN's depthwise backward
    and passes over fresh memory, is CPU-specific), on a float32 channels-last map without autocast, outside
    graph capture."""
    return (torch.is_grad_enabled() and fast_path_allowed('fused_backward', x) and plain_float32_map(x)
            and not capturing_graph())


def in_place_allowed(x: torch.Tensor) -> bool:
    """Whether a sum may be accumulated in ``x``'s own memory: on a measured device, without autograd."""
    return fast_path_allowed('in_place', x) and not torch.is_grad_enabled()


def vector_padding_allowed(x: torch.Tensor) -> bool:
    """Whether the GDFN may pad its hidden width to whole vectors: on a measured device, without autograd."""
    return fast_path_allowed('vector_padding', x) and not torch.is_grad_enabled()
