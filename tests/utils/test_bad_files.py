"""Every bad file gets one clear line naming it, never a traceback (issue 24: one test per numbered defect).

Each test gives a damaged or wrong file to a loader or a command and asserts the error class (or the exit
status), that the one line names the file, and that nothing was written.
"""
import json
import logging
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet.utils.safe_load import DamagedFileError, WrongContentsError, WrongKindError, safe_torch_load

from basicsr.utils.registry import MODEL_REGISTRY

from helpers import load_script, run_entry, smooth_image, write_image

TINY_VLUNET = {'type': 'VLUNet', 'de_dim': 3, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
               'heads': [1, 1, 1, 1], 'key_size': 8}
STATES = osp.join('experiments', 'resumed', 'training_states')


def training_options(total_iter: int = 4, **train) -> dict:
    return {'name': 'resumed', 'model_type': 'VLUNetModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
            'datasets': {'train': {'name': 'train', 'type': 'PairedImageDataset', 'dataroot_gt': 'data/gt',
                                   'dataroot_lq': 'data/lq', 'io_backend': {'type': 'disk'}, 'gt_size': 16,
                                   'use_hflip': False, 'use_rot': False, 'num_worker_per_gpu': 0,
                                   'batch_size_per_gpu': 1, 'dataset_enlarge_ratio': 1}},
            'network_g': TINY_VLUNET, 'path': {'pretrain_network_g': None, 'resume_state': None},
            'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3}, 'total_iter': total_iter,
                      'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                      'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}, **train},
            'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False}}


def write_options(folder, opt: dict) -> None:
    (folder / 'train.yml').write_text(yaml.safe_dump(opt, sort_keys=False))


def one_error_line(stderr: str, path: str) -> str:
    """The single ``error:`` line of ``stderr``, which names ``path``; no traceback."""
    assert 'Traceback' not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith('error:')]
    assert len(lines) == 1 and path in lines[0], stderr
    return lines[0]


