"""IR-SDE U-Net tests' shared pieces: tiny configuration, seeded inputs, the release re-implementation beside ours."""
import torch

import vlunet  # noqa: F401  (compat shim before basicsr)
from benchmarks.reimplementations.daclip_release import OfficialConditionalUNet
from vlunet.archs.daclip.irsde_unet_arch import ConditionalUNet

TINY_UNET = {'nf': 8, 'ch_mult': [1, 2, 4, 8], 'context_dim': 16}
TINY = TINY_UNET


def randomised_unet(net: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Random values everywhere (zero-initialised outputs included), so every path changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return net.eval()


def unet_inputs(batch: int, height: int, width: int, context_dim: int = 16, seed: int = 1):
    """Seeded (x_t, condition, text context, image context) for a ConditionalUNet."""
    generator = torch.Generator().manual_seed(seed)
    xt, cond = (torch.rand(batch, 3, height, width, generator=generator) for _ in range(2))
    text, image = (torch.randn(batch, context_dim, generator=generator) for _ in range(2))
    return xt, cond, text, image


def assert_relative_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = 1e-5) -> None:
    """max |actual − expected| ≤ tolerance · max |expected| (random weights give outputs of ~100)."""
    error = (actual - expected).abs().max().item()
    assert error <= tolerance * expected.abs().max().item(), (error, expected.abs().max().item())


def release_and_ours(seed: int = 0, **config):
    """The literal re-implementation of the release, randomised (std 0.05: outputs of ~10, the deepest paths
    still count), and ours with its weights (strict load)."""
    release = randomised_unet(OfficialConditionalUNet(**{**TINY, **config}), seed, std=0.05)
    ours = ConditionalUNet(**{**TINY, **config})
    ours.load_state_dict(release.state_dict(), strict=True)
    return release, ours.eval()
