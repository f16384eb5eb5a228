"""Restoring your own images with a trained (or converted official) VLU-Net, outside BasicSR's pipelines.

Python API::

    import vlunet
    from vlunet.inference import Restorer, load_image, save_image

    restorer = Restorer('experiments/pretrained_models/5task_vlunet_net.pth',
                        clip_weights='experiments/pretrained_models/5task_vlunet_clip.pth',
                        device='cuda', precision='fp16')  # tile='auto': whole image or tiles, as memory allows
    image = load_image('photo.jpg')                    # float32 (H, W, 3) RGB in [0, 1]
    restored = restorer.restore(image)                 # same shape, any H and W
    prompt, probabilities = restorer.detect_degradation(image)
    save_image('photo_restored.png', restored)

The network is ``network_options`` (default ``{type: VLUNet}`` with ``de_dim`` read from the
weights) loaded from a BasicSR weight file (``{'params': state_dict}``, what training and
``scripts/convert_official_checkpoint.py`` write). The degradation encoder (``encoder_options``,
default ``{type: DegradationCLIP, backbone: ViT-B-32}``) is built when ``clip_weights`` or
``encoder_options`` is given; without it the network runs unguided (the paper's "w/o CLIP").
:meth:`Restorer.from_option_file` reads all of this from a test (or training) option file, and
:meth:`Restorer.from_weights_file` from a checkpoint written by vlunet's training, which carries its options
(:mod:`vlunet.models.checkpoint_options`)::

    restorer = Restorer.from_weights_file('experiments/NAFNet_DACLIP_demo/models/net_g_latest.pth')

Images are restored whole when they fit in memory, else in the largest tiles that fit (``tile='auto'``,
:mod:`vlunet.tiling.tiles`; :meth:`Restorer.tile_plan` says which). The degradation vector d is
computed once from the whole image and shared by all tiles.

NAFNet + DA-CLIP (``network_options: {type: NAFNetDACLIP}``, e.g. from ``options/daclip/test_nafnet_daclip.yml``)
takes DA-CLIP's content embedding too (``content=``): networks declaring ``guidance_inputs`` get exactly
those embeddings (:mod:`vlunet.guidance.degradation_encoder`, as in training), both computed once per image
by the DACLIP encoder (the default encoder of DA-CLIP's networks) and given to every tile; plain
``NAFNet`` takes none (an encoder then only detects the degradation).

:meth:`Restorer.detect_degradation` scores the image embedding against the text embeddings of the
``prompts`` (default: the seven official degradation texts) and returns the best prompt and the
softmax over the prompts. It scores with the scorer the adapters were trained with, the one CLIP
validation uses (:class:`~vlunet.guidance.degradation_classification.PromptScorer`): recorded in our
fine-tuning checkpoints (cosine × temperature for the contrastive losses), the official raw dot
product for official and converted files, or ``scorer=`` to choose.

DA-CLIP's IR-SDE networks (``network_options: {type: ConditionalUNet}``, e.g. from
``options/daclip/test_universal_ir_released.yml``) restore by sampling
(:mod:`vlunet.models.daclip.irsde_sampler`): the DACLIP encoder's two embeddings are computed once per
image, ``sde_steps`` steps (default ``sde.T``, 100) each run the network whole or in the tiles planned
once for the image, and the noise is seeded with ``seed`` (default ``sde.seed``, 0), so a restoration is
reproducible. Their detected degradation is the best of DA-CLIP's 10 degradation names, scored as
DA-CLIP classifies (cosine × 100)::

    restorer = Restorer.from_option_file('options/daclip/test_universal_ir_released.yml', sde_steps=100, seed=0)

Checks: an input or output with NaN/Inf values and running out of memory raise errors that say what
to do (:class:`NonFiniteImageError`, :class:`InferenceOutOfMemoryError`), instead of a black image or
the allocator's message; under ``tile='auto'`` an image that cannot fit even in the smallest tiles
raises :class:`~vlunet.tiling.tiles.InsufficientMemoryError` before any work.
"""
import os.path as osp
from functools import partial
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from vlunet.archs.daclip.daclip_arch import DACLIP
from vlunet.archs.daclip.nafnet_daclip_arch import NAFNetDACLIP
from vlunet.convert.vlunet_checkpoint import detect_de_dim
from vlunet.convert.vlunet_release import RELEASE_PACKAGE_URL
from vlunet.data.daclip.daclip_universal_dataset import DACLIP_DEGRADATIONS
from vlunet.data.image_io import read_image
from vlunet.data.task_catalog import KNOWN_TASKS
from vlunet.guidance.degradation_classification import OFFICIAL_SCORER, PromptScorer, read_scorer
from vlunet.guidance.degradation_encoder import (
    WEIGHTS_KEY,
    Guidance,
    build_degradation_encoder,
    encode_guidance,
    guidance_inputs,
    guidance_keywords,
)
from vlunet.losses.daclip.daclip_loss import DACLIPLoss
from vlunet.models.checkpoint_options import read_carried_options
from vlunet.models.daclip.irsde_sampler import IRSDERestoration, check_encoder, encode_contexts, is_noise_network
from vlunet.options import load_option_file
from vlunet.tiling.memory_model import cached_memory_model, network_memory_key
from vlunet.tiling.tiles import AutoTile, TileOptions, TilePlan, parse_tile_options, plan_tiles, restore
from vlunet.utils.atomic_write import atomic_imwrite
from vlunet.utils.precision import autocast, inference_amp
from vlunet.utils.safe_load import (
    MissingFileError,
    WrongContentsError,
    check_file,
    load_checked_state_dict,
    require_state_dict,
    safe_torch_load,
)

