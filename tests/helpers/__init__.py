"""Shared test helpers: a tiny open_clip config with random weights, generated images, script and entry runners.

Nothing here touches the network: open_clip models are built with ``pretrained=None``.
"""
import importlib
import importlib.util
import json
import os
import os.path as osp
import sys

import numpy as np

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
FIXTURES = osp.join(REPO_ROOT, 'tests', 'fixtures')  # reference tables (state-dict manifests)
# A 512-d embedding like ViT-B-32 (so adapters and VLU-Net's d have their real size), but a 1-layer,
# 64-wide image and text tower: builds in well under a second with random weights.
TINY_CLIP_NAME = 'vlunet-tiny-ViT'
TINY_CLIP_CONFIG = {
    'embed_dim': 512,
    'vision_cfg': {'image_size': 224, 'layers': 1, 'width': 64, 'head_width': 32, 'patch_size': 32},
    'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 64, 'heads': 2, 'layers': 1},
}


# scripts/<name>.py that run a command of the package: the tests import the command's module
COMMAND_MODULES = {'inference': 'vlunet.commands.restore', 'convert_official_checkpoint': 'vlunet.commands.convert',
                   'export': 'vlunet.commands.export', 'prepare_datasets': 'vlunet.commands.prepare_data',
                   'compare': 'vlunet.compare.cli'}


def _load_file(module_name: str, path: str):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_script(name: str):
    """The module behind ``scripts/<name>.py`` (its ``main`` and helpers), imported without running it."""
    if name in COMMAND_MODULES:
        return importlib.import_module(COMMAND_MODULES[name])
    return _load_file(f'{name}_script', osp.join(REPO_ROOT, 'scripts', f'{name}.py'))


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` imported without running it (its folder on ``sys.path``, as when it runs)."""
    folder = osp.join(REPO_ROOT, 'benchmarks')
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return _load_file(name, osp.join(folder, f'{name}.py'))


def register_clip_config(directory: str, name: str, config: dict) -> str:
    """Write ``config`` as ``directory/<name>.json``, register it with open_clip and return the path."""
    import open_clip
    path = osp.join(directory, f'{name}.json')
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(config, f)
    open_clip.add_model_config(path)
    return path


def register_tiny_clip(directory: str) -> str:
    """Register :data:`TINY_CLIP_NAME` with open_clip (config written to ``directory``)."""
    register_clip_config(directory, TINY_CLIP_NAME, TINY_CLIP_CONFIG)
    return TINY_CLIP_NAME


def write_image(path: str, image: np.ndarray) -> str:
    """Write an HWC BGR uint8 (or uint16) image with OpenCV, creating folders."""
    import cv2
    os.makedirs(osp.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, image), path
    return path


def smooth_image(seed: int, height: int, width: int) -> np.ndarray:
    """A deterministic, smooth-but-textured uint8 BGR image (H, W, 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fy, fx, phase = rng.uniform(0.02, 0.2, size=2).tolist() + [rng.uniform(0, 6.28)]
        channels.append(0.5 + 0.35 * np.sin(fy * yy + phase) * np.cos(fx * xx))
    image = np.stack(channels, axis=2) + rng.normal(0, 0.03, size=(height, width, 3))
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def interrupt_restoring_at(monkeypatch, image_number: int) -> None:
    """Ctrl-C (KeyboardInterrupt) when the Restorer starts its ``image_number``-th image; the others restore."""
    from vlunet.inference import Restorer
    restore_and_detect, calls = Restorer.restore_and_detect, []

    def interrupted(self, image):
        calls.append(image)
        if len(calls) == image_number:
            raise KeyboardInterrupt
        return restore_and_detect(self, image)

    monkeypatch.setattr(Restorer, 'restore_and_detect', interrupted)


def run_entry(script: str, args: list, cwd: str, extra_env: dict = None, timeout: int = 600):
    """Run ``python vlunet/<script>.py args`` in ``cwd`` and return the CompletedProcess."""
    import subprocess
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONHASHSEED='0', **(extra_env or {}))
    return subprocess.run([sys.executable, osp.join(REPO_ROOT, 'vlunet', f'{script}.py'), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
