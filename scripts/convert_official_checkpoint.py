"""Convert an official VLU-Net release file into BasicSR weight files for this plugin.

Usage: python scripts/convert_official_checkpoint.py SRC OUT_DIR

SRC is an official Lightning ``.ckpt`` (e.g. ``5task_vlunet.ckpt``) or the official ``clip_tuned.pth``.
Writes ``OUT_DIR/<stem>_net.pth`` (for ``network_g: {type: VLUNet, de_dim: <printed>}``) and, when SRC
carries CLIP weights, ``OUT_DIR/<stem>_clip.pth`` (for ``path.pretrain_network_degradation_encoder``).
"""
import argparse
import sys

import vlunet  # noqa: F401  (compat shim before basicsr)
from vlunet.utils.official_checkpoint import convert_official_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='official .ckpt or clip_tuned.pth')
    parser.add_argument('out_dir', help='folder for the converted .pth files (created if missing)')
    args = parser.parse_args(argv)
    try:
        written = convert_official_checkpoint(args.src, args.out_dir)
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


if __name__ == '__main__':
    sys.exit(main())