from basicsr.archs import build_network
from basicsr.utils import FileClient, img2tensor, tensor2img

DEFAULT_PROMPTS = tuple(task.text for task in KNOWN_TASKS.values())
DEFAULT_ENCODER = {'type': 'DegradationCLIP', 'backbone': 'ViT-B-32', 'pretrained': None}
DACLIP_ENCODER = {'type': 'DACLIP', 'backbone': 'ViT-B-32', 'pretrained': None}  # DA-CLIP networks' default
DACLIP_SCORER = PromptScorer(*DACLIPLoss.prompt_scorer)  # DA-CLIP's classification (cosine x 100, paper Table 4)


class NonFiniteImageError(ValueError):
    """An input or restored image with NaN or infinite values (it would be written as black pixels)."""


class InferenceOutOfMemoryError(RuntimeError):
    """The device ran out of memory restoring an image; the message says which tile size to use."""


class DegradationGuess(NamedTuple):
    """The best-matching ``prompt`` and the softmax ``probabilities`` of every prompt."""
    prompt: str
    probabilities: Dict[str, float]


def load_image(path: str) -> np.ndarray:
    """Read an image file as float32 (H, W, 3) RGB in [0, 1] (gray, 16-bit and RGBA are converted).

    Raises ``vlunet.data.image_io.ImageReadError`` (a ``ValueError``) naming the file when it is
    missing, corrupt or not an image.
    """
    return read_image(FileClient('disk'), path)


def save_image(path: str, image: np.ndarray) -> None:
    """Write a float (H, W, 3) RGB image in [0, 1] as 8-bit (format from the extension), atomically."""
    atomic_imwrite(tensor2img(img2tensor(image, bgr2rgb=False, float32=True), rgb2bgr=True), path)


def _to_image(images: torch.Tensor) -> np.ndarray:
    """The first image of (B, 3, H, W) as float32 (H, W, 3)."""
    return images[0].permute(1, 2, 0).cpu().numpy()


def _is_out_of_memory(error: BaseException) -> bool:
    """torch.OutOfMemoryError (alias torch.cuda.OutOfMemoryError), MemoryError, or an allocator's RuntimeError."""
    message = str(error).lower()
    return isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or 'out of memory' in message \
        or "can't allocate memory" in message


def resolve_device(device: str) -> torch.device:
    """``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``, checked."""
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    resolved = torch.device(device)
    if resolved.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {device!r}: CUDA is not available on this machine; use cpu.')
    return resolved


