"""Whole-image and tiled inference for networks of any input-size constraint, sized to the memory at hand.

``restore(fn, image, tile, size_multiple)`` runs ``fn`` (a restoration network, or a closure that also
passes the CLIP degradation embedding) either on the whole image or on overlapping tiles:

- every call to ``fn`` gets an input mirror-padded at the bottom/right to a multiple of
  ``size_multiple``; the output is cropped back, so images and tiles of any size work;
- tiles of ``size`` x ``size`` are placed every ``size - overlap`` pixels, the last one flush with
  the image edge; tile outputs are blended with weights that ramp linearly across the overlaps (full
  weight on the image border), so seams are smoothed and, for a network with receptive-field radius
  r and ``overlap >= 2 r``, tiled and whole-image outputs agree exactly except within r pixels of an
  inner tile edge;
- ``batch`` tiles go through ``fn`` in one call, stacked along the batch dimension tile by tile
  ((batch * B, C, size, size), the B images of tile 1 first); a closure that passes per-image
  tensors (the degradation vector d, DA-CLIP's content embedding c, each (B, D), computed once from
  the whole image) repeats them with :func:`repeat_per_tile`. The output is the same as one tile at a time.

VLU-Net is not such a network: its channel attention is global (every output pixel depends on the
whole input) and its degradation keys are resized to the input, so tiled and whole-image outputs
differ everywhere, by more for smaller tiles. ``benchmarks/tiling_agreement.py`` measures it: for the
official-size net (random weights) on a 768x512 photograph, PSNR(tiled, whole) is about 31 dB with
128-pixel tiles, 32.5-33 dB with 256 and 35 dB with 512; overlaps of 64 instead of 16 gain at most
0.7 dB (0.1-0.3 dB for 32), and the linear blending is 0.3-0.7 dB closer than a hard crop
(``blend='crop'``, kept for that comparison). Hence ``tile: auto``: the whole image when it fits in
memory, else the largest tile that fits, with a 32-pixel overlap and linear blending.

YAML (top level of an option file; Python: the same mapping, or ``'auto'``)::

    tile: auto                        # = {size: auto}
    tile: {size: auto, overlap: 32, min_size: 128, max_memory: 4GB, batch: 1}
    tile: {size: 512, overlap: 32, batch: 2}    # fixed tiles; batch: auto = as many as fit in memory
    tile: ~                           # (or absent) whole images, whatever their size

``size: auto`` plans every image with the network's memory model (:mod:`vlunet.tiling.memory_model`,
measured once per network) against ``max_memory`` (default: free GPU memory or available RAM): the
whole image if it fits, else the largest tile (a multiple of the size multiple, at least
``min_size``) that fits; if not even a ``min_size`` tile fits, :class:`InsufficientMemoryError` is
raised before any work. The plan counts :data:`IMAGE_BYTES_PER_PIXEL` for the image-sized buffers
(blended output, weights, the 8-bit copy that is saved). ``batch`` (default 1) is the most tiles per
forward; ``auto`` takes as many as fit (at most :data:`MAX_AUTO_BATCH`). ``size_multiple`` overrides
the network's own ``size_multiple`` attribute (default 1).
"""
from dataclasses import dataclass
from typing import Callable, Hashable, List, Optional, Sequence, Union

import torch
from tqdm import tqdm

from vlunet.archs.padding import pad_to_multiple
from vlunet.tiling.memory_model import (
    MemoryModel,
    available_memory,
    cached_memory_model,
    format_bytes,
    parse_memory_size,
)

ImageFunction = Callable[[torch.Tensor], torch.Tensor]
# 'linear': weights ramp linearly across each overlap; 'crop': each pixel comes from its nearest tile only.
BLENDS = ('linear', 'crop')
AUTO = 'auto'
DEFAULT_OVERLAP = 32  # benchmarks/tiling_agreement.py: 0.1-0.3 dB better than 16; 64 gains little more
DEFAULT_MIN_SIZE = 128  # smaller tiles lose > 1.5 dB against the whole image (31 dB at 128, 35 dB at 512)
MAX_AUTO_BATCH = 8
# Image-sized buffers besides the network's: blended output and weight sum (float32), the clamped result
# and the copies made to save it, per pixel of each image.
IMAGE_BYTES_PER_PIXEL = 48
TILE_KEYS = ('size', 'overlap', 'size_multiple', 'min_size', 'max_memory', 'batch')


class InsufficientMemoryError(ValueError):
    """Not even the smallest allowed tile fits the memory budget (raised before any work on the image)."""


