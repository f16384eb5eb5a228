"""Installation of vlunet, the BasicSR plugin for vision-language guided all-in-one restoration."""
from setuptools import find_packages, setup

with open('README.md', encoding='utf-8') as readme:
    LONG_DESCRIPTION = readme.read()

setup(
    name='vlunet',
    version='0.1.0',
    description='VLU-Net (CVPR 2025) and CLIP-guided all-in-one image restoration as a BasicSR plugin',
    long_description=LONG_DESCRIPTION,
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['vlunet', 'vlunet.*']),
    install_requires=[
        'basicsr>=1.4.2',
        'torch',
        'torchvision',
        'open_clip_torch',
        'einops',
        'lmdb',
        'opencv-python',
        'pyyaml',
        'tensorboard',
    ],
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'vlunet-train = vlunet.train:main',
            'vlunet-test = vlunet.test:main',
        ],
    },
)
