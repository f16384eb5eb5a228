"""Reading DA-CLIP checkpoints: the official ``daclip_ViT-B-32.pt`` and this plugin's converted file.

The official file (DA-CLIP release, an open_clip *training* checkpoint, 1.74 GB) is
``{'epoch', 'name', 'state_dict', 'optimizer', 'scaler'}``; ``state_dict`` keys carry DDP's ``module.``
prefix (absent in single-process runs: both are accepted; a bare state dict is accepted too) and its
pickle holds a numpy float64 scalar, which :func:`~vlunet.utils.safe_load.safe_torch_load` allow-lists
(nothing else beyond tensors and containers is accepted). Official -> plugin key names
(:class:`~vlunet.archs.daclip.daclip_arch.DACLIP`), 631 official entries -> 479 plugin tensors:

=====================================================  ===============================================
official                                               plugin
=====================================================  ===============================================
``logit_scale``                                        ``logit_scale`` (DA-CLIP's trained temperature)
``clip.<key>`` (302, the frozen open_clip CLIP)        ``backbone.<key>``
``visual.<key>`` (152, an alias of ``clip.visual``)    dropped (the same tensors)
``visual_control.transformer.zero_modules.<i>.*``      ``control_linears.<i>.*``
``visual_control.transformer.transformer.<key>``       ``controller.transformer.<key>``
``visual_control.<key>`` (conv1, embeddings, ln, proj) ``controller.<key>``
=====================================================  ===============================================

The converted file (``scripts/convert_official_checkpoint.py``) is ``{'params': <plugin state dict>}``
with all of the above (about 939 MiB for ViT-B-32, no optimiser moments); a DACLIPModel training
checkpoint is the same without ``backbone.*`` (the frozen CLIP is never saved).
"""
import os.path as osp
import warnings
from typing import Dict, List

import torch

from vlunet.utils.atomic_write import atomic_torch_save
from vlunet.utils.safe_load import (
    WrongContentsError,
    listed_mismatches,
    one_line,
    require_state_dict,
    safe_torch_load,
    state_dict_mismatches,
    torch_pickle_record,
)

DACLIP_FIX = 'give the official daclip_*.pt, or a file converted from it by scripts/convert_official_checkpoint.py'
ZERO_MODULE_MARKER = 'visual_control.transformer.zero_modules.'
_OFFICIAL_TO_PLUGIN = (  # prefix renames, first match wins
    (ZERO_MODULE_MARKER, 'control_linears.'),
    ('visual_control.transformer.transformer.', 'controller.transformer.'),
    ('visual_control.', 'controller.'),
    ('clip.', 'backbone.'),
)
_ALIAS_PREFIX = 'visual.'
DDP_PREFIX = 'module.'


def is_daclip_file(path: str) -> bool:
    """True if ``path`` is a zip-format torch file whose pickle names DA-CLIP's zero modules or control linears.

    Reads only the (small) pickle record, not the tensors, and unpickles nothing.
    """
    pickled = torch_pickle_record(path, 'DA-CLIP checkpoint')
    return any(marker in pickled for marker in (ZERO_MODULE_MARKER.encode(), b'control_linears.'))


def _official_state(checkpoint: object) -> Dict[str, torch.Tensor]:
    """The model state dict of an open_clip training checkpoint (or a bare state dict), ``module.`` stripped."""
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        return {}
    return {k[len(DDP_PREFIX):] if isinstance(k, str) and k.startswith(DDP_PREFIX) else k: v for k, v in state.items()}


def official_to_plugin_state_dict(state: Dict[str, torch.Tensor], path: str) -> Dict[str, torch.Tensor]:
    """Rename an official DaCLIP state dict (no ``module.``) to DACLIP keys (table in the module docstring)."""
    converted = {'logit_scale': state['logit_scale']} if 'logit_scale' in state else {}
    for key, value in state.items():
        if key == 'logit_scale' or key.startswith(_ALIAS_PREFIX):
            continue
        for official, plugin in _OFFICIAL_TO_PLUGIN:
            if key.startswith(official):
                converted[plugin + key[len(official):]] = value
                break
        else:
            raise WrongContentsError(f'DA-CLIP checkpoint {path}: unknown key {key!r} (expected logit_scale, clip.*, '
                                     'visual.* and visual_control.*): give the official daclip_*.pt.')
    return converted


