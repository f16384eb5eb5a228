"""vlunet-compare: the table equals each method's own test run, grids, failures, re-runs (tiny random networks)."""
import csv
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import vlunet  # noqa: F401
from vlunet.compare import cli
from vlunet.compare.grid import GAP, Panel, most_different_box, parse_box, render_grid
from vlunet.compare.methods import parse_method

from basicsr.archs import build_network

from helpers import TINY_CLIP_CONFIG, load_script, run_entry, smooth_image, write_image

TINY_VLUNET = {'type': 'VLUNet', 'de_dim': 3, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
               'heads': [1, 1, 1, 1], 'key_size': 8}
METRICS = {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
           'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': True},
           'psnr_float': {'type': 'calculate_psnr_float_rgb'}, 'ssim_float': {'type': 'calculate_ssim_float_rgb'},
           'lpips': {'type': 'calculate_lpips', 'backbone_weights': 'random', 'device': 'cpu'},
           'fid': {'type': 'calculate_fid', 'inception_weights': 'random', 'dims': 64, 'device': 'cpu'}}
SIZE = 48  # LPIPS (AlexNet) needs at least about 40 pixels


def _option_file(root, name: str, weights: str, encoder: dict = None) -> str:
    """A test option file of a tiny VLU-Net on two test sets: noise added on the fly, and stored pairs."""
    opt = {'name': name, 'model_type': 'VLUNetModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
           'datasets': {
               'test_1': {'name': 'noisy', 'type': 'BenchmarkPairedDataset', 'task': 'denoise_25',
                          'dataroot_gt': 'data/clean'},
               'test_2': {'name': 'pairs', 'type': 'BenchmarkPairedDataset', 'task': 'derain',
                          'dataroot_lq': 'data/pairs/lq', 'dataroot_gt': 'data/pairs/gt'}},
           'network_g': TINY_VLUNET, 'degradation_encoder': encoder,
           'path': {'pretrain_network_g': weights, 'strict_load_g': True,
                    'pretrain_network_degradation_encoder': (encoder or {}).get('pretrained')},
           'tile': None, 'val': {'save_img': True, 'suffix': None, 'metrics': METRICS}}
    path = root / f'{name}.yml'
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return str(path)


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """Images, two tiny random VLU-Nets (one guided by a tiny random CLIP) and their test option files."""
    root = tmp_path_factory.mktemp('compare')
    for index in range(2):
        write_image(str(root / 'data' / 'clean' / f'clean{index}.png'), smooth_image(index, SIZE, SIZE + 8))
    for index in range(2):
        clean = smooth_image(10 + index, SIZE, SIZE)
        write_image(str(root / 'data' / 'pairs' / 'gt' / f'p{index}.png'), clean)
        write_image(str(root / 'data' / 'pairs' / 'lq' / f'p{index}.png'), (clean * 0.7).astype(np.uint8))
    (root / 'clip.json').write_text(json.dumps(TINY_CLIP_CONFIG))
    torch.manual_seed(0)
    encoder = {'type': 'DegradationCLIP', 'backbone': str(root / 'clip.json'), 'pretrained': None}
    torch.save({'params': build_network(dict(encoder)).state_dict()}, str(root / 'clip.pth'))
    encoder['pretrained'] = str(root / 'clip.pth')
    for name in ('guided', 'plain'):
        torch.save({'params': build_network(dict(TINY_VLUNET)).state_dict()}, str(root / f'{name}.pth'))
    return {'root': root, 'guided': _option_file(root, 'guided', str(root / 'guided.pth'), encoder),
            'plain': _option_file(root, 'plain', str(root / 'plain.pth')),
            'broken': _option_file(root, 'broken', str(root / 'missing.pth'))}


@pytest.fixture(scope='module')
def compared(workspace):
    """One comparison of the two networks and a broken method; returns (exit status, output folder)."""
    root = workspace['root']
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        status = cli.main(['-m', f'VLU-Net guided={workspace["guided"]}', '-m', f'Plain={workspace["plain"]}',
                           '-m', f'Broken={workspace["broken"]}', '-o', str(root / 'out'), '--no-progress',
                           '--panel-width', '64', '--zoom', '0,0,12,12'])  # the zoom outline away from the pixel below
    return status, root / 'out'


