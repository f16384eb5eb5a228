"""Checks the options a run will use before BasicSR starts, so mistakes fail with the key that is wrong.

BasicSR reports a bad ``type`` as "No object named 'X' found in 'arch' registry!", a misspelt
network argument as a raw ``TypeError``, a missing ``dataroot_gt`` as a bare ``KeyError`` from
inside a DataLoader build and a missing weight file after ~900 lines of network printout, each
after ``experiments/`` and ``tb_logger/`` were created. :func:`check_option_file` checks the options
as BasicSR will use them (the YAML file with the ``--force_yml`` overrides applied) and names the
option-file key, the close match and the fix instead; nothing is created before it passes.

Checked: the registered ``type`` of every network, dataset, loss, metric, model and
``degradation_encoder``; network and loss keyword arguments against their constructor's signature;
every path the run reads (dataset folders and meta-info files, also of ``tasks[].source``; weight
files ``path.pretrain_network_*``; CLIP ``pretrained`` and ``backbone`` files); iteration counts and
frequencies; required keys; unknown keys at the top level and in the ``train``, ``val``, ``logger``,
``path`` sections (warnings) and in datasets whose keys are known (errors).

Plugin hooks: a dataset class may declare ``required_options`` and ``known_options`` (tuples of
keys) and a ``check_options(opt) -> list of problems``; a model class may declare
``check_options(opt, is_train) -> list of problems``.
"""
import difflib
import inspect
import os
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from vlunet.archs.degradation_clip_arch import pretrained_tag_problem
from vlunet.utils.close_paths import close_file

from basicsr.models import lr_scheduler
from basicsr.models.sr_model import SRModel
from basicsr.utils.options import _postprocess_yml_value, ordered_yaml
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY

KNOWN_TOP_LEVEL_KEYS = ('name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets', 'path', 'train', 'val',
                        'logger', 'dist_params', 'find_unused_parameters', 'degradation_encoder', 'degradation_prompts',
                        'tile', 'amp', 'compile', 'is_train', 'dist', 'rank', 'world_size', 'auto_resume',
                        'root_path', 'sde')
# Keys BasicSR's DataLoader build and option parsing read from every dataset section.
DATALOADER_OPTIONS = ('name', 'type', 'phase', 'scale', 'use_shuffle', 'num_worker_per_gpu', 'batch_size_per_gpu',
                      'dataset_enlarge_ratio', 'prefetch_mode', 'pin_memory', 'persistent_workers',
                      'num_prefetch_queue')
# BasicSR's own datasets declare nothing: (required keys, other keys they read).
BASICSR_DATASET_OPTIONS = {
    'PairedImageDataset': (('dataroot_gt', 'dataroot_lq', 'io_backend'),
                           ('meta_info_file', 'filename_tmpl', 'gt_size', 'use_hflip', 'use_rot', 'mean', 'std',
                            'color')),
    'SingleImageDataset': (('dataroot_lq', 'io_backend'), ('meta_info_file', 'mean', 'std', 'color')),
}
PAIRED_TRAIN_REQUIRED = ('gt_size', 'use_hflip', 'use_rot')  # PairedImageDataset reads them in training
# Keys BasicSR's models and pipelines (and vlunet's) read in each section; others are reported as unknown.
SECTION_KEYS = {
    'train': ('total_iter', 'warmup_iter', 'ema_decay', 'scheduler', 'optim_g', 'optim_d', 'pixel_opt',
              'perceptual_opt', 'gan_opt', 'ldl_opt', 'feature_matching_opt', 'net_d_iters', 'net_d_init_iters',
              'net_d_reg_every', 'net_g_reg_every', 'r1_reg_weight', 'path_reg_weight', 'path_batch_shrink',
              'mixing_prob', 'dcn_lr_mul', 'flow_lr_mul', 'fix_flow', 'lr_flow', 'tsa_iter', 'clip_opt',
              'optim_clip', 'ema_update_every', 'difficulty_probe'),
    'val': ('val_freq', 'save_img', 'suffix', 'metrics', 'pbar', 'before_training', 'center_frame_only',
            'flip_seq', 'num_val_samples'),
    'logger': ('print_freq', 'save_checkpoint_freq', 'use_tb_logger', 'wandb'),
    'path': ('resume_state', 'ignore_resume_networks', 'experiments_root', 'models', 'training_states', 'log',
             'visualization', 'results_root'),
}
SECTION_KEY_PATTERNS = {'train': r'.*_opt|optim_.*', 'path': r'(pretrain_network|strict_load|param_key)_.*'}
SCHEDULERS = {'MultiStepLR': lr_scheduler.MultiStepRestartLR, 'MultiStepRestartLR': lr_scheduler.MultiStepRestartLR,
              'CosineAnnealingRestartLR': lr_scheduler.CosineAnnealingRestartLR}  # BaseModel.setup_schedulers
