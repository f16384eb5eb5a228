"""Restormer building blocks used by VLU-Net's proximal mapping module (PMM).

Channel layer norm, transposed (channel) self-attention (MDTA), gated feed-forward (GDFN), the
transformer block that chains them, and the 2x down/up samplers. All convolutions are bias-free,
as in the official VLU-Net release. Feature maps are (B, C, H, W) throughout, fastest channels-last.

On channels-last maps a (B, C, H, W) map *is* a (B, H, W, C) array, so the blocks work on that view
without copies: the layer norm is one ``F.layer_norm`` over its last axis, 1x1 convolutions are one
matrix product (:func:`pointwise`; it reads channel slices, such as the halves of a ``chunk``, in
place), and the attention's per-head matrices are strided views. Fresh full-size tensors cost page
faults on CPU (large allocations are new memory every time), so the blocks allocate and pass over
full-size maps as few times as they can: the attention's weights and output projection are merged
into one small matrix (:func:`projected_attention`), residual sums accumulate inside the last matrix
product, and without autograd the GDFN gates in place. Without autograd on large float32 maps
(inference), the GDFN and the attentions work in bands of rows (:func:`banded`, :func:`depthwise_bands`):
their expanded maps (2-5x the input) exist one band at a time in reused, cache-sized buffers, each
expanded row computed once; the attention sums its q @ k^T and norms band by band. Same values (to
float rounding) and the same multiply-adds; the layer norm before a block is applied band by band too.
Without autograd a residual sum accumulates in the residual's own memory where its owner allows it
(:class:`TransformerBlocks`: a chain's maps are its own), and the GDFN pads its hidden width with zero
channels to whole vectors (same values, aligned passes). In float32 training on CPU
(:func:`fused_backward_allowed`) the attentions run with a hand-written backward
(:mod:`vlunet.archs.restormer_backward`) and the GDFN computes its gate and content as two maps.
"""
import contextlib
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from vlunet.archs.channels_last_math import (as_map, attention_projection, head_grams, normalized_attention,
                                            pixel_rows)
from vlunet.archs.restormer_backward import AttentionChannels, fused_projected_attention, weight_halves


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map, at every pixel (eps 1e-5, biased variance).

    On a channels-last map the (B, H, W, C) permute is a free view, so this is one fused kernel
    with no copies (the official code computes mean and variance on a rearranged copy).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = x.permute(0, 2, 3, 1)
        normalized = F.layer_norm(channels_last, self.normalized_shape, self.weight, self.bias, self.eps)
        return normalized.permute(0, 3, 1, 2)


REDUCED_PRECISION = (torch.float16, torch.bfloat16)
BAND_BYTES = 8 << 20  # per band of rows without autograd: reused memory, far below glibc's 32 MB mmap threshold
MIN_BANDS = 4  # fewer bands would not lower the peak memory (two band buffers and a band's depthwise output)
VECTOR_LANES = 16  # float32 values in a 64-byte (AVX-512) vector: the GDFN pads its hidden width in bands to it
_bands_enabled = True


@contextlib.contextmanager
def whole_maps() -> Iterator[None]:
    """Within it, blocks compute their full-size maps at once (no bands): the memory planner measures the
    whole-map peak, an upper bound of the banded one."""
    global _bands_enabled
    previous, _bands_enabled = _bands_enabled, False
    try:
        yield
    finally:
        _bands_enabled = previous


