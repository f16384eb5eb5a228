"""Restoring your own images with a trained (or converted official) VLU-Net, outside BasicSR's pipelines.

Python API::

    import vlunet
    from vlunet.inference import Restorer, load_image, save_image

    restorer = Restorer('experiments/pretrained_models/5task_vlunet_net.pth',
                        clip_weights='experiments/pretrained_models/5task_vlunet_clip.pth',
                        device='cuda', tile={'size': 256, 'overlap': 32}, half=True)
    image = load_image('photo.jpg')                    # float32 (H, W, 3) RGB in [0, 1]
    restored = restorer.restore(image)                 # same shape, any H and W
    prompt, probabilities = restorer.detect_degradation(image)
    save_image('photo_restored.png', restored)

The network is ``network_options`` (default ``{type: VLUNet}`` with ``de_dim`` read from the
weights) loaded from a BasicSR weight file (``{'params': state_dict}``, what training and
``scripts/convert_official_checkpoint.py`` write). The degradation encoder (``encoder_options``,
default ``{type: DegradationCLIP, backbone: ViT-B-32}``) is built when ``clip_weights`` or
``encoder_options`` is given; without it the network runs unguided (the paper's "w/o CLIP").
:meth:`Restorer.from_option_file` reads all of this from a test option file.

The degradation vector d is computed once from the whole image and shared by all tiles.
:meth:`Restorer.detect_degradation` scores the image embedding against the text embeddings of the
``prompts`` (default: the seven official degradation texts) with the plain dot product the
official CLIP fine-tuning trains (no normalisation, no temperature) and returns the best prompt
and the softmax over the prompts.
"""
import os.path as osp
from functools import partial
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from basicsr.archs import build_network
from basicsr.utils import FileClient, img2tensor, tensor2img
from torch import nn

from vlunet.data.image_io import read_image
from vlunet.data.task_catalog import KNOWN_TASKS
from vlunet.models.degradation_encoder import WEIGHTS_KEY, build_degradation_encoder
from vlunet.options import load_option_file
from vlunet.utils.atomic_write import atomic_imwrite
from vlunet.utils.official_checkpoint import detect_de_dim
from vlunet.utils.precision import AmpOptions, autocast
from vlunet.utils.tiling import parse_tile_options, restore

DEFAULT_PROMPTS = tuple(task.text for task in KNOWN_TASKS.values())
DEFAULT_ENCODER = {'type': 'DegradationCLIP', 'backbone': 'ViT-B-32', 'pretrained': None}


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


def resolve_device(device: str) -> torch.device:
    """``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``, checked."""
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    resolved = torch.device(device)
    if resolved.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {device!r}: CUDA is not available on this machine; use cpu.')
    return resolved


def _network_state(path: str, param_key: str) -> Dict[str, torch.Tensor]:
    if not osp.isfile(path):
        raise FileNotFoundError(f'network weights {path!r} do not exist (train a model, or convert an official '
                                '.ckpt with scripts/convert_official_checkpoint.py).')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # noqa: BLE001 -- torch.load raises many types on foreign files
        raise ValueError(f'{path!r} is not a BasicSR weight file ({type(error).__name__}); official Lightning .ckpt '
                         'files must be converted first: scripts/convert_official_checkpoint.py.') from error
    if isinstance(checkpoint, dict) and 'state_dict' in checkpoint:
        raise ValueError(f'{path!r} is a Lightning checkpoint; convert it with scripts/convert_official_checkpoint.py '
                         'and use the written <name>_net.pth.')
    keys = [param_key] + [key for key in ('params', 'params_ema') if key != param_key]
    state = next((checkpoint[key] for key in keys if isinstance(checkpoint, dict) and key in checkpoint), None)
    if not isinstance(state, dict):
        raise ValueError(f'{path!r} holds no network weights under {" or ".join(repr(k) for k in keys)} '
                         '(expected a BasicSR file {"params": state_dict}).')
    return {key[len('module.'):] if key.startswith('module.') else key: value for key, value in state.items()}


def build_restoration_network(weights_path: str, network_options: Optional[dict] = None,
                              param_key: str = 'params') -> nn.Module:
    """The network of ``network_options`` (default VLUNet, ``de_dim`` from the weights) with its weights, in eval mode."""
    state = _network_state(weights_path, param_key)
    options = dict(network_options or {'type': 'VLUNet'})
    if options['type'] == 'VLUNet' and 'de_dim' not in options:
        options['de_dim'] = detect_de_dim(state)
    net = build_network(options)
    net.load_state_dict(state, strict=True)
    return net.requires_grad_(False).eval()


