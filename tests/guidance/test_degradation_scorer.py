"""One degradation detector: CLIP validation, the Restorer and scripts/inference.py score with the same scorer."""
import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import vlunet  # noqa: F401
from vlunet.guidance.degradation_classification import (
    OFFICIAL_SCORER,
    PromptScorer,
    read_scorer,
    scorer_of_checkpoint,
    scorer_of_loss,
)
from vlunet.inference import Restorer
from vlunet.losses.vlunet.degradation_contrastive_loss import DegradationContrastiveLoss, PromptCrossEntropyLoss
from vlunet.models.clip_finetune_model import CLIPFinetuneModel

from basicsr.archs import build_network

from helpers import load_script, smooth_image, write_image

PROMPTS = ['image with noise', 'image with haze', 'image with rain', 'image with blur', 'image with low light']
TINY_SIZES = {'type': 'VLUNet', 'dim': 16, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1,
              'heads': [1, 1, 1, 1], 'key_size': 8}


class _ValidationImages(torch.utils.data.Dataset):
    """Validation samples as CLIPFinetuneModel.classify reads them."""

    def __init__(self, images, label: int):
        self.images, self.label, self.opt = images, label, {'name': 'val'}

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return {'lq': torch.from_numpy(self.images[index]).permute(2, 0, 1), 'task_index': self.label,
                'text': PROMPTS[self.label], 'task': 'x'}


@pytest.fixture(scope='module')
def cosine_trained(tmp_path_factory, tiny_clip_name):
    """A CLIP fine-tuned with a cosine loss whose image embedding is chosen so that dot and cosine disagree.

    The text adapter's last LayerNorm gets a heavy-tailed scale, so the prompt embeddings differ a lot in
    norm; every image embeds to the direction of the *shortest* prompt embedding (image adapter: zero
    LayerNorm scale, bias = that direction). Cosine then picks that prompt; raw dot products a longer one.
    """
    root = tmp_path_factory.mktemp('scorer')
    opt = {'name': 'scorer', 'model_type': 'CLIPFinetuneModel', 'num_gpu': 0, 'is_train': True, 'dist': False,
           'network_clip': {'type': 'DegradationCLIP', 'backbone': tiny_clip_name}, 'degradation_prompts': PROMPTS,
           'path': {'models': str(root / 'models')},
           'train': {'clip_opt': {'type': 'MultiPositiveContrastiveLoss', 'temperature': 20.0},
                     'optim_clip': {'type': 'Adam', 'lr': 1e-3}, 'total_iter': 1}}
    torch.manual_seed(0)
    model = CLIPFinetuneModel(opt)
    clip = model.clip
    with torch.no_grad():
        clip.text_adapter[7].weight.copy_(torch.randn(512, generator=torch.Generator().manual_seed(0)).mul(1.5).exp())
        texts = clip.encode_text(PROMPTS)
        cosine_choice = int(texts.norm(dim=1).argmin())
        clip.image_adapter[7].weight.zero_()
        clip.image_adapter[7].bias.copy_(3 * texts[cosine_choice] / texts[cosine_choice].norm())
        dot_choice = int((clip.image_adapter[7].bias @ texts.T).argmax())
    assert dot_choice != cosine_choice  # the case this test is about
    model.save_network(model.net_clip, 'net_clip', 5)
    torch.save({'params': clip.state_dict()}, str(root / 'backbone.pth'))  # the same random backbone everywhere
    torch.save({'params': build_network(dict(TINY_SIZES, de_dim=3)).state_dict()}, str(root / 'net.pth'))
    images = [smooth_image(seed, 32, 40)[..., ::-1].astype(np.float32) / 255 for seed in (0, 1)]
    write_image(str(root / 'photo.png'), smooth_image(0, 32, 40))
    return {'model': model, 'root': root, 'images': images, 'cosine': cosine_choice, 'dot': dot_choice,
            'clip': str(root / 'models' / 'net_clip_5.pth'), 'net': str(root / 'net.pth'),
            'encoder': {'type': 'DegradationCLIP', 'backbone': tiny_clip_name,
                        'pretrained': str(root / 'backbone.pth')}}


def _fields(scorer: PromptScorer) -> tuple:
    return scorer.name, scorer.temperature


def _restorer(trained, **kwargs) -> Restorer:
    return Restorer(trained['net'], clip_weights=trained['clip'], encoder_options=trained['encoder'],
                    network_options=TINY_SIZES, prompts=PROMPTS, **kwargs)


