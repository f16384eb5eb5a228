"""D-GDM: VLU-Net's degradation-guided gradient step (paper Sec. 3.2, Eqs. 9-11).

The unfolded iteration solves ``min_x ||Phi(x) - y||^2 + prior(x)``; its data step is
``x <- x - rho * Phi^T(Phi(x) - y)``. VLU-Net learns both operators in feature space:

- ``Phi(x)`` is a channel cross-attention whose keys come from a *degradation key*: a learnable
  bank of ``num_keys`` feature maps mixed with softmax weights predicted from the CLIP degradation
  vector ``d``, then bilinearly resized to the feature size;
- ``Phi^T`` is a transposed (channel) self-attention;
- ``rho`` is a learnable scalar step size.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from vlunet.archs.restormer_blocks import TransposedSelfAttention, scaled_sum
from vlunet.ops import dispatch, fast_blocks
from vlunet.ops.attention import channel_attention


class DegradationCrossAttention(nn.Module):
    """Phi(x, key): channel attention with query/value from the features and keys from the degradation key.

    Shapes: x (B, C, H, W), key (B, Ck, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, key_channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qv = nn.Conv2d(dim, dim * 2, 1, bias=False)
        self.qv_dwconv = nn.Conv2d(dim * 2, dim * 2, 3, padding=1, groups=dim * 2, bias=False)
        self.k = nn.Conv2d(key_channels, dim, 1, bias=False)
        self.k_dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor, key: torch.Tensor, subtract: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Phi(x, key), minus ``subtract`` (B, C, H, W) if given (fused into the output product on the fast path)."""
        if not dispatch.fast_path_allowed('channels_last_products', x):
            query, value = self.qv_dwconv(self.qv(x)).chunk(2, dim=1)
            key = self.k_dwconv(self.k(key))
            attended = channel_attention(query, key, value, self.temperature, self.heads)
            return scaled_sum(self.project_out(attended), subtract, residual_weight=-1.0)
        return fast_blocks.cross_attention(x, key, self.qv, self.qv_dwconv, self.k, self.k_dwconv, self.project_out,
                                           self.temperature, self.heads, subtract)


class DegradationGuidedGradientStep(nn.Module):
    """One D-GDM step: ``x - step_size * Phi^T(Phi(x, K(d)) - y)``.

    Args:
        dim: Feature channels C.
        num_keys: Size of the degradation key bank (``de_dim`` of the paper's code).
        key_channels: Channels of each key (official: ``dim // 10 * stage``).
        key_size: Spatial size S of each (square) key (official: ``96 // stage``).
        degradation_dim: Length of the degradation vector d.
        heads: Attention heads of Phi and Phi^T (2 in the official network at every level).
    """

    def __init__(self, dim: int, num_keys: int, key_channels: int, key_size: int, degradation_dim: int, heads: int):
        super().__init__()
        self.step_size = nn.Parameter(torch.ones(1))
        self.degradation_keys = nn.Parameter(torch.rand(1, num_keys, key_channels, key_size, key_size))
        self.degradation_operator = DegradationCrossAttention(dim, key_channels, heads)
        self.adjoint_operator = TransposedSelfAttention(dim, heads)
        self.key_logits = nn.Linear(degradation_dim, num_keys)

    def key_weights(self, degradation: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """(B, num_keys) mixing weights: softmax of the projected d, or equal weights when d is None.

        Equal weights are the softmax of all-zero logits, formed as 0 * key_logits(0) so that key_logits
        still takes part in the graph (with zero gradients): DDP without ``find_unused_parameters``
        needs every trainable parameter used, also when training without CLIP guidance.
        """
        if degradation is None:
            zeros = self.degradation_keys.new_zeros(batch, self.key_logits.in_features)
            return (self.key_logits(zeros) * 0).softmax(dim=1)
        return self.key_logits(degradation).softmax(dim=1)

    def mixed_key(self, degradation: Optional[torch.Tensor], batch: int, size: tuple) -> torch.Tensor:
        """(B, Ck, H, W), channels-last: the weighted sum of the key bank, bilinearly resized (no antialias).

        One (B, num_keys) @ (num_keys, Ck*S*S) product; the bank is never repeated over the batch.
        """
        bank = self.degradation_keys[0]
        weights = self.key_weights(degradation, batch)
        key = (weights @ bank.flatten(1)).view(batch, *bank.shape[1:])
        key = key.contiguous(memory_format=torch.channels_last)
        return F.interpolate(key, size=size, mode='bilinear', align_corners=False)

    def forward(self, x: torch.Tensor, degraded: torch.Tensor, degradation: Optional[torch.Tensor],
                overwrite_input: bool = False) -> torch.Tensor:
        """x, degraded (the y-branch features): (B, C, H, W); degradation: (B, D) or None -> (B, C, H, W).

        ``overwrite_input``: on the fast path without autograd the step may be written into x (the caller no longer
        needs it).
        """
        key = self.mixed_key(degradation, x.shape[0], x.shape[-2:])
        residual = self.degradation_operator(x, key, subtract=degraded)
        return self.adjoint_operator(residual, residual=x, scale=-self.step_size, in_place=overwrite_input)