@dataclass(frozen=True)
class TileOptions:
    """Fixed tiles: side and overlap in pixels (``0 <= overlap < size``), tiles per forward (int or ``'auto'``)."""
    size: int
    overlap: int = 0
    batch: Union[int, str] = 1
    max_memory: Optional[int] = None  # bytes, for batch 'auto' (None: what the device has free)


@dataclass(frozen=True)
class AutoTile:
    """``tile: auto``: the whole image if it fits ``max_memory`` (None: what the device has free), else the
    largest tile of at least ``min_size`` pixels that fits; ``batch``: most tiles per forward (int or 'auto')."""
    overlap: int = DEFAULT_OVERLAP
    min_size: int = DEFAULT_MIN_SIZE
    max_memory: Optional[int] = None
    batch: Union[int, str] = 1


Tiling = Union[None, TileOptions, AutoTile]


@dataclass(frozen=True)
class TilePlan:
    """How one image is restored: ``size`` None = whole; ``tiles`` positions, ``batch`` per forward;
    predicted bytes and the budget (None when no memory model was needed)."""
    size: Optional[int]
    overlap: int = 0
    batch: int = 1
    tiles: int = 1
    tile_pixels: int = 0
    predicted_bytes: Optional[int] = None
    budget_bytes: Optional[int] = None
    budget_source: str = ''

    @property
    def pixels(self) -> int:
        """Pixels the network restores for this image (tiles x tile area; overlaps counted twice)."""
        return self.tiles * self.tile_pixels

    def __str__(self) -> str:
        what = 'whole image' if self.size is None else (
            f'tiles {self.size} px (overlap {self.overlap}): {self.tiles} tile{"s" * (self.tiles != 1)}, '
            f'{self.batch} per forward')
        if self.predicted_bytes is None:
            return what
        return (f'{what}; memory {format_bytes(self.predicted_bytes)} predicted of {format_bytes(self.budget_bytes)} '
                f'({self.budget_source})')


