"""Perceive-IR stage 1: QualityPrompts layout and gradients, QualityTripletDataset, QualityPromptModel training."""
import csv
import glob
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import vlunet  # noqa: F401
from vlunet.archs.perceiveir.perceiveir_prompts_arch import QualityPrompts
from vlunet.data.perceiveir.perceiveir_triplet_dataset import QualityTripletDataset

from helpers import TINY_CLIP_CONFIG, TINY_CLIP_NAME, run_entry, smooth_image, write_image

WORD_IDS = {'terrible': 9741, 'mediocre': 41170, 'excellent': 4239}  # CLIP BPE ids (one token each)


@pytest.fixture(scope='module')
def prompts(tiny_clip_name):
    torch.manual_seed(0)
    return QualityPrompts(backbone=tiny_clip_name, num_vectors=16)


def test_word_token_embedding_is_in_the_last_slot(prompts):
    embedding = prompts.clip.token_embedding.weight
    for k, word in enumerate(prompts.words):
        assert torch.equal(prompts.prompt_vectors[k, -1], embedding[WORD_IDS[word]])
        others = prompts.prompt_vectors[k, :-1]
        assert 0.015 < float(others.detach().std()) < 0.025  # N(0, 0.02) elsewhere
        assert not any(torch.allclose(v, embedding[WORD_IDS[word]]) for v in others)
    assert prompts.prompt_vectors.shape == (3, 16, TINY_CLIP_CONFIG['text_cfg']['width'])


def test_only_the_prompt_vectors_are_trainable_and_saved(prompts):
    assert [name for name, p in prompts.named_parameters() if p.requires_grad] == ['prompt_vectors']
    assert list(prompts.prompt_state_dict()) == ['prompt_vectors']
    prompts.train()
    assert prompts.training and not prompts.clip.training


def test_encoding_equals_clip_text_encoder_on_the_same_tokens(prompts, tiny_clip_name):
    """With the vectors set to the token embeddings of 'X ... X <word>', the prompt is CLIP's encoding of that text."""
    import open_clip
    tokens = open_clip.get_tokenizer(tiny_clip_name)([' '.join(['X'] * 15 + [w]) for w in prompts.words])
    clone = QualityPrompts(backbone=tiny_clip_name)
    with torch.no_grad():
        clone.prompt_vectors.copy_(clone.clip.token_embedding(tokens[:, 1:17]))
        expected = F.normalize(clone.clip.encode_text(tokens), dim=-1)
        torch.testing.assert_close(clone.encode_prompts(), expected, rtol=1e-5, atol=1e-5)


def test_gradient_flows_into_the_prompts_only(prompts):
    prompts.zero_grad()
    logits = 100 * prompts(torch.rand(6, 3, 40, 40))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1, 2])).backward()
    assert prompts.prompt_vectors.grad is not None
    assert (prompts.prompt_vectors.grad.abs().sum(dim=(1, 2)) > 0).all()  # every prompt learns
    assert all(p.grad is None for p in prompts.clip.parameters())


def test_images_get_a_gradient_through_the_frozen_image_tower(prompts):
    """Stage 2's CLIP-aware loss pushes restored images towards 'excellent'."""
    images = torch.rand(2, 3, 33, 47, requires_grad=True)
    (1 - (prompts(images)).softmax(dim=1)[:, 2]).mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_loading_prompts_of_another_shape_names_the_file(prompts):
    with pytest.raises(ValueError, match=r'p\.pth: expected .prompt_vectors. of shape \(3, 16, 64\)'):
        prompts.load_prompt_state_dict({'prompt_vectors': torch.zeros(3, 8, 64)}, 'p.pth')


@pytest.mark.parametrize('options, message', [({'words': ['good']}, 'at least 2 words'),
                                              ({'words': ['bad', 'bad']}, 'distinct'),
                                              ({'num_vectors': 0}, 'num_vectors')])
def test_bad_prompt_options_are_named(tiny_clip_name, options, message):
    with pytest.raises(ValueError, match=message):
        QualityPrompts(backbone=tiny_clip_name, **options)


# ------------------------------------------------------------------ data


BRIGHTNESS = {'lq': 0.15, 'medium': 0.5, 'gt': 1.0}


def _write_triplets(root, count: int, size: int = 40) -> str:
    """Separable triplets (a random CLIP tells brightness apart): degraded = dark, medium = dim, gt = clean.

    Returns the meta-info path.
    """
    lines = ['# degraded,medium,gt']
    for i in range(count):
        clean = smooth_image(i, size, size + 3).astype(np.float32)
        for kind, scale in BRIGHTNESS.items():
            write_image(str(root / kind / f'{i}.png'), (clean * scale).round().astype(np.uint8))
        lines.append(f'lq/{i}.png,medium/{i}.png,gt/{i}.png')
    (root / 'meta_info.txt').write_text('\n'.join(lines) + '\n')
    return str(root / 'meta_info.txt')


def test_triplet_dataset_crops_the_three_images_alike(tmp_path):
    meta = _write_triplets(tmp_path, 2)
    train = QualityTripletDataset({'meta_info_file': meta, 'crop_size': 24, 'phase': 'train'})
    folders = QualityTripletDataset({**{f'dataroot_{k}': str(tmp_path / k) for k in ('lq', 'medium', 'gt')},
                                     'crop_size': 24, 'phase': 'val'})
    assert len(train) == len(folders) == 2
    sample = folders[1]
    assert sample['lq_path'].endswith('lq/1.png') and sample['medium_path'].endswith('medium/1.png')
    for kind in ('lq', 'medium', 'gt'):
        assert sample[kind].shape == (3, 24, 24)
    for sample in [sample] + [train[0] for _ in range(6)]:  # val: centre crop; train: random crops and flips
        for kind in ('lq', 'medium'):  # the same crop (and flip) of all three: pixel-wise brightness ratios hold
            assert float((sample[kind] - BRIGHTNESS[kind] * sample['gt']).abs().max()) < 3 / 255