def row_bands(height: int, row_bytes: int) -> List[Tuple[int, int]]:
    """[(start, stop)) bands of ``height`` rows, each at most :data:`BAND_BYTES` of ``row_bytes`` rows (at least one row)."""
    rows = max(1, BAND_BYTES // row_bytes)
    return [(start, min(height, start + rows)) for start in range(0, height, rows)]


def bands_allowed() -> bool:
    """Whether blocks may work in bands: without autograd, outside :func:`whole_maps` and graph capture
    (``torch.export``/ONNX/``torch.compile``: one graph for every size)."""
    return _bands_enabled and not (torch.is_grad_enabled() or capturing_graph())


def capturing_graph() -> bool:
    """Whether ``torch.compile``/``torch.export``/ONNX or ``torch.jit`` is tracing: one graph for every input."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def plain_float32_map(x: torch.Tensor) -> bool:
    """Whether x is a float32, channels-last map outside autocast: what the bands and the training paths expect."""
    return x.dtype == torch.float32 and not autocast_enabled(x) and x.is_contiguous(memory_format=torch.channels_last)


def fused_backward_allowed(x: torch.Tensor) -> bool:
    """Whether a block may take its CPU training path (the attention's hand-written backward of
    :mod:`vlunet.archs.restormer_backward`, the GDFN's separate halves): with autograd, on a float32
    channels-last CPU map, without autocast and outside graph capture. (What it saves, layout reorders of
    oneDNN's depthwise backward and passes over fresh memory, is CPU-specific; CUDA keeps autograd's path.)"""
    return torch.is_grad_enabled() and x.device.type == 'cpu' and plain_float32_map(x) and not capturing_graph()


def banded(x: torch.Tensor, expanded_channels: int) -> Optional[List[Tuple[int, int]]]:
    """The row bands of x (B, C, H, W) for a block expanding it to ``expanded_channels``, or None for the whole map.

    Bands are used when :func:`bands_allowed`, in float32 without autocast, on channels-last maps, when the
    expanded map of one image makes at least :data:`MIN_BANDS` bands of :data:`BAND_BYTES`.
    """
    if not bands_allowed() or not plain_float32_map(x):
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


def empty_map(like: torch.Tensor, channels: int) -> torch.Tensor:
    """An empty channels-last (1, channels, H, W) map with ``like``'s H, W, dtype and device."""
    return torch.empty(1, channels, *like.shape[-2:], dtype=like.dtype, device=like.device,
                       memory_format=torch.channels_last)


def matrix(x: torch.Tensor) -> torch.Tensor:
    """One channels-last image or band (1, C, h, W) -> its (h*W, C) pixel matrix, a view."""
    return pixel_rows(x)[0]


def depthwise_bands(image: torch.Tensor, expand_weight: torch.Tensor, depthwise_weight: torch.Tensor,
                    bands: List[Tuple[int, int]],
                    norm: Optional[nn.Module] = None) -> Iterator[Tuple[int, int, torch.Tensor]]:
    """Without autograd: (start, stop, rows [start, stop) of the depthwise 3x3 (zero padding 1) of
    ``norm(image) @ expand_weight``) for each band (``norm``: a per-pixel module such as :class:`ChannelLayerNorm`,
    applied band by band; None: none).

    Shapes: image (1, C, H, W) channels-last, expand_weight (C, C_expanded) (:func:`pointwise_weight`),
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
    the full-size q and k are never stored (same values as :func:`attention_weights` to float rounding).
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


def _fuse_residual(product: torch.Tensor, residual: Optional[torch.Tensor]) -> bool:
    """Whether ``residual`` can be the accumulator of the matrix product (same dtype, no autocast).

    Under autocast the product runs in fp16/bf16 and the sum keeps the residual's float32, as unfused.
    """
    return residual is not None and residual.dtype == product.dtype and not autocast_enabled(product)


def _accumulate_in_place(product: torch.Tensor, residual: Optional[torch.Tensor], in_place: bool) -> bool:
    """Whether the product may accumulate into ``residual``'s own memory: the caller allows it (``in_place``: it
    no longer needs the residual), the sum is fused (:func:`_fuse_residual`), there is no autograd, and the
    residual is a channels-last map, whose pixel rows are a view. Saves copying the residual into a fresh output.
    """
    return (in_place and _fuse_residual(product, residual) and not torch.is_grad_enabled()
            and residual.is_contiguous(memory_format=torch.channels_last))


def autocast_enabled(x: torch.Tensor) -> bool:
    """Whether autocast is on for ``x``'s device type."""
    device = x.device.type
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def pointwise(x: torch.Tensor, conv: nn.Conv2d, residual: Optional[torch.Tensor] = None,
              in_place: bool = False) -> torch.Tensor:
    """The bias-free 1x1 ``conv`` of x (B, C, H, W) (plus ``residual``), as one matrix product on (B, H*W, C).

    Returns (B, C_out, H, W), channels-last. As fast as the convolution forward, faster backward with
    several threads (oneDNN's 1x1 backward); it reads a channels-last slice of a wider map in place (a
    convolution would copy it first), and the residual sum is the product's accumulator (no second pass). The weight's gradient comes out contiguous:
    store 1x1 weights contiguous for DDP's gradient buckets. ``in_place``: the sum may be written into
    ``residual`` (:func:`_accumulate_in_place`; the caller no longer needs it); the result is returned either way.
    """
    return pixel_product(x, pointwise_weight(conv), residual, in_place)


def pixel_product(x: torch.Tensor, weight: torch.Tensor, residual: Optional[torch.Tensor] = None,
                  in_place: bool = False) -> torch.Tensor:
    """:func:`pointwise` with a weight matrix: x (B, C, H, W) times ``weight`` (C, C_out) at every pixel (plus
    ``residual``) -> (B, C_out, H, W), channels-last."""
    rows = pixel_rows(x)  # (B, H*W, C)
    if _accumulate_in_place(rows, residual, in_place):
        pixel_rows(residual).flatten(0, 1).addmm_(rows.flatten(0, 1), weight)
        return residual
    if _fuse_residual(rows, residual):
        out = torch.addmm(pixel_rows(residual).flatten(0, 1), rows.flatten(0, 1), weight)
        return as_map(out.view(x.shape[0], -1, out.shape[-1]), x)
    out = as_map(rows @ weight, x)
    return out if residual is None else out + residual


def pointwise_weight(conv: Union[nn.Conv2d, torch.Tensor]) -> torch.Tensor:
    """The (C_in, C_out) matrix of a bias-free 1x1 ``conv`` (or of its (C_out, C_in, 1, 1) weight) acting on pixel
    rows (a view of the weight)."""
    weight = conv.weight if isinstance(conv, nn.Conv2d) else conv
    return weight.flatten(1).t()


def depthwise_expanded(x: torch.Tensor, expand_weight: torch.Tensor, depthwise_weight: torch.Tensor) -> torch.Tensor:
    """The depthwise 3x3 (zero padding 1) of ``x @ expand_weight`` at every pixel, the whole map at once
    (:func:`depthwise_bands`: band by band). x (B, C, H, W), expand_weight (C, C_expanded), depthwise_weight
    (C_expanded, 1, 3, 3) -> (B, C_expanded, H, W), channels-last."""
    return F.conv2d(pixel_product(x, expand_weight), depthwise_weight, padding=1, groups=depthwise_weight.shape[0])


def spatial_norms(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C) float32: the L2 norm of every channel over the H*W pixels, floored at 1e-12.

    fp32: ``square().sum()`` (it reads strided channels-last memory ~3x faster than
    ``linalg.vector_norm``); fp16/bf16: ``vector_norm`` accumulating in float32 (fp16 squares overflow
    from |x| > 255).
    """
    flat = x.flatten(2)
    if flat.dtype in REDUCED_PRECISION:
        norms = torch.linalg.vector_norm(flat, dim=-1, dtype=torch.float32)
    else:
        norms = flat.square().sum(dim=-1, dtype=torch.float32).sqrt()
    return norms.clamp_min(1e-12)


def _normalized(x: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """x (B, C, N) in fp16/bf16 divided by its float32 row norms (B, C): one multiplication in x's dtype.

    The reciprocal is capped at the dtype's largest value, so an all-zero row stays zero.
    """
    reciprocal = norm.reciprocal().clamp_max(torch.finfo(x.dtype).max).to(x.dtype)
    return x * reciprocal.unsqueeze(-1)


def attention_weights(query: torch.Tensor, key: torch.Tensor, temperature: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, heads, C/heads, C/heads): per head softmax(normalize(q) @ normalize(k)^T * temperature), in v's dtype.

    query, key: (B, C, H, W), channels grouped head-major; q, k are the (C/heads, H*W) head matrices
    and normalize is L2 over the spatial axis. Channels-last head matrices are strided views that the products read
    directly (no per-head copies). In float32 the small logits are divided by the outer product of the
    norms instead of normalising the large q and k (same value; saves two full-size divisions). In
    fp16/bf16 (autocast) q and k are normalised first, as in the official code: q @ k^T sums H*W
    products and would pass fp16's largest value (65,504) from about 256x256 on. Norms, logits and
    softmax are float32.
    """
    query_norm, key_norm = spatial_norms(query), spatial_norms(key)
    q, k = query.flatten(2), key.flatten(2)  # (B, C, H*W)
    normalize_first = q.dtype in REDUCED_PRECISION
    if normalize_first:
        q, k = _normalized(q, query_norm), _normalized(k, key_norm)
    logits = head_grams(q, k, heads).float()
    if not normalize_first:
        return normalized_attention(logits, query_norm, key_norm, temperature)
    return (logits * temperature.view(1, heads, 1, 1)).softmax(dim=-1)


def channel_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, temperature: torch.Tensor,
                      heads: int) -> torch.Tensor:
    """Attention across channels ("transposed" attention) of Restormer.

    Args:
        query, key, value: (B, C, H, W) maps; channels are grouped head-major into ``heads`` heads.
        temperature: (heads, 1, 1) learnable scale of the logits.
        heads: Number of heads; must divide C.

    Returns:
        (B, C, H, W), channels-last: per head, :func:`attention_weights` @ v (v: the (C/heads, H*W)
        head matrix), produced as (B, H*W, C) from strided views of channels-last maps.
    """
    attention = attention_weights(query, key, temperature, heads).to(value.dtype)
    v = pixel_rows(value)
    outputs = [v_head @ attention[:, head].transpose(1, 2) for head, v_head in enumerate(v.chunk(heads, 2))]
    return as_map(outputs[0] if heads == 1 else torch.cat(outputs, dim=2), value)


