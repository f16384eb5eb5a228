"""scripts/model_stats.py: the official VLU-Net's MACs, and the table for a tiny config and an option file."""
import json
import os.path as osp

import pytest

from helpers import REPO_ROOT, load_script

SCRIPT = osp.join(REPO_ROOT, 'scripts', 'model_stats.py')
TINY = dict(de_dim=3, dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1], key_size=8)


@pytest.fixture(scope='module')
def model_stats():
    return load_script('model_stats')


@pytest.mark.slow
@pytest.mark.parametrize('size, total, conv, matmul', [(256, 177.35, 28.91, 148.45), (128, 44.47, 7.23, 37.24)])
def test_official_size_macs_count_convolutions_and_matrix_products(model_stats, size, total, conv, matmul):
    # the official computation is 186.25 / 46.56 GMACs; merging the attention's output projection into the
    # (C x C) attention matrix saves one C x C x HW product per attention
    macs = model_stats.count_macs({'type': 'VLUNet'}, size)
    assert macs['total'] / 1e9 == pytest.approx(total, abs=0.005)
    assert macs['conv'] / 1e9 == pytest.approx(conv, abs=0.005)
    assert macs['matmul'] / 1e9 == pytest.approx(matmul, abs=0.005)


def test_table_for_an_arch_config(model_stats, capsys):
    assert model_stats.main(['--arch-json', json.dumps(TINY), '--sizes', '16', '24', '--runs', '1']) == 0
    out = capsys.readouterr().out
    assert 'parameters: 1,470,884 (1.47 M)' in out
    rows = [line.split() for line in out.splitlines() if line.lstrip().startswith(('16x16', '24x24'))]
    assert [row[0] for row in rows] == ['16x16', '24x24'] and all(row[-1] == 'ms' for row in rows)
    assert float(rows[1][1]) > float(rows[0][1]) > 0
    assert 'latency: median of 1 runs on cpu' in out


def test_option_file_network_g_is_measured(model_stats, tmp_path, capsys):
    option_file = tmp_path / 'opt.yml'
    option_file.write_text('network_g:\n  type: VLUNet\n' + ''.join(f'  {k}: {v}\n' for k, v in TINY.items()))
    assert model_stats.main(['-opt', str(option_file), '--sizes', '16', '--runs', '0']) == 0
    assert 'parameters: 1,470,884' in capsys.readouterr().out
    (tmp_path / 'empty.yml').write_text('name: x\n')
    assert model_stats.main(['-opt', str(tmp_path / 'empty.yml')]) == 1
    assert 'no `network_g` section' in capsys.readouterr().err
