"""Smaller first-hour messages (issue 25, item 8): a mistyped -opt path gets the close match, the training/test
--help lists --verbose, the inference help has its description once, the progress bar stays where Ctrl-C stopped
it, missing relative paths say which folder they were resolved against, and a clone folder in the current
directory is one line, not a traceback."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

import vlunet  # noqa: F401
from vlunet import entry
from vlunet.options import OptionError, check_option_file, load_option_file

from basicsr.archs import build_network

from helpers import REPO_ROOT, interrupt_restoring_at, load_script, smooth_image, write_image

TINY_VLUNET = {'type': 'VLUNet', 'de_dim': 2, 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
               'heads': [1, 1, 1, 1], 'key_size': 8}


def test_a_mistyped_option_path_gets_the_close_match(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    for typed in ('options/train_demo.yml', 'train_demo.yml', 'options/demo/train_dmo.yml'):
        with pytest.raises(OptionError, match=r"^option file '.*' does not exist\. Did you mean "
                                              r"'options/demo/train_demo\.yml'\?$"):
            load_option_file(typed)
    with pytest.raises(OptionError, match=r"^option file 'options/nothing_like_it\.yml' does not exist \(pass it "):
        load_option_file('options/nothing_like_it.yml')


def test_missing_relative_paths_name_the_folder_they_were_resolved_against(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'test.yml').write_text(yaml.safe_dump({
        'name': 'x', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'network_g': TINY_VLUNET,
        'datasets': {'test_1': {'name': 'a', 'type': 'PairedImageDataset', 'dataroot_gt': 'data/gt',
                                'dataroot_lq': 'data/lq', 'io_backend': {'type': 'disk'}}},
        'path': {}, 'val': {'save_img': False}}))
    with pytest.raises(OptionError) as error:
        check_option_file('test.yml', is_train=False)
    assert str(error.value).splitlines()[0] == (f'test.yml (relative paths are resolved against the current folder, '
                                                f'{tmp_path}):')


def test_training_and_test_help_list_verbose(monkeypatch, capsys):
    import basicsr.train
    monkeypatch.setattr(sys, 'argv', ['vlunet/train.py', '--help'])
    entry.run_pipeline(basicsr.train.train_pipeline, is_train=True)
    out = capsys.readouterr().out
    assert '-opt OPT' in out and '--auto_resume' in out
    assert out.rstrip().splitlines()[-1].split()[:4] == ['--verbose', 'also', 'print', 'the']


def test_inference_help_has_its_description_once(capsys):
    with pytest.raises(SystemExit):
        load_script('inference').parse_args(['--help'])
    out = capsys.readouterr().out
    assert out.count('Restore an image, several images or folders') == 1 and 'Ctrl-C stops with one line' in out


def test_ctrl_c_leaves_the_progress_bar_where_it_stopped(tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    torch.save({'params': build_network(dict(TINY_VLUNET)).state_dict()}, str(tmp_path / 'net.pth'))
    for name in ('a', 'b', 'c', 'd'):
        write_image(str(tmp_path / 'in' / f'{name}.png'), smooth_image(0, 16, 16))
    interrupt_restoring_at(monkeypatch, 2)
    status = load_script('inference').main([str(tmp_path / 'in'), '-o', str(tmp_path / 'out'), '--net-weights',
                                            str(tmp_path / 'net.pth'), '--tile', 'whole', '--network-json',
                                            json.dumps(TINY_VLUNET)])
    assert status == 130
    bar = [part for part in capsys.readouterr().err.split('\r') if 'Restoring' in part]
    assert bar and ' 25%' in bar[-1] and '100%' not in ''.join(bar)


@pytest.mark.multiprocess
def test_a_clone_folder_in_the_current_directory_is_one_line(tmp_path):
    (tmp_path / 'vlunet' / 'vlunet').mkdir(parents=True)
    hook = os.path.join(REPO_ROOT, 'vlunet_basicsr_hook.py')
    code = ('import importlib.util, sys\n'
            'import vlunet_basicsr_hook as installed; installed.uninstall()\n'  # this checkout's hook instead
            f'spec = importlib.util.spec_from_file_location("vlunet_basicsr_hook", {hook!r})\n'
            'hook = importlib.util.module_from_spec(spec); sys.modules["vlunet_basicsr_hook"] = hook\n'
            'spec.loader.exec_module(hook); hook.install()\n'
            'import basicsr\n')
    run = subprocess.run([sys.executable, '-c', code], cwd=str(tmp_path), capture_output=True, text=True,
                         timeout=600, env={key: value for key, value in os.environ.items() if key != 'PYTHONPATH'})
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"error: vlunet_basicsr_hook: 'vlunet' is the folder {tmp_path / 'vlunet'} (the clone of the repository?), "
        'not the vlunet package, so nothing is registered: run Python from another folder than the one that '
        'contains the clone.']
