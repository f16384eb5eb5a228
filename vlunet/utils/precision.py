"""Optional faster execution modes, off by default: mixed precision (autocast) and ``torch.compile``.

Option file (top level)::

    amp:                 # absent / null / enabled: false = plain fp32
      enabled: true
      dtype: bf16        # bf16 (CPU or CUDA) or fp16 (CUDA; needs the GradScaler for training)
    compile: false       # true: torch.compile the network (slow first iterations while it compiles)
    # or: compile: {enabled: true, mode: max-autotune, backend: inductor, dynamic: null}  (torch.compile's arguments)

``autocast(amp, device)`` wraps the forward pass (and the loss); ``make_grad_scaler(amp, device)``
returns a ``torch.amp.GradScaler`` only where one is needed (fp16 training), else None: then call
``scaler.scale(loss).backward(); scaler.step(optimizer); scaler.update()`` and keep
``scaler.state_dict()`` in the training state so a resumed run continues with the same loss scale.
VLUNet keeps its attention logits and softmax in float32 under autocast (torch's layer-norm kernels
accumulate low-precision inputs in float32). On CPU, bf16 pays off only with native bf16 instructions
(AVX512-BF16 / AMX); ``torch.compile`` needs a C++ compiler and takes minutes on a small CPU.

Inference (``vlunet-restore --precision``, ``Restorer(precision=...)``) names one of :data:`PRECISIONS`;
:func:`inference_amp` checks that the device computes it natively (:func:`native_bf16`) and says what to use
instead when it does not.
"""
import contextlib
from dataclasses import dataclass
from typing import ContextManager, Optional, Union

import torch
from torch import nn

DTYPES = {'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16, 'fp16': torch.float16, 'float16': torch.float16}
PRECISIONS = ('fp32', 'bf16', 'fp16')  # what inference offers (fp32: no autocast)


@dataclass(frozen=True)
class AmpOptions:
    """Mixed precision on/off and its low-precision dtype."""
    enabled: bool = False
    dtype: torch.dtype = torch.bfloat16


def parse_amp_options(section: Optional[dict]) -> AmpOptions:
    """Read the option-file ``amp:`` block (absent or null = off) with clear errors for bad values."""
    if section is None:
        return AmpOptions()
    if not isinstance(section, dict):
        raise ValueError(f'amp: expected a mapping like {{enabled: true, dtype: bf16}}, got {section!r}.')
    unknown = set(section) - {'enabled', 'dtype'}
    if unknown:
        raise ValueError(f'amp: unknown keys {sorted(unknown)}; allowed: enabled, dtype.')
    enabled = section.get('enabled', False)
    if not isinstance(enabled, bool):
        raise ValueError(f'amp.enabled: expected true or false, got {enabled!r}.')
    dtype_name = section.get('dtype', 'bf16')
    if dtype_name not in DTYPES:
        raise ValueError(f'amp.dtype: expected one of {sorted(DTYPES)}, got {dtype_name!r}.')
    return AmpOptions(enabled, DTYPES[dtype_name])


def autocast(amp: AmpOptions, device: torch.device) -> ContextManager:
    """``torch.autocast`` for ``device`` in ``amp.dtype`` when enabled, else a no-op context."""
    if not amp.enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=amp.dtype)


