"""The official VLU-Net release files: where they come from, what each is for, and checking a download.

The authors distribute their weights as one Google-Drive package (:data:`RELEASE_PACKAGE_URL`) holding
the Lightning checkpoints of :data:`RELEASE_FILES` and ``clip_tuned.pth``; the CLIP backbone they
fine-tuned is LAION's ViT-B/32 (:data:`LAION_CLIP`). :func:`missing_file_message` says so when a file
is missing; :func:`verify_official_file` checks a download before it is converted:

- size, and a web page saved instead of the file (Google Drive's download-confirmation page);
- the file loads (without running code from it, and without reading its tensors: shapes only);
- its keys and shapes: 615 VLU-Net tensors exactly as ``VLUNet(de_dim)`` with the detected
  ``de_dim`` (compared with the one expected for the file name), the 24 adapter tensors, and, when
  present, the CLIP backbone's ViT-B/32 tensors;
- its SHA-256, printed for the user to compare with the checksum of their download source (the
  release publishes none, so none is built in).
"""
import hashlib
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional

import torch

from vlunet.archs.vlunet.vlunet_arch import VLUNet
from vlunet.convert.vlunet_checkpoint import detect_de_dim, split_official_checkpoint
from vlunet.utils.safe_load import UnsafeCheckpointError, safe_torch_load

RELEASE_PACKAGE_URL = 'https://drive.google.com/file/d/1214SfTO5LDMr3Ck_aVVUuZhuqhteMJ7P/view?usp=sharing'
LAION_CLIP = ('Hugging Face repo laion/CLIP-ViT-B-32-laion2B-s34B-b79K, file open_clip_pytorch_model.bin '
              '(https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K)')
DACLIP_RELEASE = 'the DA-CLIP release (github.com/Algolzw/daclip-uir; Hugging Face weblzw/daclip-uir-ViT-B-32-irsde)'
CLIP_WIDTH = 512  # ViT-B/32 embedding width: every adapter layer is 512 -> 512
ADAPTER_LAYERS = {0: 'linear', 1: 'norm', 3: 'linear', 4: 'norm', 6: 'linear', 7: 'norm'}
_HTML_STARTS = (b'<!doctype html', b'<html', b'<!--', b'<head')


class ReleaseFile(NamedTuple):
    """One file of the official package: name, what it is for, de_dim (None: CLIP only), the option file using it."""
    name: str
    purpose: str
    de_dim: Optional[int]
    option_file: str


RELEASE_FILES = (
    ReleaseFile('5task_vlunet.ckpt', 'all-in-one: noise, haze, rain, blur, low light', 7,
                'options/test_official_5task.yml'),
    ReleaseFile('3task_vlunet.ckpt', 'all-in-one: noise, haze, rain', 7, 'options/test_official_3task.yml'),
    ReleaseFile('single_noise_vlunet.ckpt', 'denoising only', 7, 'options/test_official_single_noise.yml'),
    ReleaseFile('single_haze_vlunet.ckpt', 'dehazing only', 5, 'options/test_official_single_haze.yml'),
    ReleaseFile('single_rain_vlunet.ckpt', 'deraining only', 5, 'options/test_official_single_rain.yml'),
    ReleaseFile('single_blur_vlunet.ckpt', 'deblurring only', 5, 'options/test_official_single_blur.yml'),
    ReleaseFile('single_lowlight_vlunet.ckpt', 'low-light enhancement only', 5,
                'options/test_official_single_lowlight.yml'),
    ReleaseFile('clip_tuned.pth', 'fine-tuned CLIP adapters (degradation encoder) for training', None,
                'options/train_*.yml, options/test_nhr*.yml'),
)
RELEASE_FILES_BY_NAME: Dict[str, ReleaseFile] = {file.name: file for file in RELEASE_FILES}


def missing_file_message(path: str) -> str:
    """Why ``path`` is missing and where the file comes from."""
    names = ', '.join(file.name for file in RELEASE_FILES)
    return (f'{path} does not exist. The official VLU-Net files ({names}) come as one package from the authors: '
            f'{RELEASE_PACKAGE_URL} (unpack it, e.g. into pretrained_ckpt/). The LAION CLIP weights they build on: '
            f'{LAION_CLIP}. DA-CLIP files (daclip_ViT-B-32.pt, universal-ir.pth): {DACLIP_RELEASE}.')


