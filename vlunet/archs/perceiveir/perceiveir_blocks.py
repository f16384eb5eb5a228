"""Building blocks of the Perceive-IR restoration network (paper Sec. III-C, Fig. 3, Eqs. 3 and 5-8).

- :class:`CompactFeatureExtraction` (CFE): degraded image (B, 3, H, W) -> degradation representation
  Z (B, D), L2-normalised; the paper's Fig. 3 ResBlocks (Conv-LReLU-Conv), average pool and
  Linear-LReLU-Linear.
- :class:`FrozenDINOFeatures` (the SGM encoder, Eq. 5): the class tokens (B, 768) of chosen blocks of
  a frozen DINO-v2 ViT built by timm. It is held *outside* the network's module tree (see
  :class:`vlunet.archs.perceiveir.perceiveir_arch.PerceiveIR`).
- :class:`PromptGuidanceModule` (PGM, Eq. 6): Y_l from the deep feature X_l and [F_l ‖ Z].
- :class:`PriorGuidedCrossAttention` (PGCA's cross-attention, Eq. 7) and
  :class:`EnhancedTransformerBlock` (ETB, Eqs. 3 and 8): Y_l is the query, X_l key and value.
- :class:`GuidedLevel`: one PGM and the ETBs of a latent/decoder level, all sharing that level's Y_l.

The Restormer parts (channel LayerNorm, MDTA, GDFN, channel attention) are the shared blocks of
:mod:`vlunet.archs.restormer_blocks`. The choices where paper and release differ or are silent are
listed in the docstring of :mod:`vlunet.archs.perceiveir.perceiveir_arch`.
"""
import os.path as osp
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlunet.archs.restormer_blocks import ChannelLayerNorm, GatedFeedForward, TransposedSelfAttention
from vlunet.ops.attention import channel_attention
from vlunet.ops.channels_last import pointwise
from vlunet.utils.safe_load import (
    MissingFileError,
    WrongContentsError,
    check_file,
    load_checked_state_dict,
    load_safetensors,
    one_line,
    require_state_dict,
    safe_torch_load,
)

CFE_WIDTHS = (32, 64, 96, 128)  # the release's CFE widths, one stride-2 stage each
CFE_NEGATIVE_SLOPE = 0.1  # AirNet's CBDE, which Fig. 3's CFE follows (paper: "LReLU", slope not stated)
RANDOM_SEMANTIC_SEED = 0  # random DINO weights (semantic_pretrained None) are the same in every process
SEMANTIC_WEIGHTS = 'DINO-v2 weights (semantic_pretrained)'
SEMANTIC_WEIGHTS_HELP = (
    'the Hugging Face repo timm/vit_base_patch14_dinov2.lvd142m, file model.safetensors '
    '(https://huggingface.co/timm/vit_base_patch14_dinov2.lvd142m/resolve/main/model.safetensors), or Meta\'s '
    'torch-hub file dinov2_vitb14_pretrain.pth '
    '(https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth)')


class ResBlock(nn.Module):
    """CFE residual block: (B, C_in, H, W) -> (B, C_out, ceil(H/2), ceil(W/2)).

    ``conv2(LReLU(conv1(x))) + shortcut(x)`` with conv1 a 3x3 stride-2 conv, conv2 a 3x3 conv and the
    shortcut a 1x1 stride-2 conv (Fig. 3: "Resblock (Conv-LReLU-Conv)").
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.act = nn.LeakyReLU(CFE_NEGATIVE_SLOPE)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x))) + self.shortcut(x)


class CompactFeatureExtraction(nn.Module):
    """CFE: image (B, C, H, W), any size >= 1 -> Z (B, out_dim), unit L2 norm.

    Four :class:`ResBlock` stages (widths :data:`CFE_WIDTHS`, each halving H and W), global average
    pool, Linear(128, out_dim) - LReLU - Linear(out_dim, out_dim), L2 normalisation.
    """

    def __init__(self, in_channels: int = 3, out_dim: int = 128):
        super().__init__()
        widths = (in_channels,) + CFE_WIDTHS
        self.body = nn.Sequential(*(ResBlock(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.mlp = nn.Sequential(nn.Linear(widths[-1], out_dim), nn.LeakyReLU(CFE_NEGATIVE_SLOPE),
                                 nn.Linear(out_dim, out_dim))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pooled = self.body(image).mean(dim=(2, 3))
        return F.normalize(self.mlp(pooled), dim=1)


def _semantic_file_state(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a local DINO-v2 weights file (``.safetensors`` or a torch file)."""
    if path.endswith('.safetensors'):
        return load_safetensors(path, SEMANTIC_WEIGHTS)
    return require_state_dict(safe_torch_load(path, SEMANTIC_WEIGHTS), path, SEMANTIC_WEIGHTS,
                              f'use {SEMANTIC_WEIGHTS_HELP}')


