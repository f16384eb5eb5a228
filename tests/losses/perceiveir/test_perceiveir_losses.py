"""Perceive-IR losses: L_cl (Eq. 12, also over 2 gloo processes), L_clip (Eq. 9, tiny CLIP) and L_dpl (Eqs. 10-11,
random VGG-16), the epoch-start difficulty weights, and the VGG-16 weights file errors."""
import math
import os

import pytest
import torch
from torch import distributed

import vlunet  # noqa: F401  (compat shim before basicsr)
from vlunet.archs.perceiveir.perceiveir_prompts_arch import QualityPrompts
from vlunet.archs.perceiveir.vgg16_features import VGG16_WEIGHTS_FILE, VGG16_WEIGHTS_URL, VGG16Features
from vlunet.losses.perceiveir.perceiveir_contrastive_loss import DegradationPatchContrastiveLoss
from vlunet.losses.perceiveir.perceiveir_perceptual_loss import (
    PAPER_LAYER_WEIGHTS,
    DifficultyAdaptivePerceptualLoss,
    difficulty_weights,
)
from vlunet.losses.perceiveir.perceiveir_quality_loss import QualityPromptLoss

from basicsr.losses import build_loss
from basicsr.utils.registry import MODEL_REGISTRY

from helpers import TINY_CLIP_CONFIG, register_clip_config

# ------------------------------------------------------------------ L_cl (Eq. 12)


def test_contrastive_loss_equals_eq12_by_hand():
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    positive = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]])  # cosines to the anchors: 1, 1/√2, 1/√2
    labels = torch.tensor([0, 0, 1])
    # each negative (a sample of the other label) has cosine 1/√2 to the anchor; τ = 0.5
    expected = [math.log(1 + math.exp((1 / math.sqrt(2) - 1) / 0.5)),  # sample 0: one negative (sample 2)
                math.log(2),  # sample 1: negative as similar as the positive
                math.log(3)]  # sample 2: two negatives (samples 0 and 1)
    loss = build_loss({'type': 'DegradationPatchContrastiveLoss', 'loss_weight': 0.1, 'temperature': 0.5})
    assert loss(anchor, positive, labels).item() == pytest.approx(0.1 * sum(expected) / 3, rel=1e-6)
    assert DegradationPatchContrastiveLoss().temperature == 0.1  # release τ


def test_contrastive_loss_without_negatives_is_zero_with_a_graph():
    anchor = torch.randn(3, 8, requires_grad=True)
    loss = DegradationPatchContrastiveLoss()(anchor, torch.randn(3, 8), torch.tensor([2, 2, 2]))
    loss.backward()
    assert loss.item() == 0 and torch.equal(anchor.grad, torch.zeros(3, 8))
    with pytest.raises(ValueError, match='temperature'):
        DegradationPatchContrastiveLoss(temperature=0)
    with pytest.raises(ValueError, match=r'labels: expected \(3,\) int64'):
        DegradationPatchContrastiveLoss()(anchor, anchor, torch.tensor([0.0, 1.0, 2.0]))


def _global_contrastive_batch():
    generator = torch.Generator().manual_seed(0)
    anchor, positive = torch.randn(4, 8, generator=generator), torch.randn(4, 8, generator=generator)
    return anchor, positive, torch.tensor([0, 0, 1, 1])  # each rank's half has one label: negatives cross ranks


def _contrastive_on_rank(rank: int, init_file: str, folder: str) -> None:
    torch.set_num_threads(1)  # forked: no OpenMP pool in the child
    distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    anchor, positive, labels = _global_contrastive_batch()
    part = slice(2 * rank, 2 * rank + 2)
    local_anchor, local_positive = anchor[part].clone().requires_grad_(), positive[part].clone().requires_grad_()
    loss = DegradationPatchContrastiveLoss(loss_weight=1.0)(local_anchor, local_positive, labels[part])
    loss.backward()
    local_only = DegradationPatchContrastiveLoss(gather=False)(anchor[part], positive[part], labels[part])
    torch.save({'loss': loss.detach(), 'local_only': local_only, 'anchor': local_anchor.grad,
                'positive': local_positive.grad}, os.path.join(folder, f'rank{rank}.pt'))
    distributed.destroy_process_group()


