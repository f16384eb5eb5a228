"""DegradationCLIP (preprocessing, frozen backbone, adapters, weight loading), CLIP losses, accuracy and heat-map."""
import json
import math

import cv2
import numpy as np
import open_clip
import pytest
import torch
from torchvision import transforms

import vlunet  # noqa: F401
from vlunet.archs.degradation_clip_arch import DegradationCLIP, clip_preprocess
from vlunet.losses.vlunet.degradation_contrastive_loss import (
    DegradationContrastiveLoss,
    MultiPositiveContrastiveLoss,
    PromptCrossEntropyLoss,
)
from vlunet.metrics.degradation_accuracy_metric import calculate_degradation_accuracy, similarity_matrix
from vlunet.utils.similarity_heatmap import colour_bar, draw_heatmap, format_similarity_csv

from helpers import TINY_CLIP_CONFIG

TAU = 1 / 0.07


@pytest.fixture(scope='module')
def clip(tiny_clip_name):
    torch.manual_seed(0)
    return DegradationCLIP(backbone=tiny_clip_name, pretrained=None)


def _official_adapters(clip: DegradationCLIP, encoder_prefix: str = '') -> dict:
    return {f'{encoder_prefix}ad_{side}Encoder.adapter.{k[len(side) + len("_adapter."):]}': torch.randn_like(v)
            for k, v in clip.adapter_state_dict().items() for side in ('image', 'text') if k.startswith(side)}


@pytest.mark.parametrize('size', [(50, 80), (300, 250), (224, 224)])
def test_preprocessing_equals_torchvision_resize_crop_normalize(size):
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(1))
    reference = transforms.Compose([
        transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.CenterCrop(224),
        transforms.Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)])(image)
    torch.testing.assert_close(clip_preprocess(image[None])[0], reference, rtol=0, atol=1e-6)


def test_encode_degradation_is_the_adapter_on_unnormalised_image_features(clip):
    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    expected = clip.image_adapter(clip.backbone.encode_image(clip_preprocess(images), normalize=False))
    torch.testing.assert_close(clip.encode_degradation(images), expected)
    assert clip(images).shape == (2, 512)
    assert clip.encode_text(['image with haze', 'image with rain']).shape == (2, 512)
    with pytest.raises(ValueError, match=r'float RGB images \(B, 3, H, W\)'):
        clip.encode_degradation((images * 255).to(torch.uint8))
    with pytest.raises(ValueError, match='non-empty list of strings'):
        clip.encode_text('image with haze')


def test_backbone_is_frozen_in_eval_mode_and_gets_no_gradient(clip):
    clip.train()
    assert not clip.backbone.training and clip.image_adapter.training
    assert not any(p.requires_grad for p in clip.backbone.parameters())
    clip.zero_grad()
    images_emb, text_emb = clip(torch.rand(2, 3, 32, 32), ['image with noise'])
    (images_emb.sum() + text_emb.sum()).backward()
    assert all(p.grad is None for p in clip.backbone.parameters())
    assert all(p.grad is not None for p in clip.image_adapter.parameters())
    assert all(p.grad is not None for p in clip.text_adapter.parameters())


def test_adapter_layout_and_activation(tiny_clip_name):
    leaky = DegradationCLIP(backbone=tiny_clip_name, adapter_activation='leaky_relu')
    types = [type(m).__name__ for m in leaky.image_adapter]
    assert types == ['Linear', 'LayerNorm', 'LeakyReLU', 'Linear', 'LayerNorm', 'LeakyReLU', 'Linear', 'LayerNorm']
    assert len(leaky.adapter_state_dict()) == 24
    assert sum(v.numel() for v in leaky.adapter_state_dict().values()) == 2 * 791040
    with pytest.raises(ValueError, match='adapter_activation'):
        DegradationCLIP(backbone=tiny_clip_name, adapter_activation='relu')


def test_backbone_from_a_config_json_and_bad_backbones(tmp_path, tiny_clip_name):
    config = tmp_path / 'my-clip.json'
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    assert DegradationCLIP(backbone=str(config)).backbone_name == 'my-clip'
    with pytest.raises(FileNotFoundError, match='missing.json'):
        DegradationCLIP(backbone=str(tmp_path / 'missing.json'))
    with pytest.raises(ValueError, match='unknown open_clip model'):
        DegradationCLIP(backbone='ViT-Nope')
    with pytest.raises(ValueError, match='neither a file nor an open_clip tag'):
        DegradationCLIP(backbone=tiny_clip_name, pretrained='no_such_tag')


