"""Every ``*_loss.py`` file in this folder is imported, registering its classes in BasicSR's LOSS_REGISTRY (losses)."""
from vlunet.utils.registration import import_modules_by_suffix

MODULES = import_modules_by_suffix(__name__, __file__, '_loss.py')