@pytest.mark.multiprocess
def test_contrastive_loss_on_two_processes_equals_one_process(tmp_path):
    # forked, not spawned: the ranks inherit the imported modules instead of importing vlunet again (~10 s each)
    torch.multiprocessing.start_processes(_contrastive_on_rank, args=(str(tmp_path / 'init'), str(tmp_path)),
                                          nprocs=2, start_method='fork')
    anchor, positive, labels = _global_contrastive_batch()
    anchor.requires_grad_(), positive.requires_grad_()
    loss = DegradationPatchContrastiveLoss(loss_weight=1.0)(anchor, positive, labels)
    loss.backward()
    ranks = [torch.load(tmp_path / f'rank{rank}.pt', weights_only=True) for rank in (0, 1)]
    assert loss.item() > 0.1
    assert (ranks[0]['loss'] + ranks[1]['loss']).item() / 2 == pytest.approx(loss.item(), rel=1e-6)
    for rank, saved in enumerate(ranks):
        assert saved['local_only'].item() == 0  # without gathering, a rank's batch has no negative
        part = slice(2 * rank, 2 * rank + 2)  # DDP averages the ranks' gradients: their mean is the 1-process one
        torch.testing.assert_close(saved['anchor'] / 2, anchor.grad[part])
        torch.testing.assert_close(saved['positive'] / 2, positive.grad[part])


# ------------------------------------------------------------------ L_clip (Eq. 9)


@pytest.fixture(scope='module')
def stage1(tmp_path_factory):
    """A tiny CLIP weights file and a stage-1 prompts file written by QualityPromptModel.save_network."""
    folder = tmp_path_factory.mktemp('perceiveir_stage1')
    config = register_clip_config(str(folder), 'vlunet-tiny-quality', TINY_CLIP_CONFIG)
    torch.manual_seed(0)
    opt = {'name': 'stage1', 'num_gpu': 0, 'dist': False, 'is_train': False,
           'network_prompts': {'type': 'QualityPrompts', 'backbone': config, 'num_vectors': 4},
           'path': {'models': str(folder)}}
    model = MODEL_REGISTRY.get('QualityPromptModel')(opt)
    with torch.no_grad():
        model.prompts.prompt_vectors.add_(torch.randn_like(model.prompts.prompt_vectors))  # "learned"
    model.save_network(model.net_prompts, 'net_prompts', 7)
    clip_weights = folder / 'tiny_clip.pt'
    torch.save(model.prompts.clip.state_dict(), clip_weights)
    return {'config': config, 'prompts': str(folder / 'net_prompts_7.pth'), 'clip': str(clip_weights),
            'folder': folder}


def _quality_loss(stage1, **options) -> QualityPromptLoss:
    return build_loss({'type': 'QualityPromptLoss', 'prompts_path': stage1['prompts'], 'clip_backbone':
                       stage1['config'], 'clip_pretrained': stage1['clip'], **options})


