"""Mirror padding of images to a multiple of a size, for networks that need divisible H and W."""
import torch
import torch.nn.functional as F


def _mirror_pad_bottom_right(x: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """Reflect-pad the bottom and right edges, repeating the reflection when the pad exceeds the size.

    ``F.pad(mode='reflect')`` needs pad < size; larger pads are done in steps (each step reflects the
    already-padded image). A side of length 1 has nothing to reflect and is replicated instead.
    """
    while pad_h > 0 or pad_w > 0:
        step_h = min(pad_h, x.shape[-2] - 1)
        step_w = min(pad_w, x.shape[-1] - 1)
        if step_h == 0 and step_w == 0:
            return F.pad(x, (0, pad_w, 0, pad_h), mode='replicate')
        x = F.pad(x, (0, step_w, 0, step_h), mode='reflect')
        pad_h, pad_w = pad_h - step_h, pad_w - step_w
    return x


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Mirror-pad (B, C, H, W) at the bottom/right so H and W become multiples of ``multiple``.

    Crop the result back with ``out[..., :H, :W]``. Any size works, including sides smaller than the pad.
    """
    pad_h = -x.shape[-2] % multiple
    pad_w = -x.shape[-1] % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return _mirror_pad_bottom_right(x, pad_h, pad_w)