ENCODER_KEY = 'degradation_encoder'
ENCODER_WEIGHTS_KEY = 'pretrain_network_degradation_encoder'
CONVERTED_WEIGHTS = re.compile(r'^(?P<stem>.+)_(net|clip)\.pth$')
CONVERTER = 'python scripts/convert_official_checkpoint.py'
OFFICIAL_RELEASE = 'https://drive.google.com/file/d/1214SfTO5LDMr3Ck_aVVUuZhuqhteMJ7P/view'
DACLIP_RELEASE = 'https://huggingface.co/weblzw/daclip-uir-ViT-B-32-irsde'  # universal-ir.pth, universal-ir-mix.pth
DACLIP_NETWORK_STEMS = ('universal-ir', 'universal-ir-mix')
DATA_HINT = ('Fix the path, or prepare the data (datasets/README.md; scripts/make_demo_data.py writes '
             'datasets/demo).')
META_INFO_HINT = 'scripts/prepare_datasets.py writes the meta-info files from the downloads (datasets/README.md).'


class OptionError(ValueError):
    """An option file that cannot run; the message names the file, the key and the fix."""


# ------------------------------------------------------------------ reading, --force_yml


def load_option_file(path: str) -> dict:
    """Read a YAML option file the way BasicSR does, with readable errors."""
    if not osp.isfile(path):
        close = close_file(path)
        hint = f' Did you mean {close!r}?' if close else ' (pass it with -opt PATH)'
        raise OptionError(f'option file {path!r} does not exist{"." if close else ""}{hint}')
    with open(path, encoding='utf-8') as f:
        try:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
        except yaml.YAMLError as err:
            raise OptionError(f'{path}: invalid YAML: {err}') from err
    if not isinstance(opt, dict):
        raise OptionError(f'{path}: expected a mapping of option keys at the top level.')
    return opt


def _did_you_mean(name: object, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(name), sorted(set(candidates)), n=1)
    return f' Did you mean {close[0]!r}?' if close else ''


def apply_force_yml(opt: dict, entries: Optional[Sequence[str]]) -> List[str]:
    """Apply ``--force_yml key:sub=value`` entries to ``opt`` exactly as BasicSR's ``parse_options`` does.

    Values are parsed by BasicSR's own ``_postprocess_yml_value``; like BasicSR, the last key may be new
    (every other key must exist). Returns the dotted keys the entries created; raises
    :class:`OptionError` for an entry BasicSR would fail on.
    """
    created = []
    for entry in entries or ():
        parts = entry.split('=')
        if len(parts) != 2 or not parts[0].strip():
            raise OptionError(f'--force_yml {entry!r}: expected key:subkey=value with one "=", e.g. '
                              'train:total_iter=1000.')
        keys = parts[0].strip().split(':')
        try:
            value = _postprocess_yml_value(parts[1].strip())
        except Exception as err:  # BasicSR eval()s values starting with '['
            raise OptionError(f'--force_yml {entry!r}: cannot parse the value: {err}') from err
        node = opt
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(node, dict) or key not in node:
                where = '.'.join(keys[:depth]) or 'the option file'
                candidates = node if isinstance(node, dict) else ()
                raise OptionError(f'--force_yml {entry!r}: {where} has no key {key!r}.'
                                  f'{_did_you_mean(key, candidates)}')
            node = node[key]
        if not isinstance(node, dict):
            raise OptionError(f'--force_yml {entry!r}: {".".join(keys[:-1])} is not a mapping.')
        if keys[-1] not in node:
            created.append('.'.join(keys))
        node[keys[-1]] = value
    return created


