"""Converting DA-CLIP's released restoration network (``universal-ir.pth``) into a BasicSR weight file.

The release saves ``ConditionalUNet.state_dict()`` as a bare ``OrderedDict`` (224 tensors,
48,975,747 parameters for ``universal-ir.pth``). :class:`~vlunet.archs.daclip.irsde_unet_arch.ConditionalUNet`
uses the release's parameter names, so the conversion renames nothing: it strips the prefixes of
wrapped copies (``module.`` of DDP, ``ema_model.`` of an ema_pytorch ``EMA`` state dict, whose
``initted``/``step`` counters are dropped), infers the constructor arguments from the shapes, checks
that the state dict fits a ConditionalUNet built with them exactly, and writes
``OUT_DIR/<stem>_net.pth`` = ``{'params': state_dict}`` (loadable with ``strict=True``).
"""
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List

import torch

from vlunet.archs.daclip.irsde_unet_arch import ConditionalUNet
from vlunet.utils.atomic_write import atomic_torch_save
from vlunet.utils.safe_load import (
    WrongContentsError,
    listed_mismatches,
    one_line,
    safe_torch_load,
    state_dict_mismatches,
    torch_pickle_record,
)

WRAPPER_PREFIXES = ('module.', 'ema_model.')
EMA_COUNTERS = ('initted', 'step')
MARKER_KEYS = ('init_conv.weight', 'time_mlp.1.weight', 'final_res_block.mlp.1.weight')


def is_irsde_unet_file(path: str) -> bool:
    """True if ``path`` is a zip-format torch file whose pickle names ConditionalUNet's parameters.

    Reads only the (small) pickle record, not the tensors, and unpickles nothing.

    Raises:
        vlunet.utils.safe_load.DamagedFileError: a zip whose record cannot be read.
    """
    record = torch_pickle_record(path, 'file to convert')
    return all(key.encode() in record for key in MARKER_KEYS)


def unwrapped_state_dict(checkpoint: object, path: str) -> Dict[str, torch.Tensor]:
    """The ConditionalUNet state dict in a loaded release file, wrapper prefixes and EMA counters removed.

    Raises:
        ValueError: ``checkpoint`` is not a ConditionalUNet state dict (the message names ``path``).
    """
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise WrongContentsError(f'IR-SDE network file {path} is not a released IR-SDE / DA-CLIP ConditionalUNet '
                                 'file (a bare state dict such as universal-ir.pth): give that file.')
    state = {}
    for key, value in checkpoint.items():
        if key in EMA_COUNTERS:
            continue
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    missing = [key for key in (*MARKER_KEYS, 'final_conv.weight') if key not in state]
    if missing or any(state[key].dim() < 2 for key in ('init_conv.weight', 'final_conv.weight')):
        raise WrongContentsError(f'IR-SDE network file {path} is not a ConditionalUNet state dict (keys {missing} '
                                 'missing, or not convolution weights): give the released universal-ir.pth.')
    return state


def network_config(state: Dict[str, torch.Tensor]) -> dict:
    """ConditionalUNet constructor arguments that produce the shapes of ``state``."""
    nf, input_channels = state['init_conv.weight'].shape[:2]
    widths: List[int] = []
    level = 0
    while f'downs.{level}.3.weight' in state:
        widths.append(state[f'downs.{level}.3.weight'].shape[0])
        level += 1
    image_context = [value for key, value in state.items() if key.endswith('attn2.to_k.weight')]
    context_dim = (state['text_mlp.0.weight'].shape[1] if 'text_mlp.0.weight' in state
                   else image_context[0].shape[1] if image_context else -1)
    return {'type': 'ConditionalUNet', 'in_nc': input_channels // 2, 'out_nc': state['final_conv.weight'].shape[0],
            'nf': nf, 'ch_mult': [width // nf for width in widths], 'context_dim': context_dim,
            'use_degra_context': 'prompt' in state, 'use_image_context': bool(image_context)}


def check_fits(state: Dict[str, torch.Tensor], config: dict, path: str) -> None:
    """Raise WrongContentsError unless ``state`` loads strictly into ``ConditionalUNet(**config)`` (built without
    memory)."""
    try:
        with torch.device('meta'):
            expected = ConditionalUNet(**{k: v for k, v in config.items() if k != 'type'}).state_dict()
    except (ValueError, RuntimeError, TypeError, AssertionError, ZeroDivisionError) as error:
        raise WrongContentsError(f'IR-SDE network file {path} has shapes of no ConditionalUNet ({config}: '
                                 f'{one_line(error, 200)}): give the released universal-ir.pth.') from error
    problems = state_dict_mismatches(expected, state)
    if problems:
        raise WrongContentsError(f'IR-SDE network file {path} does not fit ConditionalUNet({config}) '
                                 f'({listed_mismatches(problems)}): give the released universal-ir.pth.')


@dataclass
class ConvertedUNet:
    """What :func:`convert_irsde_checkpoint` wrote."""
    net_path: str
    config: dict
    num_params: int


def convert_irsde_checkpoint(src: str, out_dir: str, trusted: bool = False) -> ConvertedUNet:
    """Write ``OUT_DIR/<stem>_net.pth`` = ``{'params': state_dict}`` from a released ConditionalUNet file.

    ``trusted``: unpickle ``src`` fully, running any code it holds (an explicit opt-in).

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: ``src`` is not a ConditionalUNet state dict, or does not fit the inferred config.
        vlunet.utils.safe_load.UnsafeCheckpointError: ``src`` needs code to unpickle.
    """
    state = unwrapped_state_dict(safe_torch_load(src, 'IR-SDE network file', trusted=trusted), src)
    config = network_config(state)
    check_fits(state, config, src)
    net_path = osp.join(out_dir, f'{osp.splitext(osp.basename(src))[0]}_net.pth')
    atomic_torch_save({'params': state}, net_path)
    return ConvertedUNet(net_path, config, sum(value.numel() for value in state.values()))
