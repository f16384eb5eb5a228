"""Export with dynamic sizes: torch.export and ONNX agree with PyTorch on sizes that are not multiples of 8."""
import os.path as osp

import pytest
import torch

import vlunet  # noqa: F401  (compat shim before basicsr)
from vlunet.archs.vlunet.vlunet_arch import VLUNet
from vlunet.export import FixedDegradation, check_onnx, check_program, export_onnx, export_program
from vlunet.utils.atomic_write import atomic_torch_save

from helpers import load_script

TINY = dict(de_dim=3, dim=10, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 2, 2, 2),
            gradient_step_heads=1, key_size=8)
# batch 1 and 2; sides that are and are not multiples of 8, and the smallest exportable side
SIZES = [(1, 40, 48), (2, 19, 77), (1, 9, 9), (1, 64, 33)]


def export_script():
    """``scripts/export.py`` as a module."""
    return load_script('export')


def tiny_net() -> VLUNet:
    torch.manual_seed(0)
    net = VLUNet(**TINY)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return net.eval()


@pytest.fixture(scope='module')
def exported():
    """(net, program): one torch.export of the tiny guided VLUNet, shared by the tests (it takes a minute)."""
    net = tiny_net()
    return net, export_program(net)


@pytest.fixture(scope='module')
def onnx_path(exported, tmp_path_factory) -> str:
    """The exported program written as ONNX (needs the export extra)."""
    pytest.importorskip('onnxscript')
    path = str(tmp_path_factory.mktemp('export') / 'vlunet.onnx')
    export_onnx(exported[1], path)
    return path


def test_exported_program_accepts_any_size_and_matches_pytorch(exported):
    net, program = exported
    checks = check_program(program, net, SIZES)
    assert [(c.batch, c.height, c.width) for c in checks] == SIZES
    assert max(c.max_relative_error for c in checks) < 1e-5


def test_onnx_runs_in_onnxruntime_on_sizes_that_are_not_multiples_of_8(exported, onnx_path):
    pytest.importorskip('onnxruntime')
    net, path = exported[0], onnx_path
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    assert [i.name for i in session.get_inputs()] == ['image', 'degradation']
    checks = check_onnx(path, net, SIZES)
    assert max(c.max_relative_error for c in checks) < 1e-4


def test_fixed_degradation_is_folded_in_and_equals_the_guided_call():
    net = tiny_net()
    degradation = torch.randn(1, 512)
    fixed = FixedDegradation(net, degradation)
    image = torch.rand(2, 3, 21, 30)
    with torch.no_grad():
        assert torch.equal(fixed(image), net(image, degradation.expand(2, -1)))
    assert 'degradation' in fixed.state_dict()


def test_export_cli_writes_checked_files(tmp_path, exported, monkeypatch):
    script = export_script()
    exported_nets = []

    def reuse_program(net):  # the fixture's export of the same network: exporting again takes minutes
        exported_nets.append(net)
        return exported[1]

    monkeypatch.setattr(script, 'export_program', reuse_program)
    weights = str(tmp_path / 'tiny_net.pth')
    atomic_torch_save({'params': tiny_net().state_dict()}, weights)
    arch = '{"type": "VLUNet", ' + ', '.join(f'"{k}": {list(v) if isinstance(v, tuple) else v}'
                                             for k, v in TINY.items()) + '}'
    status = script.main(['--net-weights', weights, '--arch-json', arch, '-o', str(tmp_path / 'out'),
                          '--formats', 'pt2', '--check-sizes', '1x19x77', '2x16x16'])
    assert status == 0
    assert isinstance(exported_nets[0], VLUNet) and not exported_nets[0].training
    assert osp.isfile(tmp_path / 'out' / 'tiny_net.pt2')
    reloaded = torch.export.load(str(tmp_path / 'out' / 'tiny_net.pt2')).module()
    image, degradation = torch.rand(1, 3, 23, 45), torch.randn(1, 512)
    net = tiny_net()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(image, degradation), net(image, degradation), rtol=1e-5, atol=1e-6)


def test_export_cli_rejects_a_too_small_check_size(capsys):
    with pytest.raises(SystemExit):
        export_script().main(['--net-weights', 'x.pth', '-o', 'out', '--check-sizes', '1x4x4'])
    assert '>= 9' in capsys.readouterr().err
