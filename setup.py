"""Installation of vlunet, the BasicSR plugin for vision-language guided all-in-one restoration.

Besides the ``vlunet`` package this installs the top-level module ``vlunet_basicsr_hook`` and
``vlunet_basicsr_hook.pth`` into site-packages, so that BasicSR's own entry points
(``python -m basicsr.train``, ``basicsr/train.py``) import vlunet right after basicsr.
"""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HOOK_PTH = 'vlunet_basicsr_hook.pth'


class BuildPyWithHookPth(build_py):
    """``build_py`` that also puts :data:`HOOK_PTH` at the top of the wheel (site-packages).

    Regular wheel (``pip install .``): the file goes to ``build_lib``, copied whole into the wheel.
    Editable wheel (PEP 660, ``pip install -e .``): ``build_lib`` is thrown away, and setuptools'
    ``editable_wheel`` packs the folder it configured as ``install``'s ``install_lib``, so the file
    goes there. Either way it is listed in the wheel's RECORD, so ``pip uninstall`` removes it.
    """

    def run(self) -> None:
        super().run()
        folder = self.get_finalized_command('install').install_lib if self.editable_mode else self.build_lib
        self.mkpath(folder)
        self.copy_file(HOOK_PTH, os.path.join(folder, HOOK_PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list:
        outputs = super().get_outputs(include_bytecode)
        return outputs if self.editable_mode else [*outputs, os.path.join(self.build_lib, HOOK_PTH)]


with open('README.md', encoding='utf-8') as readme:
    LONG_DESCRIPTION = readme.read()

setup(
    name='vlunet',
    version='0.1.0',
    description='VLU-Net (CVPR 2025) and CLIP-guided all-in-one image restoration as a BasicSR plugin',
    long_description=LONG_DESCRIPTION,
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    # <3.13: basicsr 1.4.2 (the current PyPI release, sdist only) does not build on Python 3.13: its
    # setup.py reads the version with exec() + locals()['__version__'], a KeyError since PEP 667.
    python_requires='>=3.9,<3.13',
    packages=find_packages(include=['vlunet', 'vlunet.*']),
    py_modules=['vlunet_basicsr_hook'],
    cmdclass={'build_py': BuildPyWithHookPth},
    install_requires=[  # everything vlunet imports itself, plus what option files switch on
        'basicsr>=1.4.2',
        'torch',
        'torchvision',
        'open_clip_torch',
        'numpy',
        'opencv-python',
        'scikit-image',
        'Pillow',
        'tqdm',
        'einops',
        'pyyaml',
        'lmdb',          # io_backend: {type: lmdb}
        'tensorboard',   # logger.use_tb_logger: true
        'psutil',        # tile: auto on CPU: available RAM on every OS
        'timm',          # Perceive-IR's DINO-v2 (already a dependency of open_clip_torch)
        'safetensors',   # local .safetensors weight files (already a dependency of timm)
        'huggingface_hub',  # the option check finds cached open_clip weights (already a dependency of open_clip)
    ],
    extras_require={
        # the export tests run the ONNX path too; the metric packages are small (54 KB + 86 KB wheels); selenium drives
        # the system's Chromium in the comparison report's browser test (skipped without it)
        'test': ['pytest', 'hypothesis', 'onnx', 'onnxscript', 'onnxruntime', 'lpips', 'torch-fidelity', 'selenium'],
        'export': ['onnx', 'onnxscript', 'onnxruntime'],  # ONNX export (vlunet/export.py, scripts/export.py)
        'metrics': ['lpips', 'torch-fidelity'],  # calculate_lpips, calculate_fid (vlunet/metrics)
        'app': ['gradio>=6'],  # vlunet-compare-app (vlunet/compare/app.py): upload, image slider, gallery, HTTP client
    },
    entry_points={
        'console_scripts': [
            'vlunet-train = vlunet.train:main',
            'vlunet-test = vlunet.test:main',
            'vlunet-restore = vlunet.commands.restore:console_main',
            'vlunet-convert = vlunet.commands.convert:main',
            'vlunet-export = vlunet.commands.export:main',
            'vlunet-prepare-data = vlunet.commands.prepare_data:main',
            'vlunet-compare = vlunet.compare.cli:main',
            'vlunet-compare-app = vlunet.compare.app:main',
        ],
    },
)
