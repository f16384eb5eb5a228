"""The whole pipeline in a few CPU minutes, with no download: data, CLIP-guided training, testing, inference.

Usage (from the repository root, after ``pip install -e .``)::

    python scripts/demo.py            # VLU-Net, steps 1-6 below
    python scripts/demo.py --irsde    # DA-CLIP's IR-SDE instead: data, training, testing, inference (see below)

Steps:

1. ``scripts/make_demo_data.py``: degraded/clean pairs of the 7 NHRBL tasks from scikit-image's photos
   (``datasets/demo/``; skipped when present).
2. A small randomly initialised CLIP degradation encoder (``options/demo/clip_demo_vit.json``),
   written once to ``experiments/pretrained_models/demo_clip.pth`` so every step shares its backbone.
3. ``vlunet/train.py -opt options/demo/train_clip_demo.yml``: its adapters fine-tuned on the demo
   degradations (``experiments/CLIP_demo/``: zero-shot accuracy, similarity heat-maps).
4. ``vlunet/train.py -opt options/demo/train_demo.yml``: a small VLU-Net, guided by that encoder,
   trained and validated on the CPU (``experiments/VLUNet_demo/``).
5. ``vlunet/test.py -opt options/demo/test_demo.yml``: per-task results table and restored images
   (``results/VLUNet_demo_test/``), printed next to the PSNR of the degraded inputs.
6. ``scripts/inference.py`` on one validation image (``results/demo_inference/``).

``--irsde``: a tiny IR-SDE (``ConditionalUNet`` guided by a random, seeded DA-CLIP; 20 sampling steps instead of
100) trained on the 6 DA-CLIP degradations made on the fly from the demo photos
(``options/demo/train_irsde_demo.yml``), tested (``options/demo/test_irsde_demo.yml``) and used by
``scripts/inference.py`` with its checkpoint alone and 10 steps. A noise network this small and this briefly
trained does not restore yet (its sampled outputs are far below the inputs' PSNR): it shows the machinery.

The CLIP backbone is random (not the pretrained ViT-B/32) and its adapters see a few seconds of
training, so the degradation vectors and detected prompts are far weaker than the paper's: the
demo shows the machinery working end to end, not the paper's numbers.

CPU threads: unless ``OMP_NUM_THREADS`` is set, the demo uses the CPUs that are idle when it starts
(the CPUs it may run on minus the 1-minute load average, at least 1; :mod:`vlunet.utils.cpu_threads`, the rule
of every entry point) and says so; every step runs with that count.
"""
import csv
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
import torch  # noqa: E402

import vlunet  # noqa: F401,E402  (BasicSR compatibility fixes first)
from vlunet.data.image_io import read_image  # noqa: E402
from vlunet.metrics.restoration_metric import calculate_psnr_float_rgb  # noqa: E402
from vlunet.options import load_option_file  # noqa: E402
from vlunet.utils.atomic_write import atomic_torch_save  # noqa: E402
from vlunet.utils.cpu_threads import cpu_threads  # noqa: E402

from basicsr.archs import build_network  # noqa: E402
from basicsr.utils import FileClient, scandir  # noqa: E402

CLIP_OPTIONS = osp.join('options', 'demo', 'train_clip_demo.yml')
TRAIN_OPTIONS = osp.join('options', 'demo', 'train_demo.yml')
TEST_OPTIONS = osp.join('options', 'demo', 'test_demo.yml')
DEMO_DATA = osp.join('datasets', 'demo')
INFERENCE_OUTPUT = osp.join('results', 'demo_inference')
IRSDE_TRAIN_OPTIONS = osp.join('options', 'demo', 'train_irsde_demo.yml')
IRSDE_TEST_OPTIONS = osp.join('options', 'demo', 'test_irsde_demo.yml')
IRSDE_INFERENCE_OUTPUT = osp.join('results', 'demo_irsde_inference')
EXAMPLE_SET = 'test_5'  # demo-derain: the inference example is its first degraded image


def run_step(title: str, args: List[str], threads: int) -> None:
    """Run ``python args`` in the repository root with ``threads`` CPU threads; stop the demo if it fails."""
    print(f'\n=== {title}: python {" ".join(args)}', flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env).returncode != 0:
        sys.exit(f'demo: step "{title}" failed (see the messages above).')


def write_demo_encoder(test_opt: dict, root: str = REPO_ROOT) -> str:
    """Save a seeded random DegradationCLIP (backbone + adapters) where the demo options expect it (under ``root``)."""
    encoder_opt = dict(test_opt['degradation_encoder'])
    path = osp.join(root, encoder_opt.pop('pretrained'))
    if not osp.isfile(path):
        torch.manual_seed(0)
        atomic_torch_save({'params': build_network(dict(encoder_opt, pretrained=None)).state_dict()}, path)
    return path


