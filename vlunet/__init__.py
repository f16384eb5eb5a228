"""vlunet: VLU-Net and CLIP-guided all-in-one image restoration as a BasicSR plugin.

``import vlunet`` applies the basicsr 1.4.2 compatibility fixes (:mod:`vlunet.compat`) and then
registers every plugin component in BasicSR's registries by importing the ``*_arch.py``,
``*_dataset.py``, ``*_model.py``, ``*_loss.py`` and ``*_metric.py`` files of its subpackages.
Installing vlunet also makes ``import basicsr`` import vlunet (:mod:`vlunet_basicsr_hook`), so
BasicSR's own ``python -m basicsr.train`` / ``basicsr/train.py`` find everything too. Heavy
libraries used by a few components only (open_clip, scikit-image) are imported when first used.
"""
from vlunet import compat

compat.apply()  # before anything imports basicsr

from vlunet import basicsr_entry_points  # noqa: E402

basicsr_entry_points.install()

from vlunet import archs, data, losses, metrics, models  # noqa: E402,F401  (registration)

__version__ = '0.1.0'