def test_unavailable_tag_names_the_file_to_obtain(monkeypatch):
    def offline(*args, **kwargs):
        raise FileNotFoundError('no network')
    monkeypatch.setattr(open_clip.factory, 'download_pretrained', offline)
    with pytest.raises(RuntimeError) as error:
        DegradationCLIP(backbone='ViT-B-32', pretrained='laion2b_s34b_b79k')
    message = str(error.value)
    assert 'laion/CLIP-ViT-B-32-laion2B-s34B-b79K' in message and 'open_clip_pytorch_model.bin' in message
    assert 'local file path' in message


def test_pretrained_from_open_clip_checkpoint_or_converted_file(tmp_path, clip, tiny_clip_name):
    open_clip_file, converted = tmp_path / 'open_clip_model.bin', tmp_path / 'x_clip.pth'
    torch.save(clip.backbone.state_dict(), open_clip_file)
    torch.save({'params': clip.state_dict()}, converted)
    for path in (open_clip_file, converted):
        rebuilt = DegradationCLIP(backbone=tiny_clip_name, pretrained=str(path))
        torch.testing.assert_close(rebuilt.backbone.state_dict(), clip.backbone.state_dict())
    adapters_only = tmp_path / 'adapters_clip.pth'
    torch.save({'params': clip.adapter_state_dict()}, adapters_only)
    with pytest.raises(ValueError, match='adapters only'):
        DegradationCLIP(backbone=tiny_clip_name, pretrained=str(adapters_only))


def test_loads_official_clip_tuned_and_ckpt(tmp_path, clip, tiny_clip_name):
    learnable = _official_adapters(clip)
    assert len(learnable) == 24
    torch.save({'epoch': 90, 'learnable_params': learnable, 'optimizer': {}}, tmp_path / 'clip_tuned.pth')
    target = DegradationCLIP(backbone=tiny_clip_name)
    assert target.load_weights(str(tmp_path / 'clip_tuned.pth')) == 'adapters'
    torch.testing.assert_close(target.image_adapter[6].weight, learnable['ad_imageEncoder.adapter.6.weight'])
    torch.testing.assert_close(target.text_adapter[1].bias, learnable['ad_textEncoder.adapter.1.bias'])

    backbone = {k: torch.randn_like(v) for k, v in clip.backbone.state_dict().items()}
    state = {f'model_degradation.{k}': v for k, v in _official_adapters(clip).items()}
    for encoder in ('ad_imageEncoder', 'ad_textEncoder'):
        state.update({f'model_degradation.{encoder}.clip_model.{k}': v for k, v in backbone.items()})
    state['net.patch_embed.proj.weight'] = torch.zeros(48, 3, 3, 3)
    torch.save({'epoch': 199, 'state_dict': state}, tmp_path / 'official.ckpt')
    assert target.load_weights(str(tmp_path / 'official.ckpt')) == 'adapters and backbone'
    torch.testing.assert_close(target.backbone.state_dict(), backbone)
    torch.testing.assert_close(target.image_adapter[0].weight,
                               state['model_degradation.ad_imageEncoder.adapter.0.weight'])

    torch.save({'params': {'image_adapter.0.weight': torch.zeros(512, 512)}}, tmp_path / 'partial.pth')
    with pytest.raises(ValueError, match='missing keys'):
        target.load_weights(str(tmp_path / 'partial.pth'))
    torch.save({'something': 1}, tmp_path / 'other.pth')
    with pytest.raises(ValueError, match='no degradation-encoder weights'):
        target.load_weights(str(tmp_path / 'other.pth'))


# ---------------------------------------------------------------- losses on hand-made embeddings

def _one_hot(labels, width=4, scale=1.0):
    return scale * torch.eye(width)[torch.as_tensor(labels)]


def test_eq5_loss_values():
    loss = DegradationContrastiveLoss()
    prompts = _one_hot([0, 1, 2])
    all_positive = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    # Every sample has the same text: all B logits of a row are equal, loss = log B.
    assert loss(all_positive, prompts, torch.zeros(5, dtype=torch.long)).item() == pytest.approx(math.log(5), rel=1e-5)
    labels = torch.tensor([0, 1, 2])
    separated = math.log(1 + 2 * math.exp(-TAU))  # 1.3e-6: float32 resolves it only to ~1e-6
    assert loss(_one_hot(labels), prompts, labels).item() == pytest.approx(separated, abs=2e-6)
    assert DegradationContrastiveLoss(symmetric=True)(_one_hot(labels), prompts, labels).item() == \
        pytest.approx(separated, abs=2e-6)
    assert DegradationContrastiveLoss(temperature=2.0, learnable_temperature=False)(
        _one_hot(labels), prompts, labels).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-5)


def test_eq5_temperature_is_learnable_and_bounded():
    loss = DegradationContrastiveLoss()
    assert loss.temperature.item() == pytest.approx(TAU, rel=1e-6)
    labels = torch.tensor([0, 1])
    loss(torch.randn(2, 4), _one_hot([0, 1]), labels).backward()
    assert loss.log_temperature.grad is not None
    assert not DegradationContrastiveLoss(learnable_temperature=False).log_temperature.requires_grad
    with pytest.raises(ValueError, match='temperature'):
        DegradationContrastiveLoss(temperature=200.0)