def _load_semantic_file(vit: nn.Module, path: str) -> None:
    """Load a timm- or Meta-format DINO-v2 file into ``vit`` (position embedding resampled by timm)."""
    from timm.models.vision_transformer import checkpoint_filter_fn
    state = _semantic_file_state(path)
    fix = f'use {SEMANTIC_WEIGHTS_HELP}, or set semantic_model to the model the file was saved from'
    try:  # timm renames Meta's keys and resamples the position embedding
        state = checkpoint_filter_fn(state, vit)
    except Exception as error:  # noqa: BLE001 -- whatever timm raises on another model's state dict
        raise WrongContentsError(f'{SEMANTIC_WEIGHTS} {path} does not fit the timm model '
                                 f'{vit.default_cfg["architecture"]} ({one_line(error, 300)}): {fix}.') from error
    load_checked_state_dict(vit, state, path, SEMANTIC_WEIGHTS, fix)


def _is_path_like(value: str) -> bool:
    return '/' in value or '\\' in value or value.endswith(('.pth', '.pt', '.bin', '.safetensors'))


def build_semantic_vit(model_name: str, pretrained: Optional[str], image_size: int,
                       model_kwargs: Optional[Dict]) -> nn.Module:
    """A timm ViT ``model_name`` for ``image_size``² inputs with weights from ``pretrained``.

    ``pretrained``: None (random weights, seeded with :data:`RANDOM_SEMANTIC_SEED` so that every build
    is the same), a timm tag of ``model_name`` (e.g. ``lvd142m``: downloaded or taken from the Hugging
    Face cache), or a local weights file in timm or Meta (torch-hub) format.
    """
    import timm
    kwargs = dict(model_kwargs or {})
    if 'img_size' in kwargs:
        raise ValueError('semantic_kwargs: do not set img_size; use semantic_image_size (the DINO input size).')
    kwargs['img_size'] = image_size
    if not timm.is_model(model_name):
        raise ValueError(f'semantic_model: {model_name!r} is not a timm model (Perceive-IR: vit_base_patch14_dinov2).')
    if pretrained is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEMANTIC_SEED)
            return timm.create_model(model_name, pretrained=False, **kwargs)
    if osp.isfile(pretrained) or osp.isdir(pretrained):
        check_file(pretrained, SEMANTIC_WEIGHTS)
        vit = timm.create_model(model_name, pretrained=False, **kwargs)
        _load_semantic_file(vit, pretrained)
        return vit
    tags = [name.split('.', 1)[1] for name in timm.list_pretrained(f'{model_name}.*')]
    if pretrained not in tags:
        if _is_path_like(pretrained):
            raise MissingFileError(f'{SEMANTIC_WEIGHTS} {pretrained} does not exist: '
                                   f'download {SEMANTIC_WEIGHTS_HELP} and set semantic_pretrained to its path.')
        raise ValueError(f'semantic_pretrained: {pretrained!r} is neither a file nor a timm tag of {model_name} '
                         f'(tags: {", ".join(tags) or "none"}); ~ (None) gives random weights.')
    try:
        return timm.create_model(f'{model_name}.{pretrained}', pretrained=True, **kwargs)
    except (RuntimeError, OSError) as error:
        raise RuntimeError(f'semantic_pretrained: the timm weights {model_name}.{pretrained} are neither cached nor '
                           f'downloadable ({error}). Download {SEMANTIC_WEIGHTS_HELP} on a machine with internet '
                           'access and set semantic_pretrained to the local file path.') from error