def random_bytes(path, seed: int, size: int = 100) -> str:
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return str(path)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A 4-iteration training with states at 2 and 4 (the folder to copy)."""
    folder = tmp_path_factory.mktemp('trained')
    for sub in ('gt', 'lq'):
        write_image(str(folder / 'data' / sub / '0.png'), smooth_image(0, 16, 16))
    write_options(folder, training_options())
    result = run_entry('train', ['-opt', 'train.yml'], cwd=str(folder))
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture
def experiment(trained, tmp_path):
    folder = tmp_path / 'run'
    shutil.copytree(trained, folder)
    return folder


# ------------------------------------------------------------------ 1. IndexError inside torch's unpickler

def test_1_random_bytes_that_make_torch_raise_index_error_are_one_bad_file_error(tmp_path):
    for seed in (17, 21):  # 'pop from empty list', 'list index out of range'
        path = random_bytes(tmp_path / f'r{seed}.pth', seed)
        with pytest.raises(WrongKindError) as error:
            safe_torch_load(path, 'network weights (--net-weights)')
        assert str(error.value).startswith(f'network weights (--net-weights) {path} is not a file written by')
        assert '\n' not in str(error.value)
    converter = load_script('convert_official_checkpoint')
    assert converter.main([str(tmp_path / 'r17.pth'), str(tmp_path / 'out')]) == 1
    assert not (tmp_path / 'out').exists()


# ------------------------------------------------------------------ 5. BasicSR's load_network

@pytest.mark.parametrize('contents, error_class', [(b'', DamagedFileError), (None, WrongKindError),
                                                   (b'PK\x03\x04' + bytes(60), DamagedFileError)])
def test_5_basicsr_load_network_names_the_file_and_its_option(tmp_path, contents, error_class):
    path = tmp_path / 'net_g.pth'
    path.write_bytes(contents) if contents is not None else random_bytes(path, 3, 5000)
    opt = {'name': 'bad', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'is_train': False, 'dist': False,
           'network_g': TINY_VLUNET, 'path': {'pretrain_network_g': str(path), 'results_root': str(tmp_path)}}
    with pytest.raises(error_class) as error:
        MODEL_REGISTRY.get('VLUNetModel')(opt)
    assert f'path.pretrain_network_g (VLUNet weights) {path}' in str(error.value)
    assert 'unsafe' not in str(error.value) and '\n' not in str(error.value)


# ------------------------------------------------------------------ 6. resume states through vlunet/train.py

@pytest.mark.multiprocess
def test_6_auto_resume_falls_back_from_a_damaged_newest_state_naming_both(experiment):
    newest = experiment / STATES / '4.state'
    newest.write_bytes(newest.read_bytes()[:3000])  # an interrupted copy
    result = run_entry('train', ['-opt', 'train.yml', '--auto_resume'], cwd=str(experiment))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith('warning: --auto_resume')]
    assert len(warnings) == 1 and osp.join(STATES, '4.state') in warnings[0] and osp.join(STATES, '2.state') in \
        warnings[0], result.stderr
    assert 'Traceback' not in result.stderr
    assert torch.load(str(newest), weights_only=True)['iter'] == 4  # trained 3..4 again, saved whole


@pytest.mark.multiprocess
def test_6_a_resume_state_that_is_no_training_state_is_one_line(experiment):
    for name, contents in (('list.state', [1, 2]), ('noiter.state', {'epoch': 0, 'optimizers': [], 'schedulers': []})):
        path = osp.join('experiments', name)
        torch.save(contents, str(experiment / path))
        write_options(experiment, {**training_options(), 'path': {'resume_state': path}})
        result = run_entry('train', ['-opt', 'train.yml'], cwd=str(experiment))
        assert result.returncode == 1
        line = one_error_line(result.stderr, path)
        assert 'is not a training state' in line or 'not a training state' in line
    assert sorted(os.listdir(experiment / STATES)) == ['2.state', '4.state']


# ------------------------------------------------------------------ 15. scheduler periods against total_iter

@pytest.mark.multiprocess
def test_15_cosine_periods_shorter_than_total_iter_are_refused_before_training(experiment):
    write_options(experiment, training_options(30, scheduler={'type': 'CosineAnnealingRestartLR', 'periods': [10, 10],
                                                              'restart_weights': [1, 1]}))
    shutil.rmtree(experiment / 'experiments')
    result = run_entry('train', ['-opt', 'train.yml'], cwd=str(experiment))
    assert result.returncode != 0
    assert 'train.scheduler.periods: [10, 10] add up to 20 iterations, fewer than train.total_iter (30)' in \
        result.stderr
    assert 'Traceback' not in result.stderr and not (experiment / 'experiments').exists()


# ------------------------------------------------------------------ 16. optimiser tensors of the wrong shape

@pytest.mark.multiprocess
def test_16_a_resume_state_with_wrong_optimizer_shapes_is_refused_naming_it(experiment):
    path = experiment / STATES / '4.state'
    state = torch.load(str(path), weights_only=True)
    moments = state['optimizers'][0]['state'][0]
    moments['exp_avg'] = torch.zeros(3, 3)
    torch.save(state, str(path))
    result = run_entry('train', ['-opt', 'train.yml', '--auto_resume'], cwd=str(experiment))
    assert result.returncode == 1
    line = one_error_line(result.stderr, osp.join(STATES, '4.state'))
    assert 'exp_avg: [3, 3] instead of' in line
    assert sorted(os.listdir(experiment / STATES)) == ['2.state', '4.state']


# ------------------------------------------------------------------ 17. world size of the resumed state

@pytest.mark.multiprocess
def test_17_a_state_written_by_more_processes_resumes_to_total_iter(experiment):
    path = experiment / STATES / '4.state'
    state = torch.load(str(path), weights_only=True)
    state['epoch'] = 100  # as written by many processes (fewer iterations per epoch each)
    torch.save(state, str(path))
    write_options(experiment, training_options(6))
    result = run_entry('train', ['-opt', 'train.yml', '--auto_resume'], cwd=str(experiment))
    assert result.returncode == 0, result.stderr
    assert '6.state' in os.listdir(experiment / STATES), result.stderr


# ------------------------------------------------------------------ converter and loaders (in-process)

def tiny_net_file(path) -> str:
    from basicsr.utils.registry import ARCH_REGISTRY
    torch.manual_seed(0)
    net = ARCH_REGISTRY.get('VLUNet')(**{k: v for k, v in TINY_VLUNET.items() if k != 'type'})
    torch.save({'params': net.state_dict()}, str(path))
    return str(path)


def corrupt_pickle_record(source: str, target) -> str:
    """``source`` (a zip-format torch file) with 20 bytes of its data.pkl flipped, written to ``target``."""
    import zipfile
    with zipfile.ZipFile(source) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith('data.pkl'))
    data = bytearray(open(source, 'rb').read())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 5
    data[start:start + 20] = bytes(b ^ 0xFF for b in data[start:start + 20])
    target.write_bytes(bytes(data))
    return str(target)


def converter_error(tmp_path, capsys, src: str) -> str:
    assert load_script('convert_official_checkpoint').main([src, str(tmp_path / 'out')]) == 1
    captured = capsys.readouterr()
    assert not (tmp_path / 'out').exists()
    return one_error_line(captured.err, src)


def test_2_a_zip_with_a_corrupt_member_is_damaged_for_the_converter(tmp_path, capsys):
    src = corrupt_pickle_record(tiny_net_file(tmp_path / 'good.pth'), tmp_path / '5task_vlunet.ckpt')
    assert 'damaged or incomplete' in converter_error(tmp_path, capsys, src)


def test_3_an_irsde_file_without_final_conv_is_refused_naming_the_key(tmp_path, capsys):
    src = str(tmp_path / 'universal-ir.pth')
    torch.save({'init_conv.weight': torch.zeros(8, 6, 7, 7), 'time_mlp.1.weight': torch.zeros(32, 8),
                'final_res_block.mlp.1.weight': torch.zeros(16, 32)}, src)
    assert 'final_conv.weight' in converter_error(tmp_path, capsys, src)


def test_4_bad_dino_safetensors_are_one_error_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    from vlunet.archs.perceiveir.perceiveir_blocks import build_semantic_vit
    good = str(tmp_path / 'good.safetensors')
    save_file({'cls_token': torch.zeros(1, 1, 8)}, good)
    data = open(good, 'rb').read()
    cases = {'empty': (b'', DamagedFileError), 'truncated': (data[:len(data) - 10], DamagedFileError),
             'random': (np.random.default_rng(17).bytes(100), WrongKindError)}
    for name, (contents, error_class) in cases.items():
        path = tmp_path / f'{name}.safetensors'
        path.write_bytes(contents)
        with pytest.raises(error_class, match=f'DINO-v2 weights \\(semantic_pretrained\\) {path}'):
            build_semantic_vit('vit_small_patch14_dinov2', str(path), 28, {'depth': 1})


def test_7_odd_but_valid_torch_files_raise_the_documented_errors(tmp_path, tiny_clip_name):
    from vlunet.losses.perceiveir.perceiveir_quality_loss import read_prompts_file
    from vlunet.metrics.lpips_metric import lpips_network

    from basicsr.utils.registry import ARCH_REGISTRY
    listed, mixed, heads = tmp_path / 'list.pth', tmp_path / 'mixed.pth', tmp_path / 'heads.pth'
    torch.save([torch.zeros(2)], str(listed))
    torch.save({1: torch.zeros(2), 'a': torch.zeros(2)}, str(mixed))
    torch.save({f'lin{i}.model.1.weight': torch.zeros(1, 3, 1, 1) for i in range(5)}, str(heads))
    with pytest.raises(WrongContentsError, match=f'{listed} holds a list'):
        ARCH_REGISTRY.get('DegradationCLIP')(backbone=tiny_clip_name, pretrained=str(listed))
    with pytest.raises(WrongContentsError, match=str(mixed)):
        ARCH_REGISTRY.get('DACLIP')(backbone=tiny_clip_name).load_weights(str(mixed))
    with pytest.raises(WrongContentsError, match=str(mixed)):
        read_prompts_file(str(mixed))
    with pytest.raises(ValueError, match=f'{heads} does not fit LPIPS'):  # the documented ValueError
        lpips_network('alex', None, str(heads), torch.device('cpu'))


def official_daclip_file(model, path: str) -> str:
    """``model``'s weights under the official DA-CLIP names (the release's file layout)."""
    renames = (('control_linears.', 'visual_control.transformer.zero_modules.'),
               ('controller.transformer.', 'visual_control.transformer.transformer.'),
               ('controller.', 'visual_control.'), ('backbone.', 'clip.'))
    state = {}
    for key, value in model.state_dict().items():
        prefix = next((pair for pair in renames if key.startswith(pair[0])), ('', ''))
        state[prefix[1] + key[len(prefix[0]):]] = value
    torch.save({'epoch': 1, 'state_dict': state}, path)
    return path


def test_8_the_daclip_conversion_checks_shapes(tmp_path, capsys, tiny_clip_name):
    from basicsr.utils.registry import ARCH_REGISTRY
    model = ARCH_REGISTRY.get('DACLIP')(backbone=tiny_clip_name)
    with torch.no_grad():
        model.controller.conv1.weight.data = torch.zeros(model.controller.conv1.weight.shape[0] + 1,
                                                         *model.controller.conv1.weight.shape[1:])
    src = official_daclip_file(model, str(tmp_path / 'daclip_ViT-B-32.pt'))
    line = converter_error(tmp_path, capsys, src)
    assert 'controller.conv1.weight: (65, 3, 32, 32) instead of (64, 3, 32, 32)' in line


def test_9_clean_failures_name_the_file_in_one_line(tmp_path, capsys, tiny_clip_name):
    script = load_script('inference')
    image = write_image(str(tmp_path / 'photo.png'), smooth_image(0, 16, 16))
    net = tiny_net_file(tmp_path / 'net.pth')
    folder = tmp_path / 'weights'
    folder.mkdir()
    adapters = tmp_path / 'adapters.pth'
    torch.save({'params': {'image_adapter.0.weight': torch.zeros(3)}}, str(adapters))
    cases = ((['--net-weights', net], net, 'does not fit VLUNet'),  # the default VLUNet is wider
             (['--net-weights', str(folder)], str(folder), 'is a folder'),
             (['--net-weights', net, '--network-json', json.dumps(TINY_VLUNET),
               '--clip-weights', str(adapters), '--clip-backbone', tiny_clip_name, '--prompts', 'a', 'b', 'c'],
              str(adapters), 'degradation-encoder weights'))
    for arguments, path, expected in cases:
        assert script.main([image, '-o', str(tmp_path / 'out'), '--device', 'cpu', *arguments]) == 2
        line = one_error_line(capsys.readouterr().err, path)
        assert expected in line and 'official checkpoint' not in line
    assert not (tmp_path / 'out').exists()


# ------------------------------------------------------------------ images

def restore_one(tmp_path, capsys, image: str, *arguments: str):
    """scripts/inference.py on ``image`` with a tiny VLUNet: (exit status, stdout, stderr)."""
    code = load_script('inference').main([image, '-o', str(tmp_path / 'out'), '--device', 'cpu', '--no-clip',
                                          '--net-weights', tiny_net_file(tmp_path / 'net.pth'), '--network-json',
                                          json.dumps(TINY_VLUNET), *arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def png_declaring(path, width: int, height: int) -> str:
    """A small PNG file whose header declares ``width`` x ``height`` black pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    compressor, row = zlib.compressobj(9), b'\0' * (1 + 3 * width)
    pixels = b''.join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
                     + chunk(b'IDAT', pixels) + chunk(b'IEND', b''))
    return str(path)