def daclip_state_dict(checkpoint: object, path: str) -> Dict[str, torch.Tensor]:
    """DACLIP keys from a loaded converted / training checkpoint (``params``) or an official DA-CLIP file.

    Raises:
        ValueError: ``checkpoint`` is neither (the message names ``path``).
    """
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get('params'), dict):
        state = checkpoint['params']
        if any(str(k).startswith(('controller.', 'control_linears.')) for k in state):
            return require_state_dict(state, path, 'DA-CLIP checkpoint', DACLIP_FIX)
    state = _official_state(checkpoint)
    if any(isinstance(k, str) and k.startswith(ZERO_MODULE_MARKER) for k in state):
        return official_to_plugin_state_dict(require_state_dict(state, path, 'DA-CLIP checkpoint', DACLIP_FIX), path)
    raise WrongContentsError(f'DA-CLIP checkpoint {path} is not a DA-CLIP checkpoint: expected the official '
                             'daclip_*.pt (a "state_dict" with '
                     'visual_control.transformer.zero_modules.* keys), a file converted by '
                     'scripts/convert_official_checkpoint.py or a DACLIPModel checkpoint ("params" with controller.* '
                     'keys).')


def daclip_shape_problems(state: Dict[str, torch.Tensor]) -> List[str]:
    """Shapes of a plugin-named DA-CLIP state dict that do not fit together: the backbone against the CLIP built
    from its own shapes (open_clip), the controller against the backbone's image tower it copies, each zero linear
    against the tower's width."""
    from open_clip.model import build_model_from_openai_state_dict
    backbone = {key[len('backbone.'):]: value for key, value in state.items() if key.startswith('backbone.')}
    problems = []
    try:
        with torch.device('meta'), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # copying into meta tensors is a no-op: only the shapes are compared
            build_model_from_openai_state_dict(dict(backbone))
    except Exception as error:  # noqa: BLE001 -- size mismatches (RuntimeError), missing keys (KeyError), ...
        problems.append(f'backbone: {one_line(error, 300)}')
    visual = {f'controller.{key[len("visual."):]}': value for key, value in backbone.items()
              if key.startswith('visual.')}
    controller = {key: value for key, value in state.items() if key.startswith('controller.')}
    problems += state_dict_mismatches(visual, controller, strict=False)
    width = backbone.get('visual.class_embedding')
    for key, value in state.items():
        if key.startswith('control_linears.') and width is not None and value.shape[0] != width.shape[0]:
            problems.append(f'{key}: {list(value.shape)} for an image tower of width {width.shape[0]}')
    return problems


def load_daclip_file(path: str, trusted: bool = False) -> Dict[str, torch.Tensor]:
    """:func:`daclip_state_dict` of the file ``path``, unpickled by ``safe_torch_load``."""
    return daclip_state_dict(safe_torch_load(path, 'DA-CLIP checkpoint', trusted=trusted), path)


def convert_daclip_checkpoint(src: str, out_dir: str, trusted: bool = False) -> str:
    """Write ``OUT_DIR/<stem>_daclip.pth`` = ``{'params': DACLIP state dict}`` from an official file; return its path.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: ``src`` is not a complete official DA-CLIP checkpoint.
        vlunet.utils.safe_load.UnsafeCheckpointError: ``src`` needs code to unpickle.
    """
    state = load_daclip_file(src, trusted)
    groups = {prefix: sum(k.startswith(prefix) for k in state) for prefix in ('backbone.', 'controller.',
                                                                               'control_linears.')}
    if 'logit_scale' not in state or not all(groups.values()):
        raise WrongContentsError(f'DA-CLIP checkpoint {src}: incomplete ({groups}, logit_scale '
                         f'{"present" if "logit_scale" in state else "missing"}); expected the official release file.')
    problems = daclip_shape_problems(state)
    if problems:
        raise WrongContentsError(f'DA-CLIP checkpoint {src} has tensors of the wrong shape '
                                 f'({listed_mismatches(problems)}): download the official file again.')
    path = osp.join(out_dir, f'{osp.splitext(osp.basename(src))[0]}_daclip.pth')
    atomic_torch_save({'params': state}, path)
    return path