# ------------------------------------------------------------------ types and constructor arguments


def registered(registry, name: object):
    """The object registered as ``name`` (or BasicSR's ``name_basicsr``), or None; prints nothing."""
    if not isinstance(name, str):
        return None
    objects = dict(iter(registry))
    return objects.get(name, objects.get(f'{name}_basicsr'))


def _registry_error(key: str, value: object, registry) -> Optional[str]:
    if registered(registry, value) is not None:
        return None
    names = {name[:-len('_basicsr')] if name.endswith('_basicsr') else name for name, _ in registry}
    hint = _did_you_mean(value, names) or ' Is `import vlunet` (or your plugin) missing?'
    return f'{key}: unknown {registry._name} type {value!r}.{hint}'


def _argument_errors(key: str, section: dict, cls) -> List[str]:
    """Keys of ``section`` that ``cls``'s constructor does not take, and required arguments missing."""
    try:
        parameters = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return []
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    errors = []
    if not any(p.kind == p.VAR_KEYWORD for p in parameters):
        errors += [f'{key}.{name}: {cls.__name__} has no argument {name!r}.{_did_you_mean(name, names)}'
                   for name in section if name != 'type' and name not in names]
    errors += [f'{key}.{p.name}: missing (required by {cls.__name__}).' for p in parameters
               if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty
               and p.name not in section]
    return errors


def _check_type(key: str, section: object, registry, check_arguments: bool = False) -> List[str]:
    if not isinstance(section, dict) or 'type' not in section:
        return [f'{key}: expected a mapping with a `type` key.']
    error = _registry_error(f'{key}.type', section['type'], registry)
    if error:
        return [error]
    return _argument_errors(key, section, registered(registry, section['type'])) if check_arguments else []


def _positive_integer(key: str, value: object) -> List[str]:
    integral = isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()
    return [] if integral and value > 0 else [f'{key}: {value!r} must be a positive integer.']


# ------------------------------------------------------------------ files the run reads


def _dataset_path_keys(key: str, dataset: dict) -> Iterable[Tuple[str, str]]:
    """(option key, path) of every folder and file a dataset reads (also of ``tasks[]`` and ``tasks[].source``)."""
    sources = [(key, dataset)]
    tasks = [task if isinstance(task, dict) else {} for task in dataset.get('tasks') or []]
    for i, task in enumerate(tasks):
        if isinstance(task.get('captions'), str):
            yield f'{key}.tasks[{i}].captions', task['captions']
    sources += [(f'{key}.tasks[{i}].source', task['source']) for i, task in enumerate(tasks)
                if isinstance(task.get('source'), dict)]
    for prefix, source in sources:
        for name, value in source.items():
            if (name.startswith('dataroot') or name == 'meta_info_file') and isinstance(value, str):
                yield f'{prefix}.{name}', value


def _missing_root(path: str) -> str:
    """The outermost missing folder of ``path`` (``path`` itself when its parent exists)."""
    parent = osp.dirname(path.rstrip('/\\'))
    while parent and not osp.exists(osp.expanduser(parent)):
        path, parent = parent, osp.dirname(parent)
    return path


def _listing(keys: Sequence[str], limit: int = 3) -> str:
    more = f' and {len(keys) - limit} more' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def _missing_data_paths(datasets: dict) -> List[str]:
    """One message per missing folder, naming the keys that need it (shared folders are listed once)."""
    missing: Dict[str, List[Tuple[str, str]]] = OrderedDict()
    for phase, dataset in datasets.items():
        if isinstance(dataset, dict):
            for key, path in _dataset_path_keys(f'datasets.{phase}', dataset):
                if not osp.exists(osp.expanduser(path)):
                    missing.setdefault(_missing_root(path), []).append((key, path))
    messages = []
    for root, entries in missing.items():
        (key, path), others = entries[0], [k for k, _ in entries[1:]]
        where = f'{path!r} does not exist' + (f': folder {root!r} is missing' if root != path else '')
        also = f' (also {_listing(others)})' if others else ''
        hint = META_INFO_HINT if all(k.endswith('meta_info_file') for k, _ in entries) else DATA_HINT
        messages.append(f'{key}: {where}{also}. {hint}')
    return messages


