"""Inference: the Restorer API (weights, CLIP guidance, detection, input checks) and scripts/inference.py.

Tiled vs whole-image agreement is tested once, in test_vlunet_model.py (the API calls the same
``vlunet.tiling.tiles.restore``).
"""
import json
import os

import cv2
import numpy as np
import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet.inference import DEFAULT_PROMPTS, InferenceOutOfMemoryError, NonFiniteImageError, Restorer, load_image
from vlunet.tiling.tiles import parse_tile_options

from basicsr.archs import build_network

from helpers import interrupt_restoring_at, load_script, smooth_image, write_image

TINY_SIZES = {'type': 'VLUNet', 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
               'heads': [1, 1, 1, 1], 'key_size': 8}
TINY_VLUNET = dict(TINY_SIZES, de_dim=3)


def _inference_script():
    return load_script('inference')


@pytest.fixture(scope='module')
def weights(tmp_path_factory, tiny_clip_name):
    """Tiny network and encoder weight files, and the encoder options that fit them."""
    root = tmp_path_factory.mktemp('inference_weights')
    torch.manual_seed(0)
    torch.save({'params': build_network(dict(TINY_VLUNET)).state_dict()}, str(root / 'net.pth'))
    encoder_options = {'type': 'DegradationCLIP', 'backbone': tiny_clip_name, 'pretrained': None}
    torch.save({'params': build_network(dict(encoder_options)).state_dict()}, str(root / 'clip.pth'))
    return {'net': str(root / 'net.pth'), 'clip': str(root / 'clip.pth'), 'encoder': encoder_options}


def _restorer(weights, **kwargs) -> Restorer:
    return Restorer(weights['net'], clip_weights=weights['clip'], encoder_options=weights['encoder'],
                    network_options=TINY_SIZES, **kwargs)


@pytest.fixture(scope='module')
def restorer(weights):
    return _restorer(weights)


def _rgb(seed: int, height: int, width: int) -> np.ndarray:
    return smooth_image(seed, height, width)[..., ::-1].astype(np.float32) / 255


def test_restorer_reads_de_dim_from_the_weights_and_restores_any_size(restorer):
    assert restorer.net.config['de_dim'] == 3  # not in network_options: read from the weights
    output = restorer.restore(_rgb(0, 21, 34))
    assert output.shape == (21, 34, 3) and output.dtype == np.float32 and 0 <= output.min() <= output.max() <= 1


def test_restorer_guides_the_network_with_the_encoder(restorer, weights):
    image = _rgb(1, 24, 24)
    unguided = Restorer(weights['net'], network_options=TINY_SIZES)  # no clip_weights, no encoder_options: "w/o CLIP"
    assert unguided.encoder is None
    assert not np.array_equal(restorer.restore(image), unguided.restore(image))  # d changes the output
    with pytest.raises(RuntimeError, match='needs the degradation encoder'):
        unguided.detect_degradation(image)


def test_detect_degradation_returns_a_prompt_and_probabilities(restorer, weights):
    guess = restorer.detect_degradation(_rgb(2, 32, 32))
    assert list(guess.probabilities) == list(DEFAULT_PROMPTS) and guess.prompt in DEFAULT_PROMPTS
    assert np.isclose(sum(guess.probabilities.values()), 1) and guess.probabilities[guess.prompt] == max(
        guess.probabilities.values())
    custom = _restorer(weights, prompts=['a rainy photo', 'a sharp photo'])
    restored, guess = custom.restore_and_detect(_rgb(2, 32, 32))
    assert set(guess.probabilities) == {'a rainy photo', 'a sharp photo'}
    np.testing.assert_allclose(restored, custom.restore(_rgb(2, 32, 32)), atol=1e-6)


def test_restorer_rejects_bad_inputs_with_clear_messages(restorer, weights, tmp_path):
    with pytest.raises(ValueError, match='float \\(H, W, 3\\) RGB image.*load_image'):
        restorer.restore(smooth_image(0, 8, 8))  # uint8 BGR straight from cv2.imread
    with pytest.raises(ValueError, match='half precision needs a CUDA device'):
        _restorer(weights, half=True)
    with pytest.raises(FileNotFoundError, match="authors' package https://drive.google.com/.* with scripts/"
                                                "convert_official_checkpoint"):
        Restorer(str(tmp_path / 'missing.pth'))
    torch.save({'state_dict': {'net.x': torch.zeros(1)}}, str(tmp_path / 'official.ckpt'))
    with pytest.raises(ValueError, match='Lightning checkpoint; convert it'):
        Restorer(str(tmp_path / 'official.ckpt'))
    with pytest.raises(ValueError, match='tile.overlap'):
        _restorer(weights, tile={'size': 16, 'overlap': 16})