def test_10_an_image_over_the_memory_budget_is_refused_before_decoding(tmp_path, capsys, monkeypatch):
    import cv2
    image = png_declaring(tmp_path / 'huge.png', 4000, 3000)
    decoded = []
    monkeypatch.setattr(cv2, 'imdecode', lambda *args: decoded.append(args) or None)
    code, _, err = restore_one(tmp_path, capsys, image, '--max-memory', '8MB')
    assert code == 1 and not decoded
    assert f'{image}: not enough memory to restore a 4000x3000 image' in err
    assert not (tmp_path / 'out').exists() or not os.listdir(tmp_path / 'out')


def test_11_infinite_float_pixels_are_reported_and_0_255_floats_warned(tmp_path, capsys, caplog):
    import cv2

    from vlunet.inference import load_image
    holes = np.full((16, 16, 3), 0.5, np.float32)
    holes[3, 4] = np.inf
    path = str(tmp_path / 'holes.tif')
    cv2.imwrite(path, holes)
    code, _, err = restore_one(tmp_path, capsys, path)
    assert code == 1 and f'{path}: the input has 3 NaN or infinite values' in err
    bright = str(tmp_path / 'bright.tif')
    cv2.imwrite(bright, np.full((8, 8, 3), 200.0, np.float32))
    logging.getLogger('basicsr').addHandler(caplog.handler)  # BasicSR's logger does not propagate
    try:
        load_image(bright)
    finally:
        logging.getLogger('basicsr').removeHandler(caplog.handler)
    assert f"'{bright}': float pixels up to 200, expected 0..1" in caplog.text


