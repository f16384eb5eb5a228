"""Checks an option file before BasicSR runs it, so mistakes fail with the key that is wrong.

BasicSR reports a bad ``type`` as "No object named 'X' found in 'arch' registry!" and a missing
``dataroot_gt`` as a bare ``KeyError`` from inside a DataLoader build. :func:`check_option_file`
names the option-file key instead (``datasets.train.dataroot_gt``) and says how to fix it.

A dataset class may declare ``required_options`` (a tuple of keys) to have them checked here.
"""
import difflib
import os.path as osp
from typing import Iterable, List, Optional

import yaml
from basicsr.utils.options import ordered_yaml
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

KNOWN_TOP_LEVEL_KEYS = ('name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets', 'path', 'train', 'val',
                        'logger', 'dist_params', 'find_unused_parameters', 'degradation_encoder', 'degradation_prompts',
                        'tile', 'amp', 'compile')
# Keys required by BasicSR's own datasets, which declare nothing themselves.
BASICSR_REQUIRED_DATASET_OPTIONS = {
    'PairedImageDataset': ('dataroot_gt', 'dataroot_lq', 'io_backend'),
    'SingleImageDataset': ('dataroot_lq', 'io_backend'),
}


class OptionError(ValueError):
    """An option file that cannot run; the message names the file, the key and the fix."""


def load_option_file(path: str) -> dict:
    """Read a YAML option file the way BasicSR does, with readable errors."""
    if not osp.isfile(path):
        raise OptionError(f'option file {path!r} does not exist (pass it with -opt PATH).')
    with open(path, encoding='utf-8') as f:
        try:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
        except yaml.YAMLError as err:
            raise OptionError(f'{path}: invalid YAML: {err}') from err
    if not isinstance(opt, dict):
        raise OptionError(f'{path}: expected a mapping of option keys at the top level.')
    return opt


def _registry_error(key: str, value: object, registry) -> Optional[str]:
    try:
        registry.get(value)  # also resolves BasicSR's suffixed names, e.g. SRVGGNetCompact_basicsr
        return None
    except KeyError:
        pass
    names = sorted({name[:-len('_basicsr')] if name.endswith('_basicsr') else name for name, _ in registry})
    close = difflib.get_close_matches(str(value), names, n=3)
    hint = f' Did you mean {", ".join(close)}?' if close else ' Is `import vlunet` (or your plugin) missing?'
    return f'{key}: unknown {registry._name} type {value!r}.{hint}'


def _check_type(key: str, section: object, registry) -> List[str]:
    if not isinstance(section, dict) or 'type' not in section:
        return [f'{key}: expected a mapping with a `type` key.']
    error = _registry_error(f'{key}.type', section['type'], registry)
    return [error] if error else []


def _check_paths(key: str, section: dict) -> Iterable[str]:
    for name, value in section.items():
        is_path = name.startswith('dataroot') or name == 'meta_info_file'
        if is_path and isinstance(value, str) and not osp.exists(osp.expanduser(value)):
            yield (f'{key}.{name}: {value!r} does not exist. Fix the path, or prepare the data '
                   '(scripts/prepare_datasets.py, datasets/README.md).')


def _check_dataset(key: str, dataset: object) -> List[str]:
    errors = _check_type(key, dataset, DATASET_REGISTRY)
    if errors:
        return errors
    cls = DATASET_REGISTRY.get(dataset['type'])
    required = getattr(cls, 'required_options', BASICSR_REQUIRED_DATASET_OPTIONS.get(dataset['type'], ()))
    errors += [f'{key}.{name}: missing (required by {dataset["type"]}).' for name in required if name not in dataset]
    return errors + list(_check_paths(key, dataset))


def _check_train_section(train: object) -> List[str]:
    if not isinstance(train, dict):
        return ['train: expected a mapping (optimizers, scheduler, losses, total_iter).']
    errors = [] if 'total_iter' in train else ['train.total_iter: missing (number of training iterations).']
    for name, section in train.items():
        if name.endswith('_opt') and isinstance(section, dict) and name not in ('optim_g', 'optim_d', 'scheduler'):
            errors += _check_type(f'train.{name}', section, LOSS_REGISTRY)
    return errors


def check_options(opt: dict, is_train: bool) -> List[str]:
    """Return the problems of a parsed option dict (empty when it can run)."""
    errors = [f'{key}: missing.' for key in ('name', 'model_type', 'datasets') if key not in opt]
    if 'model_type' in opt:
        errors += filter(None, [_registry_error('model_type', opt['model_type'], MODEL_REGISTRY)])
    for key, section in opt.items():
        if key.startswith('network_'):
            errors += _check_type(key, section, ARCH_REGISTRY)
    datasets = opt.get('datasets') or {}
    if is_train and 'train' not in datasets:
        errors.append('datasets.train: missing (the training set).')
    for phase, dataset in datasets.items():
        errors += _check_dataset(f'datasets.{phase}', dataset)
    if is_train:
        errors += _check_train_section(opt.get('train'))
        errors += [] if 'logger' in opt else ['logger: missing (print_freq, save_checkpoint_freq, use_tb_logger).']
    val = opt.get('val') or {}
    if not is_train and val.get('save_img') and 'suffix' not in val:
        errors.append('val.suffix: missing (BasicSR reads it when saving test images; use `suffix: ~` for none).')
    for name, metric in (val.get('metrics') or {}).items():
        errors += _check_type(f'val.metrics.{name}', metric, METRIC_REGISTRY)
    return errors


def unknown_top_level_keys(opt: dict) -> List[str]:
    """Top-level keys BasicSR and vlunet ignore (probably typos), with suggestions."""
    messages = []
    for key in opt:
        if key.startswith('network_') or key in KNOWN_TOP_LEVEL_KEYS:
            continue
        close = difflib.get_close_matches(key, KNOWN_TOP_LEVEL_KEYS, n=1)
        messages.append(f'{key}: unknown top-level key, ignored.' + (f' Did you mean {close[0]!r}?' if close else ''))
    return messages


def check_option_file(path: str, is_train: bool) -> List[str]:
    """Load and check ``path``; raise :class:`OptionError` listing every problem, return warnings."""
    opt = load_option_file(path)
    errors = check_options(opt, is_train)
    if errors:
        raise OptionError(f'{path}:\n  ' + '\n  '.join(errors))
    return unknown_top_level_keys(opt)
