"""Convert the official VLU-Net release files into this plugin's BasicSR weight files.

Sources:

- an official PyTorch Lightning ``.ckpt``: ``state_dict`` holds ``net.<VLUNet key>`` (615 tensors)
  and ``model_degradation.*`` (the CLIP model twice, under ``ad_imageEncoder.clip_model.`` and
  ``ad_textEncoder.clip_model.``, plus the two adapters ``ad_{image,text}Encoder.adapter.N.*``);
- the official ``clip_tuned.pth``: ``{'epoch', 'learnable_params': {adapter tensors}, 'optimizer'}``.

Outputs (``torch.save({'params': state_dict})``, written atomically):

- ``<stem>_net.pth``: the restoration network, renamed to :class:`~vlunet.archs.vlunet.vlunet_arch.VLUNet`'s
  parameter names; loads with ``strict=True`` into ``VLUNet(de_dim=<detected>)``;
- ``<stem>_clip.pth``: the degradation encoder for ``DegradationCLIP``: ``image_adapter.N.*``,
  ``text_adapter.N.*`` and, when the source carries it, the CLIP model as ``backbone.*``.
"""
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from vlunet.utils.atomic_write import atomic_torch_save
from vlunet.utils.safe_load import BadFileError, WrongContentsError, require_state_dict, safe_torch_load

# Official -> plugin renames of dotted key segments; the plugin's names say what the tensors are.
_RENAMED_SEGMENTS: List[Tuple[Tuple[str, ...], Tuple[str, ...]]] = [
    (('patch_embed', 'proj'), ('embed',)),
    (('patch_embed_i', 'proj'), ('degraded_embed',)),
    (('down1_2_i',), ('unused_degraded_down1_2',)),
    *(((f'{name}_i',), (f'degraded_{name}',)) for name in ('down2_3', 'down3_4', 'up4_3', 'up3_2', 'up2_1')),
    *(((f'reduce_chan_level{n}_img',), (f'degraded_reduce_chan_level{n}',)) for n in (3, 2)),
    (('gradient_descent',), ('gradient_step',)),
    (('r',), ('step_size',)),
    (('prompt_param',), ('degradation_keys',)),
    (('phi',), ('degradation_operator',)),
    (('phit',), ('adjoint_operator',)),
    (('linear',), ('key_logits',)),
    (('denoiser', 'blocks'), ('proximal_mapping',)),
    (('norm1', 'body'), ('norm1',)),
    (('norm2', 'body'), ('norm2',)),
]
_NET_PREFIX = 'net.'
_DEGRADATION_PREFIX = 'model_degradation.'
_CLIP_RENAMES = (('ad_imageEncoder.adapter.', 'image_adapter.'), ('ad_textEncoder.adapter.', 'text_adapter.'),
                 ('ad_imageEncoder.clip_model.', 'backbone.'))
_DUPLICATE_CLIP_PREFIX = 'ad_textEncoder.clip_model.'  # the same CLIP tensors as ad_imageEncoder.clip_model.


def _rename_segments(key: str, renames: List[Tuple[Tuple[str, ...], Tuple[str, ...]]]) -> str:
    parts, out, i = key.split('.'), [], 0
    while i < len(parts):
        for source, target in renames:
            if tuple(parts[i:i + len(source)]) == source:
                out.extend(target)
                i += len(source)
                break
        else:
            out.append(parts[i])
            i += 1
    return '.'.join(out)


def official_to_plugin_key(key: str) -> str:
    """``'encoder_level1.gradient_descent.prompt_param'`` -> ``'encoder_level1.gradient_step.degradation_keys'``."""
    return _rename_segments(key, _RENAMED_SEGMENTS)


def plugin_to_official_key(key: str) -> str:
    """Inverse of :func:`official_to_plugin_key`."""
    return _rename_segments(key, [(target, source) for source, target in _RENAMED_SEGMENTS])


def official_to_plugin_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename an official VLUNet state dict (no ``net.`` prefix) to this plugin's parameter names."""
    return {official_to_plugin_key(key): value for key, value in state.items()}


