"""Parameters and multiply-accumulates (MACs) of a restoration network, counted without computing anything.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device: what this
implementation computes (MACs = FLOPs / 2), split into ``conv`` (k x k convolutions) and ``matmul``
(matrix products: the 1x1 convolutions, which run as products, and the attention). Guided networks get
random (1, D) embeddings for the guidance they take (NAFNetDACLIP: ``degradation`` and ``content``;
VLU-Net: ``degradation``; see :mod:`vlunet.guidance.degradation_encoder`); IR-SDE noise networks
(``ConditionalUNet``) are counted for one sampling step, with both DA-CLIP contexts. The encoder computing
the embeddings is not counted. Used by ``scripts/model_stats.py`` and the comparison (:mod:`vlunet.compare`).
"""
import inspect
import json
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vlunet.guidance.degradation_encoder import UNDECLARED_GUIDANCE, declared_guidance
from vlunet.models.daclip.irsde_sampler import is_noise_network
from vlunet.ops.dispatch import meta_decides_as
from vlunet.options import OptionError, load_option_file

from basicsr.archs import build_network

CONV_OPS = ('aten.convolution',)
MATMUL_OPS = ('aten.mm', 'aten.addmm', 'aten.bmm', 'aten.baddbmm')


def example_inputs(net: nn.Module, size: int, device: torch.device) -> Tuple[tuple, Dict[str, torch.Tensor]]:
    """(positional inputs, guidance) for a 1x3x``size``x``size`` image on ``device``: a random (1, D) embedding for
    each guidance keyword the network takes (its ``guidance_inputs``, else ``degradation`` if its forward has it);
    an IR-SDE noise network gets ``(x_t, image, step 1)`` and its contexts."""
    image = torch.rand(1, 3, size, size, device=device)
    dim = getattr(net, 'context_dim', None) or getattr(net, 'config', {}).get('degradation_dim', 512)
    if is_noise_network(net):
        flags = (('text_context', 'use_degra_context'), ('image_context', 'use_image_context'))
        contexts = [name for name, flag in flags if getattr(net, flag, False)]
        return (torch.rand_like(image), image, torch.ones(1, device=device)), {
            name: torch.randn(1, dim, device=device) for name in contexts}
    names = declared_guidance(net)
    if names is None:
        names = [name for name in UNDECLARED_GUIDANCE if name in inspect.signature(net.forward).parameters]
    return (image,), {name: torch.randn(1, dim, device=device) for name in names}


def count_parameters(net_opt: dict) -> int:
    """Number of parameters of the network ``net_opt`` (built on the meta device), frozen parts included."""
    with torch.device('meta'):
        return sum(p.numel() for p in build_network(dict(net_opt)).parameters())


def count_macs(net_opt: dict, size: int) -> Dict[str, float]:
    """{'total', 'conv', 'matmul', 'other'} multiply-accumulates of one forward pass (meta device)."""
    with torch.device('meta'):
        net = build_network(dict(net_opt)).eval()
        inputs, guidance = example_inputs(net, size, torch.device('meta'))
    # The computation that runs on the CPU, with autograd (nothing is stored on the meta device): the network's own
    # multiply-adds. Without autograd the GDFN also multiplies the zero channels that pad its hidden width to whole
    # vectors (+0.2 %).
    with torch.enable_grad(), meta_decides_as('cpu'), FlopCounterMode(display=False) as counter:
        net(*inputs, **guidance)
    flops = {str(op): count for op, count in counter.get_flop_counts()['Global'].items()}
    conv = sum(flops.get(op, 0) for op in CONV_OPS) / 2
    matmul = sum(flops.get(op, 0) for op in MATMUL_OPS) / 2
    total = counter.get_total_flops() / 2
    return {'total': total, 'conv': conv, 'matmul': matmul, 'other': total - conv - matmul}


def network_options(option_file: Optional[str], arch_json: Optional[str]) -> dict:
    """The ``network_g`` section of ``option_file``, or the ``arch_json`` config (default: official VLUNet)."""
    if option_file:
        opt = load_option_file(option_file)
        if not isinstance(opt.get('network_g'), dict):
            raise OptionError(f'{option_file}: no `network_g` section to measure.')
        return dict(opt['network_g'])
    config = json.loads(arch_json) if arch_json else {}
    if not isinstance(config, dict):
        raise OptionError(f'--arch-json must be a JSON object, got {arch_json!r}')
    return {'type': 'VLUNet', **config}
