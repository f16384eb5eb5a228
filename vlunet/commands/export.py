"""Export a restoration network to ONNX and to a ``torch.export`` program, for any image size.

Usage:
    vlunet-export --net-weights experiments/pretrained_models/5task_vlunet_net.pth -o exported
    vlunet-export --net-weights net_g_latest.pth -opt options/train_nhrbl.yml -o exported
    vlunet-export --net-weights W.pth --clip-weights C.pth --degradation-image hazy.png -o exported

Writes ``<out>/<stem>.onnx`` and ``<out>/<stem>.pt2`` (``--formats`` to choose) with dynamic batch,
height and width (any size from 9×9 up, multiples of 8 or not: the padding is inside the graph).
Guided networks take the degradation vector (B, 512) as a second input ``degradation``, unless
``--degradation-image`` folds the CLIP vector of that image in (one input, a fixed degradation).
Networks that also take DA-CLIP's content embedding (NAFNetDACLIP with ``use_image_context``) are
refused with an error naming that input; plain NAFNet exports with one input.
Each file is then checked against PyTorch on several sizes (``--check-sizes``); the exit status is 1
if any relative error exceeds ``--tolerance``. ONNX needs ``pip install -e '.[export]'``.
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import List, Optional, Tuple

import torch

import vlunet  # noqa: F401  (compat shim before basicsr; registers the networks)
from vlunet.export import (
    MIN_EXPORT_SIZE,
    ExportCheck,
    check_exportable,
    check_onnx,
    check_program,
    export_onnx,
    export_program,
    fixed_degradation_or_none,
)
from vlunet.inference import Restorer, build_restoration_network, load_image
from vlunet.options import OptionError, load_option_file
from vlunet.utils.atomic_write import atomic_output

DEFAULT_CHECK_SIZES = ('1x37x53', '2x64x64', '1x120x97', '1x9x200')


def _size(text: str) -> Tuple[int, int, int]:
    try:
        batch, height, width = (int(part) for part in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: expected BATCHxHEIGHTxWIDTH, e.g. 1x37x53') from None
    if batch < 1 or min(height, width) < MIN_EXPORT_SIZE:
        raise argparse.ArgumentTypeError(f'{text!r}: batch must be >= 1 and sides >= {MIN_EXPORT_SIZE}')
    return batch, height, width


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='vlunet-export', description=__doc__.split('\n\n')[0])
    parser.add_argument('--net-weights', required=True, help='BasicSR weight file of the network')
    parser.add_argument('-opt', help='option file whose network_g is exported (default: VLUNet, de_dim from weights)')
    parser.add_argument('--arch-json', help='network_g as JSON instead of -opt, e.g. \'{"type": "VLUNet"}\'')
    parser.add_argument('-o', '--out', required=True, help='output folder')
    parser.add_argument('--formats', nargs='+', choices=('onnx', 'pt2'), default=['onnx', 'pt2'])
    parser.add_argument('--clip-weights', help='degradation-encoder weights (with --degradation-image)')
    parser.add_argument('--degradation-image', help='fold the CLIP degradation vector of this image into the export')
    parser.add_argument('--check-sizes', nargs='+', type=_size, default=[_size(s) for s in DEFAULT_CHECK_SIZES],
                        help='BATCHxHEIGHTxWIDTH inputs compared with PyTorch (default: %(default)s)')
    parser.add_argument('--tolerance', type=float, default=1e-4, help='largest accepted relative error')
    args = parser.parse_args(argv)
    if args.degradation_image and not args.clip_weights:
        parser.error('--degradation-image needs --clip-weights (the encoder that computes the vector)')
    return args


def network_options(args: argparse.Namespace) -> Optional[dict]:
    """``network_g`` from ``-opt`` or ``--arch-json``; None for the default (VLUNet)."""
    if args.opt:
        opt = load_option_file(args.opt)
        if not isinstance(opt.get('network_g'), dict):
            raise OptionError(f'{args.opt}: no `network_g` section to export.')
        return dict(opt['network_g'])
    if args.arch_json:
        options = json.loads(args.arch_json)
        if not isinstance(options, dict) or 'type' not in options:
            raise OptionError(f'--arch-json must be a JSON object with a "type", got {args.arch_json!r}')
        return options
    return None


def fixed_degradation(args: argparse.Namespace) -> Optional[torch.Tensor]:
    """(1, D) CLIP degradation vector of ``--degradation-image``, or None."""
    if not args.degradation_image:
        return None
    restorer = Restorer(args.net_weights, clip_weights=args.clip_weights, network_options=network_options(args),
                        device='cpu')
    image = torch.from_numpy(load_image(args.degradation_image).transpose(2, 0, 1).copy()).unsqueeze(0).float()
    return restorer.encode_degradation(image)


def report(name: str, checks: List[ExportCheck], tolerance: float) -> bool:
    """Print one line per checked size; True if all are within ``tolerance``."""
    ok = True
    for check in checks:
        passed = check.max_relative_error <= tolerance
        ok = ok and passed
        print(f'  {name} {check.batch}x3x{check.height}x{check.width}: max relative error '
              f'{check.max_relative_error:.2e} {"ok" if passed else "FAILED"}')
    return ok


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        net = build_restoration_network(args.net_weights, network_options(args)).cpu()
        check_exportable(net)
        net = fixed_degradation_or_none(net, fixed_degradation(args))
    except (OSError, ValueError, RuntimeError, OptionError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    stem = osp.splitext(osp.basename(args.net_weights))[0]
    os.makedirs(args.out, exist_ok=True)
    print(f'exporting {type(net).__name__} (dynamic batch, height and width >= {MIN_EXPORT_SIZE}) ...', flush=True)
    program = export_program(net)
    ok = True
    if 'pt2' in args.formats:
        path = osp.join(args.out, f'{stem}.pt2')
        with atomic_output(path) as temporary:
            torch.export.save(program, temporary)
        print(f'wrote {path}')
        ok = report('pt2', check_program(torch.export.load(path), net, args.check_sizes), args.tolerance) and ok
    if 'onnx' in args.formats:
        path = osp.join(args.out, f'{stem}.onnx')
        with atomic_output(path) as temporary:
            export_onnx(program, temporary)
        print(f'wrote {path}')
        ok = report('onnx', check_onnx(path, net, args.check_sizes), args.tolerance) and ok
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