def _weights_hint(path: str, commands: Dict[str, str], key: str) -> str:
    """Where a missing weight file comes from: the converter command, the training run, or nothing known."""
    folder, name = osp.split(path)
    experiment = re.match(r'^(?:.*/)?experiments/(?P<name>[^/]+)/models/[^/]+$', path.replace('\\', '/'))
    converted = CONVERTED_WEIGHTS.match(name)
    if experiment and experiment.group('name') != 'pretrained_models':
        return (f' It is a checkpoint of the training run named {experiment.group("name")!r}: run that training '
                'first, or fix the path.')
    if converted:
        stem = converted.group('stem')
        pth = stem == 'clip_tuned' or stem in DACLIP_NETWORK_STEMS
        source = f'pretrained_ckpt/{stem}.pth' if pth else f'pretrained_ckpt/{stem}.ckpt'
        command = f'{CONVERTER} {source} {folder or "."}'
        if command in commands:
            return f' It is written by the same command as {commands[command]}.'
        commands[command] = key
        release = DACLIP_RELEASE if stem in DACLIP_NETWORK_STEMS else OFFICIAL_RELEASE
        return (f' It is converted from the official release file {osp.basename(source)} ({release}):\n'
                f'      {command}')
    return ' Fix the path, or set it to ~.'


def _is_missing(path: str) -> str:
    """Why ``path`` is no file: 'does not exist', or it is a folder."""
    return 'is a folder, not a file' if osp.isdir(osp.expanduser(path)) else 'does not exist'


def _missing_weights(opt: dict, resuming: bool, auto_resume: bool) -> List[str]:
    """``path.pretrain_network_*`` and ``path.resume_state`` files that do not exist.

    Weights BasicSR replaces on resume (``pretrain_network_<x>`` of a ``network_<x>``) are skipped then.
    """
    commands: Dict[str, str] = {}
    state = (opt.get('path') or {}).get('resume_state')
    errors = [] if auto_resume or not isinstance(state, str) or osp.isfile(osp.expanduser(state)) else [
        f'path.resume_state: {state!r} {_is_missing(state)}. Training states are experiments/<name>/training_states/'
        '<iter>.state; --auto_resume finds the newest.']
    for name, value in (opt.get('path') or {}).items():
        if not name.startswith('pretrain_network_') or not isinstance(value, str):
            continue
        if resuming and name[len('pretrain_'):] in opt:
            continue  # BasicSR's check_resume loads models/net_<x>_<iter>.pth instead
        if not osp.isfile(osp.expanduser(value)):
            key = f'path.{name}'
            errors.append(f'{key}: weight file {value!r} {_is_missing(value)}.{_weights_hint(value, commands, key)}')
    return errors


def _missing_clip_files(key: str, section: object) -> List[str]:
    """A CLIP network's ``pretrained`` and ``backbone`` values that name files which do not exist."""
    if not isinstance(section, dict):
        return []
    errors = []
    for name, suffixes in (('pretrained', ('.pth', '.pt', '.bin', '.safetensors', '.ckpt')), ('backbone', ('.json',))):
        value = section.get(name)
        looks_like_file = isinstance(value, str) and ('/' in value or '\\' in value or value.endswith(suffixes))
        if looks_like_file and not osp.isfile(osp.expanduser(value)):
            errors.append(f'{key}.{name}: file {value!r} does not exist. Fix the path'
                          + (', or give an open_clip tag or ~.' if name == 'pretrained' else '.'))
    try:  # open_clip networks take a backbone (its default, e.g. ViT-B-32, when the section gives none)
        backbone = inspect.signature(registered(ARCH_REGISTRY, section.get('type'))).parameters.get('backbone')
    except (TypeError, ValueError):
        backbone = None
    backbone = section.get('backbone', backbone.default if backbone is not None else None)
    tag = section.get('pretrained')
    if isinstance(tag, str) and not osp.isfile(osp.expanduser(tag)) and not errors and isinstance(backbone, str):
        problem = pretrained_tag_problem(backbone, tag)  # offline: caught here, not after open_clip's retries
        errors += [f'{key}.pretrained: {problem.removeprefix("pretrained: ")}'] if problem else []
    return errors


