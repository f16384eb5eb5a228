"""Whole-image and tiled inference for networks of any input-size constraint.

``restore(fn, image, tile, size_multiple)`` runs ``fn`` (a restoration network, or a closure that also
passes the CLIP degradation embedding) either on the whole image or on overlapping tiles:

- every call to ``fn`` gets an input mirror-padded at the bottom/right to a multiple of
  ``size_multiple``; the output is cropped back, so images and tiles of any size work;
- tiles of ``tile.size`` x ``tile.size`` are placed every ``size - overlap`` pixels, the last one
  flush with the image edge; tile outputs are blended with weights that ramp linearly across
  the overlaps (full weight on the image border), so seams are smoothed and, for a network with
  receptive-field radius r and ``overlap >= 2 r``, tiled and whole-image outputs agree exactly except
  within r pixels of an inner tile edge.

VLU-Net is not such a network: its channel attention is global (every output pixel depends on the
whole input) and its degradation keys are resized to the input, so tiled and whole-image outputs
differ everywhere, by more for smaller tiles. ``scripts/tiling_agreement.py`` measures it: for the
official-size net (random weights) on a 768x512 photograph, PSNR(tiled, whole) is about 31 dB with
128-pixel tiles, 32.5-33 dB with 256 and 35 dB with 512; overlaps of 64 instead of 16 gain at most
0.7 dB, and the linear blending is 0.3-0.7 dB closer than a hard crop (``blend='crop'``, kept for that
comparison). So: whole images when memory allows, else the largest tile that fits, e.g.
``{size: 512, overlap: 32}``.

YAML: ``tile: {size: 512, overlap: 32}`` at the top level of an option file (absent or null = whole
image). ``tile.size_multiple`` overrides the network's own ``size_multiple`` attribute (default 1).
"""
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from tqdm import tqdm

from vlunet.archs.padding import pad_to_multiple

ImageFunction = Callable[[torch.Tensor], torch.Tensor]
# 'linear': weights ramp linearly across each overlap; 'crop': each pixel comes from its nearest tile only.
BLENDS = ('linear', 'crop')


@dataclass(frozen=True)
class TileOptions:
    """Tile side and overlap in pixels (``0 <= overlap < size``)."""
    size: int
    overlap: int = 0


