"""benchmarks/bf16_inference.py: fp32 against bf16 autocast on photos, with tiny networks."""
import json
import math

import pytest
import torch

import vlunet  # noqa: F401  (compat shim before basicsr)

from basicsr.archs import build_network

from helpers import load_benchmark


@pytest.fixture(scope='module')
def bf16_inference():
    return load_benchmark('bf16_inference')


def test_every_network_is_timed_in_both_precisions_and_compared(bf16_inference, tmp_path, capsys):
    report = tmp_path / 'bf16.json'
    assert bf16_inference.main(['--tiny', '--sizes', '32', '--photos', 'coffee', 'chelsea', '--json', str(report)]) == 0
    results = json.loads(report.read_text())
    assert [(row['network'], row['size']) for row in results['rows']] == [
        ('vlunet', 32), ('irsde', 32), ('perceiveir', 32)]
    for row in results['rows']:
        assert row['fp32_s'] > 0 and row['bf16_s'] > 0
        assert math.isclose(row['speedup'], row['fp32_s'] / row['bf16_s'])
        assert list(row['psnr_db']) == ['coffee', 'chelsea']
        assert all(20 < value < 100 for value in row['psnr_db'].values())  # bf16 ran: close to fp32, not equal
    out = capsys.readouterr().out
    assert '| VLU-Net | 32² |' in out and '| IR-SDE U-Net (one step) | 32² |' in out and 'weights: seeded random' in out


def test_the_photos_are_square_crops_in_the_unit_range(bf16_inference):
    image = bf16_inference.photo('astronaut', 48)
    assert image.shape == (1, 3, 48, 48) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.1


def test_trained_weights_are_loaded_and_a_wrong_file_is_one_line(bf16_inference, tmp_path, capsys):
    options = dict(bf16_inference.NETWORKS['vlunet'][1])
    torch.manual_seed(5)
    state = build_network(dict(options)).state_dict()
    torch.save({'params': state}, str(tmp_path / 'vlunet.pth'))
    forward = bf16_inference.build_forward('vlunet', True, str(tmp_path / 'vlunet.pth'))
    assert forward(bf16_inference.photo('coffee', 16)).shape == (1, 3, 16, 16)
    torch.save({'params': {'not.a.vlunet': torch.zeros(1)}}, str(tmp_path / 'wrong.pth'))
    assert bf16_inference.main(['--tiny', '--networks', 'vlunet', '--weights', f'vlunet={tmp_path / "wrong.pth"}']) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'wrong.pth' in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        bf16_inference.main(['--tiny', '--weights', 'nafnet=x.pth'])
    assert "unknown network(s) ['nafnet']" in capsys.readouterr().err
