"""Tiny networks with non-trivial weights and the comparisons the architecture tests share."""
import torch

import vlunet  # noqa: F401  (compat shim before basicsr)
from vlunet.archs.daclip.daclip_arch import DACLIP
from vlunet.archs.vlunet.vlunet_arch import VLUNet
from vlunet.ops.weight_layout import store_weights_channels_last

from helpers import TINY_CLIP_CONFIG, register_clip_config

TINY_VLUNET = dict(de_dim=3, dim=16, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1), key_size=8)
TINY_DACLIP_NAME = 'vlunet-tiny-daclip'
TINY_DACLIP_CONFIG = {  # 3 blocks, so that the order of the controls matters
    **TINY_CLIP_CONFIG, 'vision_cfg': {**TINY_CLIP_CONFIG['vision_cfg'], 'layers': 3},
}


def tiny_net(seed: int = 0, **overrides) -> VLUNet:
    """The tiny VLUNet with every parameter perturbed away from its (often constant) initial value."""
    torch.manual_seed(seed)
    net = VLUNet(**{**TINY_VLUNET, **overrides})
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return net.eval()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def channels_last_tensor(*shape: int, seed: int) -> torch.Tensor:
    """A seeded standard-normal tensor in channels-last memory."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).contiguous(memory_format=torch.channels_last)


def randomised(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with seeded N(0, 0.3²) weights, stored channels-last as the blocks keep them."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    store_weights_channels_last(module)
    return module


def register_tiny_daclip(directory: str) -> str:
    """Write and register :data:`TINY_DACLIP_CONFIG`; return its config path."""
    return register_clip_config(directory, TINY_DACLIP_NAME, TINY_DACLIP_CONFIG)


def trained_like(model: DACLIP, seed: int = 0) -> DACLIP:
    """Give the zero linears (and the controller) non-zero weights, as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in [*model.control_linears.parameters(), *model.controller.parameters()]:
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    return model.eval()
