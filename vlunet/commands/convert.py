"""Convert an official VLU-Net release file into BasicSR weight files for this plugin.

Usage: vlunet-convert SRC OUT_DIR [--trust-file]

SRC is an official Lightning ``.ckpt`` (e.g. ``5task_vlunet.ckpt``) or the official ``clip_tuned.pth``.
Writes ``OUT_DIR/<stem>_net.pth`` (for ``network_g: {type: VLUNet, de_dim: <printed>}``) and, when SRC
carries CLIP weights, ``OUT_DIR/<stem>_clip.pth`` (for ``path.pretrain_network_degradation_encoder``).
DA-CLIP's restoration network ``universal-ir.pth`` gives ``OUT_DIR/universal-ir_net.pth`` (for
``network_g: {type: ConditionalUNet}``; :mod:`vlunet.convert.irsde_checkpoint`).

SRC is unpickled without running code from it: a file holding anything but tensors, plain containers
and the few objects official files need is refused, naming them. ``--trust-file`` unpickles SRC fully,
which runs whatever code the file carries: use it only for a file whose origin you trust.

An official VLU-Net file is checked before it is converted (:mod:`vlunet.convert.vlunet_release`):
size, keys and shapes, the detected ``de_dim``, and its SHA-256 printed for you to compare with your
download source; nothing is written when a check fails. ``--verify-only`` checks and stops. A missing
SRC gets a pointer to where the files come from (the authors' package, LAION's CLIP weights).
"""
import argparse
import os
import sys

import vlunet  # noqa: F401  (compat shim before basicsr)
from vlunet.convert.daclip_checkpoint import convert_daclip_checkpoint, is_daclip_file
from vlunet.convert.irsde_checkpoint import convert_irsde_checkpoint, is_irsde_unet_file
from vlunet.convert.vlunet_checkpoint import convert_official_checkpoint
from vlunet.convert.vlunet_release import missing_file_message, verify_official_file
from vlunet.utils.safe_load import BadFileError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='vlunet-convert', description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='official .ckpt or clip_tuned.pth')
    parser.add_argument('out_dir', help='folder for the converted .pth files (created if missing)')
    parser.add_argument('--trust-file', action='store_true',
                        help='unpickle SRC fully (torch.load weights_only=False): this RUNS ANY CODE stored in the '
                             'file; only for a file whose origin you trust that is refused without it')
    parser.add_argument('--verify-only', action='store_true', help='check SRC (size, keys, de_dim, SHA-256) and stop')
    args = parser.parse_args(argv)
    try:
        return _convert(args)
    except BadFileError as error:  # a damaged or wrong file found while probing its kind
        print(f'error: {error}', file=sys.stderr)
        return 1


def _convert(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.src):
        print(f'error: {missing_file_message(args.src)}', file=sys.stderr)
        return 1
    if is_irsde_unet_file(args.src):
        return _convert_irsde(args.src, args.out_dir, args.trust_file)
    if is_daclip_file(args.src):
        return _convert_daclip(args.src, args.out_dir, args.trust_file)
    check = verify_official_file(args.src, trusted=args.trust_file)
    print(check.report())
    if check.problems:
        print(f'error: {args.src} failed the checks above; nothing was converted.', file=sys.stderr)
        return 1
    if args.verify_only:
        return 0
    try:
        written = convert_official_checkpoint(args.src, args.out_dir, trusted=args.trust_file)
    except (FileNotFoundError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    if written.net_path:
        print(f'wrote restoration network: {written.net_path} (detected de_dim={written.de_dim}: '
              f'use network_g: {{type: VLUNet, de_dim: {written.de_dim}}})')
    if written.clip_path:
        contents = 'CLIP backbone and adapters' if written.clip_has_backbone else 'CLIP adapters only'
        print(f'wrote degradation encoder ({contents}): {written.clip_path}')
    return 0


def _convert_irsde(src: str, out_dir: str, trusted: bool) -> int:
    """DA-CLIP's released restoration network (universal-ir.pth): vlunet.convert.irsde_checkpoint."""
    try:
        written = convert_irsde_checkpoint(src, out_dir, trusted=trusted)
    except (FileNotFoundError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    print(f'wrote IR-SDE restoration network ({written.num_params:,d} parameters): {written.net_path} '
          f'(use network_g: {written.config})')
    return 0


def _convert_daclip(src: str, out_dir: str, trusted: bool) -> int:
    """DA-CLIP's released encoder (daclip_ViT-B-32.pt): vlunet.convert.daclip_checkpoint."""
    from vlunet.utils.safe_load import UnsafeCheckpointError
    try:
        path = convert_daclip_checkpoint(src, out_dir, trusted=trusted)
    except (FileNotFoundError, ValueError, UnsafeCheckpointError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    print('wrote DA-CLIP encoder (backbone, controller, zero linears, temperature; '
          f'{os.path.getsize(path) / 2**20:.1f} '
          f'MiB): {path} (use DACLIP.load_weights, or degradation_encoder: {{type: DACLIP}} with '
          'path.pretrain_network_degradation_encoder)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