def _positive_int(value: object, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{key}: expected an integer >= {minimum}, got {value!r}.')
    return value


def parse_tile_options(section: Optional[dict]) -> Optional[TileOptions]:
    """Read the option-file ``tile:`` block; None (absent, null or ``size: null``) means whole images."""
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ValueError(f'tile: expected a mapping like {{size: 256, overlap: 32}}, got {section!r}.')
    unknown = set(section) - {'size', 'overlap', 'size_multiple'}
    if unknown:
        raise ValueError(f'tile: unknown keys {sorted(unknown)}; allowed: size, overlap, size_multiple.')
    if 'size_multiple' in section:
        _positive_int(section['size_multiple'], 'tile.size_multiple', 1)
    if section.get('size') is None:
        return None
    size = _positive_int(section['size'], 'tile.size', 1)
    overlap = _positive_int(section.get('overlap', 0), 'tile.overlap', 0)
    if overlap >= size:
        raise ValueError(f'tile.overlap ({overlap}) must be smaller than tile.size ({size}).')
    return TileOptions(size, overlap)


def tile_starts(length: int, tile_size: int, overlap: int) -> List[int]:
    """Start offsets of tiles covering ``length`` pixels; the last tile ends at ``length``."""
    if length <= tile_size:
        return [0]
    stride = tile_size - overlap
    starts = list(range(0, length - tile_size, stride))
    return starts + [length - tile_size]


def _ramp(length: int, ramp_start: int, ramp_end: int, device: torch.device) -> torch.Tensor:
    """1-D weights (length,): linear ramps of ``ramp_start``/``ramp_end`` pixels at the ends, 1 elsewhere."""
    weights = torch.ones(length, device=device)
    if ramp_start:
        weights[:ramp_start] = (torch.arange(ramp_start, device=device) + 0.5) / ramp_start
    if ramp_end:
        weights[length - ramp_end:] = torch.minimum(
            weights[length - ramp_end:], (torch.arange(ramp_end, 0, -1, device=device) - 0.5) / ramp_end)
    return weights


def _crop(length: int, starts: List[int], index: int, device: torch.device) -> torch.Tensor:
    """1-D weights (length,): 1 where this tile is the nearest one (cut at the middle of each overlap), else 0."""
    start = starts[index]
    low = (start + starts[index - 1] + length) // 2 - start if index > 0 else 0
    high = (starts[index + 1] + start + length) // 2 - start if index < len(starts) - 1 else length
    weights = torch.zeros(length, device=device)
    weights[low:high] = 1
    return weights


def _axis_weights(starts: List[int], index: int, tile_length: int, overlap: int, blend: str,
                  device: torch.device) -> torch.Tensor:
    if blend == 'crop':
        return _crop(tile_length, starts, index, device)
    ramp_start = min(overlap, tile_length) if index > 0 else 0
    ramp_end = min(overlap, tile_length) if index < len(starts) - 1 else 0
    return _ramp(tile_length, ramp_start, ramp_end, device)


def run_padded(fn: ImageFunction, image: torch.Tensor, size_multiple: int = 1) -> torch.Tensor:
    """``fn`` on ``image`` (B, C, H, W) mirror-padded to ``size_multiple``, output cropped to (B, C', H, W)."""
    height, width = image.shape[-2:]
    return fn(pad_to_multiple(image, size_multiple))[..., :height, :width]


def restore_tiled(fn: ImageFunction, image: torch.Tensor, tile_size: int, overlap: int,
                  size_multiple: int = 1, progress: bool = False, blend: str = 'linear') -> torch.Tensor:
    """Apply ``fn`` to overlapping tiles of ``image`` (B, C, H, W) and blend them into (B, C', H, W).

    ``progress``: show a tile progress bar (large images take minutes on a CPU).
    ``blend``: one of :data:`BLENDS`.
    """
    if blend not in BLENDS:
        raise ValueError(f'tile blend: {blend!r} is not one of {", ".join(BLENDS)}.')
    height, width = image.shape[-2:]
    rows, cols = tile_starts(height, tile_size, overlap), tile_starts(width, tile_size, overlap)
    output = weight_sum = None
    positions = [(r, top, c, left) for r, top in enumerate(rows) for c, left in enumerate(cols)]
    for row_index, top, col_index, left in tqdm(positions, desc='Tiles', unit='tile', leave=False,
                                                 disable=not progress):
        tile = image[..., top:top + tile_size, left:left + tile_size]
        restored = run_padded(fn, tile, size_multiple)
        if output is None:
            output = image.new_zeros(*restored.shape[:-2], height, width, dtype=restored.dtype)
            weight_sum = image.new_zeros(height, width, dtype=restored.dtype)
        weights = torch.outer(_axis_weights(rows, row_index, tile.shape[-2], overlap, blend, image.device),
                              _axis_weights(cols, col_index, tile.shape[-1], overlap, blend, image.device))
        output[..., top:top + tile.shape[-2], left:left + tile.shape[-1]] += restored * weights
        weight_sum[top:top + tile.shape[-2], left:left + tile.shape[-1]] += weights
    return output / weight_sum


def restore(fn: ImageFunction, image: torch.Tensor, tile: Optional[TileOptions] = None,
            size_multiple: int = 1, progress: bool = False) -> torch.Tensor:
    """Whole-image (``tile=None``) or tiled application of ``fn`` to ``image`` (B, C, H, W)."""
    if tile is None:
        return run_padded(fn, image, size_multiple)
    return restore_tiled(fn, image, tile.size, tile.overlap, size_multiple, progress)
