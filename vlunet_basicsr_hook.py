"""Make BasicSR's own entry points see vlunet: ``python -m basicsr.train -opt X``, ``basicsr/train.py``.

Installed with vlunet as a top-level module, imported at interpreter start-up by the one-line
``vlunet_basicsr_hook.pth`` in site-packages (``pip install .`` and ``pip install -e .``; removed
by ``pip uninstall vlunet``). :func:`install` puts a finder at the front of ``sys.meta_path`` that
does nothing until ``basicsr`` is first imported; then, once:

1. it installs the ``torchvision.transforms.functional_tensor`` alias (basicsr 1.4.2 imports that
   module, removed in torchvision 0.17, so ``import basicsr`` fails without it);
2. lets BasicSR's package import as usual;
3. imports ``vlunet`` (compatibility fixes and registration of every vlunet component).

A program that never imports basicsr pays one string comparison per import: this module imports
nothing beyond ``sys`` and never torch. ``VLUNET_NO_BASICSR_HOOK=1`` turns the hook off.
"""
import sys

FUNCTIONAL_TENSOR = 'torchvision.transforms.functional_tensor'
ALIAS_MARK = '__vlunet_alias__'


def install_functional_tensor_alias() -> bool:
    """Register ``torchvision.transforms.functional_tensor`` as an alias when torchvision lacks it.

    The alias exposes the one function basicsr 1.4.2 uses, ``rgb_to_grayscale``, from
    ``torchvision.transforms.functional``. Returns True when the alias (not torchvision's own
    module) is in place.
    """
    import importlib
    import types

    if FUNCTIONAL_TENSOR not in sys.modules:
        try:
            importlib.import_module(FUNCTIONAL_TENSOR)
        except ModuleNotFoundError:
            from torchvision.transforms import functional
            alias = types.ModuleType(FUNCTIONAL_TENSOR, 'vlunet: alias of torchvision.transforms.functional')
            alias.rgb_to_grayscale = functional.rgb_to_grayscale
            setattr(alias, ALIAS_MARK, True)
            sys.modules[FUNCTIONAL_TENSOR] = alias
    return getattr(sys.modules[FUNCTIONAL_TENSOR], ALIAS_MARK, False)


class CloneFolderError(ImportError):
    """``vlunet`` resolved to the folder of a clone (Python run from the folder that contains it)."""


def _report_uncaught_in_one_line(error_type: type) -> None:
    """An uncaught ``error_type`` prints ``error: <message>`` without a traceback (others: as before)."""
    previous = sys.excepthook

    def excepthook(kind, value, traceback):
        if issubclass(kind, error_type):
            print(f'error: {value}', file=sys.stderr)
        else:
            previous(kind, value, traceback)

    sys.excepthook = excepthook


class _ThenImportVLUNet:
    """Loader of the ``basicsr`` package: alias first, BasicSR's own loader, then ``import vlunet``."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # the package keeps BasicSR's own loader
        install_functional_tensor_alias()
        self.loader.exec_module(module)
        try:
            import vlunet  # (compatibility fixes and registration)
        except Exception as error:
            raise ImportError(f'vlunet_basicsr_hook: importing vlunet after basicsr failed ({error}); fix the vlunet '
                              'installation, or set VLUNET_NO_BASICSR_HOOK=1 to use basicsr without vlunet.') from error
        if getattr(vlunet, '__file__', None) is None:
            _report_uncaught_in_one_line(CloneFolderError)
            raise CloneFolderError(f"vlunet_basicsr_hook: 'vlunet' is the folder {', '.join(vlunet.__path__)} (the "
                                   'clone of the repository?), not the vlunet package, so nothing is registered: run '
                                   'Python from another folder than the one that contains the clone.')


class BasicSRImportHook:
    """``sys.meta_path`` finder that acts once, on the first import of ``basicsr``, then removes itself."""

    @classmethod
    def find_spec(cls, fullname: str, path=None, target=None):
        if fullname != 'basicsr':
            return None
        uninstall()
        from importlib.util import find_spec
        spec = find_spec('basicsr')
        if spec is None or spec.loader is None or not hasattr(spec.loader, 'exec_module'):
            return spec
        spec.loader = _ThenImportVLUNet(spec.loader)
        return spec


def install() -> None:
    """Put the hook at the front of ``sys.meta_path`` unless basicsr is already imported or it is off."""
    import os
    if os.environ.get('VLUNET_NO_BASICSR_HOOK') == '1' or 'basicsr' in sys.modules:
        return
    if BasicSRImportHook not in sys.meta_path:
        sys.meta_path.insert(0, BasicSRImportHook)


def uninstall() -> None:
    """Remove the hook from ``sys.meta_path`` (no effect if it is not there)."""
    while BasicSRImportHook in sys.meta_path:
        sys.meta_path.remove(BasicSRImportHook)
