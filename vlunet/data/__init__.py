"""Every ``*_dataset.py`` file here is imported, registering its classes in BasicSR's DATASET_REGISTRY (datasets)."""
from vlunet.utils.registration import import_modules_by_suffix

MODULES = import_modules_by_suffix(__name__, __file__, '_dataset.py')
