"""Bands of rows: without autograd, large float32 maps are computed a band of rows at a time.

A block's expanded maps (2-5x its input) then exist one band at a time in reused, cache-sized buffers, each
expanded row computed once (:func:`depthwise_bands`); the attention sums its q @ k^T and norms band by band
(:func:`attention_from_bands`). Same values (to float rounding) and the same multiply-adds. The reasons are the
CPU's: fresh full-size tensors are new memory (page faults) above glibc's mmap threshold, and bands stay in
cache. Bands run where :func:`vlunet.ops.dispatch.bands_allowed` says (measured: CPU).
"""
from typing import Callable, Iterable, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vlunet.ops import dispatch
from vlunet.ops.attention import head_grams, normalized_attention
from vlunet.ops.channels_last import empty_map, matrix

BAND_BYTES = 8 << 20  # per band of rows without autograd: reused memory, far below glibc's 32 MB mmap threshold
MIN_BANDS = 4  # fewer bands would not lower the peak memory (two band buffers and a band's depthwise output)


def row_bands(height: int, row_bytes: int) -> List[Tuple[int, int]]:
    """[(start, stop)) bands of ``height`` rows, each at most :data:`BAND_BYTES` of ``row_bytes`` rows (at least
    one row)."""
    rows = max(1, BAND_BYTES // row_bytes)
    return [(start, min(height, start + rows)) for start in range(0, height, rows)]


def banded(x: torch.Tensor, expanded_channels: int) -> Optional[List[Tuple[int, int]]]:
    """The row bands of x (B, C, H, W) for a block expanding it to ``expanded_channels``, or None for the whole map.

    Bands are used when :func:`~vlunet.ops.dispatch.bands_allowed`, in float32 without autocast, on channels-last
    maps, when the expanded map of one image makes at least :data:`MIN_BANDS` bands of :data:`BAND_BYTES`.
    """
    if not dispatch.bands_allowed(x) or not dispatch.plain_float32_map(x):
        return None
    bands = row_bands(x.shape[-2], expanded_channels * x.shape[-1] * x.element_size())
    return bands if len(bands) >= MIN_BANDS else None


def per_image(compute: Callable[[int], torch.Tensor], batch: int,
              written_into: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``compute(i)`` (1, C, H, W) for each image i, stacked to (B, C, H, W) (one image: itself, no copy).

    ``written_into``: a (B, C, H, W) map that ``compute(i)`` wrote image i into, when it did (returned as is).
    """
    images = [compute(i) for i in range(batch)]
    if written_into is not None and all(image.data_ptr() == written_into[i].data_ptr()
                                        for i, image in enumerate(images)):
        return written_into
    return images[0] if batch == 1 else torch.cat(images)


def one_image(maps: Optional[torch.Tensor], index: int) -> Optional[torch.Tensor]:
    """Image ``index`` of (B, C, H, W) ``maps`` as (1, C, H, W) (None stays None)."""
    return None if maps is None else maps[index:index + 1]


def depthwise_bands(image: torch.Tensor, expand_weight: torch.Tensor, depthwise_weight: torch.Tensor,
                    bands: List[Tuple[int, int]],
                    norm: Optional[nn.Module] = None) -> Iterator[Tuple[int, int, torch.Tensor]]:
    """Without autograd: (start, stop, rows [start, stop) of the depthwise 3x3 (zero padding 1) of
    ``norm(image) @ expand_weight``) for each band (``norm``: a per-pixel module such as a channel layer norm,
    applied band by band; None: none).

    Shapes: image (1, C, H, W) channels-last, expand_weight (C, C_expanded)
    (:func:`~vlunet.ops.channels_last.pointwise_weight`),
    depthwise_weight (C_expanded, 1, 3, 3) -> bands (1, C_expanded, stop - start, W), channels-last.
    Each band is expanded once, one band ahead, into one of two reused buffers with a row of room
    above and below: the depthwise 3x3 of a band reads the last expanded row of the band above and
    the first of the band below (copied in), zeros at the image's edges. The image's rows of a band are
    not read again once the band is yielded: the consumer may overwrite them.
    """
    rows_most = max(stop - start for start, stop in bands)
    buffers = [torch.empty(1, expand_weight.shape[1], rows_most + 2, image.shape[-1], dtype=image.dtype,
                           device=image.device, memory_format=torch.channels_last) for _ in range(2)]

    def expand_into(buffer: torch.Tensor, start: int, stop: int) -> None:
        rows = image[:, :, start:stop] if norm is None else norm(image[:, :, start:stop])
        torch.mm(matrix(rows), expand_weight, out=matrix(buffer[:, :, 1:1 + stop - start]))

    expand_into(buffers[0], *bands[0])
    buffers[0][:, :, 0].zero_()
    for index, (start, stop) in enumerate(bands):
        current, rows = buffers[index % 2], stop - start
        if index + 1 < len(bands):
            following = buffers[(index + 1) % 2]
            expand_into(following, *bands[index + 1])
            following[:, :, 0] = current[:, :, rows]
            current[:, :, rows + 1] = following[:, :, 1]
        else:
            current[:, :, rows + 1].zero_()
        yield start, stop, F.conv2d(current[:, :, :rows + 2], depthwise_weight, padding=(0, 1),
                                    groups=depthwise_weight.shape[0])


def attention_from_bands(qkv_bands: Iterable[Tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]],
                         image: torch.Tensor, temperature: torch.Tensor,
                         heads: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(:func:`normalized_attention` weights (1, heads, c, c), the value map (1, C, H, W)) of one image whose
    q, k, v come band by band: (start, stop, q, k, v), each (1, C, stop - start, W).

    The per-head grams q @ k^T and the squared norms are summed band by band, the values are kept:
    the full-size q and k are never stored (same values as :func:`~vlunet.ops.attention.attention_weights` to
    float rounding).
    """
    grams, query_squares, key_squares, value = 0, 0, 0, None
    for start, stop, query, key, band_value in qkv_bands:
        q, k = query.flatten(2), key.flatten(2)  # (1, C, band pixels)
        grams = grams + head_grams(q, k, heads)
        query_squares = query_squares + q.square().sum(dim=-1)
        key_squares = key_squares + k.square().sum(dim=-1)
        if value is None:
            value = empty_map(image, band_value.shape[1])
        value[:, :, start:stop] = band_value
    norms = (squares.sqrt().clamp_min(1e-12) for squares in (query_squares, key_squares))
    return normalized_attention(grams, *norms, temperature), value
