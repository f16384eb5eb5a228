"""A tiny stand-in for DA-CLIP in tests: ``encode(images) -> (content, degradation)``, registered as an arch.

Both embeddings are fixed random projections of the per-channel means and standard deviations of
the image, so they differ between images, are deterministic, and cost nothing. Import this module
under this name only (BasicSR's registry refuses a second registration).
"""
from typing import Tuple

import torch
from torch import nn

import vlunet  # noqa: F401  (compat fixes before basicsr is imported)

from basicsr.utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class StubDAClipEncoder(nn.Module):
    """(B, 3, H, W) in [0, 1] -> content (B, dim), degradation (B, dim); counts its calls in ``calls``."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.content = nn.Linear(6, dim)
        self.degradation = nn.Linear(6, dim)
        self.calls = 0

    def _statistics(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], dim=1)

    def encode(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        statistics = self._statistics(images)
        return self.content(statistics), self.degradation(statistics)

    def encode_degradation(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)[1]