@pytest.mark.parametrize('logit_scale', [1.0, 100.0])
def test_quality_loss_is_eq9_with_the_stage1_prompts(stage1, logit_scale):
    loss = _quality_loss(stage1, loss_weight=0.5, logit_scale=logit_scale)
    reference = QualityPrompts(backbone=stage1['config'], pretrained=stage1['clip'], num_vectors=4)
    reference.load_prompt_state_dict(torch.load(stage1['prompts'], weights_only=True)['params'])
    images = torch.rand(3, 3, 40, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        excellent = (logit_scale * reference(images)).softmax(dim=1)[:, 2]  # the last word: excellent
    assert loss.words == ['terrible', 'mediocre', 'excellent']
    assert loss(images).item() == pytest.approx(0.5 * (1 - excellent).mean().item(), rel=1e-5)


def test_quality_loss_gradient_reaches_the_image_only_and_lowers_the_loss(stage1):
    loss = _quality_loss(stage1, loss_weight=1.0, logit_scale=100.0)
    loss.train()
    assert not loss.image_encoder.training and not any(p.requires_grad for p in loss.parameters())
    assert {id(p) for p in loss.parameters()} == {id(p) for p in loss.image_encoder.parameters()}  # no text tower
    assert list(loss.state_dict()) == [f'image_encoder.{k}' for k in loss.image_encoder.state_dict()]
    image = torch.full((1, 3, 32, 32), 0.5, requires_grad=True)
    values = []
    for _ in range(3):
        value = loss(image)
        image.grad = None
        value.backward()
        values.append(value.item())
        with torch.no_grad():
            image -= 0.05 * image.grad.sign()
    assert image.grad.abs().sum() > 0 and all(p.grad is None for p in loss.parameters())
    assert values[2] < values[0], values


def test_quality_loss_errors_name_the_prompts_file(stage1, tmp_path):
    base = {'clip_backbone': stage1['config'], 'clip_pretrained': stage1['clip']}
    with pytest.raises(ValueError, match='prompts_path: not set; give the stage-1 prompts file'):
        QualityPromptLoss(**base)
    with pytest.raises(FileNotFoundError, match=r'missing\.pth does not exist; .*train_perceiveir_prompts\.yml'):
        QualityPromptLoss(prompts_path=str(tmp_path / 'missing.pth'), **base)
    torch.save({'params': {'conv.weight': torch.zeros(1)}}, tmp_path / 'net_g.pth')
    with pytest.raises(ValueError, match=r'net_g\.pth is not a stage-1 prompts file'):
        QualityPromptLoss(prompts_path=str(tmp_path / 'net_g.pth'), **base)
    other = register_clip_config(str(tmp_path), 'vlunet-tiny-other', TINY_CLIP_CONFIG)
    with pytest.raises(ValueError, match="learned with the CLIP backbone 'vlunet-tiny-quality'"):
        QualityPromptLoss(prompts_path=stage1['prompts'], clip_backbone=other, clip_pretrained=stage1['clip'])


# ------------------------------------------------------------------ L_dpl (Eqs. 10-11) and VGG-16


@pytest.fixture(scope='module')
def dpl():
    torch.manual_seed(0)
    return build_loss({'type': 'DifficultyAdaptivePerceptualLoss', 'vgg_weights': 'random', 'loss_weight': 0.1})


def _dpl_inputs(batch: int = 2, count: int = 3, size: int = 16):
    generator = torch.Generator().manual_seed(2)
    gt = torch.rand(batch, 3, size, size, generator=generator)
    output = (gt + 0.1 * torch.randn(gt.shape, generator=generator)).clamp(0, 1)
    negatives = torch.rand(batch, count, 3, size, size, generator=generator)
    return output, gt, negatives


def test_perceptual_loss_is_zero_when_the_anchor_is_the_positive(dpl):
    _, gt, negatives = _dpl_inputs()
    weights, mask = torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool)
    assert dpl(gt.clone(), gt, negatives, weights, mask).item() == 0
    assert dpl(negatives[:, 1], gt, negatives, weights, mask).item() > 0


def test_perceptual_loss_is_eq11(dpl):
    output, gt, negatives = _dpl_inputs()
    weights = torch.tensor([[9.0, 1.25, 0.75], [9.0, 0.75, 1.25]])  # column 0 (the degraded input) is λ = 2
    mask = torch.tensor([[True, True, True], [True, False, True]])
    assert dpl.layer_weights == PAPER_LAYER_WEIGHTS and list(PAPER_LAYER_WEIGHTS) == [
        'relu1_2', 'relu2_2', 'relu3_1', 'relu3_3'] and dpl.easy_weight == 2
    with torch.no_grad():
        features = [dpl.vgg(image) for image in (output, gt, *negatives.unbind(1))]
    expected = []
    for b in range(2):
        total = 0
        for name, xi in PAPER_LAYER_WEIGHTS.items():
            def distance(index):
                return (features[index][name][b] - features[0][name][b]).abs().mean()
            denominator = 2 * distance(2) + sum(weights[b, k] * distance(2 + k) for k in (1, 2) if mask[b, k])
            total += xi * distance(1) / denominator
        expected.append(total)
    assert dpl(output, gt, negatives, weights, mask).item() == pytest.approx(0.1 * sum(expected).item() / 2, rel=1e-5)