def test_12_exif_orientation_is_applied_and_said(tmp_path, capsys):
    import cv2
    from PIL import Image

    from vlunet.inference import load_image
    photo = Image.fromarray(smooth_image(1, 16, 24)[..., ::-1])  # 24 wide, 16 high as stored
    exif = photo.getexif()
    exif[0x0112] = 6  # a phone held upright: shown rotated 90° clockwise
    path = str(tmp_path / 'phone.jpg')
    photo.save(path, exif=exif, quality=95)
    assert load_image(path).shape == (24, 16, 3)
    stored = cv2.imread(path, cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.float32) / 255  # as stored: unrotated
    np.testing.assert_array_equal(load_image(path), np.rot90(stored, -1))
    code, out, _ = restore_one(tmp_path, capsys, path)
    assert code == 0 and 'turned upright as its EXIF orientation says' in out


def test_13_an_empty_image_is_one_line(tmp_path):
    from vlunet.data.image_io import ImageReadError
    from vlunet.inference import load_image
    empty = tmp_path / 'empty.png'
    empty.write_bytes(b'')
    with pytest.raises(ImageReadError) as error:
        load_image(str(empty))
    assert str(empty) in str(error.value) and '\n' not in str(error.value) and 'empty (0 bytes)' in str(error.value)


