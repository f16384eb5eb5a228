"""Evaluate a degradation-aware CLIP checkpoint: zero-shot accuracy table and image-text similarity heat-map.

Usage::

    python scripts/clip_report.py -opt options/train_clip_nhrbl.yml \\
        --weights experiments/clip_nhrbl/models/net_clip_latest.pth [--dataset val] [--out results/clip_report]

Uses the option file's ``network_clip``, ``degradation_prompts``, ``train.clip_opt`` (how images and
prompts are scored; default: paper Eq. 5 cosine) and the dataset ``datasets.<--dataset>``. ``--weights``
(default: ``path.pretrain_network_clip``) may be a fine-tuning checkpoint, a converted ``*_clip.pth``,
an official ``clip_tuned.pth`` or an official ``.ckpt``. Prints the per-degradation accuracy table
(Markdown), the same accuracies as one row per model (the DA-CLIP paper's Table 4 layout: one
column per degradation, then their mean as ``Average``) and writes ``<out>/similarity.png``,
``similarity.csv`` and ``accuracy.md``. The option file's ``model_type`` picks the model:
``CLIPFinetuneModel`` (DegradationCLIP) or ``DACLIPModel`` (DA-CLIP: ``--weights`` may then be a
DACLIPModel checkpoint, a converted ``*_daclip.pth`` or the official ``daclip_ViT-B-32.pt``).
"""
import argparse
import copy
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import vlunet  # noqa: F401,E402  (compat shim before basicsr; registration)
from vlunet.guidance.degradation_classification import format_accuracy_table, write_heatmap  # noqa: E402
from vlunet.options import OptionError, load_option_file  # noqa: E402
from vlunet.utils.atomic_write import atomic_write_text  # noqa: E402
from vlunet.utils.safe_load import report_bad_files  # noqa: E402

from basicsr.data import build_dataset  # noqa: E402
from basicsr.utils import set_random_seed  # noqa: E402
from basicsr.utils.registry import MODEL_REGISTRY  # noqa: E402


def report_options(opt: dict, weights: str, device: str) -> dict:
    """The option dict the model (CLIPFinetuneModel, DACLIPModel) needs for evaluation only (no training state)."""
    opt = copy.deepcopy(opt)
    opt.update(is_train=False, dist=False, num_gpu=0 if device == 'cpu' else 1)
    opt['path'] = {'pretrain_network_clip': weights}
    return opt


def format_table4(classification, prompts, model_name: str) -> str:
    """Accuracy (%) as one Markdown row: a column per degradation (prompt order), then their mean."""
    accuracies = {name: accuracy for name, _, accuracy in classification.accuracies(prompts) if name != 'all'}
    names = [name for name in classification.row_names(prompts) if name in accuracies]
    average = sum(accuracies.values()) / len(accuracies)
    return '\n'.join([f'| Model | {" | ".join(names)} | Average |', '|---|' + '---:|' * (len(names) + 1),
                      f'| {model_name} | {" | ".join(f"{accuracies[n]:.1f}" for n in names)} | {average:.1f} |']) + '\n'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', required=True, help='option file (network_clip, degradation_prompts, datasets)')
    parser.add_argument('--weights', help='CLIP weights (default: path.pretrain_network_clip)')
    parser.add_argument('--dataset', default='val', help='key under datasets: (default: val)')
    parser.add_argument('--out', default=osp.join('results', 'clip_report'), help='output folder')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=('cpu', 'cuda'))
    args = parser.parse_args()
    try:
        opt = load_option_file(args.opt)
    except OptionError as error:
        sys.exit(f'error: {error}')
    weights = args.weights or (opt.get('path') or {}).get('pretrain_network_clip')
    if weights and not osp.isfile(weights):
        sys.exit(f'error: --weights {weights!r} does not exist.')
    if not weights:
        print('warning: no --weights and no path.pretrain_network_clip: the adapters are random.', file=sys.stderr)
    if args.dataset not in (opt.get('datasets') or {}):
        sys.exit(f'error: {args.opt} has no datasets.{args.dataset} (choose with --dataset).')
    dataset_opt = dict(opt['datasets'][args.dataset], phase=args.dataset)
    if opt.get('manual_seed') is not None:  # a random (pretrained: ~) backbone is rebuilt as in training
        set_random_seed(opt['manual_seed'])
    model = MODEL_REGISTRY.get(opt.get('model_type', 'CLIPFinetuneModel'))(report_options(opt, weights, args.device))
    classification = model.classify(DataLoader(build_dataset(dataset_opt), batch_size=1))
    table = format_accuracy_table(classification, model.prompts)
    title = f'{dataset_opt["name"]}: {osp.basename(weights or "random adapters")}'
    write_heatmap(classification, model.prompts, title, osp.join(args.out, 'similarity.png'),
                  osp.join(args.out, 'similarity.csv'))
    atomic_write_text(table, osp.join(args.out, 'accuracy.md'))
    print(table)
    print(format_table4(classification, model.prompts, osp.basename(weights or 'random adapters')))
    print(f'Heat-map: {osp.join(args.out, "similarity.png")} (and similarity.csv, accuracy.md)')


if __name__ == '__main__':
    with report_bad_files():  # a bad weight file: one line (--verbose: the traceback)
        main()