@pytest.mark.multiprocess
def test_the_table_equals_what_each_methods_own_test_run_reports(workspace, compared):
    status, out = compared
    assert status == 1  # the broken method failed
    root = workspace['root']
    for name, folder in (('guided', 'VLU-Net_guided'),):  # guided by its CLIP encoder (the unguided path is simpler)
        result = run_entry('test', ['-opt', workspace[name]], cwd=str(root))
        assert result.returncode == 0, result.stderr[-2000:]
        for table in ('results.md', 'results.csv'):
            expected = (root / 'results' / name / table).read_text()
            assert (out / 'results' / folder / table).read_text() == expected
        with open(root / 'results' / name / 'results.csv') as file:
            reported = {row['Dataset']: row for row in csv.DictReader(file)}
        summary = json.loads((out / 'comparison.json').read_text())
        method = next(m for m in summary['methods'] if m['folder'] == folder)
        for dataset, values in method['results'].items():
            assert {metric: f'{value:.4f}' for metric, value in values.items()} == {
                metric: reported[dataset][metric] for metric in METRICS}
        # the restored images are those the test run saves
        for dataset in ('noisy', 'pairs'):
            saved = sorted((root / 'results' / name / 'visualization' / dataset).iterdir())
            ours = sorted((out / 'methods' / folder / dataset).glob('*.png'))
            assert [np.asarray(Image.open(p)).tolist() for p in saved] == [np.asarray(Image.open(p)).tolist()
                                                                            for p in ours]


def test_a_failing_method_is_reported_and_the_others_finish(compared):
    status, out = compared
    summary = json.loads((out / 'comparison.json').read_text())
    broken = summary['methods'][2]
    assert broken['name'] == 'Broken' and 'missing.pth' in broken['error'] and len(broken['failures']) == 4
    assert [m['restored'] for m in summary['methods']] == [4, 4, 0]
    markdown = (out / 'comparison.md').read_text()
    assert '| Broken |' in markdown and 'not run' in markdown and 'missing.pth' in markdown
    guided = summary['methods'][0]
    assert guided['parameters'] > 0 and guided['gmacs_256'] > 0 and guided['steps'] is None
    assert guided['seconds_per_image'] > 0 and guided['peak_memory_bytes'] > 0
    records = [json.loads(p.read_text()) for p in (out / 'methods' / 'VLU-Net_guided' / 'noisy').glob('*.json')]
    assert all(r['degradation'] for r in records)  # detected by its CLIP encoder
    rows = list(csv.DictReader((out / 'comparison.csv').read_text().splitlines()))
    assert [(r['Method'], r['Dataset']) for r in rows][:3] == [
        ('VLU-Net guided', 'noisy'), ('VLU-Net guided', 'pairs'), ('VLU-Net guided', 'Average')]


def test_the_grid_has_input_each_method_and_ground_truth_in_order(compared):
    _, out = compared
    grid = np.asarray(Image.open(out / 'grids' / 'noisy' / 'clean0.png'))
    panels = 1 + 3 + 1  # input, three methods (one failed: a grey panel), ground truth
    panel_height = round(SIZE * 64 / (SIZE + 8))
    assert grid.shape[1] == panels * (64 + GAP) + GAP and grid.shape[0] > panel_height + 2 * GAP
    inputs = np.asarray(Image.open(out / 'inputs' / 'noisy' / 'clean0.png'))
    gt = np.asarray(Image.open(out / 'gt' / 'noisy' / 'clean0.png'))
    plain = np.asarray(Image.open(out / 'methods' / 'Plain' / 'noisy' / 'clean0.png'))
    y, x = panel_height - 3, 60  # a pixel of each panel's lower right corner; nearest-neighbour source pixel:
    row, column = y * SIZE // panel_height, x * (SIZE + 8) // 64

    def panel_pixel(index):
        return grid[GAP + y, GAP + index * (64 + GAP) + x]

    for index, image in ((0, inputs), (2, plain), (4, gt)):
        assert np.abs(panel_pixel(index).astype(int) - image[row, column]).max() <= 1
    assert (panel_pixel(3) == panel_pixel(3)[0]).all()  # the failed method's panel is grey