def test_restorer_from_option_file(weights, tmp_path):
    options = {'name': 'x', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'network_g': TINY_VLUNET,
               'degradation_encoder': weights['encoder'], 'tile': {'size': 16, 'overlap': 4},
               'path': {'pretrain_network_g': weights['net'], 'pretrain_network_degradation_encoder': weights['clip']}}
    path = tmp_path / 'test.yml'
    path.write_text(yaml.safe_dump(options))
    restorer = Restorer.from_option_file(str(path))
    assert restorer.device.type == 'cpu' and restorer.tile.size == 16 and restorer.encoder is not None
    assert Restorer.from_option_file(str(path), clip_weights=None, encoder_options=None).encoder is None
    options['path'].pop('pretrain_network_g')
    path.write_text(yaml.safe_dump(options))
    with pytest.raises(ValueError, match='path.pretrain_network_g is not set'):
        Restorer.from_option_file(str(path))


def test_inference_script_restores_a_folder_and_reports_bad_files(weights, tmp_path, capsys):
    inputs = tmp_path / 'photos'
    write_image(str(inputs / 'odd.png'), smooth_image(0, 37, 53))
    write_image(str(inputs / 'sub' / 'gray.jpg'), cv2.cvtColor(smooth_image(1, 30, 28), cv2.COLOR_BGR2GRAY))
    (inputs / 'broken.png').write_bytes(b'not a png')
    (inputs / 'notes.txt').write_text('not an image')
    output = tmp_path / 'out'
    status = _inference_script().main([
        str(inputs), str(tmp_path / 'missing.png'), '-o', str(output), '--net-weights', weights['net'],
        '--clip-weights', weights['clip'], '--clip-backbone', weights['encoder']['backbone'],
        '--network-json', json.dumps(TINY_SIZES), '--tile', '16', '--tile-overlap', '4'])
    captured = capsys.readouterr()
    assert status == 1
    assert cv2.imread(str(output / 'odd.png')).shape == (37, 53, 3)
    assert cv2.imread(str(output / 'sub' / 'gray.png')).shape == (30, 28, 3)
    assert not (output / 'broken.png').exists() and not list(output.rglob('.*'))  # no temporary leftovers
    assert "detected 'image with" in captured.out and 'Restored 2 of 3 images' in captured.out
    assert 'broken.png' in captured.err and 'corrupt or not an image' in captured.err
    assert 'missing.png: no such file or folder' in captured.err and 'notes.txt' not in captured.err
    restored = load_image(str(output / 'odd.png'))
    assert restored.shape == (37, 53, 3)


def test_inference_script_stops_when_there_is_nothing_to_restore(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'notes.txt').write_text('x')
    status = _inference_script().main([str(tmp_path / 'empty'), str(tmp_path / 'notes.txt'),
                                       '--net-weights', 'unused.pth'])
    err = capsys.readouterr().err
    assert status == 2 and 'folder has no images' in err and 'unsupported format' in err
    assert 'no images to restore' in err


def _run_script(weights, inputs, output, *extra) -> int:
    return _inference_script().main([*inputs, '-o', str(output), '--net-weights', weights['net'], '--clip-weights',
                                     weights['clip'], '--clip-backbone', weights['encoder']['backbone'],
                                     '--network-json', json.dumps(TINY_SIZES), *extra])


def test_a_bad_output_folder_fails_before_any_work(weights, tmp_path, capsys):
    write_image(str(tmp_path / 'in.png'), smooth_image(0, 16, 16))
    (tmp_path / 'taken.png').write_bytes(b'x')
    script = _inference_script()
    # --net-weights does not exist: the output check comes before the weights are even read
    assert script.main([str(tmp_path / 'in.png'), '-o', str(tmp_path / 'taken.png'), '--net-weights', 'none.pth']) == 2
    assert f'-o {tmp_path / "taken.png"} is a file, not a folder' in capsys.readouterr().err
    assert script.main([str(tmp_path / 'in.png'), '-o', str(tmp_path / 'taken.png' / 'sub'),
                        '--net-weights', 'none.pth']) == 2
    assert f'is inside {tmp_path / "taken.png"}, which is a file' in capsys.readouterr().err


@pytest.mark.skipif(hasattr(os, 'geteuid') and os.geteuid() == 0, reason='root ignores folder permissions')
def test_an_unwritable_output_folder_fails_before_any_work(tmp_path, capsys):
    write_image(str(tmp_path / 'in.png'), smooth_image(0, 16, 16))
    locked = tmp_path / 'locked'
    locked.mkdir(mode=0o555)
    assert _inference_script().main([str(tmp_path / 'in.png'), '-o', str(locked / 'out'),
                                     '--net-weights', 'none.pth']) == 2
    assert f'cannot write in {locked}' in capsys.readouterr().err


