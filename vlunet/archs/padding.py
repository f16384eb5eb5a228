"""Mirror padding of images to a multiple of a size, for networks that need divisible H and W.

The padding is written without shape-dependent branches (index arithmetic and one gather per
axis), so ``torch.export`` / ONNX export trace it for *dynamic* H and W: an exported network pads
inside its graph and accepts any size, not only multiples of the size.
"""
import torch


def _mirror_indices(size: int, padded_size: int, device: torch.device) -> torch.Tensor:
    """Source index of each of ``padded_size`` positions of a side of length ``size``, mirrored.

    Positions past the end reflect about the last element, and the reflection repeats with period
    2·(size − 1) when the pad exceeds the side (e.g. size 3: 0 1 2 1 0 1 2 ...). A side of length 1
    is replicated.
    """
    position = torch.arange(padded_size, device=device)
    # the period as a tensor: sizes are symbolic under export, and ONNX has no remainder by a symbolic scalar
    period = position.new_full((), 2 * size - 2).clamp_min(1)
    position = position % period
    return torch.where(position < size, position, period - position)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Mirror-pad (B, C, H, W) at the bottom/right so H and W become multiples of ``multiple``.

    Crop the result back with ``out[..., :H, :W]``. Any size works, including sides smaller than the
    pad (the reflection repeats; a side of length 1 is replicated). Same values as ``F.pad(mode='reflect')``
    whenever that applies (pad < side). Returns (B, C, ceil(H/m)·m, ceil(W/m)·m).
    """
    height, width = x.shape[-2:]
    padded_height = (height + multiple - 1) // multiple * multiple
    padded_width = (width + multiple - 1) // multiple * multiple
    rows = _mirror_indices(height, padded_height, x.device)
    columns = _mirror_indices(width, padded_width, x.device)
    return x.index_select(-2, rows).index_select(-1, columns)


def crop_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The top-left (B, C, height, width) of ``x`` as a new contiguous tensor (undoes :func:`pad_to_multiple`).

    A gather rather than a slice: a slice of a channels-last map would make ``torch.export`` branch
    on whether the crop removes anything, fixing the exported graph to one residue of the size.
    """
    rows = torch.arange(height, device=x.device)
    columns = torch.arange(width, device=x.device)
    return x.index_select(-2, rows).index_select(-1, columns).contiguous()