def test_render_grid_layout_and_zoom_box():
    colours = [(200, 0, 0), (0, 200, 0), (0, 200, 0), (255, 255, 0)]  # input, two restorations, ground truth
    images = [np.full((40, 80, 3), colour, dtype=np.uint8) for colour in colours]
    images[2][10:20, 60:70] = 0  # where the two restorations differ
    box = most_different_box(images[1:3], images[0])
    assert box == (60, 10, 10, 10)
    grid, layout = render_grid([Panel(str(i), ('a', 'b'), image) for i, image in enumerate(images)], box, 160)
    assert grid.size == (4 * (160 + GAP) + GAP, layout.crops[0][1] + layout.crops[0][3] + GAP)
    pixels = np.asarray(grid)
    for (x, y, width, height), colour in zip(layout.panels, colours):
        assert (width, height) == (160, 80) and tuple(pixels[y + height - 5, x + 5]) == colour
    x, y, width, height = layout.crops[2]
    assert (width, height) == (160, 160) and tuple(pixels[y + height // 2, x + width // 2]) == (0, 0, 0)
    assert tuple(pixels[layout.crops[1][1] + 80, layout.crops[1][0] + 80]) == colours[1]
    assert parse_box('1,2,3,4') == (1, 2, 3, 4)
    with pytest.raises(ValueError, match='x,y,width,height'):
        parse_box('1,2,3')


def test_a_second_run_reuses_the_outputs(workspace, compared):
    _, out = compared
    record = out / 'methods' / 'Plain' / 'pairs' / 'p0.json'
    before = json.loads(record.read_text())
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workspace['root'])
        patch.setattr('vlunet.inference.Restorer.restore_and_detect', lambda *a: pytest.fail('restored again'))
        status = cli.main(['-m', f'Plain={workspace["plain"]}', '-o', str(out), '--no-progress', '--panel-width', '64'])
    assert status == 0
    assert json.loads(record.read_text()) == before
    assert json.loads((out / 'comparison.json').read_text())['methods'][0]['reused'] == 4


def test_method_specs_and_bad_arguments(workspace, tmp_path, capsys):
    assert parse_method('A=x.yml:w.pth')[1:3] == ('x.yml', 'w.pth')
    assert parse_method('B=net.json:w.pth').network_file == 'net.json'
    with pytest.raises(ValueError, match='NAME=OPTION_FILE.yml'):
        parse_method('nothing')
    assert cli.main(['-m', 'A=a.pth', '-o', str(tmp_path / 'o')]) == 2
    assert 'no test images' in capsys.readouterr().err
    assert cli.main(['-m', f'A={workspace["plain"]}', '-m', f'A={workspace["plain"]}', '-o', str(tmp_path)]) == 2
    assert 'given twice' in capsys.readouterr().err
    assert cli.main(['-m', f'A={workspace["plain"]}', '--photos', str(tmp_path / 'none')]) == 2
    assert 'no such folder' in capsys.readouterr().err
    with pytest.MonkeyPatch.context() as patch:  # --lpips without its weights: one line before any work
        patch.chdir(workspace['root'])
        patch.setenv('TORCH_HOME', str(tmp_path / 'empty_cache'))
        assert cli.main(['-m', f'A={workspace["plain"]}', '--lq', 'data/pairs/lq', '--gt', 'data/pairs/gt',
                         '--lpips', '-o', str(tmp_path / 'o')]) == 2
    error = capsys.readouterr().err
    assert 'metric lpips: calculate_lpips.backbone_weights' in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / 'o').exists()


def test_the_script_is_the_command(capsys):
    script = load_script('compare')
    assert script.main is cli.main
    with pytest.raises(SystemExit) as exit_status:
        script.main(['--help'])
    assert exit_status.value.code == 0 and 'NAME=OPTION_FILE.yml' in capsys.readouterr().out


def test_ir_sde_reports_its_steps_and_macs_per_step(workspace, tmp_path):
    unet = {'type': 'ConditionalUNet', 'nf': 8, 'ch_mult': [1, 2, 4, 8], 'context_dim': 16,
            'use_degra_context': False, 'use_image_context': False}
    torch.save({'params': build_network(dict(unet)).state_dict()}, str(tmp_path / 'unet.pth'))
    option_file = tmp_path / 'irsde.yml'
    option_file.write_text(yaml.safe_dump({'name': 'irsde', 'model_type': 'IRSDEModel', 'num_gpu': 0,
                                           'network_g': unet, 'sde': {'T': 4, 'seed': 0},
                                           'path': {'pretrain_network_g': str(tmp_path / 'unet.pth')}}))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workspace['root'])
        assert cli.main(['-m', f'IR-SDE={option_file}', '-opt', workspace['plain'], '--steps', '2', '-o',
                         str(tmp_path / 'out'), '--no-progress']) == 0
    method = json.loads((tmp_path / 'out' / 'comparison.json').read_text())['methods'][0]
    assert method['steps'] == 2 and method['gmacs_256'] > 0 and method['restored'] == 4
    assert '| IR-SDE | ' in (tmp_path / 'out' / 'comparison.md').read_text()


def test_photos_without_ground_truth(workspace, tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workspace['root'])
        assert cli.main(['-m', f'Plain={workspace["plain"]}', '--photos', 'data/clean', '-o', str(tmp_path),
                         '--no-progress', '--panel-width', '32', '--zoom', '0,0,8,8']) == 0
    summary = json.loads((tmp_path / 'comparison.json').read_text())
    assert summary['metrics'] == {} and summary['methods'][0]['restored'] == 2
    grid = Image.open(tmp_path / 'grids' / 'clean' / 'clean0.png')
    assert grid.size[0] == 2 * (32 + GAP) + GAP  # input and the method, no ground truth
    assert 'type="range"' in (tmp_path / 'index.html').read_text()
