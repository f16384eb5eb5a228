"""Restore an image, several images or folders with a trained VLU-Net, and report each image's degradation.

Usage::

    # weights from a test option file (network_g, degradation_encoder, tile, path.pretrain_network_*)
    vlunet-restore photos/ -opt options/test_official_5task.yml -o results/inference
    # a checkpoint of vlunet's training alone (it carries its network, encoder and sde options)
    vlunet-restore photo.jpg --net-weights experiments/NAFNet_DACLIP_demo/models/net_g_latest.pth
    # or from flags (de_dim is read from the weights)
    vlunet-restore photo.jpg --net-weights experiments/pretrained_models/5task_vlunet_net.pth \\
        --clip-weights experiments/pretrained_models/5task_vlunet_clip.pth --device cuda --precision fp16
    # bf16 on a CPU with AVX512-BF16 or AMX (IR-SDE's U-Net: 2-3x faster; docs/performance.md#bf16-inference-on-the-cpu)
    vlunet-restore photo.jpg -opt options/daclip/test_universal_ir_released.yml --device cpu --precision bf16
    # memory: --tile auto (default: whole images when they fit, else the largest tiles that fit),
    # --max-memory 4GB (budget; default: free GPU memory / available RAM), --tile 512 / --tile whole
    # DA-CLIP IR-SDE (ConditionalUNet): 100 sampling steps (--steps), reproducible noise (--seed)
    vlunet-restore photo.jpg -opt options/daclip/test_universal_ir_released.yml --steps 100 --seed 0 \
        --tile auto
    # NAFNet + DA-CLIP: both DA-CLIP embeddings of each whole image, given to every tile
    vlunet-restore photos/ -opt options/daclip/test_nafnet_daclip.yml -o results/nafnet_daclip

Folders are searched recursively; outputs are 8-bit PNGs ``<output>/<relative path>/<stem><suffix>.png``
written atomically. Each image's detected degradation (the prompt whose CLIP text embedding best
matches its image embedding, ``--prompts`` or the seven official texts, scored as the adapters were
trained: ``--scorer``; DA-CLIP encoders: the best of its 10 degradation names) is printed. IR-SDE
networks restore by sampling: the DA-CLIP contexts are encoded once per image, each step's network
runs whole or in the tiles ``--tile`` plans (one plan per image, one whole-image noise field).
Images are restored whole when they fit in the memory budget, else in the largest tiles that fit (each
image's plan is printed; the progress bar's time left covers the whole run). Unreadable or unsupported
files, images with NaN/Inf values, symbolic link loops, images too large for the memory budget (found
before any work) and images that run out of memory anyway (the message suggests a smaller
``--max-memory``) are reported and skipped; the summary lists them and
the exit status is 1 when any image failed (2 when there was nothing to restore or the output folder
cannot be written, checked before any work). Ctrl-C stops with one line and exit status 130; the
images finished so far are kept (each file is complete).
"""
import argparse
import errno
import json
import os
import os.path as osp
import sys
from typing import Callable, List, NamedTuple, Optional, Tuple

from tqdm import tqdm

import vlunet  # noqa: F401  (BasicSR compatibility fixes first)
from vlunet.data.image_io import exif_orientation, image_header_size
from vlunet.data.pair_sources import IMAGE_EXTENSIONS
from vlunet.guidance.degradation_classification import PromptScorer
from vlunet.inference import DEFAULT_ENCODER, Restorer, load_image, save_image
from vlunet.options import OptionError
from vlunet.tiling.memory_model import parse_memory_size
from vlunet.tiling.tiles import AUTO
from vlunet.utils.cpu_memory import keep_freed_memory_in_entry_point
from vlunet.utils.cpu_threads import use_cpu_threads
from vlunet.utils.precision import PRECISIONS

SUPPORTED = ' '.join(extension for extension in IMAGE_EXTENSIONS if extension.islower())
WHOLE = 'whole'


class Job(NamedTuple):
    """One image to restore and where its output goes."""
    source: str
    output: str


class Outcome(NamedTuple):
    """What :func:`restore_all` did: (input, error) of failed images, images written, whether Ctrl-C stopped it."""
    failures: List[Tuple[str, str]]
    restored: int
    interrupted: bool


def _pixels(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of pixels, at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a whole number of pixels') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'{value} is not allowed: it must be at least {minimum}' + (
                ' (--tile whole restores whole images)' if minimum > 0 else ''))
        return value
    return parse