class Restorer:
    """A restoration network with its frozen degradation encoder, ready for whole or tiled inference.

    Args:
        net_weights: BasicSR weight file of the network (``params``, or ``param_key``).
        clip_weights: converted degradation-encoder file (``path.pretrain_network_degradation_encoder``).
        network_options: ``network_g`` mapping (default: VLUNet with ``de_dim`` read from the weights).
        encoder_options: ``degradation_encoder`` mapping (default :data:`DEFAULT_ENCODER` when
            ``clip_weights`` is given; no encoder when both are None).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        tile: ``{'size': 256, 'overlap': 32}`` (optional ``size_multiple``) or None for whole images.
        half: float16 autocast for the network on CUDA (the encoder stays float32).
        prompts: degradation texts for :meth:`detect_degradation` (default: the seven official ones).
        param_key: key of the network weights in ``net_weights`` (falls back to params / params_ema).
        progress: show a progress bar over the tiles of each image (tiled inference only).
    """

    def __init__(self, net_weights: str, clip_weights: Optional[str] = None, network_options: Optional[dict] = None,
                 encoder_options: Optional[dict] = None, device: str = 'cpu', tile: Optional[dict] = None,
                 half: bool = False, prompts: Sequence[str] = DEFAULT_PROMPTS, param_key: str = 'params',
                 progress: bool = False):
        self.device = resolve_device(device)
        if half and self.device.type != 'cuda':
            raise ValueError('half precision needs a CUDA device (use device="cuda", or drop half).')
        self.amp = AmpOptions(enabled=half, dtype=torch.float16)
        self.tile = parse_tile_options(tile)
        self.progress = progress
        self.net = build_restoration_network(net_weights, network_options, param_key).to(self.device)
        self.size_multiple = (tile or {}).get('size_multiple') or getattr(self.net, 'size_multiple', 1)
        if clip_weights is not None or encoder_options is not None:
            encoder_options = encoder_options or DEFAULT_ENCODER
        self.encoder = build_degradation_encoder(encoder_options, clip_weights, self.device)
        self.prompts = list(prompts)
        if not self.prompts:
            raise ValueError('prompts: give at least one degradation text.')
        self._text_embeddings: Optional[torch.Tensor] = None

    @classmethod
    def from_option_file(cls, path: str, **overrides) -> 'Restorer':
        """A Restorer from a (test) option file: ``network_g``, ``degradation_encoder``, ``tile`` and the
        ``path.pretrain_network_*`` weights; keyword ``overrides`` (e.g. ``device``) replace them."""
        opt = load_option_file(path)
        weights = (opt.get('path') or {}).get('pretrain_network_g')
        if not weights:
            raise ValueError(f'{path}: path.pretrain_network_g is not set (the network weights to restore with).')
        settings = dict(net_weights=weights, clip_weights=opt['path'].get(WEIGHTS_KEY),
                        network_options=opt.get('network_g'), encoder_options=opt.get('degradation_encoder'),
                        device='cpu' if opt.get('num_gpu') == 0 else 'auto', tile=opt.get('tile'),
                        param_key=opt['path'].get('param_key_g', 'params'))
        settings.update(overrides)
        return cls(**settings)

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 \
                or not np.issubdtype(image.dtype, np.floating):
            raise ValueError('expected a float (H, W, 3) RGB image in [0, 1], got '
                             f'{getattr(image, "shape", type(image))} {getattr(image, "dtype", "")}; read files with '
                             'vlunet.inference.load_image (converts gray, 16-bit, RGBA and BGR order).')
        return img2tensor(np.clip(image, 0, 1), bgr2rgb=False, float32=True).unsqueeze(0).to(self.device)

    def encode_degradation(self, images: torch.Tensor) -> Optional[torch.Tensor]:
        """d (B, D) of ``images`` (B, 3, H, W) in [0, 1], or None without an encoder."""
        if self.encoder is None:
            return None
        with torch.no_grad():
            return self.encoder.encode_degradation(images)

    def restore_tensor(self, images: torch.Tensor, degradation: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Restore ``images`` (B, 3, H, W) float RGB in [0, 1] on the device -> (B, 3, H, W) float32, clamped.

        ``degradation`` (B, D): a d already computed for ``images`` (default: encoded here).
        """
        if degradation is None:
            degradation = self.encode_degradation(images)
        network = self.net if degradation is None else partial(self.net, degradation=degradation)
        with torch.no_grad(), autocast(self.amp, self.device):
            output = restore(network, images, self.tile, self.size_multiple, self.progress)
        return output.float().clamp_(0, 1)

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
        probabilities = torch.softmax(degradation @ self.text_embeddings().T, dim=1)[0].cpu()
        return DegradationGuess(self.prompts[int(probabilities.argmax())],
                                {prompt: float(p) for prompt, p in zip(self.prompts, probabilities)})

    def detect_degradation(self, image: np.ndarray) -> DegradationGuess:
        """:meth:`guess_degradation` of a float32 (H, W, 3) RGB image in [0, 1]."""
        self.text_embeddings()  # fails clearly without an encoder
        return self.guess_degradation(self.encode_degradation(self._to_tensor(image)))

    def restore_and_detect(self, image: np.ndarray) -> Tuple[np.ndarray, Optional[DegradationGuess]]:
        """(restored image, detected degradation or None without an encoder), encoding the image once."""
        tensor = self._to_tensor(image)
        degradation = self.encode_degradation(tensor)
        guess = None if degradation is None else self.guess_degradation(degradation)
        return _to_image(self.restore_tensor(tensor, degradation)), guess