class FrozenDINOFeatures(nn.Module):
    """SGM encoder (Eq. 5): images (B, 3, H, W) in [0, 1] -> [F_l (B, width)], one per entry of ``layers``.

    F_l is the class token of the output of block ``layers[l]`` (1-based, i.e. HF ``hidden_states[i]``),
    before the final LayerNorm; the input is bicubic-resized to ``image_size``² and normalised with the
    ImageNet mean/std (DINO-v2's). The ViT is frozen and always in eval mode; features are computed
    under ``no_grad``. Args are those of :func:`build_semantic_vit`.
    """

    def __init__(self, model_name: str, pretrained: Optional[str], layers: Sequence[int], image_size: int,
                 model_kwargs: Optional[Dict] = None):
        super().__init__()
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        self.vit = build_semantic_vit(model_name, pretrained, image_size, model_kwargs).requires_grad_(False).eval()
        patch = self.vit.patch_embed.patch_size[0]
        if image_size % patch:
            raise ValueError(f'semantic_image_size: {image_size} must be a multiple of the patch size {patch} of '
                             f'{model_name} (Perceive-IR: 224).')
        depth = len(self.vit.blocks)
        if list(layers) != sorted(set(layers)) or not all(1 <= layer <= depth for layer in layers):
            raise ValueError(f'semantic_layers: {list(layers)} must be increasing block numbers in 1..{depth} '
                             f'(the depth of {model_name}); Perceive-IR: [1, 4, 8, 12].')
        if getattr(self.vit, 'num_prefix_tokens', 0) < 1 or getattr(self.vit, 'cls_token', None) is None:
            raise ValueError(f'semantic_model: {model_name} has no class token (use a DINO-v2 ViT).')
        self.block_indices = [layer - 1 for layer in layers]
        self.image_size = image_size
        self.width = self.vit.embed_dim
        self.register_buffer('mean', torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> 'FrozenDINOFeatures':
        """The ViT always stays in eval mode."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        size = (self.image_size, self.image_size)
        x = F.interpolate(images.to(self.mean.dtype), size=size, mode='bicubic', align_corners=False)
        intermediates = self.vit.forward_intermediates(
            (x - self.mean) / self.std, indices=self.block_indices, return_prefix_tokens=True, norm=False,
            stop_early=True, output_fmt='NLC', intermediates_only=True, output_dict=True)
        return [prefix[:, 0].to(images.dtype) for prefix in intermediates['image_intermediates_prefix']]


class PromptGuidanceModule(nn.Module):
    """PGM (Eq. 6): Y_l = conv_out(conv_in(X_l) ⊙ (1 + γ) + β), with (γ, β) = MLP([F_l ‖ Z]).

    ``mlp`` = Linear(semantic_dim + degradation_dim, 2C) - GELU - Linear(2C, 2C), split into γ and β
    (B, C) broadcast over space (Fig. 3's "Linear, Linear"); ``conv_in``/``conv_out`` are 3x3 C -> C
    convolutions on the feature map (Fig. 3's "Conv, Conv").

    Forward: x (B, C, H, W), semantic F_l (B, semantic_dim), degradation Z (B, degradation_dim) -> (B, C, H, W).
    """

    def __init__(self, channels: int, semantic_dim: int, degradation_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(semantic_dim + degradation_dim, 2 * channels), nn.GELU(),
                                 nn.Linear(2 * channels, 2 * channels))
        self.conv_in = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv_out = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, semantic: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.mlp(torch.cat([semantic, degradation], dim=1))[:, :, None, None].chunk(2, dim=1)
        return self.conv_out(self.conv_in(x) * (1 + gamma) + beta)


class PriorGuidedCrossAttention(nn.Module):
    """PGCA cross-attention (Eq. 7): Restormer's transposed attention with the query from the guide Y_l.

    q = dwconv3x3(conv1x1(guide)); k, v = dwconv3x3(conv1x1 C -> 2C (x)); per head
    softmax(norm(q) norm(k)^T · temperature) v; 1x1 output projection. Bias-free.
    Forward: x (B, C, H, W), guide (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.q = nn.Conv2d(dim, dim, 1, bias=False)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.kv = nn.Conv2d(dim, dim * 2, 1, bias=False)
        self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, 3, padding=1, groups=dim * 2, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        query = self.q_dwconv(pointwise(guide, self.q))
        key, value = self.kv_dwconv(pointwise(x, self.kv)).chunk(2, dim=1)
        return pointwise(channel_attention(query, key, value, self.temperature, self.heads), self.project_out)


class EnhancedTransformerBlock(nn.Module):
    """ETB (Eqs. 3, 8): m = Y + MDTA(LN(PGCA(LN(x), LN(Y)))), then m + GDFN(LN(m)).

    Forward: x (B, C, H, W), guide Y_l (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: int, heads: int, ffn_expansion_factor: float):
        super().__init__()
        self.norm_x = ChannelLayerNorm(dim)
        self.norm_guide = ChannelLayerNorm(dim)
        self.cross_attn = PriorGuidedCrossAttention(dim, heads)
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = TransposedSelfAttention(dim, heads)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GatedFeedForward(dim, ffn_expansion_factor)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        cross = self.cross_attn(self.norm_x(x), self.norm_guide(guide))
        x = self.attn(cross, residual=guide, norm=self.norm1)
        return self.ffn(x, residual=x, norm=self.norm2, in_place=True)  # x: the attention's output, this block's own


class GuidedLevel(nn.Module):
    """A latent/decoder level: Y_l = PGM(X_l, F_l, Z) once, then ``num_blocks`` ETBs all guided by Y_l.

    Forward: x X_l (B, C, H, W), semantic F_l (B, semantic_dim), degradation Z (B, degradation_dim)
    -> (B, C, H, W).
    """

    def __init__(self, dim: int, num_blocks: int, heads: int, ffn_expansion_factor: float, semantic_dim: int,
                 degradation_dim: int):
        super().__init__()
        self.pgm = PromptGuidanceModule(dim, semantic_dim, degradation_dim)
        self.blocks = nn.ModuleList(EnhancedTransformerBlock(dim, heads, ffn_expansion_factor)
                                    for _ in range(num_blocks))

    def forward(self, x: torch.Tensor, semantic: torch.Tensor, degradation: torch.Tensor) -> torch.Tensor:
        guide = self.pgm(x, semantic, degradation)
        for block in self.blocks:
            x = block(x, guide)
        return x
