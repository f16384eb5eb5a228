"""Atomic writes give files the permissions a plain open() would (umask respected), never owner-only."""
import os
import stat

import numpy as np
import pytest
import torch

from vlunet.utils.atomic_write import atomic_imwrite, atomic_torch_save, atomic_write_text

WRITERS = {
    'torch_save': (lambda path: atomic_torch_save({'params': {'w': torch.zeros(2)}}, path), 'net_g_4.pth'),
    'text': (lambda path: atomic_write_text('| Dataset | psnr |\n', path), 'results.md'),
    'image': (lambda path: atomic_imwrite(np.full((4, 5, 3), 128, np.uint8), path), 'restored.png'),
}


@pytest.fixture
def umask():
    """Set the process umask for one test (restored afterwards)."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize('writer', sorted(WRITERS))
@pytest.mark.parametrize('mask, expected', [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_permissions_of_a_plain_open(tmp_path, umask, writer, mask, expected):
    write, name = WRITERS[writer]
    umask(mask)
    plain = tmp_path / 'plain.txt'
    plain.write_text('x')
    write(str(tmp_path / name))
    assert mode(tmp_path / name) == mode(plain) == expected
    assert sorted(os.listdir(tmp_path)) == sorted(['plain.txt', name])  # no temporary left behind


@pytest.mark.parametrize('writer', sorted(WRITERS))
def test_replacing_a_file_keeps_its_mode_and_replaces_its_content(tmp_path, umask, writer):
    write, name = WRITERS[writer]
    umask(0o022)
    target = tmp_path / name
    target.write_bytes(b'old')
    target.chmod(0o640)
    write(str(target))
    assert mode(target) == 0o640 and target.read_bytes() != b'old'


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, umask):
    umask(0o022)
    target = tmp_path / 'net_g_4.pth'
    target.write_bytes(b'old')
    with pytest.raises(Exception, match='pickle'):
        atomic_torch_save({'not_picklable': lambda: 0}, str(target))
    assert os.listdir(tmp_path) == ['net_g_4.pth'] and target.read_bytes() == b'old'


def test_an_image_with_an_unknown_extension_is_an_oserror_and_leaves_no_temporary(tmp_path):
    with pytest.raises(OSError, match="OpenCV could not write '.*restored.xyz'"):
        atomic_imwrite(np.zeros((4, 4, 3), np.uint8), str(tmp_path / 'restored.xyz'))
    assert os.listdir(tmp_path) == []
