"""Time DACLIP.encode() against the original DA-CLIP pipeline's computation, side by side, on the same inputs.

Usage::

    python benchmarks/daclip_benchmark.py [--backbone ViT-B-32] [--batch 16] [--size 256 256] [--runs 5] [--threads N]

The original restoration code computes ``encode_image(clip_transform(LQ), control=True)``: per image a
numpy uint8 cast, PIL + torchvision ``Resize(224, BICUBIC)``, ``CenterCrop``, ``ToTensor``, ``Normalize``
(``clip_transform``), then the controller and the controlled frozen tower on the stacked batch. The
"original" column runs exactly that preprocessing code and the same two towers in the original's order,
sequence-first as the 2023 open_clip (``(L, B, W)`` blocks via transposes: an emulation, the original
package is not installed). The "vlunet" column is ``DACLIP.encode`` and ``encode_degradation`` (the
controller only: all VLU-Net guidance needs). Random weights, no gradient, fp32; median of ``--runs``
after a warm-up, printed as a Markdown table with the max relative difference of the embeddings.
"""
import argparse
import os.path as osp
import platform
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import vlunet  # noqa: F401,E402
from vlunet.archs.daclip.daclip_arch import DACLIP  # noqa: E402


def original_clip_transform(images: torch.Tensor) -> torch.Tensor:
    """The original ``clip_transform`` applied image by image (numpy HWC float32 in [0, 1] -> PIL -> torchvision)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from torchvision import transforms as T
    transform = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                           T.ToTensor(), T.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)])
    arrays = images.permute(0, 2, 3, 1).numpy()
    return torch.stack([transform(Image.fromarray((array * 255).astype(np.uint8))) for array in arrays])


def _sequence_first(blocks, tokens: torch.Tensor, after_block) -> torch.Tensor:
    """Run batch-first open_clip blocks on (L, B, W) tokens, as the 2023 seq-first code holds them."""
    for i, block in enumerate(blocks):
        tokens = after_block(i, block(tokens.transpose(0, 1)).transpose(0, 1))
    return tokens


def original_encode_image(model: DACLIP, pixels: torch.Tensor):
    """``encode_image(pixels, control=True)`` in the original's order: hiddens collected, consumed by pop()."""
    hiddens = []

    def collect(i, tokens):
        hiddens.append(model.control_linears[i](tokens))
        return tokens

    controller, main = model.controller, model.backbone.visual
    tokens = _sequence_first(controller.transformer.resblocks, controller._embeds(pixels).transpose(0, 1), collect)
    degradation = controller._pool(tokens.transpose(0, 1))[0] @ controller.proj
    tokens = _sequence_first(main.transformer.resblocks, main._embeds(pixels).transpose(0, 1),
                             lambda i, t: t + hiddens.pop())
    return main._pool(tokens.transpose(0, 1))[0] @ main.proj, degradation


def _median_ms(function, runs: int) -> float:
    function()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--backbone', default='ViT-B-32')
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--size', type=int, nargs=2, default=(256, 256), metavar=('H', 'W'))
    parser.add_argument('--runs', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DACLIP(backbone=args.backbone).eval()
    with torch.no_grad():
        for linear in model.control_linears:  # trained-like controls, so the order matters
            linear.weight.normal_(0, 0.02)
            linear.bias.normal_(0, 0.02)
    images = torch.rand(args.batch, 3, *args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.encode(images)
        reference = original_encode_image(model, original_clip_transform(images))
        error = max(((a - b).norm() / b.norm()).item() for a, b in zip(ours, reference))
        rows = [('original: clip_transform + encode_image(control=True)',
                 _median_ms(lambda: original_encode_image(model, original_clip_transform(images)), args.runs)),
                ('vlunet: DACLIP.encode', _median_ms(lambda: model.encode(images), args.runs)),
                ('vlunet: DACLIP.encode_degradation (controller only)',
                 _median_ms(lambda: model.encode_degradation(images), args.runs)),
                ('  of which preprocessing, original clip_transform', _median_ms(
                    lambda: original_clip_transform(images), args.runs)),
                ('  of which preprocessing, vlunet daclip_preprocess', _median_ms(
                    lambda: model.preprocess(images), args.runs))]
    print(f'{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, '
          f'torch {torch.__version__}; '
          f'{args.backbone}, batch {args.batch}, {args.size[0]}x{args.size[1]} inputs, fp32, median of {args.runs}')
    print('\n| computation | ms |\n|---|---:|')
    for name, ms in rows:
        print(f'| {name} | {ms:.1f} |')
    print(f'\nmax relative difference of the embeddings (vlunet vs original order): {error:.2e}')


if __name__ == '__main__':
    main()