NETWORK_WEIGHTS = 'network weights (--net-weights, path.pretrain_network_g)'
NETWORK_WEIGHTS_FIX = ('give a BasicSR weight file {"params": state_dict} written by training this network (or by '
                       'scripts/convert_official_checkpoint.py), with network_g as in its training')


def _network_checkpoint(path: str, description: str = NETWORK_WEIGHTS) -> object:
    check_file(path, description, f'train a model, or convert an official .ckpt from the authors\' package '
                                  f'{RELEASE_PACKAGE_URL} with scripts/convert_official_checkpoint.py')
    checkpoint = safe_torch_load(path, description)
    if isinstance(checkpoint, dict) and 'state_dict' in checkpoint:
        raise WrongContentsError(f'{description} {path} is a Lightning checkpoint; convert it with '
                                 'scripts/convert_official_checkpoint.py and use the written <name>_net.pth.')
    return checkpoint


def _network_state(path: str, param_key: str, description: str = NETWORK_WEIGHTS) -> Dict[str, torch.Tensor]:
    checkpoint = _network_checkpoint(path, description)
    keys = [param_key] + [key for key in ('params', 'params_ema') if key != param_key]
    state = next((checkpoint[key] for key in keys if isinstance(checkpoint, dict) and key in checkpoint), None)
    if not isinstance(state, dict):
        raise WrongContentsError(f'{description} {path} holds no network weights under '
                                 f'{" or ".join(repr(k) for k in keys)}: {NETWORK_WEIGHTS_FIX}.')
    state = require_state_dict(state, path, description, NETWORK_WEIGHTS_FIX)
    return {key[len('module.'):] if key.startswith('module.') else key: value for key, value in state.items()}


def load_network_weights(net: nn.Module, path: str, description: str = NETWORK_WEIGHTS,
                         param_key: str = 'params') -> nn.Module:
    """``net`` with the weights of the BasicSR file ``path``; every bad file is a ``BadFileError`` naming it."""
    load_checked_state_dict(net, _network_state(path, param_key, description), path, description,
                            NETWORK_WEIGHTS_FIX)
    return net


def build_restoration_network(weights_path: str, network_options: Optional[dict] = None,
                              param_key: str = 'params') -> nn.Module:
    """Network of ``network_options`` (default VLUNet, ``de_dim`` from the weights) with its weights, in eval mode."""
    state = _network_state(weights_path, param_key)
    options = dict(network_options or {'type': 'VLUNet'})
    if options['type'] == 'VLUNet' and 'de_dim' not in options:
        try:
            options['de_dim'] = detect_de_dim(state)
        except (ValueError, IndexError) as error:
            raise WrongContentsError(f'{NETWORK_WEIGHTS} {weights_path} is not a VLUNet ({error}): '
                                     f'{NETWORK_WEIGHTS_FIX}.') from error
    net = build_network(options)
    load_checked_state_dict(net, state, weights_path, NETWORK_WEIGHTS, NETWORK_WEIGHTS_FIX)
    return net.requires_grad_(False).eval()


