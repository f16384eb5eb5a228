"""Import-by-file-name discovery, the way BasicSR registers its own components."""
import importlib
import os.path as osp
from typing import List

from basicsr.utils import scandir


def import_modules_by_suffix(package: str, package_file: str, suffix: str) -> List[str]:
    """Import every ``<name><suffix>`` module under ``package_file``'s folder, subpackages included.

    A file ``daclip/daclip_arch.py`` below ``vlunet/archs`` is imported as
    ``vlunet.archs.daclip.daclip_arch``; every folder on the way must be a package.

    Importing a module runs its ``@REGISTRY.register()`` decorators. Python caches imported
    modules, so calling this twice registers nothing twice.

    Args:
        package: Dotted package name, e.g. ``'vlunet.archs'``.
        package_file: The package's ``__file__``.
        suffix: File-name suffix, e.g. ``'_arch.py'``.

    Returns:
        The imported module names, sorted.
    """
    folder = osp.dirname(osp.abspath(package_file))
    names = sorted(
        osp.splitext(path)[0].replace(osp.sep, '.')
        for path in scandir(folder, suffix=suffix, recursive=True))
    for name in names:
        importlib.import_module(f'{package}.{name}')
    return [f'{package}.{name}' for name in names]