@pytest.mark.multiprocess
def test_nan_pixels_fail_that_image_instead_of_a_black_output(weights, restorer, tmp_path, capsys):
    inputs = tmp_path / 'in'
    write_image(str(inputs / 'good.png'), smooth_image(0, 16, 16))
    holes = smooth_image(1, 16, 16).astype(np.float32) / 255
    holes[3:5, 2:4] = np.nan  # a float TIFF with 4 missing pixels
    write_image(str(inputs / 'holes.tif'), holes)
    assert _run_script(weights, [str(inputs)], tmp_path / 'out') == 1
    captured = capsys.readouterr()
    assert 'holes.tif: the input has 12 NaN or infinite values' in captured.err  # 4 pixels x 3 channels
    assert (tmp_path / 'out' / 'good.png').is_file() and not (tmp_path / 'out' / 'holes.png').exists()

    state = torch.load(weights['net'], weights_only=True)
    state['params']['output.weight'][0, 0] = float('nan')
    torch.save(state, str(tmp_path / 'nan_net.pth'))
    broken = Restorer(str(tmp_path / 'nan_net.pth'), network_options=TINY_SIZES)
    with pytest.raises(NonFiniteImageError, match=r'the restored image has \d+ NaN or infinite values \(saved, they '
                                                  'would be black pixels'):
        broken.restore(_rgb(0, 16, 16))


@pytest.mark.multiprocess
def test_a_symbolic_link_loop_is_reported_and_the_rest_restored(weights, tmp_path, capsys):
    inputs = tmp_path / 'in'
    write_image(str(inputs / 'sub' / 'a.png'), smooth_image(0, 16, 16))
    os.symlink('..', str(inputs / 'sub' / 'parent'))  # in/sub/parent/sub/parent/... forever
    os.symlink('self', str(inputs / 'self'))  # a link to itself
    os.symlink('gone.png', str(inputs / 'b.png'))  # a broken link to an image
    assert _run_script(weights, [str(inputs)], tmp_path / 'out') == 1
    err = capsys.readouterr().err
    assert f'{inputs / "sub" / "parent"}: symbolic link loop' in err and f'{inputs / "self"}: symbolic link loop' in err
    assert f'{inputs / "b.png"}: broken symbolic link' in err
    assert sorted(p.relative_to(tmp_path / 'out').as_posix() for p in (tmp_path / 'out').rglob('*.png')) == \
        ['sub/a.png']


@pytest.mark.multiprocess
def test_ctrl_c_keeps_finished_files_and_says_so_in_one_line(weights, tmp_path, capsys, monkeypatch):
    inputs = tmp_path / 'in'
    for name in ('a', 'b', 'c'):
        write_image(str(inputs / f'{name}.png'), smooth_image(0, 16, 16))
    interrupt_restoring_at(monkeypatch, 2)
    assert _run_script(weights, [str(inputs)], tmp_path / 'out') == 130
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and 'Restoring' not in line]
    assert err_lines == [f'Interrupted: 1 of 3 images were restored into {tmp_path / "out"} and are kept (complete '
                         'files); the others were not restored.']
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['a.png']


@pytest.mark.multiprocess
def test_tile_zero_is_an_error_and_one_prompt_stays_one_prompt(weights, tmp_path, capsys):
    script = _inference_script()
    for bad in ('0', '-8', 'big'):
        with pytest.raises(SystemExit) as exit_info:
            script.parse_args(['x.png', '--net-weights', 'n.pth', '--tile', bad])
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert '--tile: 0 is not allowed: it must be at least 1 (--tile whole restores whole images)' in err
    assert "--tile: 'big' is not auto, whole or a whole number of pixels" in err
    assert script.parse_args(['x.png', '--net-weights', 'n.pth', '--prompts', 'haze']).prompts == ['haze']
    write_image(str(tmp_path / 'in.png'), smooth_image(0, 16, 16))
    assert _run_script(weights, [str(tmp_path / 'in.png')], tmp_path / 'out', '--prompts', 'haze') == 0
    assert "detected 'haze' (100%)" in capsys.readouterr().out
    assert _restorer(weights, prompts='haze').prompts == ['haze']  # a string is one prompt, not four letters