def is_resuming(opt: dict, auto_resume: bool) -> bool:
    """True when BasicSR will resume (``path.resume_state``, or ``--auto_resume`` with a saved state)."""
    if auto_resume:
        folder = osp.join('experiments', str(opt.get('name')), 'training_states')
        return osp.isdir(folder) and any(name.endswith('.state') for name in os.listdir(folder))
    return bool((opt.get('path') or {}).get('resume_state'))


# ------------------------------------------------------------------ sections


def _dataset_errors(key: str, dataset: object, is_train_phase: bool) -> List[str]:
    errors = _check_type(key, dataset, DATASET_REGISTRY)
    if errors:
        return errors
    cls = registered(DATASET_REGISTRY, dataset['type'])
    required, known = BASICSR_DATASET_OPTIONS.get(dataset['type'], ((), None))
    required = getattr(cls, 'required_options', required)
    if is_train_phase and dataset['type'] == 'PairedImageDataset':
        required += PAIRED_TRAIN_REQUIRED
    known = getattr(cls, 'known_options', known)
    errors += [f'{key}.{name}: missing (required by {dataset["type"]}).' for name in required if name not in dataset]
    if known is not None:
        accepted = set(required) | set(known) | set(DATALOADER_OPTIONS)
        errors += [f'{key}.{name}: unknown {dataset["type"]} option.{_did_you_mean(name, accepted)}'
                   for name in dataset if name not in accepted]
    if is_train_phase:
        errors += _positive_integer(f'{key}.batch_size_per_gpu', dataset.get('batch_size_per_gpu'))
    check = getattr(cls, 'check_options', None)
    return errors + [f'{key}.{problem}' for problem in (check(dataset) if callable(check) else [])]


def _datasets_errors(datasets: object, is_train: bool) -> List[str]:
    if not isinstance(datasets, dict):
        return ['datasets: expected a mapping of phases (train, val, val_2, test_1, ...) to dataset options.']
    errors = [] if 'train' in datasets or not is_train else ['datasets.train: missing (the training set).']
    for phase, dataset in datasets.items():
        if is_train and phase != 'train' and phase.split('_')[0] != 'val':
            errors.append(f'datasets.{phase}: BasicSR training accepts the phases train and val, val_<x> only.'
                          f'{_did_you_mean(phase, ("train", "val"))}')
        errors += _dataset_errors(f'datasets.{phase}', dataset, is_train and phase == 'train')
    return errors + _missing_data_paths(datasets)


def _scheduler_errors(scheduler: object, model_class=None) -> List[str]:
    schedulers = {**SCHEDULERS, **getattr(model_class, 'extra_schedulers', {})}  # e.g. DACLIPModel's WarmupCosineLR
    if not isinstance(scheduler, dict) or scheduler.get('type') not in schedulers:
        name = scheduler.get('type') if isinstance(scheduler, dict) else scheduler
        return [f'train.scheduler.type: {name!r} is not one of the schedulers ({", ".join(schedulers)}).'
                f'{_did_you_mean(name, schedulers)}']
    return _argument_errors('train.scheduler', dict(scheduler, optimizer=None), schedulers[scheduler['type']])