def test_masked_negatives_are_ignored_and_weights_act_the_right_way(dpl):
    output, gt, negatives = _dpl_inputs(batch=1)
    mask = torch.tensor([[True, True, False]])
    garbage = negatives.clone()
    garbage[0, 2] = float('nan')
    weights = torch.tensor([[1.0, 1.25, float('nan')]])
    masked = dpl(output, gt, garbage, weights, mask)
    assert torch.isfinite(masked)
    assert masked.item() == pytest.approx(dpl(output, gt, negatives[:, :2], weights[:, :2], mask[:, :2]).item(),
                                          rel=1e-6)
    # a heavier negative enlarges the denominator: the loss falls
    hard, very_hard = (dpl(output, gt, negatives[:, :2], torch.tensor([[1.0, w]]), mask[:, :2]) for w in (1.25, 0.75))
    assert hard < very_hard
    heavier_easy = DifficultyAdaptivePerceptualLoss(vgg_weights='random', easy_weight=4.0)
    heavier_easy.vgg.load_state_dict(dpl.vgg.state_dict())
    assert heavier_easy(output, gt, negatives[:, :2], weights[:, :2], mask[:, :2]) < masked


def test_perceptual_loss_gradient_reaches_the_output_only(dpl):
    output, gt, negatives = _dpl_inputs()
    output.requires_grad_(), gt.requires_grad_(), negatives.requires_grad_()
    dpl.train()
    dpl(output, gt, negatives, torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool)).backward()
    assert output.grad.abs().sum() > 0 and gt.grad is None and negatives.grad is None
    assert not any(m.training for m in dpl.vgg.modules())
    assert all(p.grad is None and not p.requires_grad for p in dpl.parameters())
    with pytest.raises(ValueError, match=r'negative_mask must be \(B, K\)'):
        dpl(output, gt, negatives, torch.ones(2, 3), torch.ones(2, 2, dtype=torch.bool))


def test_difficulty_weights_compare_each_proxy_with_the_network():
    psnr = {'promptir': 30.5, 'instructir': 27.0, 'medium': 29.0, 'identity': float('inf')}
    assert difficulty_weights(psnr, 29.0) == {'promptir': 0.75, 'instructir': 1.25, 'medium': 1.25, 'identity': 0.75}
    assert difficulty_weights(psnr, 31.0, gamma=0.1) == {'promptir': 1.1, 'instructir': 1.1, 'medium': 1.1,
                                                         'identity': 0.9}
    with pytest.raises(ValueError, match='gamma'):
        difficulty_weights(psnr, 29.0, gamma=1.0)
    with pytest.raises(ValueError, match="proxy 'bad' is NaN"):
        difficulty_weights({'bad': float('nan')}, 29.0)


def test_vgg_layers_are_named_and_not_overwritten_by_inplace_relus():
    torch.manual_seed(0)
    vgg = VGG16Features(['relu1_2', 'conv2_2', 'relu2_2'], weights='random')
    assert len(vgg.features) == 9  # built up to relu2_2 only
    features = vgg(torch.rand(1, 3, 16, 16))
    assert (features['conv2_2'] < 0).any() and features['conv2_2'].shape == (1, 128, 8, 8)
    torch.testing.assert_close(features['relu2_2'], features['conv2_2'].clamp(min=0))
    with pytest.raises(ValueError, match='relu9_9'):
        VGG16Features(['relu9_9'], weights='random')


def test_vgg_weights_file_missing_wrong_or_cached(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    cached = tmp_path / 'torch' / 'hub' / 'checkpoints' / VGG16_WEIGHTS_FILE
    with pytest.raises(FileNotFoundError) as error:
        DifficultyAdaptivePerceptualLoss()
    message = str(error.value)
    assert VGG16_WEIGHTS_URL in message and str(cached) in message and 'set vgg_weights to' in message
    with pytest.raises(FileNotFoundError, match=r'vgg_weights: the ImageNet VGG-16 weights .*elsewhere\.pth'):
        DifficultyAdaptivePerceptualLoss(vgg_weights=str(tmp_path / 'elsewhere.pth'))
    torch.save({'conv.weight': torch.zeros(1)}, tmp_path / 'wrong.pth')
    with pytest.raises(ValueError, match=r'wrong\.pth is not a VGG-16 state dict .*missing \[.features\.0\.weight'):
        VGG16Features(['relu1_1'], weights=str(tmp_path / 'wrong.pth'))
    cached.parent.mkdir(parents=True)
    conv = torch.nn.Conv2d(3, 64, 3, padding=1)
    torch.save({'features.0.weight': conv.weight.detach(), 'features.0.bias': conv.bias.detach(),
                'classifier.0.weight': torch.zeros(1)}, cached)
    vgg = VGG16Features(['relu1_1'])
    assert torch.equal(vgg.features[0].weight, conv.weight) and not vgg.features[0].weight.requires_grad