def test_triplet_dataset_errors_name_the_problem(tmp_path):
    (tmp_path / 'bad.txt').write_text('a.png,b.png\n')
    with pytest.raises(ValueError, match=r'bad.txt:1: expected "degraded,medium,gt"'):
        QualityTripletDataset({'meta_info_file': str(tmp_path / 'bad.txt'), 'crop_size': 8})
    with pytest.raises(ValueError, match='not both or neither'):
        QualityTripletDataset({'crop_size': 8})
    with pytest.raises(ValueError, match='restore writes it'):
        QualityTripletDataset({'meta_info_file': str(tmp_path / 'missing.txt'), 'crop_size': 8})


# ------------------------------------------------------------------ training through vlunet/train.py


def _options(root, meta: str, total_iter: int) -> dict:
    dataset = {'type': 'QualityTripletDataset', 'meta_info_file': meta, 'crop_size': 32}
    return {
        'name': 'prompts_tiny', 'model_type': 'QualityPromptModel', 'num_gpu': 0, 'manual_seed': 0,
        'network_prompts': {'type': 'QualityPrompts', 'backbone': str(root / f'{TINY_CLIP_NAME}.json'),
                            'pretrained': None, 'num_vectors': 4},
        'datasets': {
            'train': {**dataset, 'name': 'train', 'use_shuffle': True, 'num_worker_per_gpu': 0,
                      'batch_size_per_gpu': 6, 'dataset_enlarge_ratio': 1},
            'val': {**dataset, 'name': 'val'}},
        'path': {'pretrain_network_prompts': None, 'resume_state': None},
        'train': {'logit_scale': 100, 'optim_prompts': {'type': 'AdamW', 'lr': 1e-2, 'weight_decay': 0},
                  'total_iter': total_iter},
        'val': {'val_freq': 10, 'save_img': False,
                'metrics': {'accuracy': {'type': 'calculate_degradation_accuracy'},
                            'accuracy_medium': {'type': 'calculate_degradation_accuracy', 'label': 1}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 10, 'use_tb_logger': False},
    }


def _log(root) -> str:
    return ''.join(open(p, encoding='utf-8').read()
                   for p in sorted(glob.glob(str(root / 'experiments/prompts_tiny/*.log'))))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp('perceiveir_prompts')
    meta = _write_triplets(root, 6)
    (root / f'{TINY_CLIP_NAME}.json').write_text(json.dumps(TINY_CLIP_CONFIG))
    path = root / 'train.yml'
    path.write_text(yaml.safe_dump(_options(root, meta, 20), sort_keys=False))
    result = run_entry('train', ['-opt', str(path)], str(root))
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.multiprocess
def test_training_lowers_the_loss_and_raises_the_accuracy(trained):
    log = _log(trained)
    losses = [float(v) for v in re.findall(r'l_prompt: ([0-9.e+-]+)', log)]
    assert len(losses) == 20
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4, losses
    accuracies = [float(v) for v in re.findall(r'# accuracy: ([0-9.]+)', log)]
    assert len(accuracies) == 2 and accuracies[-1] > 60, accuracies  # 3-way chance: 33 %; the tiny random CLIP
    # tells dark from clean, not always the dim middle class
    assert re.search(r'# accuracy_medium: [0-9.]+', log) and 'Accuracy per image kind (%): degraded' in log


@pytest.mark.multiprocess
def test_heatmap_rows_are_image_kinds_and_columns_are_prompts(trained):
    with open(trained / 'experiments/prompts_tiny/visualization/val/quality_similarity_20.csv', encoding='utf-8') as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == ['terrible', 'mediocre', 'excellent']
    assert [r[0] for r in rows[1:]] == ['degraded', 'medium', 'ground truth']
    matrix = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-5)
    assert glob.glob(str(trained / 'experiments/prompts_tiny/visualization/val/quality_similarity_20.png'))


@pytest.mark.multiprocess
def test_checkpoint_holds_the_prompt_vectors_only_and_resumes(trained):
    checkpoint = torch.load(trained / 'experiments/prompts_tiny/models/net_prompts_20.pth', weights_only=True)
    assert list(checkpoint['params']) == ['prompt_vectors'] \
        and checkpoint['params']['prompt_vectors'].shape == (3, 4, 64)
    assert checkpoint['words'] == ['terrible', 'mediocre', 'excellent'] and checkpoint['logit_scale'] == 100
    state = torch.load(trained / 'experiments/prompts_tiny/training_states/20.state', weights_only=False)
    assert len(state['optimizers'][0]['state']) == 1  # the prompt vectors, no CLIP tensor
    opt = _options(trained, str(trained / 'meta_info.txt'), 22)
    (trained / 'resume.yml').write_text(yaml.safe_dump(opt, sort_keys=False))
    result = run_entry('train', ['-opt', str(trained / 'resume.yml'), '--auto_resume'], str(trained))
    assert result.returncode == 0, result.stderr[-3000:]
    log = _log(trained)
    assert re.search(r'Loaded the quality prompts from .*net_prompts_20\.pth', log)
    assert re.search(r'iter:\s+21,', log) and re.search(r'iter:\s+22,', log)