def _scheduler_length_errors(scheduler: object, total_iter: object) -> List[str]:
    """A scheduler's iteration counts against ``train.total_iter``: a CosineAnnealingRestartLR whose periods end
    before it fails at the first iteration past them (after hours of training)."""
    if not isinstance(scheduler, dict) or not isinstance(total_iter, int) or isinstance(total_iter, bool):
        return []
    errors = []
    periods, weights = scheduler.get('periods'), scheduler.get('restart_weights', [1])
    if scheduler.get('type') == 'CosineAnnealingRestartLR' and isinstance(periods, list):
        if not all(isinstance(period, int) and period > 0 for period in periods):
            errors.append(f'train.scheduler.periods: {periods} must be positive whole numbers of iterations.')
        elif sum(periods) < total_iter:
            errors.append(f'train.scheduler.periods: {periods} add up to {sum(periods)} iterations, fewer than '
                          f'train.total_iter ({total_iter}): training would fail at iteration {sum(periods) + 1}. '
                          f'Make them add up to at least {total_iter} (e.g. extend the last period by '
                          f'{total_iter - sum(periods)}).')
        if isinstance(weights, list) and len(weights) != len(periods):
            errors.append(f'train.scheduler.restart_weights: {len(weights)} weight(s) for {len(periods)} period(s); '
                          'give one weight per period.')
    restarts = scheduler.get('restarts', [0])
    if scheduler.get('type') in ('MultiStepLR', 'MultiStepRestartLR') and isinstance(restarts, list) \
            and isinstance(weights, list) and len(restarts) != len(weights):
        errors.append(f'train.scheduler.restart_weights: {len(weights)} weight(s) for {len(restarts)} restart(s); '
                      'give one weight per restart.')
    return errors


def _train_errors(train: object, model_class) -> List[str]:
    if not isinstance(train, dict):
        return ['train: expected a mapping (optimizers, scheduler, losses, total_iter).']
    errors = _positive_integer('train.total_iter', train['total_iter']) if 'total_iter' in train else [
        'train.total_iter: missing (number of training iterations).']
    for name, section in train.items():
        if name.endswith('_opt') and isinstance(section, dict):
            errors += _check_type(f'train.{name}', section, LOSS_REGISTRY, check_arguments=True)
    if 'scheduler' in train:
        errors += _scheduler_errors(train['scheduler'], model_class)
        errors += _scheduler_length_errors(train['scheduler'], train.get('total_iter'))
    if isinstance(model_class, type) and issubclass(model_class, SRModel):  # its init_training_settings reads them
        errors += [] if 'scheduler' in train else [f'train.scheduler: missing (required by {model_class.__name__}; '
                                                   'e.g. {type: MultiStepLR, milestones: [1000000], gamma: 0.5}).']
        errors += [] if 'optim_g' in train else ['train.optim_g: missing (e.g. {type: Adam, lr: !!float 2e-4}).']
        if not train.get('pixel_opt') and not train.get('perceptual_opt'):
            errors.append('train.pixel_opt: missing (e.g. {type: L1Loss}); SRModel needs a pixel or perceptual loss.')
    return errors


def _logger_errors(logger: object) -> List[str]:
    if not isinstance(logger, dict):
        return ['logger: missing (print_freq, save_checkpoint_freq, use_tb_logger).']
    errors = [e for name in ('print_freq', 'save_checkpoint_freq') for e in
              (_positive_integer(f'logger.{name}', logger[name]) if name in logger else [f'logger.{name}: missing.'])]
    return errors + ([] if 'use_tb_logger' in logger else ['logger.use_tb_logger: missing (true or false).'])


def _val_errors(val: object, is_train: bool) -> List[str]:
    if val is None and is_train:
        return []  # no validation
    if not isinstance(val, dict):
        return ['val: missing (save_img, metrics).']
    errors = [] if 'save_img' in val else ['val.save_img: missing (true or false; BasicSR reads it).']
    if is_train:
        errors += _positive_integer('val.val_freq', val['val_freq']) if 'val_freq' in val else [
            'val.val_freq: missing (validate every val_freq iterations).']
    if not is_train and val.get('save_img') and 'suffix' not in val:
        errors.append('val.suffix: missing (BasicSR reads it when saving test images; use `suffix: ~` for none).')
    for name, metric in (val.get('metrics') or {}).items():
        errors += _check_type(f'val.metrics.{name}', metric, METRIC_REGISTRY)
    return errors


def _network_errors(opt: dict) -> List[str]:
    errors = []
    for key, section in opt.items():
        if key.startswith('network_'):
            errors += _check_type(key, section, ARCH_REGISTRY, check_arguments=True) + _missing_clip_files(key, section)
    if opt.get(ENCODER_KEY):
        errors += _check_type(ENCODER_KEY, opt[ENCODER_KEY], ARCH_REGISTRY, check_arguments=True)
        errors += _missing_clip_files(ENCODER_KEY, opt[ENCODER_KEY])
    return errors