class Restorer:
    """A restoration network with its frozen degradation encoder, ready for whole or tiled inference.

    Args:
        net_weights: BasicSR weight file of the network (``params``, or ``param_key``).
        clip_weights: converted degradation-encoder file (``path.pretrain_network_degradation_encoder``).
        network_options: ``network_g`` mapping (default: VLUNet with ``de_dim`` read from the weights).
        encoder_options: ``degradation_encoder`` mapping (default :data:`DEFAULT_ENCODER`, or
            :data:`DACLIP_ENCODER` for DA-CLIP's networks (IR-SDE, NAFNetDACLIP, NAFNet), when ``clip_weights``
            is given; no encoder when both are None). Without a ``type`` (e.g. only ``backbone``), the
            default's type and keys fill it in.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        tile: ``'auto'`` (default: the whole image when it fits in memory, else the largest tile that fits),
            ``{'size': 'auto', 'max_memory': '4GB'}``, fixed tiles ``{'size': 512, 'overlap': 32, 'batch': 2}``
            or None for whole images (:mod:`vlunet.tiling.tiles`).
        precision: ``fp32`` (default), ``bf16`` (autocast; CUDA, or a CPU with AVX512-BF16 or AMX: a clear error
            elsewhere) or ``fp16`` (autocast, CUDA only). The encoder stays float32. Measured speed and agreement
            with fp32: docs/performance.md#bf16-inference-on-the-cpu.
        half: the same as ``precision='fp16'`` (kept for existing scripts).
        prompts: degradation texts for :meth:`detect_degradation` (default: the seven official ones; DA-CLIP's
            10 degradation names for a DACLIP encoder; a single string is one prompt).
        scorer: how :meth:`detect_degradation` scores images against prompts: a
            :class:`~vlunet.guidance.degradation_classification.PromptScorer` or its text (``dot``,
            ``cosine``, ``cosine:<temperature>``); default: the one recorded in ``clip_weights`` (the
            loss the adapters were trained with), else the official ``dot``; DA-CLIP's for a DACLIP encoder.
        param_key: key of the network weights in ``net_weights`` (falls back to params / params_ema).
        progress: show a progress bar over the tiles of each image, with the time left (tiled inference only;
            IR-SDE networks: over the sampling steps).
        sde: an IR-SDE network's ``sde`` option block (:mod:`vlunet.models.daclip.irsde_sampler`; default the
            release's settings); IR-SDE networks (``ConditionalUNet``) restore by sampling, with the DA-CLIP
            contexts encoded once per image and each step's network run whole or in tiles as ``tile`` says.
        sde_steps: IR-SDE sampling steps (default ``sde.T``, 100: the paper's setting; fewer: faster, approximate).
        seed: IR-SDE noise seed of every image (default ``sde.seed``, else 0): reproducible restorations.

    Attributes ``on_plan`` and ``on_progress`` (default None): called with each image's
    :class:`~vlunet.tiling.tiles.TilePlan` before its restoration starts, and with the pixels restored
    after each forward (a progress bar over a folder sums the :meth:`tile_plan` pixels of its images).
    """

    def __init__(self, net_weights: str, clip_weights: Optional[str] = None, network_options: Optional[dict] = None,
                 encoder_options: Optional[dict] = None, device: str = 'cpu', tile: Union[None, str, dict] = 'auto',
                 half: bool = False, prompts: Optional[Sequence[str]] = None, param_key: str = 'params',
                 progress: bool = False, scorer: Union[PromptScorer, str, None] = None, sde: Optional[dict] = None,
                 sde_steps: Optional[int] = None, seed: Optional[int] = None, precision: Optional[str] = None):
        self.device = resolve_device(device)
        if half:
            if precision not in (None, 'fp16'):
                raise ValueError(f'half=True means precision fp16, but precision={precision!r} was also given; '
                                 'give one of them.')
            if self.device.type != 'cuda':
                raise ValueError('half precision needs a CUDA device (use device="cuda", or drop half).')
            precision = 'fp16'
        self.precision = precision or 'fp32'
        self.amp = inference_amp(self.precision, self.device)
        self.tile = parse_tile_options(tile)
        self.progress = progress
        self.on_progress: Optional[Callable[[int], None]] = None
        self.on_plan: Optional[Callable[[TilePlan], None]] = None
        self.net = build_restoration_network(net_weights, network_options, param_key).to(self.device)
        self.size_multiple = (tile if isinstance(tile, dict) else {}).get('size_multiple') or getattr(
            self.net, 'size_multiple', 1)
        self.memory_key = network_memory_key(self.net, self.device)
        self.sde = IRSDERestoration(sde, sde_steps, seed, self.device) if is_noise_network(self.net) else None
        if self.sde is None and (sde_steps is not None or seed is not None):
            raise ValueError(f'sde_steps / seed (--steps / --seed): only IR-SDE networks (ConditionalUNet) sample; '
                             f'{type(self.net).__name__} restores in one pass.')
        self.encoder = build_degradation_encoder(self._encoder_options(encoder_options, clip_weights), clip_weights,
                                                 self.device)
        if self.sde is not None:
            check_encoder(self.net, self.encoder)
        self.guidance_inputs = () if self.sde is not None else guidance_inputs(self.net, self.encoder)
        if prompts is None:
            prompts = DACLIP_DEGRADATIONS if isinstance(self.encoder, DACLIP) else DEFAULT_PROMPTS
        self.prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not self.prompts or not all(isinstance(prompt, str) and prompt for prompt in self.prompts):
            raise ValueError(f'prompts: give one or more non-empty degradation texts, got {prompts!r}.')
        self.scorer = self._resolve_scorer(scorer, clip_weights)
        self._text_embeddings: Optional[torch.Tensor] = None

    def _encoder_options(self, encoder_options: Optional[dict], clip_weights: Optional[str]) -> Optional[dict]:
        """``encoder_options``, without a ``type`` completed by the network's default encoder (:data:`DACLIP_ENCODER`
        for DA-CLIP's networks, else :data:`DEFAULT_ENCODER`); None (no encoder) when both arguments are None."""
        if clip_weights is None and encoder_options is None:
            return None
        encoder_options = dict(encoder_options or {})
        if 'type' in encoder_options:
            return encoder_options
        daclip_network = self.sde is not None or isinstance(self.net, NAFNetDACLIP)
        return {**(DACLIP_ENCODER if daclip_network else DEFAULT_ENCODER), **encoder_options}

    def _resolve_scorer(self, scorer: Union[PromptScorer, str, None], clip_weights: Optional[str]) -> PromptScorer:
        if isinstance(scorer, str):
            return PromptScorer.parse(scorer)
        if scorer is not None:
            return scorer
        if isinstance(self.encoder, DACLIP):
            return DACLIP_SCORER
        return read_scorer(clip_weights) if self.encoder is not None and clip_weights else OFFICIAL_SCORER

    @classmethod
    def from_option_file(cls, path: str, **overrides) -> 'Restorer':
        """A Restorer from a (test) option file: ``network_g``, ``degradation_encoder``, ``tile`` and the
        ``path.pretrain_network_*`` weights; keyword ``overrides`` (e.g. ``device``) replace them."""
        opt = load_option_file(path)
        weights = overrides.get('net_weights') or (opt.get('path') or {}).get('pretrain_network_g')
        if not weights:
            raise ValueError(f'{path}: path.pretrain_network_g is not set (the network weights to restore with); set '
                             'it, or give the weights (--net-weights PATH).')
        settings = dict(net_weights=weights, clip_weights=(opt.get('path') or {}).get(WEIGHTS_KEY),
                        network_options=opt.get('network_g'), encoder_options=opt.get('degradation_encoder'),
                        device='cpu' if opt.get('num_gpu') == 0 else 'auto', tile=opt.get('tile'),
                        param_key=(opt.get('path') or {}).get('param_key_g', 'params'), sde=opt.get('sde'))
        settings.update(overrides)
        return cls(**settings)

    @classmethod
    def from_weights_file(cls, net_weights: str, **overrides) -> 'Restorer':
        """A Restorer from a checkpoint alone: the network, encoder and ``sde`` options it carries
        (:mod:`vlunet.models.checkpoint_options`, written by vlunet's training), else VLUNet with ``de_dim`` read
        from the weights; keyword ``overrides`` replace them (e.g. ``clip_weights``, ``network_options``)."""
        carried = read_carried_options(_network_checkpoint(net_weights))
        settings = dict(net_weights=net_weights, network_options=carried.get('network_g'),
                        encoder_options=carried.get('degradation_encoder'),
                        clip_weights=carried.get('path', {}).get(WEIGHTS_KEY), sde=carried.get('sde'))
        settings.update(overrides)
        if settings['clip_weights'] and not osp.isfile(settings['clip_weights']):
            raise MissingFileError(f'{net_weights} was trained with the degradation-encoder weights '
                                    f'{settings["clip_weights"]}, which do not exist here: give them with '
                                    '--clip-weights (Restorer: clip_weights=), or restore without CLIP guidance: '
                                    '--no-clip.')
        return cls(**settings)

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
                or not np.issubdtype(image.dtype, np.floating):
            raise ValueError('expected a float (H, W, 3) RGB image in [0, 1], got '
                             f'{getattr(image, "shape", type(image))} {getattr(image, "dtype", "")}; read files with '
                             'vlunet.inference.load_image (converts gray, 16-bit, RGBA and BGR order).')
        non_finite = int(np.count_nonzero(~np.isfinite(image)))
        if non_finite:
            raise NonFiniteImageError(f'the input has {non_finite} NaN or infinite values (e.g. a float TIFF with '
                                      'missing pixels); fill or remove them before restoring.')
        return img2tensor(np.clip(image, 0, 1), bgr2rgb=False, float32=True).unsqueeze(0).to(self.device)

    def encode_degradation(self, images: torch.Tensor) -> Optional[torch.Tensor]:
        """d (B, D) of ``images`` (B, 3, H, W) in [0, 1], or None without an encoder."""
        return encode_guidance(self.encoder, images, ('degradation',)).get('degradation')

    def encode_guidance(self, images: torch.Tensor) -> Guidance:
        """The embeddings of ``images`` (B, 3, H, W) in [0, 1], computed once: d (B, D) whenever there is an
        encoder (detection scores it), and DA-CLIP's content embedding c (B, D) when the network takes
        ``content=`` (its ``guidance_inputs``, :mod:`vlunet.guidance.degradation_encoder`); {} without an encoder."""
        return encode_guidance(self.encoder, images, ('degradation', *self.guidance_inputs))

    def restore_tensor(self, images: torch.Tensor, degradation: Optional[torch.Tensor] = None,
                       content: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Restore ``images`` (B, 3, H, W) float RGB in [0, 1] on the device -> (B, 3, H, W) float32, clamped.

        ``degradation`` / ``content`` (B, D): d / DA-CLIP's content embedding already computed for ``images``
        (default: encoded here, once, those the network takes; IR-SDE networks encode both DA-CLIP contexts
        themselves, once). Whole or tiled, every forward gets the whole image's embeddings.
        """
        guidance = {name: value for name, value in (('degradation', degradation), ('content', content))
                    if value is not None}
        if self.sde is None and not set(self.guidance_inputs) <= set(guidance):
            guidance = {**self.encode_guidance(images), **guidance}
        out_of_memory = None
        try:
            with torch.no_grad(), autocast(self.amp, self.device):
                output = self._sample(images) if self.sde is not None else restore(
                    self._network(guidance), images, self.tile, self.size_multiple, self.progress, self.memory_key,
                    self.on_plan, self.on_progress)
        except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
            if not _is_out_of_memory(error):
                raise
            out_of_memory = self._out_of_memory_message(images, error)
        if out_of_memory:  # raised here, without the original error, so its tensors are freed first
            if self.device.type == 'cuda':
                torch.cuda.empty_cache()
            raise InferenceOutOfMemoryError(out_of_memory)
        if not torch.isfinite(output).all():
            raise NonFiniteImageError(
                f'the restored image has {int((~torch.isfinite(output)).sum())} NaN or infinite values'
                + (f' under {self.precision} (try --precision fp32)' if self.amp.enabled else '')
                + ' (saved, they would be black pixels).')
        return output.float().clamp_(0, 1)

    def _network(self, guidance: Guidance) -> Callable[[torch.Tensor], torch.Tensor]:
        """The network on stacked tiles (k * B, 3, h, w), given the embeddings of ``guidance`` (each (B, D)) that it
        takes, each repeated k times (none: the bare network's forward)."""
        return lambda tiles: self.net(tiles, **guidance_keywords(guidance, self.guidance_inputs, tiles.shape[0]))

    def _sample(self, images: torch.Tensor) -> torch.Tensor:
        """IR-SDE restoration of ``images`` (B, 3, H, W): contexts encoded once, one :meth:`tile_plan` for all steps."""
        plan = self.tile_plan(*images.shape[-2:])
        if self.on_plan is not None:
            self.on_plan(plan)
        tile = None if plan.size is None else TileOptions(plan.size, plan.overlap, plan.batch)
        steps, on_progress = self.sde.steps, self.on_progress
        apply = partial(restore, tile=tile, size_multiple=self.size_multiple,
                        on_progress=None if on_progress is None else lambda pixels: on_progress(pixels / steps))
        return self.sde.restore(self.net, images, encode_contexts(self.encoder, images), apply, self.progress)

    def tile_plan(self, height: int, width: int) -> TilePlan:
        """How a height x width image will be restored (whole or tiles, tiles per forward, predicted memory);
        under ``tile: auto`` the network's memory model is measured on first use (two small forwards)."""
        def memory_model():
            probe = torch.full((1, 3, 64, 64), 0.5, device=self.device)
            with torch.no_grad(), autocast(self.amp, self.device):
                network, probe = (self.sde.memory_probe(self.net, encode_contexts(self.encoder, probe), probe)
                                  if self.sde is not None else (self._network(self.encode_guidance(probe)), probe))
                return cached_memory_model(self.memory_key, network, probe, self.size_multiple)
        return plan_tiles(self.tile, (1, 3, height, width), self.size_multiple, self.device, memory_model)

    def _out_of_memory_message(self, images: torch.Tensor, error: BaseException) -> str:
        height, width = images.shape[-2:]
        if self.tile is None:
            advice = ('restore it in tiles: --tile 512 (scripts/inference.py), tile={"size": 512, "overlap": 32} '
                      '(Restorer) or tile: {size: 512, overlap: 32} (option file), or let tile: auto choose')
        elif isinstance(self.tile, AutoTile):
            advice = ('tile: auto planned for more memory than the device could give (did other programs take '
                      'some?); give it a smaller budget: --max-memory 2GB (scripts/inference.py) or '
                      'tile={"size": "auto", "max_memory": "2GB"}')
        else:
            advice = f'use smaller tiles than {self.tile.size} (e.g. --tile {max(self.tile.size // 2, 64)})'
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        return f'out of memory restoring a {width}x{height} image on {self.device} ({reason}); {advice}.'

    def restore(self, image: np.ndarray) -> np.ndarray:
        """Restore a float32 (H, W, 3) RGB image in [0, 1] of any size -> float32 (H, W, 3) RGB in [0, 1]."""
        return _to_image(self.restore_tensor(self._to_tensor(image)))

    def text_embeddings(self) -> torch.Tensor:
        """Adapted text embeddings (len(prompts), D) of the prompts (computed once)."""
        if self.encoder is None:
            raise RuntimeError('degradation detection needs the degradation encoder (give clip_weights).')
        if self._text_embeddings is None:
            with torch.no_grad():
                self._text_embeddings = self.encoder.encode_text(self.prompts)
        return self._text_embeddings

    def guess_degradation(self, degradation: torch.Tensor) -> DegradationGuess:
        """The prompt best matching the image embedding ``degradation`` (1, D), and every prompt's probability."""
        probabilities = torch.softmax(self.scorer(degradation, self.text_embeddings()), dim=1)[0].cpu()
        return DegradationGuess(self.prompts[int(probabilities.argmax())],
                                {prompt: float(p) for prompt, p in zip(self.prompts, probabilities)})

    def detect_degradation(self, image: np.ndarray) -> DegradationGuess:
        """:meth:`guess_degradation` of a float32 (H, W, 3) RGB image in [0, 1]."""
        self.text_embeddings()  # fails clearly without an encoder
        return self.guess_degradation(self.encode_degradation(self._to_tensor(image)))

    def restore_and_detect(self, image: np.ndarray) -> Tuple[np.ndarray, Optional[DegradationGuess]]:
        """(restored image, detected degradation or None without an encoder), encoding the image once."""
        tensor = self._to_tensor(image)
        guidance = self.encode_guidance(tensor)
        guess = None if 'degradation' not in guidance else self.guess_degradation(guidance['degradation'])
        return _to_image(self.restore_tensor(tensor, **guidance)), guess
