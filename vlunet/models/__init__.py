"""Every ``*_model.py`` file here is imported, registering its classes in BasicSR's MODEL_REGISTRY (models)."""
from vlunet.utils.registration import import_modules_by_suffix

MODULES = import_modules_by_suffix(__name__, __file__, '_model.py')
