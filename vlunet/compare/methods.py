"""The methods of a comparison: a name and a checkpoint, with the option file or network configuration that builds it.

A method is given as ``NAME=SOURCE``:

- ``NAME=OPTION_FILE.yml``: a test option file (``network_g``, ``degradation_encoder``, ``tile``, ``sde``,
  ``path.pretrain_network_*``), as ``vlunet/test.py`` and ``scripts/inference.py -opt`` read it;
- ``NAME=OPTION_FILE.yml:WEIGHTS.pth``: the same with other network weights (e.g. another iteration);
- ``NAME=NETWORK.json:WEIGHTS.pth``: a ``network_g`` configuration as JSON and the weights (no encoder);
- ``NAME=WEIGHTS.pth``: VLU-Net weights (``de_dim`` read from them), unguided.
"""
import json
import os
import os.path as osp
import re
from typing import NamedTuple, Optional

import torch

from vlunet.convert.vlunet_checkpoint import detect_de_dim
from vlunet.inference import Restorer
from vlunet.network_stats import count_macs
from vlunet.options import load_option_file

from basicsr.utils import set_random_seed

WEIGHT_EXTENSIONS = ('.pth', '.pt', '.safetensors', '.bin')
OPTION_EXTENSIONS = ('.yml', '.yaml')
MACS_SIZE = 256  # GMACs are reported for a 256 x 256 input


class MethodSpec(NamedTuple):
    """One ``--method``: its ``name`` and where its network comes from (see the module docstring)."""
    name: str
    option_file: Optional[str] = None
    weights: Optional[str] = None
    network_file: Optional[str] = None


class MethodStats(NamedTuple):
    """What a method costs: network ``parameters``, ``gmacs`` per forward at 256 x 256 (IR-SDE: per sampling
    step; None if it cannot be counted), sampling ``steps`` (IR-SDE only, else None)."""
    parameters: int
    gmacs: Optional[float]
    steps: Optional[int]


def parse_method(text: str) -> MethodSpec:
    """A :class:`MethodSpec` from ``NAME=SOURCE`` (``ValueError`` with the accepted forms otherwise)."""
    name, _, source = text.partition('=')
    name = name.strip()
    forms = ('NAME=OPTION_FILE.yml, NAME=OPTION_FILE.yml:WEIGHTS.pth, NAME=NETWORK.json:WEIGHTS.pth or '
             'NAME=WEIGHTS.pth')
    if not name or not source:
        raise ValueError(f'--method {text!r}: expected {forms}.')
    first, separator, second = source.rpartition(':')
    if separator and first and second.lower().endswith(WEIGHT_EXTENSIONS) and not re.fullmatch(r'[A-Za-z]', first):
        if first.lower().endswith(OPTION_EXTENSIONS):
            return MethodSpec(name, option_file=first, weights=second)
        if first.lower().endswith('.json'):
            return MethodSpec(name, network_file=first, weights=second)
        raise ValueError(f'--method {text!r}: {first!r} is neither an option file (.yml) nor a network JSON file; '
                         f'expected {forms}.')
    if source.lower().endswith(OPTION_EXTENSIONS):
        return MethodSpec(name, option_file=source)
    if source.lower().endswith(WEIGHT_EXTENSIONS):
        return MethodSpec(name, weights=source)
    raise ValueError(f'--method {text!r}: {source!r} is neither an option file (.yml) nor a weight file '
                     f'({", ".join(WEIGHT_EXTENSIONS)}); expected {forms}.')


def slug(name: str) -> str:
    """A file-name-safe form of ``name`` (letters, digits, ``.``, ``-`` and ``_``)."""
    return re.sub(r'[^A-Za-z0-9._-]+', '_', name).strip('._') or 'method'


def _configured_network(spec: MethodSpec) -> Optional[dict]:
    """The ``network_g`` mapping of the option file or network JSON file of ``spec`` (None: default VLU-Net)."""
    if spec.option_file:
        network = load_option_file(spec.option_file).get('network_g')
        where = f'{spec.option_file}: network_g'
    elif spec.network_file:
        with open(spec.network_file, encoding='utf-8') as file:
            try:
                network = json.load(file)
            except json.JSONDecodeError as error:
                raise ValueError(f'{spec.network_file}: not valid JSON ({error}).') from None
        where = spec.network_file
    else:
        return None
    if not isinstance(network, dict) or 'type' not in network:
        raise ValueError(f'{where}: expected a network_g mapping with a "type", '
                         'e.g. {"type": "VLUNet", "de_dim": 5}.')
    return dict(network)


def build_restorer(spec: MethodSpec, device: Optional[str] = None, steps: Optional[int] = None,
                   seed: Optional[int] = None) -> Restorer:
    """The :class:`~vlunet.inference.Restorer` of ``spec`` (``steps`` / ``seed``: applied to IR-SDE networks only).

    An option file's ``manual_seed`` seeds the random generators first, as ``vlunet/test.py`` does before it builds
    the model, so parts without weight files (e.g. a demo's random CLIP backbone) are the ones its test run builds.
    """
    network = _configured_network(spec)
    seed_of_test_run = load_option_file(spec.option_file).get('manual_seed') if spec.option_file else None
    if isinstance(seed_of_test_run, int):
        set_random_seed(seed_of_test_run)
    settings = {key: value for key, value in (('device', device), ('net_weights', spec.weights)) if value}
    if (network or {}).get('type') == 'ConditionalUNet':
        settings.update({key: value for key, value in (('sde_steps', steps), ('seed', seed)) if value is not None})
    if spec.option_file:
        return Restorer.from_option_file(spec.option_file, **settings)
    return Restorer(network_options=network, **{'device': 'auto', **settings})


def network_options(spec: MethodSpec, restorer: Restorer) -> dict:
    """The ``network_g`` mapping that builds ``restorer.net`` (``de_dim`` of a default VLU-Net filled in)."""
    options = _configured_network(spec) or {'type': 'VLUNet'}
    if options['type'] == 'VLUNet' and 'de_dim' not in options:
        options['de_dim'] = detect_de_dim(restorer.net.state_dict())
    return options


def method_stats(spec: MethodSpec, restorer: Restorer) -> MethodStats:
    """Parameters of ``restorer.net``, its GMACs at 256 x 256 (:mod:`vlunet.network_stats`) and IR-SDE steps."""
    parameters = sum(p.numel() for p in restorer.net.parameters())
    try:
        gmacs = count_macs(network_options(spec, restorer), MACS_SIZE)['total'] / 1e9
    except (RuntimeError, NotImplementedError, TypeError, ValueError):  # an op the meta device cannot run
        gmacs = None
    return MethodStats(parameters, gmacs, restorer.sde.steps if restorer.sde is not None else None)


def fingerprint(spec: MethodSpec, restorer: Restorer) -> dict:
    """What a restored image depends on besides its input: the method's files (path, size, time) and IR-SDE settings;
    an output written under another fingerprint is restored again."""
    files = {}
    for path in (spec.option_file, spec.network_file, spec.weights):
        if path and osp.isfile(path):
            status = os.stat(path)
            files[osp.abspath(path)] = [status.st_size, int(status.st_mtime)]
    sde = None if restorer.sde is None else {'steps': restorer.sde.steps, 'seed': getattr(restorer.sde, 'seed', None)}
    return {'files': files, 'sde': sde, 'precision': restorer.precision, 'torch': torch.__version__}