def _positive_int(value: object, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{key}: expected an integer >= {minimum}, got {value!r}.')
    return value


def _batch(value: object) -> Union[int, str]:
    return AUTO if value == AUTO else _positive_int(value, 'tile.batch', 1)


def parse_tile_options(section: Union[None, str, dict]) -> Tiling:
    """Read the option-file ``tile:`` entry: None (absent, null or ``size: null``) means whole images,
    ``auto`` or ``{size: auto, ...}`` :class:`AutoTile`, ``{size: 512, ...}`` :class:`TileOptions`."""
    if section == AUTO:
        section = {'size': AUTO}
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ValueError(f'tile: expected auto, null or a mapping like {{size: 256, overlap: 32}}, got {section!r}.')
    unknown = set(section) - set(TILE_KEYS)
    if unknown:
        raise ValueError(f'tile: unknown keys {sorted(unknown)}; allowed: {", ".join(TILE_KEYS)}.')
    if 'size_multiple' in section:
        _positive_int(section['size_multiple'], 'tile.size_multiple', 1)
    size = section.get('size')
    if size is None:
        return None
    batch = _batch(section.get('batch', 1))
    max_memory = section.get('max_memory')
    max_memory = None if max_memory is None else parse_memory_size(max_memory, 'tile.max_memory')
    if size == AUTO:
        overlap = _positive_int(section.get('overlap', DEFAULT_OVERLAP), 'tile.overlap', 0)
        min_size = _positive_int(section.get('min_size', DEFAULT_MIN_SIZE), 'tile.min_size', 1)
        if overlap >= min_size:
            raise ValueError(f'tile.overlap ({overlap}) must be smaller than tile.min_size ({min_size}).')
        return AutoTile(overlap, min_size, max_memory, batch)
    if 'min_size' in section:
        raise ValueError('tile.min_size: only for size: auto (the smallest tile it may choose); remove it.')
    size = _positive_int(size, 'tile.size', 1)
    overlap = _positive_int(section.get('overlap', 0), 'tile.overlap', 0)
    if overlap >= size:
        raise ValueError(f'tile.overlap ({overlap}) must be smaller than tile.size ({size}).')
    return TileOptions(size, overlap, batch, max_memory)


def repeat_per_tile(per_image: Optional[torch.Tensor], inputs: int) -> Optional[torch.Tensor]:
    """A per-image tensor (B, ...) (e.g. d or c) repeated for ``inputs`` = k * B stacked tiles ((k * B, ...), as
    :func:`restore_tiled` stacks them); returned unchanged when ``inputs`` == B."""
    if per_image is None or per_image.shape[0] == inputs:
        return per_image
    if inputs % per_image.shape[0]:
        raise ValueError(f'{inputs} stacked tiles are not a whole number of tile batches of {per_image.shape[0]} '
                         'images.')
    return per_image.repeat(inputs // per_image.shape[0], *[1] * (per_image.dim() - 1))


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


def _padded(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def _tile_count(height: int, width: int, size: int, overlap: int) -> int:
    return len(tile_starts(height, size, overlap)) * len(tile_starts(width, size, overlap))


class _Budget:
    """Predicted bytes of restoring a (B, C, H, W) image whole or in tiles, against the memory available."""

    def __init__(self, shape: Sequence[int], size_multiple: int, memory: MemoryModel, budget: int, source: str):
        self.images, self.height, self.width = shape[0], shape[-2], shape[-1]
        self.size_multiple, self.memory, self.budget, self.source = size_multiple, memory, budget, source

    def predicted(self, size: Optional[int], batch: int = 1) -> int:
        height, width = (self.height, self.width) if size is None else (min(size, self.height), min(size, self.width))
        return IMAGE_BYTES_PER_PIXEL * self.images * self.height * self.width + self.memory.forward_bytes(
            batch * self.images, _padded(height, self.size_multiple), _padded(width, self.size_multiple))

    def fits(self, size: Optional[int], batch: int = 1) -> bool:
        return self.predicted(size, batch) <= self.budget

    def largest_tile(self, min_size: int) -> Optional[int]:
        """The largest tile side (a multiple of the size multiple, >= ``min_size``) that fits, or None."""
        step = self.size_multiple
        low, high = _padded(min_size, step) // step, _padded(max(self.height, self.width), step) // step
        if not self.fits(low * step):
            return None
        while low < high:  # memory grows with the tile side: binary search for the last fitting one
            middle = (low + high + 1) // 2
            low, high = (middle, high) if self.fits(middle * step) else (low, middle - 1)
        return low * step

    def batch(self, size: int, tiles: int, most: Union[int, str]) -> int:
        most = min(tiles, MAX_AUTO_BATCH if most == AUTO else most)
        return max([count for count in range(1, most + 1) if self.fits(size, count)] or [1])


def _not_enough_memory(tile: AutoTile, budget: _Budget, device: torch.device) -> InsufficientMemoryError:
    size = min(_padded(tile.min_size, budget.size_multiple), max(budget.height, budget.width))
    return InsufficientMemoryError(
        f'not enough memory to restore a {budget.width}x{budget.height} image on {device}: even {size}-pixel tiles '
        f'need about {format_bytes(budget.predicted(size))} (network: {budget.memory}), but the budget is '
        f'{format_bytes(budget.budget)} ({budget.source}). Free memory, raise tile.max_memory / --max-memory, '
        f'or allow smaller tiles (tile.min_size, now {tile.min_size}; quality drops with the tile size).')


def plan_tiles(tile: Tiling, shape: Sequence[int], size_multiple: int, device: torch.device,
               memory_model: Callable[[], MemoryModel]) -> TilePlan:
    """How to restore an image of ``shape`` (B, C, H, W) under ``tile``; ``memory_model`` is called only when
    the plan depends on memory (``size: auto`` or ``batch: auto``). Raises :class:`InsufficientMemoryError`."""
    height, width = shape[-2], shape[-1]
    if tile is None:
        return TilePlan(None, tile_pixels=height * width)
    if isinstance(tile, TileOptions) and tile.batch != AUTO:
        tiles = _tile_count(height, width, tile.size, tile.overlap)
        return TilePlan(tile.size, tile.overlap, min(tile.batch, tiles), tiles,
                        min(tile.size, height) * min(tile.size, width))
    budget_bytes, source = (tile.max_memory, 'max_memory') if tile.max_memory else available_memory(device)
    budget = _Budget(shape, size_multiple, memory_model(), budget_bytes, source)
    if isinstance(tile, AutoTile) and budget.fits(None):
        return TilePlan(None, tile_pixels=height * width, predicted_bytes=budget.predicted(None),
                        budget_bytes=budget_bytes, budget_source=source)
    size = tile.size if isinstance(tile, TileOptions) else budget.largest_tile(tile.min_size)
    if size is None:
        raise _not_enough_memory(tile, budget, device)
    tiles = _tile_count(height, width, size, tile.overlap)
    batch = budget.batch(size, tiles, tile.batch)
    return TilePlan(size, tile.overlap, batch, tiles, min(size, height) * min(size, width),
                    budget.predicted(size, batch), budget_bytes, source)


def run_padded(fn: ImageFunction, image: torch.Tensor, size_multiple: int = 1) -> torch.Tensor:
    """``fn`` on ``image`` (B, C, H, W) mirror-padded to ``size_multiple``, output cropped to (B, C', H, W)."""
    height, width = image.shape[-2:]
    return fn(pad_to_multiple(image, size_multiple))[..., :height, :width]


def restore_tiled(fn: ImageFunction, image: torch.Tensor, tile_size: int, overlap: int,
                  size_multiple: int = 1, progress: bool = False, blend: str = 'linear', batch: int = 1,
                  on_progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Apply ``fn`` to overlapping tiles of ``image`` (B, C, H, W) and blend them into (B, C', H, W).

    ``progress``: show a tile progress bar with the time left (large images take minutes on a CPU).
    ``blend``: one of :data:`BLENDS`. ``batch``: tiles per call of ``fn`` (stacked (batch * B, C, h, w)).
    ``on_progress``: called with the pixels restored (tile area x tiles) after each call of ``fn``.
    """
    if blend not in BLENDS:
        raise ValueError(f'tile blend: {blend!r} is not one of {", ".join(BLENDS)}.')
    images, (height, width) = image.shape[0], image.shape[-2:]
    rows, cols = tile_starts(height, tile_size, overlap), tile_starts(width, tile_size, overlap)
    tile_height, tile_width = min(tile_size, height), min(tile_size, width)
    positions = [(r, top, c, left) for r, top in enumerate(rows) for c, left in enumerate(cols)]
    output = weight_sum = None
    with tqdm(total=len(positions), desc='Tiles', unit='tile', leave=False, disable=not progress) as bar:
        for first in range(0, len(positions), batch):
            group = positions[first:first + batch]
            stacked = torch.cat([image[..., top:top + tile_height, left:left + tile_width]
                                 for _, top, _, left in group])
            restored = run_padded(fn, stacked, size_multiple)
            if output is None:
                output = image.new_zeros(images, *restored.shape[1:-2], height, width, dtype=restored.dtype)
                weight_sum = image.new_zeros(height, width, dtype=restored.dtype)
            for index, (row_index, top, col_index, left) in enumerate(group):
                weights = torch.outer(_axis_weights(rows, row_index, tile_height, overlap, blend, image.device),
                                      _axis_weights(cols, col_index, tile_width, overlap, blend, image.device))
                tile_output = restored[index * images:(index + 1) * images]
                output[..., top:top + tile_height, left:left + tile_width] += tile_output * weights
                weight_sum[top:top + tile_height, left:left + tile_width] += weights
            bar.update(len(group))
            if on_progress is not None:
                on_progress(len(group) * tile_height * tile_width)
    return output / weight_sum


def restore(fn: ImageFunction, image: torch.Tensor, tile: Tiling = None, size_multiple: int = 1,
            progress: bool = False, memory_key: Optional[Hashable] = None,
            on_plan: Optional[Callable[[TilePlan], None]] = None,
            on_progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Whole-image (``tile=None``), tiled or automatically planned (:class:`AutoTile`) ``fn`` of ``image`` (B, C, H, W).

    ``memory_key``: identifies ``fn``'s network for the cached memory model (e.g.
    :func:`vlunet.tiling.memory_model.network_memory_key`; None measures it for every image).
    ``on_plan``: called with the :class:`TilePlan` before any work; ``on_progress``: see :func:`restore_tiled`.
    """
    plan = plan_tiles(tile, image.shape, size_multiple, image.device,
                      lambda: cached_memory_model(memory_key, fn, image, size_multiple))
    if on_plan is not None:
        on_plan(plan)
    if plan.size is None:
        output = run_padded(fn, image, size_multiple)
        if on_progress is not None:
            on_progress(plan.pixels)
        return output
    return restore_tiled(fn, image, plan.size, plan.overlap, size_multiple, progress, batch=plan.batch,
                         on_progress=on_progress)


def tile_problems(section: Union[None, str, dict]) -> List[str]:
    """The option checker's view of ``tile:``: [] when :func:`parse_tile_options` accepts it, else its error."""
    try:
        parse_tile_options(section)
    except ValueError as error:
        return [str(error)]
    return []