def test_14_architecture_edges_work_or_are_refused_with_the_rule():
    from vlunet.archs.daclip.irsde_unet_arch import ConditionalUNet
    from vlunet.archs.daclip.nafnet_daclip_arch import NAFNetDACLIP
    net = NAFNetDACLIP(width=4, enc_blk_nums=(1, 1, 1), dec_blk_nums=(1, 1, 1), context_dim=32).eval()
    for size in (1, 2, 8):
        out = net(torch.rand(1, 3, size, size), torch.rand(1, 32), torch.rand(1, 32))
        assert out.shape == (1, 3, size, size) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match='must be multiples of 32'):
        ConditionalUNet(nf=8, ch_mult=(1, 1, 2, 2), context_dim=32)
    with pytest.raises(ValueError, match='nf must be an even number'):
        ConditionalUNet(nf=7)


# ------------------------------------------------------------------ 5, 6. BasicSR's own entry points (the hook)

@pytest.mark.multiprocess
def test_5_6_basicsr_own_test_entry_point_prints_one_line_and_verbose_the_traceback(experiment):
    import subprocess
    import sys
    weights = random_bytes(experiment / 'net_g.pth', 17)
    opt = {'name': 'bad', 'model_type': 'VLUNetModel', 'scale': 1, 'num_gpu': 0, 'network_g': TINY_VLUNET,
           'datasets': {'test_1': {'name': 'tiny', 'type': 'PairedImageDataset', 'dataroot_gt': 'data/gt',
                                   'dataroot_lq': 'data/lq', 'io_backend': {'type': 'disk'}}},
           'path': {'pretrain_network_g': 'net_g.pth', 'strict_load_g': True},
           'val': {'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0}}}}
    (experiment / 'test.yml').write_text(yaml.safe_dump(opt, sort_keys=False))
    env = dict(os.environ, OMP_NUM_THREADS='1')
    for verbose in ([], ['--verbose']):
        result = subprocess.run([sys.executable, '-m', 'basicsr.test', '-opt', 'test.yml', *verbose],
                                cwd=str(experiment), env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 1
        if verbose:
            assert 'Traceback' in result.stderr and 'WrongKindError' in result.stderr
        else:
            assert 'path.pretrain_network_g (VLUNet weights) net_g.pth is not a file written by torch.save' in \
                one_error_line(result.stderr, weights[len(str(experiment)) + 1:])