def _tile_size(text: str):
    """--tile: ``auto``, ``whole`` or a size in pixels."""
    if text in (AUTO, WHOLE) or text.lstrip('-').isdigit():
        return text if text in (AUTO, WHOLE) else _pixels(1)(text)
    raise argparse.ArgumentTypeError(f'{text!r} is not auto, whole or a whole number of pixels')


def _count(text: str) -> int:
    """An argparse type: a positive whole number."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a whole number') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'{value} is not allowed: it must be at least 1')
    return value


def _tile_batch(text: str):
    """--tile-batch: ``auto`` or a number of tiles."""
    if text == AUTO or (text.isdigit() and int(text) >= 1):
        return text if text == AUTO else int(text)
    raise argparse.ArgumentTypeError(f'{text!r} is not auto or a number of tiles >= 1')


def _memory_size(text: str) -> int:
    try:
        return parse_memory_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a positive size like 2GB, 1.5GiB or 512MB') from None


def _scorer(text: str) -> PromptScorer:
    try:
        return PromptScorer.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv=None) -> argparse.Namespace:
    summary, details = __doc__.split('\n\n', 1)
    parser = argparse.ArgumentParser(prog='vlunet-restore', description=summary,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=details)
    parser.add_argument('inputs', nargs='+', help='image files and/or folders')
    parser.add_argument('-o', '--output', default=osp.join('results', 'inference'),
                        help='output folder (default results/inference)')
    parser.add_argument('--suffix', default='', help='appended to output file stems (default none)')
    parser.add_argument('-opt', help='test option file giving the network, encoder, tile and weights')
    parser.add_argument('--net-weights', help='network weights ({"params": ...}); overrides the weights of -opt. A '
                                              'checkpoint written by vlunet\'s training (experiments/<name>/models/'
                                              'net_g_*.pth) carries its network and encoder options: it needs no -opt')
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
    parser.add_argument('--tile', type=_tile_size,
                        help='auto (whole images when they fit in memory, else the largest tiles that fit), whole, '
                             'or a tile size in pixels, e.g. 512 (default: auto, or the tile of -opt)')
    parser.add_argument('--tile-overlap', type=_pixels(0), default=32, help='tile overlap in pixels (default 32)')
    parser.add_argument('--max-memory', type=_memory_size,
                        help='memory budget of --tile auto, e.g. 4GB or 3.5GiB (default: 85%% of the free GPU memory '
                             'or of the available RAM)')
    parser.add_argument('--tile-batch', type=_tile_batch,
                        help='most tiles per forward, or auto: as many as fit in memory (default 1)')
    parser.add_argument('--precision', choices=PRECISIONS,
                        help='fp32 (default); bf16: autocast on CUDA or on a CPU with AVX512-BF16 or AMX; fp16: '
                             'autocast on CUDA')
    parser.add_argument('--half', action='store_true', help='the same as --precision fp16')
    parser.add_argument('--prompts', nargs='+', metavar='TEXT',
                        help='degradation texts to detect, one argument each (quote texts with spaces; put the '
                             'option after the inputs); default: the 7 official ones, DA-CLIP\'s 10 names for a '
                             'DACLIP encoder')
    parser.add_argument('--scorer', type=_scorer,
                        help='how images are scored against the prompts: dot (official), cosine or '
                             'cosine:<temperature> (default: as recorded in the CLIP weights, i.e. as the adapters '
                             'were trained; dot for official files)')
    parser.add_argument('--steps', type=_count,
                        help='IR-SDE networks: sampling steps (default: sde.T of -opt, 100 = the paper; fewer are '
                             'faster and approximate)')
    parser.add_argument('--seed', type=int, help='IR-SDE networks: noise seed of every image (default: sde.seed, 0)')
    args = parser.parse_args(argv)
    if not args.opt and not args.net_weights:
        parser.error('give -opt OPTION_FILE or --net-weights PATH.')
    return args


def restorer_settings(args: argparse.Namespace) -> dict:
    """Restorer keyword arguments given on the command line (the others come from -opt or defaults)."""
    settings = {'net_weights': args.net_weights, 'network_options': args.network_json,
                'clip_weights': args.clip_weights, 'device': args.device, 'tile': tile_setting(args),
                'half': args.half or None, 'precision': args.precision, 'prompts': args.prompts, 'scorer': args.scorer,
                'progress': True, 'sde_steps': args.steps, 'seed': args.seed}
    if args.clip_backbone or args.clip_pretrained:  # the encoder type is the network's default (DACLIP for DA-CLIP's)
        settings['encoder_options'] = {'backbone': args.clip_backbone or DEFAULT_ENCODER['backbone'],
                                       'pretrained': args.clip_pretrained}
    settings = {key: value for key, value in settings.items() if value is not None}
    if args.no_clip:
        settings.update(clip_weights=None, encoder_options=None)
    if args.tile == WHOLE:
        settings['tile'] = None
    return settings


def tile_setting(args: argparse.Namespace) -> Optional[dict]:
    """The tile mapping of --tile, --tile-overlap, --max-memory and --tile-batch; None when none of them is given
    (the option file's tile, else the Restorer's default, auto)."""
    if args.tile is None and args.max_memory is None and args.tile_batch is None:
        return None
    setting = {'size': args.tile if args.tile not in (None, WHOLE) else AUTO, 'overlap': args.tile_overlap,
               'max_memory': args.max_memory, 'batch': args.tile_batch}
    return {key: value for key, value in setting.items() if value is not None}


def _output_path(output: str, relative: str, suffix: str, taken: set) -> str:
    stem, extension = osp.splitext(relative)
    path = osp.join(output, f'{stem}{suffix}.png')
    if path in taken:  # e.g. a.jpg and a.png in the same folder
        path = osp.join(output, f'{stem}{suffix}_{extension.lstrip(".")}.png')
    taken.add(path)
    return path


def _broken_link(entry: os.DirEntry) -> Optional[str]:
    """What is wrong with a symbolic link whose target cannot be reached (None: a broken link to a non-image)."""
    try:
        os.stat(entry.path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return 'symbolic link loop (the link resolves to itself)'
    return 'broken symbolic link (its target does not exist)' if entry.name.endswith(IMAGE_EXTENSIONS) else None


def scan_images(folder: str) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Image files under ``folder`` (relative paths, sorted; hidden entries skipped; linked folders followed),
    and (path, problem) for symbolic link loops, broken links and folders that cannot be read."""
    names, problems = [], []

    def walk(relative: str, ancestors: frozenset) -> None:
        path = osp.join(folder, relative) if relative else folder
        try:
            status = os.stat(path)
            identity = (status.st_dev, status.st_ino)
            if identity in ancestors:
                problems.append((path, 'symbolic link loop (links back to a folder it is in); not searched again'))
                return
            with os.scandir(path) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError as error:
            problems.append((path, f'folder cannot be searched ({error.strerror or error})'))
            return
        for entry in entries:
            if entry.name.startswith('.'):
                continue
            if entry.is_symlink() and not osp.exists(entry.path):
                problem = _broken_link(entry)
                if problem:
                    problems.append((entry.path, problem))
            elif entry.is_dir():
                walk(osp.join(relative, entry.name), ancestors | {identity})
            elif entry.is_file() and entry.name.endswith(IMAGE_EXTENSIONS):
                names.append(osp.join(relative, entry.name))

    walk('', frozenset())
    return sorted(names), problems


