"""A readable console: network structure and option dump in the log file only, honest eta, no repeated output.

One tiny guided training run and one test run through the entry points, with their console captured,
plus unit tests of the pieces (console filter, eta, final-validation labels, heat-map colour bar,
CLIPFinetuneModel's network printout, open_clip's random-weights warning).
"""
import glob
import io
import json
import logging
import os.path as osp
import re

import cv2
import numpy as np
import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet.utils import console_log
from vlunet.utils.similarity_heatmap import BAR_WIDTH, CELL, colour_bar, draw_heatmap
from vlunet.utils.validation_record import ValidationRecord

from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

from helpers import TINY_CLIP_CONFIG, TINY_CLIP_NAME, run_entry, smooth_image, write_image

TINY_VLUNET = {'type': 'VLUNet', 'de_dim': 2, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
               'heads': [1, 1, 1, 1], 'key_size': 8}
PSNR = {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False}}


def _paired(name: str, folder: str) -> dict:
    return {'name': name, 'type': 'PairedImageDataset', 'dataroot_gt': f'data/{folder}/gt',
            'dataroot_lq': f'data/{folder}/lq', 'io_backend': {'type': 'disk'}}


def _options(root) -> dict:
    encoder = {'type': 'DegradationCLIP', 'backbone': str(root / f'{TINY_CLIP_NAME}.json'), 'pretrained': 'clip.pth'}
    return {
        'name': 'quiet', 'model_type': 'VLUNetModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': dict(_paired('train', 'train'), gt_size=16, use_hflip=False, use_rot=False, num_worker_per_gpu=0,
                          batch_size_per_gpu=1),
            'val_1': _paired('val_a', 'val'), 'val_2': _paired('val_b', 'val')},
        'network_g': TINY_VLUNET, 'degradation_encoder': encoder,
        'path': {'pretrain_network_g': None, 'pretrain_network_degradation_encoder': 'clip.pth'},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'total_iter': 4,
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [10], 'gamma': 0.5},
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'val': {'val_freq': 2, 'save_img': False, 'metrics': PSNR},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 4, 'use_tb_logger': False},
    }


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Train 4 iterations (2 validation sets, every 2 iterations), then test on 2 sets; return the outputs."""
    root = tmp_path_factory.mktemp('console')
    for folder, count in (('train', 2), ('val', 1)):
        for i in range(count):
            write_image(str(root / 'data' / folder / 'gt' / f'{i}.png'), smooth_image(i, 20, 20))
            write_image(str(root / 'data' / folder / 'lq' / f'{i}.png'), smooth_image(i + 7, 20, 20))
    (root / f'{TINY_CLIP_NAME}.json').write_text(json.dumps(TINY_CLIP_CONFIG))
    encoder = ARCH_REGISTRY.get('DegradationCLIP')(backbone=str(root / f'{TINY_CLIP_NAME}.json'), pretrained=None)
    torch.save({'params': encoder.state_dict()}, root / 'clip.pth')  # backbone and adapters
    opt = _options(root)
    (root / 'train.yml').write_text(yaml.safe_dump(opt, sort_keys=False))
    train = run_entry('train', ['-opt', str(root / 'train.yml')], cwd=str(root))
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    test_opt = {key: opt[key] for key in ('model_type', 'scale', 'num_gpu', 'network_g', 'degradation_encoder')}
    test_opt.update(name='quiet_test',
                    datasets={'test_1': _paired('test_a', 'val'), 'test_2': _paired('test_b', 'val')},
                    path=dict(opt['path'], pretrain_network_g='experiments/quiet/models/net_g_latest.pth'),
                    val={'save_img': False, 'metrics': PSNR})
    (root / 'test.yml').write_text(yaml.safe_dump(test_opt, sort_keys=False))
    test = run_entry('test', ['-opt', str(root / 'test.yml')], cwd=str(root))
    assert test.returncode == 0, test.stdout[-3000:] + test.stderr[-3000:]
    log = ''.join(open(p, encoding='utf-8').read() for p in glob.glob(str(root / 'experiments/quiet/*.log')))
    return train.stdout + train.stderr, log, test.stdout + test.stderr


@pytest.mark.multiprocess
def test_network_structure_and_option_dump_go_to_the_log_file_only(runs):
    console, log, test_console = runs
    for text in (console, test_console):
        assert 'Network: VLUNet, with parameters: ' in text
        assert 'TransformerBlock(' not in text and 'network_g:[' not in text and 'Version Information' not in text
    assert 'TransformerBlock(' in log and 'network_g:[' in log and 'Version Information' in log
    assert len(console.splitlines()) < 120, console


@pytest.mark.multiprocess
def test_training_console_has_no_negative_eta_and_no_misleading_warnings(runs):
    console, log, _ = runs
    etas = re.findall(r'\[eta: ([^,]+),', console)
    assert len(etas) == 4 and not any(eta.startswith('-') for eta in etas), etas
    assert etas[-1] == '0:00:00'  # nothing left after the last iteration
    assert 'Multiple validation datasets' not in console + log
    assert 'No pretrained weights' not in console and 'random weights' not in console


@pytest.mark.multiprocess
def test_final_validation_is_not_repeated_past_total_iter(runs):
    console, _, _ = runs
    assert console.count('Validation val_a') == 2 and console.count('Validation val_b') == 2  # iterations 2 and 4
    assert {int(i) for i in re.findall(r'@ (\d+) iter', console)} <= {2, 4}
    assert 'Final validation skipped: the final weights are those of iteration 4' in console


@pytest.mark.multiprocess
def test_test_console_prints_the_results_table_once_and_no_best(runs):
    _, _, console = runs
    assert console.count('Results table (') == 1
    assert console.count('| test_a |') == 1 and console.count('| Average |') == 1
    assert 'Best' not in console


# --------------------------------------------------------------------------- units


def _console_and_file_logger(name: str):
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    stream = io.StringIO()
    console = logging.StreamHandler(stream)
    file_handler = logging.FileHandler(osp.devnull)
    logger.addHandler(console)
    logger.addHandler(file_handler)
    return logger, stream, file_handler


def test_console_filter_keeps_file_only_records_off_the_console(monkeypatch):
    logger, stream, file_handler = _console_and_file_logger('vlunet-test-console')
    written = []
    monkeypatch.setattr(file_handler, 'emit', written.append)
    console_log.quiet_console(logger)
    console_log.quiet_console(logger)  # idempotent
    assert sum(isinstance(f, console_log.ConsoleFilter) for h in logger.handlers for f in h.filters) == 1
    logger.info('summary')
    logger.info('structure', extra=console_log.FILE_ONLY)
    logger.info(console_log.FileOnlyText('option dump'))
    assert stream.getvalue() == 'summary\n'
    assert [r.getMessage() for r in written] == ['summary', 'structure', 'option dump']
    console_log.set_verbose(True)
    try:
        logger.info('structure', extra=console_log.FILE_ONLY)
    finally:
        console_log.set_verbose(False)
    assert stream.getvalue() == 'summary\nstructure\n'


def test_eta_is_iterations_left_times_the_iteration_time():
    opt = {'name': 'eta', 'logger': {'print_freq': 1, 'use_tb_logger': False}, 'train': {'total_iter': 10}}
    logger = get_root_logger()
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        message_logger = console_log.IterationTimeMessageLogger(opt, start_iter=0)
        for iteration in (1, 4, 10):
            message_logger({'epoch': 0, 'iter': iteration, 'lrs': [1e-3], 'time': 2.0, 'data_time': 0.1})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    etas = [re.search(r'eta: ([^,]+),', m) for m in messages]
    assert [eta.group(1) for eta in etas if eta] == ['0:00:18', '0:00:12', '0:00:00']


def test_validation_record_labels_the_final_validation_total_iter():
    record = ValidationRecord({'is_train': True, 'train': {'total_iter': 150}})
    assert record.iteration('a', 150) == 150 and record.iteration('b', 100) == 100
    assert record.iteration('a', 152) is None  # same weights as iteration 150
    assert record.iteration('b', 152) == 150  # b was not validated at 150
    assert record.iteration('b', 153) is None
    test_record = ValidationRecord({'is_train': False})
    assert test_record.iteration('a', 'experiment_name') == 'experiment_name'


def test_heatmap_has_a_colour_bar_from_one_at_the_top_to_zero_at_the_bottom():
    rows, columns = 3, 2
    image = draw_heatmap(np.full((rows, columns), 0.5), ['a', 'b', 'c'], ['x', 'y'], 'title')
    viridis = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_VIRIDIS)[:, 0]
    # Every cell is 0.5, so the two ends of the colour map can only come from the bar.
    top_colour = np.all(image == viridis[255], axis=2)
    bottom_colour = np.all(image == viridis[0], axis=2)
    assert top_colour.any() and bottom_colour.any()
    top_y, x = np.argwhere(top_colour)[0]
    bottom_y = np.argwhere(bottom_colour[:, x])[-1][0]
    assert bottom_y - top_y + 1 == rows * CELL and x > columns * CELL
    column = image[top_y:bottom_y + 1, x].astype(int)
    levels = [int(np.argmin(np.abs(viridis.astype(int) - pixel).sum(axis=1))) for pixel in column]
    assert levels[0] == 255 and levels[-1] == 0 and all(a >= b for a, b in zip(levels, levels[1:]))
    bar = colour_bar(40)
    assert bar.shape[0] == 40 and bar.shape[1] > BAR_WIDTH


def test_clip_finetune_model_prints_its_network_and_hides_open_clip_noise(tiny_clip_name):
    basicsr_logger = get_root_logger()
    records, root_records = [], []
    handler, root_handler = logging.Handler(), logging.Handler()
    handler.emit, root_handler.emit = records.append, root_records.append
    level = basicsr_logger.level
    basicsr_logger.setLevel(logging.INFO)
    basicsr_logger.addHandler(handler)
    logging.getLogger().addHandler(root_handler)
    opt = {'name': 'clip', 'num_gpu': 0, 'is_train': False, 'dist': False, 'path': {},
           'network_clip': {'type': 'DegradationCLIP', 'backbone': tiny_clip_name, 'pretrained': None},
           'degradation_prompts': ['image with noise', 'image with haze']}
    try:
        MODEL_REGISTRY.get('CLIPFinetuneModel')(opt)
    finally:
        basicsr_logger.removeHandler(handler)
        basicsr_logger.setLevel(level)
        logging.getLogger().removeHandler(root_handler)
    messages = [r.getMessage() for r in records]
    assert any(m.startswith('Network: DegradationCLIP, with parameters: ') for m in messages)
    [structure] = [r for r in records if getattr(r, 'file_only', False)]
    assert '(image_adapter): Sequential(' in structure.getMessage()
    assert any('the CLIP backbone has random weights' in m for m in messages)  # said once, by us
    assert not any('No pretrained weights' in r.getMessage() for r in root_records)