def test_official_cross_entropy_on_raw_dot_products():
    loss = PromptCrossEntropyLoss()
    labels = torch.tensor([0, 1, 2])
    # Image = 2 * one-hot, prompt = one-hot: logits 2 on the true prompt, 0 on the K - 1 = 2 others.
    assert loss(_one_hot(labels, scale=2.0), _one_hot([0, 1, 2]), labels).item() == \
        pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-5)
    # Raw dot products: scaling the embeddings changes the loss (no normalisation).
    assert loss(_one_hot(labels, scale=4.0), _one_hot([0, 1, 2]), labels).item() == \
        pytest.approx(math.log(1 + 2 * math.exp(-4)), rel=1e-5)
    with pytest.raises(ValueError, match='prompt indices'):
        loss(_one_hot(labels), _one_hot([0, 1, 2]), torch.tensor([0, 1, 3]))


def test_multi_positive_loss_values():
    loss = MultiPositiveContrastiveLoss()
    same = torch.ones(4, 4)
    # All images and prompts identical: every candidate (K prompts + B - 1 images) has the same score.
    assert loss(same, torch.ones(2, 4), torch.tensor([0, 0, 1, 1])).item() == pytest.approx(math.log(2 + 3), rel=1e-5)
    labels = torch.tensor([0, 0, 1, 1])
    # Perfectly separated: positives (own prompt, same-class image) score τ, the 2 negatives 0.
    expected = math.log(2 + 2 * math.exp(-TAU))
    assert loss(_one_hot(labels), _one_hot([0, 1]), labels).item() == pytest.approx(expected, rel=1e-4)
    prompts_only = MultiPositiveContrastiveLoss(image_to_image=False)
    assert prompts_only(_one_hot(labels), _one_hot([0, 1]), labels).item() == \
        pytest.approx(math.log(1 + math.exp(-TAU)), abs=1e-6)
    # A single image of its class: its only positive is its prompt.
    assert torch.isfinite(loss(_one_hot([0, 1]), _one_hot([0, 1]), torch.tensor([0, 1])))


# ---------------------------------------------------------------- accuracy metric and heat-map

def test_accuracy_metric_and_similarity_matrix():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    labels = np.array([0, 0, 1, 1])
    assert calculate_degradation_accuracy(probabilities, labels) == pytest.approx(50.0)
    assert calculate_degradation_accuracy(probabilities, labels, label=1) == pytest.approx(50.0)
    assert math.isnan(calculate_degradation_accuracy(probabilities, labels, label=2))
    matrix = similarity_matrix(probabilities, labels)
    np.testing.assert_allclose(matrix[0], [0.55, 0.35, 0.1])
    np.testing.assert_allclose(matrix[1], [0.2, 0.55, 0.25])
    assert np.isnan(matrix[2]).all()
    with pytest.raises(ValueError, match='prompt indices'):
        calculate_degradation_accuracy(probabilities, np.array([0, 0, 1, 3]))


def test_heatmap_image_and_csv():
    matrix = np.array([[0.9, 0.1], [np.nan, np.nan]])
    image = draw_heatmap(matrix, ['noise', 'haze'], ['image with noise', 'image with haze'], 'title')
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[0] > 2 * 72
    # NaN cells are grey: the largest connected region of exactly that grey is the missing row, two cells wide
    # (anti-aliased text may have a few pixels of the same grey elsewhere: they are small separate regions).
    grey = np.all(image == 160, axis=2).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(grey, connectivity=4)
    left, top, width, height, area = stats[1 + np.argmax(stats[1:, cv2.CC_STAT_AREA])]
    assert (width, height, area) == (2 * 72, 72, 2 * 72 * 72)
    # The colour bar is the colour map from 1 (top) to 0 (bottom), beside the grid: its grid rows start one cell
    # above the grey row.
    bar = colour_bar(2 * 72)[:, :18]
    grid_top = top - 72
    matches = [x for x in range(left + width, image.shape[1] - 17)
               if np.array_equal(image[grid_top:grid_top + 2 * 72, x:x + 18], bar)]
    assert len(matches) == 1
    csv_text = format_similarity_csv(matrix, ['noise', 'haze'], ['image with noise', 'image with haze'])
    assert csv_text.splitlines() == ['true \\ prompt,image with noise,image with haze', 'noise,0.900000,0.100000',
                                     'haze,,']
    with pytest.raises(ValueError, match='does not match'):
        draw_heatmap(matrix, ['noise'], ['a', 'b'], 'title')