def _missing_key_error(key: str, what: str, opt: dict) -> str:
    misspelt = [k for k in opt if k not in KNOWN_TOP_LEVEL_KEYS and not k.startswith('network_')]
    close = difflib.get_close_matches(key, misspelt, n=1)
    return f'{key}: missing ({what}).' + (f' Is {close[0]!r} a misspelling of {key!r}?' if close else '')


def check_options(opt: dict, is_train: bool, auto_resume: bool = False) -> List[str]:
    """Return the problems of an option dict as BasicSR will use it (empty when it can run)."""
    required = {'name': 'the experiment name', 'model_type': 'e.g. GuidedRestorationModel',
                'num_gpu': '0 for the CPU, or auto',
                'datasets': 'train/val or test sets', 'path': 'weight files; may be empty: path: {}'}
    errors = [_missing_key_error(key, what, opt) for key, what in required.items() if key not in opt]
    model_class = registered(MODEL_REGISTRY, opt.get('model_type'))
    if 'model_type' in opt:
        error = _registry_error('model_type', opt['model_type'], MODEL_REGISTRY)
        model_check = getattr(model_class, 'check_options', None)
        errors += [error] if error else (model_check(opt, is_train) if callable(model_check) else [])
    errors += _network_errors(opt)
    errors += _datasets_errors(opt.get('datasets') or {}, is_train) if 'datasets' in opt else []
    if is_train:
        errors += _train_errors(opt.get('train'), model_class)
        errors += _logger_errors(opt['logger']) if 'logger' in opt else [
            _missing_key_error('logger', 'print_freq, save_checkpoint_freq, use_tb_logger', opt)]
    errors += _val_errors(opt.get('val'), is_train)
    return errors + _missing_weights(opt, is_resuming(opt, auto_resume), auto_resume)


def unknown_keys(opt: dict) -> List[Tuple[str, str]]:
    """(dotted key, message) of keys BasicSR and vlunet ignore (probably typos), with the close match."""
    found = [(key, f'{key}: unknown top-level key, ignored.{_did_you_mean(key, KNOWN_TOP_LEVEL_KEYS)}')
             for key in opt if not key.startswith('network_') and key not in KNOWN_TOP_LEVEL_KEYS]
    for section, known in SECTION_KEYS.items():
        if not isinstance(opt.get(section), dict):
            continue
        pattern = re.compile(SECTION_KEY_PATTERNS.get(section, r'(?!)'))
        found += [(f'{section}.{key}', f'{section}.{key}: unknown key, ignored by BasicSR and vlunet.'
                   f'{_did_you_mean(key, known)}')
                  for key in opt[section] if key not in known and not pattern.fullmatch(key)]
    networks = {f'pretrain_{key}' for key in opt if key.startswith('network_')} | {ENCODER_WEIGHTS_KEY}
    for key in (opt.get('path') or {}):
        if key.startswith('pretrain_network_') and key not in networks:
            found.append((f'path.{key}', f'path.{key}: no network_{key[len("pretrain_network_"):]} in the file, '
                          f'so it is ignored.{_did_you_mean(key, networks)}'))
    return found


def check_option_file(path: str, is_train: bool, force_yml: Optional[Sequence[str]] = None,
                      auto_resume: bool = False) -> List[str]:
    """Load ``path``, apply ``force_yml`` like BasicSR and check the result.

    Raises :class:`OptionError` listing every problem; returns the warnings (unknown keys). An unknown
    key that a ``--force_yml`` entry created is an error: it is a typo on the command line.
    """
    opt = load_option_file(path)
    created = apply_force_yml(opt, force_yml)
    errors = check_options(opt, is_train, auto_resume)
    warnings = []
    for key, message in unknown_keys(opt):
        if key in created:
            errors.append(f'{message} (set by --force_yml)')
        else:
            warnings.append(message)
    if errors:
        where = (f' (relative paths are resolved against the current folder, {os.getcwd()})'
                 if any('does not exist' in error for error in errors) else '')
        raise OptionError(f'{path}{where}:\n  ' + '\n  '.join(errors))
    return warnings