@pytest.mark.parametrize('error', [torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 8.00 GiB'),
                                   MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory")])
def test_out_of_memory_suggests_tiling(restorer, monkeypatch, error):
    def exhausted(*args, **kwargs):
        raise error

    monkeypatch.setattr(restorer, 'net', exhausted)
    with pytest.raises(InferenceOutOfMemoryError, match=r'out of memory restoring a 24x16 image on cpu .*tile: auto '
                                                        r'planned .* --max-memory 2GB'):
        restorer.restore(_rgb(0, 16, 24))  # the default, tile: auto (here the memory model's forward fails)
    monkeypatch.setattr(restorer, 'tile', None)
    with pytest.raises(InferenceOutOfMemoryError, match=r'out of memory restoring a 24x16 image on cpu .*restore it '
                                                        r'in tiles: --tile 512'):
        restorer.restore(_rgb(0, 16, 24))
    monkeypatch.setattr(restorer, 'tile', parse_tile_options({'size': 16, 'overlap': 4}))
    with pytest.raises(InferenceOutOfMemoryError, match='use smaller tiles than 16'):
        restorer.restore(_rgb(0, 16, 24))


def test_other_runtime_errors_are_not_called_out_of_memory(restorer, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError('mat1 and mat2 shapes cannot be multiplied')

    monkeypatch.setattr(restorer, 'net', broken)
    with pytest.raises(RuntimeError, match='mat1 and mat2') as error_info:
        restorer.restore(_rgb(0, 16, 16))
    assert not isinstance(error_info.value, InferenceOutOfMemoryError)


@pytest.mark.multiprocess
def test_the_script_reports_out_of_memory_per_image_and_goes_on(weights, tmp_path, capsys, monkeypatch):
    write_image(str(tmp_path / 'in' / 'big.png'), smooth_image(0, 16, 16))
    write_image(str(tmp_path / 'in' / 'small.png'), smooth_image(1, 16, 16))
    restore_tensor, calls = Restorer.restore_tensor, []

    def out_of_memory_for_the_first(self, images, degradation=None):
        calls.append(1)
        if len(calls) == 1:
            raise InferenceOutOfMemoryError('out of memory restoring a 16x16 image on cpu; restore it in tiles: '
                                            '--tile 512')
        return restore_tensor(self, images, degradation)

    monkeypatch.setattr(Restorer, 'restore_tensor', out_of_memory_for_the_first)
    assert _run_script(weights, [str(tmp_path / 'in')], tmp_path / 'out') == 1
    captured = capsys.readouterr()
    assert 'big.png: out of memory restoring a 16x16 image on cpu; restore it in tiles: --tile 512' in captured.err
    assert 'Restored 1 of 2 images' in captured.out and (tmp_path / 'out' / 'small.png').is_file()


@pytest.mark.multiprocess
def test_ctrl_c_while_loading_the_weights_is_one_line(weights, tmp_path, capsys, monkeypatch):
    write_image(str(tmp_path / 'in.png'), smooth_image(0, 16, 16))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Restorer, '__init__', interrupted)
    assert _run_script(weights, [str(tmp_path / 'in.png')], tmp_path / 'out') == 130
    assert capsys.readouterr().err.strip() == 'Interrupted; nothing was restored.'


def _psnr(restored: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((restored - reference) ** 2)))


def test_bf16_restores_a_256_image_under_bf16_close_to_fp32(weights, restorer, monkeypatch):
    monkeypatch.setattr('vlunet.utils.precision.native_bf16', lambda device: True)  # any CPU can emulate it
    low = _restorer(weights, precision='bf16')
    assert low.precision == 'bf16' and low.amp.enabled
    convolution_dtypes = set()
    first_convolution = next(module for module in low.net.modules() if isinstance(module, torch.nn.Conv2d))
    first_convolution.register_forward_hook(lambda module, inputs, output: convolution_dtypes.add(output.dtype))
    image = _rgb(3, 256, 256)
    restored, reference = low.restore(image), restorer.restore(image)
    assert convolution_dtypes == {torch.bfloat16}  # the network did compute in bf16
    assert restored.dtype == np.float32 and restored.shape == image.shape and np.isfinite(restored).all()
    assert 30 < _psnr(restored, reference) < 80  # close to fp32, and not fp32 itself


def test_precision_flags_reach_the_restorer_and_bad_choices_are_one_line(weights, tmp_path, capsys, monkeypatch):
    write_image(str(tmp_path / 'in.png'), smooth_image(0, 16, 16))
    monkeypatch.setattr('vlunet.utils.precision.native_bf16', lambda device: False)
    assert _run_script(weights, [str(tmp_path / 'in.png')], tmp_path / 'out', '--precision', 'bf16') == 2
    err = capsys.readouterr().err
    assert 'no native bf16 instructions' in err and '--precision fp32' in err and 'Traceback' not in err
    assert _run_script(weights, [str(tmp_path / 'in.png')], tmp_path / 'out', '--half') == 2
    assert 'half precision needs a CUDA device' in capsys.readouterr().err
    monkeypatch.setattr('vlunet.utils.precision.native_bf16', lambda device: True)
    assert _run_script(weights, [str(tmp_path / 'in.png')], tmp_path / 'out', '--precision', 'bf16') == 0
    assert load_image(str(tmp_path / 'out' / 'in.png')).shape == (16, 16, 3)
    with pytest.raises(ValueError, match='half=True means precision fp16'):
        _restorer(weights, half=True, precision='bf16')
