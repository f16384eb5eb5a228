"""The options a restoration checkpoint carries, so that its weight file alone restores images.

``VLUNetModel.save_network`` (every restoration model of vlunet: VLU-Net, NAFNet + DA-CLIP, IR-SDE,
Perceive-IR) writes BasicSR's ``{'params': state_dict[, 'params_ema': ...]}`` plus, under
:data:`OPTIONS_KEY`, the options needed to rebuild the network and its guidance::

    {'network_g': {...}, 'degradation_encoder': {...} or absent, 'sde': {...} or absent,
     'path': {'pretrain_network_degradation_encoder': '/abs/path.pth'} or absent}

Only plain values (dict, list, str, numbers, bool, None), so ``torch.load(weights_only=True)`` reads the
file; BasicSR's ``load_network`` reads only its ``param_key`` and ignores the extra key (resuming and
``path.pretrain_network_g`` keep working). File paths (the encoder weights, an encoder ``backbone`` or
``pretrained`` that is a file) are stored absolute, so the checkpoint restores from any folder of the machine
it was trained on. :meth:`vlunet.inference.Restorer.from_weights_file` reads them
(``scripts/inference.py photo.jpg --net-weights experiments/X/models/net_g_latest.pth``).
"""
import os.path as osp
from typing import Any

from vlunet.guidance.degradation_encoder import WEIGHTS_KEY

OPTIONS_KEY = 'vlunet_options'
CARRIED_SECTIONS = ('network_g', 'degradation_encoder', 'sde')
ENCODER_FILE_KEYS = ('backbone', 'pretrained')


def plain(value: Any) -> Any:
    """``value`` with mappings as dicts and tuples as lists (what ``weights_only`` unpickling accepts)."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def _absolute_if_file(value: Any) -> Any:
    return osp.abspath(osp.expanduser(value)) if isinstance(value, str) and osp.isfile(osp.expanduser(value)) \
        else value


def carried_options(opt: dict) -> dict:
    """The options of ``opt`` (a run's option dict) that a ``net_g`` checkpoint carries (see the module docstring)."""
    carried = {key: plain(opt[key]) for key in CARRIED_SECTIONS if opt.get(key)}
    encoder = carried.get('degradation_encoder')
    if encoder:
        encoder.update({key: _absolute_if_file(encoder[key]) for key in ENCODER_FILE_KEYS if key in encoder})
    weights = (opt.get('path') or {}).get(WEIGHTS_KEY)
    if encoder and weights:
        carried['path'] = {WEIGHTS_KEY: osp.abspath(osp.expanduser(weights))}
    return carried


def read_carried_options(checkpoint: Any) -> dict:
    """The options a loaded checkpoint carries ({} for files written without them, e.g. converted official ones)."""
    carried = checkpoint.get(OPTIONS_KEY) if isinstance(checkpoint, dict) else None
    return carried if isinstance(carried, dict) and isinstance(carried.get('network_g'), dict) else {}