def _cpu_supports(feature: str, flag: str) -> bool:
    """torch's check of a CPU feature (``torch.cpu._is_<feature>_supported``), else the Linux CPU flag ``flag``."""
    check = getattr(torch.cpu, f'_is_{feature}_supported', None)
    if check is not None:
        return bool(check())
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            return any(line.startswith('flags') and flag in line.split() for line in cpuinfo)
    except OSError:
        return False


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU with bf16 units, or a CPU with AVX512-BF16 or AMX
    (without them bf16 is emulated, slower than fp32)."""
    device = torch.device(device)
    if device.type == 'cuda':
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.4: no emulation to exclude
            return torch.cuda.is_bf16_supported()
    if device.type == 'cpu':
        return _cpu_supports('avx512_bf16', 'avx512_bf16') or _cpu_supports('amx_tile', 'amx_tile')
    return False


def inference_amp(precision: str, device: torch.device) -> AmpOptions:
    """Autocast settings of inference in ``precision`` (one of :data:`PRECISIONS`) on ``device``; a ValueError
    naming the fix when the device does not compute that precision natively."""
    if precision not in PRECISIONS:
        raise ValueError(f'precision: expected one of {list(PRECISIONS)}, got {precision!r}.')
    device = torch.device(device)
    if precision == 'fp16' and device.type != 'cuda':
        raise ValueError(f'precision fp16 needs a CUDA device (this one is {device.type}): use --precision fp32, or '
                         'bf16 on a CPU with AVX512-BF16 or AMX.')
    if precision == 'bf16' and not native_bf16(device):
        where = ('this GPU has no bf16 support' if device.type == 'cuda'
                 else f'this {device.type} has no native bf16 instructions (AVX512-BF16 or AMX)')
        raise ValueError(f'precision bf16: {where}, so bf16 would be emulated and slower than fp32; use --precision '
                         'fp32' + (' (or fp16)' if device.type == 'cuda' else '') + '.')
    return AmpOptions(enabled=precision != 'fp32', dtype=DTYPES.get(precision, torch.bfloat16))


def make_grad_scaler(amp: AmpOptions, device: torch.device) -> Optional[torch.amp.GradScaler]:
    """A GradScaler for fp16 training (gradients would underflow without it); None otherwise."""
    if not amp.enabled or amp.dtype != torch.float16:
        return None
    return torch.amp.GradScaler(torch.device(device).type)


@dataclass(frozen=True)
class CompileOptions:
    """``torch.compile`` on/off and its arguments (None: torch's default)."""
    enabled: bool = False
    mode: Optional[str] = None
    backend: str = 'inductor'
    dynamic: Optional[bool] = None


COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def parse_compile_options(section: Union[None, bool, dict]) -> CompileOptions:
    """Read the option-file ``compile:`` key: absent/null/false = off, true = on, or a mapping
    ``{enabled, mode, backend, dynamic}``; one clear error for a bad value."""
    if section is None or isinstance(section, bool):
        return CompileOptions(bool(section))
    if not isinstance(section, dict):
        raise ValueError(f'compile: expected true, false or a mapping like {{enabled: true, mode: max-autotune}}, '
                         f'got {section!r}.')
    unknown = set(section) - {'enabled', 'mode', 'backend', 'dynamic'}
    if unknown:
        raise ValueError(f'compile: unknown keys {sorted(unknown)}; allowed: enabled, mode, backend, dynamic.')
    enabled, mode, dynamic = section.get('enabled', True), section.get('mode'), section.get('dynamic')
    backend = section.get('backend', 'inductor')
    if not isinstance(enabled, bool):
        raise ValueError(f'compile.enabled: expected true or false, got {enabled!r}.')
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f'compile.mode: expected one of {list(COMPILE_MODES)}, got {mode!r}.')
    if not isinstance(backend, str) or backend not in torch.compiler.list_backends(exclude_tags=()):
        raise ValueError(f'compile.backend: expected one of {torch.compiler.list_backends(exclude_tags=())}, '
                         f'got {backend!r}.')
    if dynamic is not None and not isinstance(dynamic, bool):
        raise ValueError(f'compile.dynamic: expected true, false or null, got {dynamic!r}.')
    return CompileOptions(enabled, mode, backend, dynamic)


def compile_network(net: nn.Module, options: Union[bool, CompileOptions]) -> nn.Module:
    """``torch.compile(net, ...)`` when enabled (``options``: a bool or :class:`CompileOptions`), else ``net``.

    The compiled module shares ``net``'s parameters, but its state dict keys gain ``_orig_mod.``:
    use the returned module for forward passes and keep saving/loading ``net`` itself. Under graph capture the
    blocks leave out the fast paths that depend on the input size (:mod:`vlunet.ops.dispatch`).
    """
    options = options if isinstance(options, CompileOptions) else CompileOptions(bool(options))
    if not options.enabled:
        return net
    return torch.compile(net, mode=options.mode, backend=options.backend, dynamic=options.dynamic)