def test_restorer_detects_what_validation_scores_for_cosine_trained_adapters(cosine_trained):
    model = cosine_trained['model']
    assert torch.load(cosine_trained['clip'], weights_only=True)['scorer'] == {
        'name': 'cosine', 'temperature': float(model.cri_clip.temperature.detach())}
    validation = model.classify(DataLoader(_ValidationImages(cosine_trained['images'], label=0), batch_size=1))
    assert list(validation.probabilities.argmax(axis=1)) == [cosine_trained['cosine']] * 2

    restorer = _restorer(cosine_trained)
    assert restorer.scorer == PromptScorer('cosine', float(model.cri_clip.temperature.detach()))
    for image, probabilities in zip(cosine_trained['images'], validation.probabilities):
        guess = restorer.detect_degradation(image)
        assert guess.prompt == PROMPTS[cosine_trained['cosine']]
        np.testing.assert_allclose([guess.probabilities[p] for p in PROMPTS], probabilities, rtol=1e-5, atol=1e-6)
    # The raw dot product (the detector before this fix) answers differently on the same embeddings.
    assert _restorer(cosine_trained, scorer='dot').detect_degradation(cosine_trained['images'][0]).prompt == \
        PROMPTS[cosine_trained['dot']]


def test_inference_script_detects_with_the_recorded_scorer_or_scorer_flag(cosine_trained, tmp_path, capsys):
    script = load_script('inference')
    common = [str(cosine_trained['root'] / 'photo.png'), '-o', str(tmp_path), '--net-weights', cosine_trained['net'],
              '--clip-weights', cosine_trained['clip'], '--clip-backbone', cosine_trained['encoder']['backbone'],
              '--clip-pretrained', cosine_trained['encoder']['pretrained'], '--network-json', json.dumps(TINY_SIZES)]
    assert script.main(common + ['--prompts', *PROMPTS]) == 0
    out = capsys.readouterr().out
    assert f"detected {PROMPTS[cosine_trained['cosine']]!r}" in out
    assert 'Detecting degradations with the cosine:20 scorer (as the CLIP adapters were trained)' in out
    assert script.main(common + ['--scorer', 'dot', '--prompts', *PROMPTS]) == 0
    assert f"detected {PROMPTS[cosine_trained['dot']]!r}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.parse_args(common + ['--scorer', 'euclid'])
    assert "--scorer: scorer: unknown 'euclid'" in capsys.readouterr().err


def test_the_scorer_of_each_loss_and_of_each_kind_of_weight_file(tmp_path):
    assert scorer_of_loss(PromptCrossEntropyLoss()) == OFFICIAL_SCORER == PromptScorer('dot')
    assert _fields(scorer_of_loss(DegradationContrastiveLoss(temperature=30.0))) == ('cosine', pytest.approx(30.0))
    with pytest.raises(ValueError, match='L1Loss has no known prompt scorer'):
        scorer_of_loss(torch.nn.L1Loss())
    adapters = {'image_adapter.0.weight': torch.zeros(2)}
    files = {'converted_clip.pth': {'params': adapters},  # converted official files: the official dot
             'clip_tuned.pth': {'epoch': 90, 'learnable_params': {}},
             'old_checkpoint.pth': {'params': adapters, 'loss': {'log_temperature': torch.tensor(math.log(25.0))}},
             'dot_checkpoint.pth': {'params': adapters, 'loss': {}, 'scorer': {'name': 'dot', 'temperature': 1.0}},
             'daclip_clip.pth': {'params': {'logit_scale': torch.tensor(4.6), 'control_linears.0.weight': adapters[
                 'image_adapter.0.weight']}}}
    for name, content in files.items():
        torch.save(content, str(tmp_path / name))
    assert read_scorer(str(tmp_path / 'converted_clip.pth')) == OFFICIAL_SCORER
    assert read_scorer(str(tmp_path / 'clip_tuned.pth')) == OFFICIAL_SCORER
    assert _fields(read_scorer(str(tmp_path / 'old_checkpoint.pth'))) == ('cosine', pytest.approx(25.0))
    assert read_scorer(str(tmp_path / 'dot_checkpoint.pth')) == OFFICIAL_SCORER
    assert read_scorer(str(tmp_path / 'daclip_clip.pth')) == PromptScorer('cosine', 100.0)  # DA-CLIP's 100 · cos
    with pytest.raises(ValueError, match="x.pth: scorer: unknown 'euclid'"):
        scorer_of_checkpoint({'scorer': {'name': 'euclid', 'temperature': 1.0}}, 'x.pth')


def test_scorer_logits_and_text_forms():
    images, prompts = torch.tensor([[3.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 10.0], [4.0, 4.0]])
    torch.testing.assert_close(PromptScorer('dot')(images, prompts), torch.tensor([[3.0, 0.0, 12.0]]))
    torch.testing.assert_close(PromptScorer('cosine', 2.0)(images, prompts),
                               torch.tensor([[2.0, 0.0, 2 * math.sqrt(0.5)]]))
    assert PromptScorer.parse('dot') == OFFICIAL_SCORER and str(PromptScorer.parse('cosine:30')) == 'cosine:30'
    assert _fields(PromptScorer.parse('cosine')) == ('cosine', pytest.approx(1 / 0.07))
    for bad, message in (('cosine:-1', 'positive number'), ('dot:3', 'only cosine takes a temperature'),
                         ('cosine:warm', 'cosine:warm')):
        with pytest.raises(ValueError, match=message):
            PromptScorer.parse(bad)