@dataclass
class FileCheck:
    """What :func:`verify_official_file` found: size, SHA-256, contents, and the problems (empty: the file is fine)."""
    path: str
    size: int
    sha256: str = ''
    contents: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    de_dim: Optional[int] = None

    def report(self) -> str:
        """Lines for the user: the file, its size and SHA-256, what it holds, then each problem."""
        lines = [f'checking {self.path}: {self.size / 2 ** 20:,.1f} MiB', f'  SHA-256 {self.sha256 or "-"} (compare '
                 'it with the checksum of your download source, if it gives one)']
        lines += [f'  {line}' for line in self.contents]
        lines += [f'  PROBLEM: {problem}' for problem in self.problems]
        lines.append('  verdict: ' + ('NOT an intact official file (see the problems above; download it again from '
                                      f'{RELEASE_PACKAGE_URL})' if self.problems else 'as expected'))
        return '\n'.join(lines)


def sha256_of(path: str, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of the file ``path``."""
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        for block in iter(lambda: file.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def _compare(found: Dict[str, torch.Tensor], expected: Dict[str, torch.Size], what: str) -> List[str]:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(key for key in set(found) & set(expected) if tuple(found[key].shape) != tuple(expected[key]))
    problems = []
    for label, keys in (('missing', missing), ('unexpected', unexpected), ('wrong shape', wrong)):
        if keys:
            problems.append(f'{what}: {len(keys)} {label} tensor(s), e.g. {", ".join(keys[:3])}')
    return problems


def _vlunet_shapes(de_dim: int) -> Dict[str, torch.Size]:
    with torch.device('meta'):
        return {key: value.shape for key, value in VLUNet(de_dim=de_dim).state_dict().items()}


def _adapter_shapes() -> Dict[str, torch.Size]:
    shapes = {}
    for side in ('image', 'text'):
        for layer, kind in ADAPTER_LAYERS.items():
            shapes[f'{side}_adapter.{layer}.weight'] = torch.Size(
                (CLIP_WIDTH, CLIP_WIDTH) if kind == 'linear' else (CLIP_WIDTH,))
            shapes[f'{side}_adapter.{layer}.bias'] = torch.Size((CLIP_WIDTH,))
    return shapes


def _backbone_shapes() -> Dict[str, torch.Size]:
    import open_clip
    with torch.device('meta'):
        model = open_clip.create_model('ViT-B-32', pretrained=None, device='meta')
    return {f'backbone.{key}': value.shape for key, value in model.state_dict().items()}


def _check_network(net_state: Dict[str, torch.Tensor], name: str, check: FileCheck) -> None:
    try:
        check.de_dim = detect_de_dim(net_state)
    except ValueError as error:
        check.problems.append(f'restoration network: {error}')
        return
    check.problems += _compare(net_state, _vlunet_shapes(check.de_dim), f'restoration network (de_dim {check.de_dim})')
    check.contents.append(f'restoration network: {len(net_state)} tensors, detected de_dim {check.de_dim}')
    expected = RELEASE_FILES_BY_NAME.get(name)
    if expected and expected.de_dim is not None and expected.de_dim != check.de_dim:
        check.problems.append(f'{name} of the official release has de_dim {expected.de_dim}, this file '
                              f'{check.de_dim}: another checkpoint under this name?')


def _check_clip(clip_state: Dict[str, torch.Tensor], check: FileCheck) -> None:
    backbone = {key: value for key, value in clip_state.items() if key.startswith('backbone.')}
    adapters = {key: value for key, value in clip_state.items() if not key.startswith('backbone.')}
    check.problems += _compare(adapters, _adapter_shapes(), 'CLIP adapters')
    check.contents.append(f'CLIP adapters: {len(adapters)} tensors')
    if backbone:
        check.problems += _compare(backbone, _backbone_shapes(), 'CLIP backbone (ViT-B-32)')
        check.contents.append(f'CLIP backbone: {len(backbone)} tensors')


def verify_official_file(path: str, trusted: bool = False) -> FileCheck:
    """Check an official ``.ckpt`` or ``clip_tuned.pth`` download (see the module docstring); reads no tensor data.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message says where the files come from).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(missing_file_message(path))
    check = FileCheck(path, osp.getsize(path))
    with open(path, 'rb') as file:
        start = file.read(256).lstrip().lower()
    if start.startswith(_HTML_STARTS):
        check.problems.append('this is a web page, not a checkpoint: Google Drive served its download page (large '
                              'files ask for a confirmation); download the file itself from the browser')
        return check
    check.sha256 = sha256_of(path)
    try:
        checkpoint = safe_torch_load(path, 'official checkpoint', trusted=trusted, map_location='meta')
        net_state, clip_state = split_official_checkpoint(checkpoint, path)
    except UnsafeCheckpointError as error:
        check.problems.append(str(error))
        return check
    except ValueError as error:
        check.problems.append(f'{error} (an incomplete download fails this way too)')
        return check
    check.contents.append('official Lightning checkpoint' if net_state is not None else 'official clip_tuned.pth')
    if net_state is not None:
        _check_network(net_state, osp.basename(path), check)
    if clip_state is not None:
        _check_clip(clip_state, check)
    return check
