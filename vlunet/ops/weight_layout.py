"""Weight layouts: 4-D weights stored like the channels-last activations, weight halves with their own strides.

DDP lays out its gradient buckets like the parameters and compares strides; these helpers make the gradients
come out with the parameters' strides (no copy, no "Grad strides do not match" warning). Values and state-dict
keys are unchanged. Channels-last weights and activations suit cuDNN too: this layout is used on every device.
"""
from typing import Iterable, Optional, Tuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def store_weights_channels_last(network: nn.Module, convolved_1x1: Iterable[nn.Module] = ()) -> None:
    """Store ``network``'s 3x3 (k x k, k > 1) weights, and the 1x1 weights of the ``convolved_1x1`` modules
    (1x1 convolutions run as convolutions, e.g. with a stride or a bias), in the activations' channels-last layout.

    Their gradients then come out with the parameters' strides, so DDP's gradient buckets (laid out like
    the parameters) take them without a copy and without the "Grad strides do not match" warning.
    1x1 weights stay contiguous: they run as matrix products (:func:`~vlunet.ops.channels_last.pointwise`), whose
    weight gradients are contiguous (both layouts order a (C_out, C_in, 1, 1) weight's memory the same way; only the
    strides of the size-1 dimensions differ, which DDP compares too). Freshly allocated:
    ``.contiguous(memory_format=...)`` keeps a depthwise (C, 1, 3, 3) weight's contiguous strides.
    Values and state-dict keys are unchanged.
    """
    convolved = {id(parameter) for module in convolved_1x1 for parameter in module.parameters()}
    for parameter in network.parameters():
        if parameter.dim() == 4 and (parameter.shape[-2:] != (1, 1) or id(parameter) in convolved):
            parameter.data = torch.empty_like(parameter.data, memory_format=torch.channels_last).copy_(parameter.data)


class _WeightHalves(torch.autograd.Function):
    """See :func:`weight_halves`."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        ctx.layout = weight.shape, weight.stride(), weight.dtype, weight.device
        return weight.chunk(2)

    @staticmethod
    @once_differentiable
    def backward(ctx, *half_grads: Optional[torch.Tensor]) -> torch.Tensor:
        shape, stride, dtype, device = ctx.layout
        grad = torch.empty_strided(shape, stride, dtype=dtype, device=device)
        for half, half_grad in zip(grad.chunk(2), half_grads):
            if half_grad is None:
                half.zero_()
            else:
                half.copy_(half_grad)
        return grad


def weight_halves(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two halves of ``weight`` along its first axis (views); its gradient has ``weight``'s strides.

    (Slicing would give the gradient contiguous strides: a channels-last (C, 1, 3, 3) depthwise weight
    differs in the stride of its size-1 axis, which DDP compares.)
    """
    return _WeightHalves.apply(weight)