def projected_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, temperature: torch.Tensor,
                        heads: int, project_out: nn.Conv2d, residual: Optional[torch.Tensor] = None,
                        scale: Optional[torch.Tensor] = None, residual_weight: float = 1.0,
                        in_place: bool = False) -> torch.Tensor:
    """``residual_weight * residual + scale * project_out(channel_attention(query, key, value))``, one product.

    Shapes: query, key, value, residual (B, C, H, W); scale: a tensor broadcastable to (B, 1, 1)
    (e.g. a learnable step); None: omitted. Returns (B, C_out, H, W), channels-last.

    The attention weights of every head and the 1x1 projection are both linear maps of v's channels:
    they are merged first into one small (B, C, C_out) matrix (block-diagonal weights @ projection,
    times ``scale``), so v is read once by a single product, which accumulates onto the residual.
    Saves the per-head products, their concatenation, the projection pass and the residual pass.
    Under autocast the scale and the residual are applied afterwards in float32, as unfused. ``in_place``: the
    sum may be written into ``residual`` (:func:`_accumulate_in_place`); the result is returned either way.
    """
    attention = attention_weights(query, key, temperature, heads)
    return project_values(attention, value, project_out, residual, scale, residual_weight, in_place)


def project_values(attention: torch.Tensor, value: torch.Tensor, project_out: nn.Conv2d,
                   residual: Optional[torch.Tensor] = None, scale: Optional[torch.Tensor] = None,
                   residual_weight: float = 1.0, in_place: bool = False) -> torch.Tensor:
    """The second half of :func:`projected_attention`, from the attention weights (B, heads, c, c)."""
    merged = attention_projection(attention.to(value.dtype), project_out.weight)  # (B, C, C_out)
    v = pixel_rows(value)
    if _fuse_residual(v, residual):
        if scale is not None:
            merged = merged * scale.view(-1, 1, 1)
        if _accumulate_in_place(v, residual, in_place):
            pixel_rows(residual).baddbmm_(v, merged, beta=residual_weight)
            return residual
        return as_map(torch.baddbmm(pixel_rows(residual), v, merged, beta=residual_weight), value)
    out = as_map(v @ merged, value)
    if scale is not None:
        out = out * scale.view(-1, 1, 1, 1)
    return out if residual is None else out + residual_weight * residual