def check_output_folder(output: str) -> Optional[str]:
    """Why restored images could not be written under ``output`` (an existing file, an unwritable place), or None."""
    existing = osp.abspath(output)
    while not osp.exists(existing):
        existing = osp.dirname(existing)
    if not osp.isdir(existing):
        what = 'is' if existing == osp.abspath(output) else f'is inside {existing}, which is'
        return f'-o {output} {what} a file, not a folder; choose a folder for the restored images.'
    if not os.access(existing, os.W_OK | os.X_OK):
        return f'-o {output}: cannot write in {existing} (permission denied or read-only); choose another folder.'
    return None


def list_jobs(inputs: List[str], output: str, suffix: str) -> Tuple[List[Job], List[Tuple[str, str]]]:
    """The images to restore, and (input, problem) for inputs that cannot be restored."""
    jobs, problems, taken = [], [], set()
    for item in inputs:
        if osp.isdir(item):
            names, folder_problems = scan_images(item)
            problems += folder_problems
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


def is_rotated_by_exif(path: str) -> bool:
    """Whether reading ``path`` turns it (an EXIF orientation other than upright)."""
    with open(path, 'rb') as file:
        return exif_orientation(file.read()) != 1


def planned_pixels(restorer: Restorer, jobs: List[Job]) -> List[int]:
    """Pixels the network will restore for each job (tiles x tile area), 0 for images that cannot be planned."""
    pixels = []
    for job in jobs:
        size = image_header_size(job.source)
        try:
            pixels.append(restorer.tile_plan(*size).pixels if size else 0)
        except ValueError:  # e.g. InsufficientMemoryError: reported when the image's turn comes
            pixels.append(0)
    return pixels