def input_psnr(test_opt: dict) -> Dict[str, float]:
    """Mean float-RGB PSNR of the degraded inputs against their ground truth, per test set."""
    client, scores = FileClient('disk'), {}
    for dataset in test_opt['datasets'].values():
        lq_root, gt_root = (osp.join(REPO_ROOT, dataset[key]) for key in ('dataroot_lq', 'dataroot_gt'))
        names = sorted(scandir(lq_root))
        values = [calculate_psnr_float_rgb(read_image(client, osp.join(lq_root, name)),
                                           read_image(client, osp.join(gt_root, name))) for name in names]
        scores[dataset['name']] = sum(values) / len(values)
    return scores


def print_comparison(before: Dict[str, float], results_csv: str) -> None:
    with open(results_csv, encoding='utf-8') as f:
        after = {row['Dataset']: float(row['psnr_float']) for row in csv.DictReader(f)}
    before['Average'] = sum(before.values()) / len(before)
    print(f'\n{"test set":<22}{"input PSNR":>12}{"output PSNR":>13}   (float RGB, dB)')
    for name, value in before.items():
        print(f'{name:<22}{value:>12.2f}{after[name]:>13.2f}')


def irsde_demo(threads: int, start: float) -> None:
    """The IR-SDE demo (``--irsde``): training, testing and inference with the checkpoint alone."""
    run_step('2/4 IR-SDE training + validation', [osp.join('vlunet', 'train.py'), '-opt', IRSDE_TRAIN_OPTIONS],
             threads)
    run_step('3/4 IR-SDE testing', [osp.join('vlunet', 'test.py'), '-opt', IRSDE_TEST_OPTIONS], threads)
    train_name, test_name = (load_option_file(path)['name'] for path in (IRSDE_TRAIN_OPTIONS, IRSDE_TEST_OPTIONS))
    checkpoint = osp.join('experiments', train_name, 'models', 'net_g_latest.pth')
    example = osp.join(DEMO_DATA, 'val', 'denoise_50', 'lq', sorted(os.listdir(osp.join(DEMO_DATA, 'val',
                                                                                         'denoise_50', 'lq')))[0])
    run_step('4/4 IR-SDE inference (the checkpoint alone, 10 steps)', [
        osp.join('scripts', 'inference.py'), example, '--net-weights', checkpoint, '--steps', '10',
        '-o', IRSDE_INFERENCE_OUTPUT], threads)
    print(f'\nIR-SDE demo finished in {time.time() - start:.0f} s ({threads} CPU thread(s)). Outputs:\n'
          f'  training:        {osp.abspath(osp.join("experiments", train_name))} (models/, log)\n'
          f'  results table:   {osp.abspath(osp.join("results", test_name, "results.md"))}\n'
          f'  inference:       {osp.abspath(IRSDE_INFERENCE_OUTPUT)}')


def main(argv: List[str] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ['--irsde']):
        sys.exit('usage: python scripts/demo.py [--irsde]')
    start = time.time()
    os.chdir(REPO_ROOT)
    threads, reason = cpu_threads()
    torch.set_num_threads(threads)
    print(f'=== demo: {threads} CPU thread(s) ({reason})', flush=True)
    test_opt = load_option_file(TEST_OPTIONS)
    if not osp.isdir(DEMO_DATA):
        run_step(f'1/{4 if argv else 6} demo data', [osp.join('scripts', 'make_demo_data.py')], threads)
    if argv == ['--irsde']:
        return irsde_demo(threads, start)
    encoder_path = write_demo_encoder(test_opt)
    print(f'=== 2/6 demo degradation encoder (random weights): {encoder_path}')
    run_step('3/6 CLIP adapter fine-tuning', [osp.join('vlunet', 'train.py'), '-opt', CLIP_OPTIONS], threads)
    run_step('4/6 VLU-Net training + validation', [osp.join('vlunet', 'train.py'), '-opt', TRAIN_OPTIONS], threads)
    run_step('5/6 testing', [osp.join('vlunet', 'test.py'), '-opt', TEST_OPTIONS], threads)
    results = osp.join('results', test_opt['name'])
    print_comparison(input_psnr(test_opt), osp.join(results, 'results.csv'))
    example = osp.join(test_opt['datasets'][EXAMPLE_SET]['dataroot_lq'], sorted(os.listdir(
        test_opt['datasets'][EXAMPLE_SET]['dataroot_lq']))[0])
    run_step('6/6 inference', [osp.join('scripts', 'inference.py'), example, '-opt', TEST_OPTIONS,
                               '-o', INFERENCE_OUTPUT], threads)
    train_name, clip_name = (load_option_file(path)['name'] for path in (TRAIN_OPTIONS, CLIP_OPTIONS))
    print(f'\nDemo finished in {time.time() - start:.0f} s ({threads} CPU thread(s)). Outputs:\n'
          f'  data:            {osp.abspath(DEMO_DATA)}\n'
          f'  CLIP adapters:   {osp.abspath(osp.join("experiments", clip_name))} (models/, visualization/ heat-maps)\n'
          f'  training:        {osp.abspath(osp.join("experiments", train_name))} (models/, log)\n'
          f'  results table:   {osp.abspath(osp.join(results, "results.md"))} (and results.csv)\n'
          f'  restored images: {osp.abspath(osp.join(results, "visualization"))}\n'
          f'  inference:       {osp.abspath(INFERENCE_OUTPUT)}')


if __name__ == '__main__':
    main()