class TransposedSelfAttention(nn.Module):
    """MDTA: multi-Dconv head transposed self-attention of Restormer, (B, C, H, W) -> (B, C, H, W).

    ``forward(x, residual=None, scale=None)`` returns ``residual + scale * MDTA(x)`` (None: omitted),
    the sum and the scaling fused into the output product.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                scale: Optional[torch.Tensor] = None, norm: Optional[nn.Module] = None,
                in_place: bool = False) -> torch.Tensor:
        """``residual + scale * MDTA(norm(x))``; ``norm``: a per-pixel module applied first (in bands: band by band).

        ``in_place``: the sum may be written into ``residual`` (the caller no longer needs it, e.g. x itself).
        """
        bands = banded(x, self.qkv.out_channels)
        if bands is not None:
            return per_image(lambda i: self._image_in_bands(x[i:i + 1], one_image(residual, i), scale,
                                                            bands, norm, in_place),
                             x.shape[0], residual if in_place else None)
        x = x if norm is None else norm(x)
        qkv = self.qkv_dwconv(pointwise(x, self.qkv))
        if fused_backward_allowed(qkv):
            channels = qkv.shape[1] // 3
            layout = AttentionChannels(query=0, key=channels, value=2 * channels, channels=channels, heads=self.heads)
            return fused_projected_attention(qkv, None, layout, self.temperature, self.project_out.weight, scale,
                                             residual)
        query, key, value = qkv.chunk(3, dim=1)
        return projected_attention(query, key, value, self.temperature, self.heads, self.project_out, residual,
                                   scale, in_place=in_place)

    def _image_in_bands(self, image: torch.Tensor, residual: Optional[torch.Tensor], scale: Optional[torch.Tensor],
                        bands: List[Tuple[int, int]], norm: Optional[nn.Module], in_place: bool) -> torch.Tensor:
        """One image (1, C, H, W) with q, k and v in bands of rows (:func:`depthwise_bands`,
        :func:`attention_from_bands`), then one product over v (:func:`project_values`)."""
        qkv_bands = ((start, stop, *hidden.chunk(3, dim=1))
                     for start, stop, hidden in depthwise_bands(image, pointwise_weight(self.qkv),
                                                                self.qkv_dwconv.weight, bands, norm))
        attention, value = attention_from_bands(qkv_bands, image, self.temperature, self.heads)
        return project_values(attention, value, self.project_out, residual, scale, in_place=in_place)


class GatedFeedForward(nn.Module):
    """GDFN: 1x1 expand to 2 x hidden, 3x3 depthwise, GELU(first half) * second half, 1x1 back to dim.

    ``forward(x, residual=None)`` returns ``residual + GDFN(x)``, the sum fused into the last product.
    """

    def __init__(self, dim: int, expansion_factor: float):
        super().__init__()
        hidden = int(dim * expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                norm: Optional[nn.Module] = None, in_place: bool = False) -> torch.Tensor:
        """``residual + GDFN(norm(x))``; ``norm``: a per-pixel module applied first (in bands: band by band).

        ``in_place``: the sum may be written into ``residual`` (the caller no longer needs it, e.g. x itself).
        """
        bands = banded(x, self.project_in.out_channels)
        if bands is not None:
            return per_image(lambda i: self._image_in_bands(x[i:i + 1], one_image(residual, i), bands, norm, in_place),
                             x.shape[0], residual if in_place else None)
        x = x if norm is None else norm(x)
        if fused_backward_allowed(x):
            # The gate and the content as maps of their own, from the halves of the weights (not strided halves
            # of one 2 x hidden map): GELU, gating and their backward run 1.5-2.5x faster on whole maps, and the
            # halves' gradients need no concatenation. Same products, values and gradients.
            gate, content = (depthwise_expanded(x, pointwise_weight(expand), depthwise) for expand, depthwise
                             in zip(weight_halves(self.project_in.weight), weight_halves(self.dwconv.weight)))
            return pointwise(F.gelu(gate) * content, self.project_out, residual)
        if torch.is_grad_enabled():
            gate, content = self.dwconv(pointwise(x, self.project_in)).chunk(2, dim=1)
            return pointwise(F.gelu(gate) * content, self.project_out, residual)
        expand, depthwise, project = self._vector_aligned_weights()
        gate, content = depthwise_expanded(x, expand, depthwise).chunk(2, dim=1)
        # no graph to keep: GELU and gating in place, in the first half (read in place by the product)
        return pixel_product(torch.ops.aten.gelu_(gate).mul_(content), project, residual, in_place)

    def _vector_aligned_weights(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(expand (C, 2 x h'), depthwise (2 x h', 1, 3, 3), project (h', C)): the weights with the hidden width h
        zero-padded to h', a multiple of :data:`VECTOR_LANES` (gate channels [0, h), content [h', h' + h)).

        The padded channels are zero throughout (zero expansion, zero depthwise filter, GELU(0) * 0 = 0, a zero
        row of the projection): the same values, while the depthwise convolution, the GELU, the gating and the
        products work on whole vectors at aligned offsets (a 255-channel band's chain runs about 18 % faster).
        Used without autograd (bands and whole maps); training keeps the module's weights.
        """
        hidden = self.project_out.in_channels
        padded = -(-hidden // VECTOR_LANES) * VECTOR_LANES
        expand, depthwise, project = (self.project_in.weight, self.dwconv.weight, self.project_out.weight)
        if padded != hidden:
            expand = expand.new_zeros(2, padded, expand.shape[1])
            depthwise = depthwise.new_zeros(2, padded, 9)
            project = project.new_zeros(project.shape[0], padded)
            expand[:, :hidden] = self.project_in.weight.reshape(2, hidden, -1)
            depthwise[:, :hidden] = self.dwconv.weight.reshape(2, hidden, 9)
            project[:, :hidden] = self.project_out.weight.flatten(1)
        return (expand.reshape(2 * padded, -1).t(), depthwise.reshape(2 * padded, 1, 3, 3),
                project.reshape(project.shape[0], padded).t())

    def _image_in_bands(self, image: torch.Tensor, residual: Optional[torch.Tensor], bands: List[Tuple[int, int]],
                        norm: Optional[nn.Module], in_place: bool) -> torch.Tensor:
        """One image (1, C, H, W) in bands of rows (:func:`depthwise_bands`): the same values and products.

        The hidden maps of a band (2.66 x 2 x its input) reuse the same memory and stay in cache; the
        full-size ones are fresh memory every time, and writing them costs as much as computing them.
        The hidden width is padded to whole vectors (:meth:`_vector_aligned_weights`). Each band's output is
        written in place into the output map, its residual as the accumulator; with
        ``in_place`` the output map is the residual itself (also when the residual is the image: a band's
        image rows are no longer read once :func:`depthwise_bands` yields it).
        """
        expand, depthwise, weight = self._vector_aligned_weights()
        accumulate = _accumulate_in_place(image, residual, in_place)
        out = residual if accumulate else empty_map(image, weight.shape[1])
        for start, stop, hidden in depthwise_bands(image, expand, depthwise, bands, norm):
            gate, content = hidden.chunk(2, dim=1)
            gated = matrix(torch.ops.aten.gelu_(gate).mul_(content))
            target = matrix(out[:, :, start:stop])
            if residual is None:
                torch.mm(gated, weight, out=target)
            elif accumulate:
                target.addmm_(gated, weight)
            else:
                torch.addmm(matrix(residual[:, :, start:stop]), gated, weight, out=target)
        return out


class TransformerBlock(nn.Module):
    """Restormer block: x + MDTA(LN(x)), then x + GDFN(LN(x)); (B, C, H, W) -> (B, C, H, W).

    ``forward(x, overwrite_input=False)``: without autograd, the GDFN's sum accumulates into the attention's
    output (the block's own map); with ``overwrite_input`` (the caller no longer needs x) the attention's sum
    accumulates into x too. Same values; saves copying each residual into a fresh map.
    """

    def __init__(self, dim: int, heads: int, ffn_expansion_factor: float):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = TransposedSelfAttention(dim, heads)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GatedFeedForward(dim, ffn_expansion_factor)

    def forward(self, x: torch.Tensor, overwrite_input: bool = False) -> torch.Tensor:
        attended = self.attn(x, residual=x, norm=self.norm1, in_place=overwrite_input)
        return self.ffn(attended, residual=attended, norm=self.norm2, in_place=overwrite_input or attended is not x)


class TransformerBlocks(nn.Sequential):
    """A chain of :class:`TransformerBlock` (state-dict keys as ``nn.Sequential``'s), (B, C, H, W) -> (B, C, H, W).

    Every block after the first overwrites its input, the chain's own map (see :class:`TransformerBlock`);
    ``forward(x, overwrite_input=True)``: the first block too (the caller no longer needs x). Built like
    ``nn.Sequential`` (so slicing works) or with :meth:`of`.
    """

    @classmethod
    def of(cls, dim: int, count: int, heads: int, ffn_expansion_factor: float) -> 'TransformerBlocks':
        """``count`` new blocks of ``dim`` channels."""
        return cls(*(TransformerBlock(dim, heads, ffn_expansion_factor) for _ in range(count)))

    def forward(self, x: torch.Tensor, overwrite_input: bool = False) -> torch.Tensor:
        for index, block in enumerate(self):
            x = block(x, overwrite_input=overwrite_input or index > 0)
        return x


class Downsample(nn.Module):
    """(B, C, H, W) -> (B, 2C, H/2, W/2): 3x3 conv to C/2 channels, then pixel-unshuffle by 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """(B, C, H, W) -> (B, C/2, 2H, 2W): 3x3 conv to 2C channels, then pixel-shuffle by 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def store_weights_channels_last(network: nn.Module, convolved_1x1: Iterable[nn.Module] = ()) -> None:
    """Store ``network``'s 3x3 (k x k, k > 1) weights, and the 1x1 weights of the ``convolved_1x1`` modules
    (1x1 convolutions run as convolutions, e.g. with a stride or a bias), in the activations' channels-last layout.

    Their gradients then come out with the parameters' strides, so DDP's gradient buckets (laid out like
    the parameters) take them without a copy and without the "Grad strides do not match" warning.
    1x1 weights stay contiguous: they run as matrix products (:func:`pointwise`), whose weight gradients
    are contiguous (both layouts order a (C_out, C_in, 1, 1) weight's memory the same way; only the
    strides of the size-1 dimensions differ, which DDP compares too). Freshly allocated:
    ``.contiguous(memory_format=...)`` keeps a depthwise (C, 1, 3, 3) weight's contiguous strides.
    Values and state-dict keys are unchanged.
    """
    convolved = {id(parameter) for module in convolved_1x1 for parameter in module.parameters()}
    for parameter in network.parameters():
        if parameter.dim() == 4 and (parameter.shape[-2:] != (1, 1) or id(parameter) in convolved):
            parameter.data = torch.empty_like(parameter.data, memory_format=torch.channels_last).copy_(parameter.data)