def restore_all(restorer: Restorer, jobs: List[Job]) -> Outcome:
    """Restore every job (each output written as soon as it is done, atomically); Ctrl-C stops between files.

    The progress bar counts the pixels the network restores over all images (planned upfront from the
    image headers), so its time left covers the whole run; tiled images add a bar of their own tiles.
    """
    failures, restored, plans = [], 0, []
    pixels = planned_pixels(restorer, jobs)
    with tqdm(total=sum(pixels), unit='px', unit_scale=True, desc='Restoring') as bar:
        restorer.on_plan, restorer.on_progress = plans.append, bar.update
        try:
            for job, planned in zip(jobs, pixels):
                bar.set_postfix_str(osp.basename(job.source))
                done, failure = bar.n, None
                plans.clear()
                try:
                    size = image_header_size(job.source)
                    if size:
                        restorer.tile_plan(*size)  # an image over the memory budget is refused before it is decoded
                    image, guess = restorer.restore_and_detect(load_image(job.source))
                    save_image(job.output, image)
                except (ValueError, OSError, RuntimeError, MemoryError) as error:  # bad image, NaN, output, memory
                    failure = str(error) or type(error).__name__
                bar.update(max(done + planned - bar.n, 0))  # the plan and the image may disagree (not after Ctrl-C)
                if failure is not None:
                    failures.append((job.source, failure))
                    tqdm.write(f'FAILED {job.source}: {failure}')
                    continue
                restored += 1
                detected = f'{guess.prompt!r} ({guess.probabilities[guess.prompt]:.0%})' if guess else 'n/a (no CLIP)'
                plan = f'{plans[-1]}; ' if plans else ''
                plan += 'turned upright as its EXIF orientation says; ' if is_rotated_by_exif(job.source) else ''
                tqdm.write(f'{job.source}: {plan}detected {detected} -> {job.output}')
        except KeyboardInterrupt:
            return Outcome(failures, restored, interrupted=True)
    return Outcome(failures, restored, interrupted=False)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:  # before restoring started (restore_all reports its own interruption)
        print('Interrupted; nothing was restored.', file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    """Check the output folder, list the images, load the weights, restore; the exit status."""
    output_problem = check_output_folder(args.output)
    if output_problem:
        print(f'error: {output_problem}', file=sys.stderr)
        return 2
    jobs, problems = list_jobs(args.inputs, args.output, args.suffix)
    for source, problem in problems:
        print(f'SKIPPED {source}: {problem}', file=sys.stderr)
    if not jobs:
        print('error: no images to restore.', file=sys.stderr)
        return 2
    try:
        settings = restorer_settings(args)
        restorer = (Restorer.from_option_file(args.opt, **settings) if args.opt
                    else Restorer.from_weights_file(**settings))
    except (OptionError, ValueError, OSError, RuntimeError, TypeError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    if restorer.device.type == 'cpu':
        use_cpu_threads()
    if restorer.encoder is not None:
        print(f'Detecting degradations with the {restorer.scorer} scorer '
              f'({"--scorer" if args.scorer else "as the CLIP adapters were trained"}).')
    outcome = restore_all(restorer, jobs)
    if outcome.interrupted:
        print(f'Interrupted: {outcome.restored} of {len(jobs)} images were restored into {osp.abspath(args.output)} '
              'and are kept (complete files); the others were not restored.', file=sys.stderr)
        return 130
    print(f'Restored {outcome.restored} of {len(jobs)} images into {osp.abspath(args.output)}')
    failures = problems + outcome.failures
    if failures:
        print(f'{len(failures)} input(s) failed:', file=sys.stderr)
        for source, error in failures:
            print(f'  {source}: {error}', file=sys.stderr)
    return 1 if failures else 0


def console_main() -> int:
    """``vlunet-restore``: :func:`main` in a process of its own, which reuses freed CPU memory
    (:mod:`vlunet.utils.cpu_memory`)."""
    keep_freed_memory_in_entry_point()
    return main()


if __name__ == '__main__':
    sys.exit(console_main())