def plugin_to_official_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a plugin VLUNet state dict to the official parameter names (for the official code)."""
    return {plugin_to_official_key(key): value for key, value in state.items()}


def detect_de_dim(net_state: Dict[str, torch.Tensor]) -> int:
    """Number of degradation keys of a (plugin-named) VLUNet state dict."""
    banks = [value for key, value in net_state.items() if key.endswith('gradient_step.degradation_keys')]
    if not banks:
        raise ValueError('no degradation keys (gradient_step.degradation_keys) in the state dict: not a VLUNet')
    return int(banks[0].shape[1])


def official_clip_state_dict(degradation_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map official ``DA_adapter`` keys (without ``model_degradation.``) to ``DegradationCLIP`` keys.

    The duplicate CLIP copy under ``ad_textEncoder.clip_model.`` is dropped.
    """
    converted = {}
    for key, value in degradation_state.items():
        if key.startswith(_DUPLICATE_CLIP_PREFIX):
            continue
        for official, plugin in _CLIP_RENAMES:
            if key.startswith(official):
                converted[plugin + key[len(official):]] = value
                break
        else:
            raise ValueError(f'unknown key in the official CLIP weights: {key!r}')
    return converted


def load_official_file(path: str, trusted: bool = False, description: str = 'official checkpoint') -> dict:
    """An official VLU-Net file (or a converted one) on the CPU, unpickled without running code from it.

    Official Lightning checkpoints, ``clip_tuned.pth`` and DA-CLIP's checkpoint need only the globals
    allowed by :func:`~vlunet.utils.safe_load.safe_torch_load`; anything else is refused. ``trusted``
    unpickles fully (runs code from the file): an explicit opt-in for files whose origin you trust.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file holds other globals (named in the message).
        ValueError: ``path`` is not a PyTorch file.
    """
    return safe_torch_load(path, description, trusted=trusted)


OFFICIAL_FIX = 'give an official VLU-Net .ckpt or clip_tuned.pth from the authors\' package'


def split_official_checkpoint(checkpoint: object, path: str) -> Tuple[Optional[dict], Optional[dict]]:
    """(plugin VLUNet state dict or None, DegradationCLIP state dict or None) from a loaded official file."""
    try:
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get('state_dict'), dict):
            state = require_state_dict(checkpoint['state_dict'], path, 'official checkpoint', OFFICIAL_FIX)
            net = {key[len(_NET_PREFIX):]: value for key, value in state.items() if key.startswith(_NET_PREFIX)}
            degradation = {key[len(_DEGRADATION_PREFIX):]: value for key, value in state.items()
                           if key.startswith(_DEGRADATION_PREFIX)}
            if net:
                return official_to_plugin_state_dict(net), (official_clip_state_dict(degradation) if degradation
                                                            else None)
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get('learnable_params'), dict):
            learnable = require_state_dict(checkpoint['learnable_params'], path, 'official checkpoint', OFFICIAL_FIX)
            return None, official_clip_state_dict(learnable)
    except BadFileError:
        raise
    except ValueError as error:  # an unknown key of the official CLIP weights
        raise WrongContentsError(f'official checkpoint {path}: {error}; {OFFICIAL_FIX}.') from error
    raise WrongContentsError(f'official checkpoint {path} is neither an official VLU-Net Lightning checkpoint (a '
                             '"state_dict" with "net.*" keys) '
                     f'nor an official clip_tuned.pth (with "learnable_params")')


@dataclass
class ConvertedFiles:
    """What :func:`convert_official_checkpoint` wrote (None: not in the source)."""
    net_path: Optional[str] = None
    de_dim: Optional[int] = None
    clip_path: Optional[str] = None
    clip_has_backbone: bool = False


def convert_official_checkpoint(src: str, out_dir: str, trusted: bool = False) -> ConvertedFiles:
    """Convert ``src`` (official ``.ckpt`` or ``clip_tuned.pth``) into BasicSR weight files in ``out_dir``.

    ``trusted``: unpickle ``src`` fully, running any code it holds (see :func:`load_official_file`).

    Raises:
        FileNotFoundError: ``src`` does not exist.
        UnsafeCheckpointError: ``src`` holds globals outside the allow-list (a ``ValueError``).
        ValueError: ``src`` is not an official VLU-Net checkpoint.
    """
    net_state, clip_state = split_official_checkpoint(load_official_file(src, trusted), src)
    stem = osp.splitext(osp.basename(src))[0]
    converted = ConvertedFiles()
    if net_state is not None:
        try:
            converted.de_dim = detect_de_dim(net_state)
        except (ValueError, IndexError) as error:
            raise WrongContentsError(f'official checkpoint {src}: {error}; {OFFICIAL_FIX}.') from error
        converted.net_path = osp.join(out_dir, f'{stem}_net.pth')
        atomic_torch_save({'params': net_state}, converted.net_path)
    if clip_state is not None:
        converted.clip_has_backbone = any(key.startswith('backbone.') for key in clip_state)
        converted.clip_path = osp.join(out_dir, f'{stem}_clip.pth')
        atomic_torch_save({'params': clip_state}, converted.clip_path)
    return converted
