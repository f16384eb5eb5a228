"""Restore an image, several images or folders with a trained VLU-Net, and report each image's degradation.

Usage::

    # weights from a test option file (network_g, degradation_encoder, tile, path.pretrain_network_*)
    python scripts/inference.py photos/ -opt options/test_official_5task.yml -o results/inference
    # or from flags (de_dim is read from the weights)
    python scripts/inference.py photo.jpg --net-weights experiments/pretrained_models/5task_vlunet_net.pth \\
        --clip-weights experiments/pretrained_models/5task_vlunet_clip.pth --device cuda --half \\
        --tile 256 --tile-overlap 32

Folders are searched recursively; outputs are 8-bit PNGs ``<output>/<relative path>/<stem><suffix>.png``
written atomically. Each image's detected degradation (the prompt whose CLIP text embedding best
matches its image embedding, ``--prompts`` or the seven official texts) is printed. Unreadable or
unsupported files are reported and skipped; the summary lists them and the exit status is 1 when
any image failed (2 when there was nothing to restore).
"""
import argparse
import json
import os.path as osp
import sys
from typing import List, NamedTuple, Tuple

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import vlunet  # noqa: F401,E402  (BasicSR compatibility fixes first)
from basicsr.utils import scandir  # noqa: E402
from tqdm import tqdm  # noqa: E402

from vlunet.data.pair_sources import IMAGE_EXTENSIONS  # noqa: E402
from vlunet.inference import DEFAULT_ENCODER, DEFAULT_PROMPTS, Restorer, load_image, save_image  # noqa: E402
from vlunet.options import OptionError  # noqa: E402


SUPPORTED = ' '.join(extension for extension in IMAGE_EXTENSIONS if extension.islower())


class Job(NamedTuple):
    """One image to restore and where its output goes."""
    source: str
    output: str


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('inputs', nargs='+', help='image files and/or folders')
    parser.add_argument('-o', '--output', default=osp.join('results', 'inference'),
                        help='output folder (default results/inference)')
    parser.add_argument('--suffix', default='', help='appended to output file stems (default none)')
    parser.add_argument('-opt', help='test option file giving the network, encoder, tile and weights')
    parser.add_argument('--net-weights', help='network weights ({"params": ...}); overrides -opt')
    parser.add_argument('--network-json', type=json.loads,
                        help='network_g as JSON, e.g. \'{"type": "VLUNet", "de_dim": 5}\' (default VLUNet, de_dim '
                             'from the weights)')
    parser.add_argument('--clip-weights', help='converted degradation-encoder weights (*_clip.pth); overrides -opt')
    parser.add_argument('--clip-backbone', help=f'open_clip model name or config JSON (default '
                                                f'{DEFAULT_ENCODER["backbone"]})')
    parser.add_argument('--clip-pretrained', help='open_clip tag or file for the CLIP backbone (default: none, the '
                                                  'backbone comes from --clip-weights when it holds one)')
    parser.add_argument('--no-clip', action='store_true', help='run the network without CLIP guidance')
    parser.add_argument('--device', help='cpu, cuda, cuda:N or auto (default: auto, or cpu for num_gpu: 0)')
    parser.add_argument('--tile', type=int, help='tile size in pixels (default: whole images)')
    parser.add_argument('--tile-overlap', type=int, default=32, help='tile overlap in pixels (default 32)')
    parser.add_argument('--half', action='store_true', help='float16 autocast on CUDA')
    parser.add_argument('--prompts', nargs='+', help='degradation texts to detect (default: the 7 official ones)')
    args = parser.parse_args(argv)
    if not args.opt and not args.net_weights:
        parser.error('give -opt OPTION_FILE or --net-weights PATH.')
    return args


def restorer_settings(args: argparse.Namespace) -> dict:
    """Restorer keyword arguments given on the command line (the others come from -opt or defaults)."""
    settings = {'net_weights': args.net_weights, 'network_options': args.network_json,
                'clip_weights': args.clip_weights, 'device': args.device,
                'tile': {'size': args.tile, 'overlap': args.tile_overlap} if args.tile else None,
                'half': args.half or None, 'prompts': args.prompts, 'progress': True}
    if args.clip_backbone or args.clip_pretrained:
        settings['encoder_options'] = dict(DEFAULT_ENCODER, backbone=args.clip_backbone or DEFAULT_ENCODER['backbone'],
                                           pretrained=args.clip_pretrained)
    settings = {key: value for key, value in settings.items() if value is not None}
    if args.no_clip:
        settings.update(clip_weights=None, encoder_options=None)
    return settings


def _output_path(output: str, relative: str, suffix: str, taken: set) -> str:
    stem, extension = osp.splitext(relative)
    path = osp.join(output, f'{stem}{suffix}.png')
    if path in taken:  # e.g. a.jpg and a.png in the same folder
        path = osp.join(output, f'{stem}{suffix}_{extension.lstrip(".")}.png')
    taken.add(path)
    return path


def list_jobs(inputs: List[str], output: str, suffix: str) -> Tuple[List[Job], List[Tuple[str, str]]]:
    """The images to restore, and (input, problem) for inputs that cannot be restored."""
    jobs, problems, taken = [], [], set()
    for item in inputs:
        if osp.isdir(item):
            names = sorted(scandir(item, suffix=IMAGE_EXTENSIONS, recursive=True))
            if not names:
                problems.append((item, f'folder has no images (supported: {SUPPORTED})'))
            jobs += [Job(osp.join(item, name), _output_path(output, name, suffix, taken)) for name in names]
        elif not osp.isfile(item):
            problems.append((item, 'no such file or folder'))
        elif not item.lower().endswith(IMAGE_EXTENSIONS):
            problems.append((item, f'unsupported format (supported: {SUPPORTED})'))
        else:
            jobs.append(Job(item, _output_path(output, osp.basename(item), suffix, taken)))
    return jobs, problems


def restore_all(restorer: Restorer, jobs: List[Job]) -> List[Tuple[str, str]]:
    """Restore every job (each output written as soon as it is done); return (input, error) of failures."""
    failures = []
    for job in tqdm(jobs, unit='image', desc='Restoring'):
        try:
            restored, guess = restorer.restore_and_detect(load_image(job.source))
            save_image(job.output, restored)
        except (ValueError, OSError, RuntimeError) as error:  # bad image, unwritable output, CUDA out of memory
            failures.append((job.source, str(error)))
            tqdm.write(f'FAILED {job.source}: {error}')
            continue
        detected = f'{guess.prompt!r} ({guess.probabilities[guess.prompt]:.0%})' if guess else 'n/a (no CLIP)'
        tqdm.write(f'{job.source}: detected {detected} -> {job.output}')
    return failures


def main(argv=None) -> int:
    args = parse_args(argv)
    jobs, problems = list_jobs(args.inputs, args.output, args.suffix)
    for source, problem in problems:
        print(f'SKIPPED {source}: {problem}', file=sys.stderr)
    if not jobs:
        print('error: no images to restore.', file=sys.stderr)
        return 2
    try:
        settings = restorer_settings(args)
        restorer = Restorer.from_option_file(args.opt, **settings) if args.opt else Restorer(**settings)
    except (OptionError, ValueError, OSError, RuntimeError, TypeError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    failures = restore_all(restorer, jobs)
    print(f'Restored {len(jobs) - len(failures)} of {len(jobs)} images into {osp.abspath(args.output)}')
    failures = problems + failures
    if failures:
        print(f'{len(failures)} input(s) failed:', file=sys.stderr)
        for source, error in failures:
            print(f'  {source}: {error}', file=sys.stderr)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
