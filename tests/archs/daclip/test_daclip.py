"""DA-CLIP encoder: preprocessing, controller order, embeddings at init, checkpoints, loss, converter."""
import csv
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import vlunet  # noqa: F401
from vlunet.archs.daclip.daclip_arch import DACLIP, daclip_preprocess
from vlunet.convert.daclip_checkpoint import convert_daclip_checkpoint, is_daclip_file, official_to_plugin_state_dict
from vlunet.losses.daclip.daclip_loss import DACLIPLoss
from vlunet.utils.safe_load import UnsafeCheckpointError

from helpers import FIXTURES, REPO_ROOT
from helpers.networks import TINY_DACLIP_CONFIG, register_tiny_daclip, trained_like

MANIFEST = osp.join(FIXTURES, 'daclip_state_dict.tsv')  # every key and shape of the released DA-CLIP file


@pytest.fixture(scope='module')
def tiny_daclip_config(tmp_path_factory) -> str:
    return register_tiny_daclip(str(tmp_path_factory.mktemp('daclip_config')))


@pytest.fixture
def tiny_daclip(tiny_daclip_config) -> DACLIP:
    torch.manual_seed(0)
    return DACLIP(backbone=tiny_daclip_config)


def torchvision_clip_transform(image: torch.Tensor) -> torch.Tensor:
    """The original ``clip_transform`` on one (3, H, W) float image: numpy uint8 cast, PIL, torchvision."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from torchvision import transforms as T
    array = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    transform = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                           T.ToTensor(), T.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)])
    return transform(Image.fromarray(array))


@pytest.mark.parametrize('height, width, dtype', [(64, 97, torch.float32),   # crop offset 57.5 -> 58
                                                  (113, 64, torch.float64),  # offset 56.5 -> 56, portrait
                                                  (37, 53, torch.float32),   # upsampling
                                                  (224, 224, torch.float32)])
def test_preprocess_matches_pil_pipeline_bit_exactly(height, width, dtype):
    generator = torch.Generator().manual_seed(height)
    images = torch.rand(2, 3, height, width, generator=generator, dtype=dtype)
    images[0, :, 0, :3] = torch.tensor([0.0, 1.0, 254 / 255], dtype=dtype)  # exact k/255 values
    expected = torch.stack([torchvision_clip_transform(image) for image in images])
    assert torch.equal(daclip_preprocess(images), expected)


def test_preprocess_truncates_like_numpy_uint8_cast():
    image = torch.full((1, 3, 224, 224), 0.999)  # 254.745 -> 254 (rounding would give 255)
    pixels = daclip_preprocess(image)
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    expected = (254 / 255 - OPENAI_DATASET_MEAN[0]) / OPENAI_DATASET_STD[0]
    assert torch.allclose(pixels[0, 0], torch.tensor(expected), atol=1e-6)


def test_at_initialisation_content_and_degradation_equal_plain_clip(tiny_daclip):
    images = torch.rand(2, 3, 80, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        content, degradation = tiny_daclip.encode(images)
        plain = tiny_daclip.backbone.encode_image(daclip_preprocess(images))
        degradation_only = tiny_daclip.encode_degradation(images)
    assert content.shape == degradation.shape == (2, 512) and not content.requires_grad
    assert torch.allclose(content, plain, rtol=1e-5, atol=1e-5)
    assert torch.allclose(degradation, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(degradation_only, degradation)


def _reference_block(block, x: torch.Tensor, heads: int) -> torch.Tensor:
    """An open_clip residual attention block written out by hand, sequence-first (L, B, W) like the original."""
    length, batch, width = x.shape
    y = F.layer_norm(x, (width,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    q, k, v = (y @ block.attn.in_proj_weight.t() + block.attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(length, batch * heads, width // heads).transpose(0, 1) for t in (q, k, v))
    attention = ((q @ k.transpose(1, 2)) / (width // heads) ** 0.5).softmax(-1) @ v
    attention = attention.transpose(0, 1).reshape(length, batch, width)
    x = x + block.attn.out_proj(attention)
    y = F.layer_norm(x, (width,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
    return x + block.mlp.c_proj(F.gelu(block.mlp.c_fc(y)))


def _reference_embed(visual, pixels: torch.Tensor) -> torch.Tensor:
    x = F.conv2d(pixels, visual.conv1.weight, stride=visual.conv1.stride).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(len(x), 1, -1), x], dim=1) + visual.positional_embedding
    x = F.layer_norm(x, x.shape[-1:], visual.ln_pre.weight, visual.ln_pre.bias, visual.ln_pre.eps)
    return x.transpose(0, 1)


def _reference_head(visual, x: torch.Tensor) -> torch.Tensor:
    cls = F.layer_norm(x[0], x.shape[-1:], visual.ln_post.weight, visual.ln_post.bias, visual.ln_post.eps)
    return cls @ visual.proj


def reference_encode(model: DACLIP, pixels: torch.Tensor, fifo: bool = False):
    """The original encode_image(control=True): hiddens collected in order, consumed by list.pop() (LIFO)."""
    heads = TINY_DACLIP_CONFIG['vision_cfg']['width'] // TINY_DACLIP_CONFIG['vision_cfg']['head_width']
    x, hiddens = _reference_embed(model.controller, pixels), []
    for block, zero_module in zip(model.controller.transformer.resblocks, model.control_linears):
        x = _reference_block(block, x, heads)
        hiddens.append(zero_module(x))
    degradation = _reference_head(model.controller, x)
    x = _reference_embed(model.backbone.visual, pixels)
    for block in model.backbone.visual.transformer.resblocks:
        x = _reference_block(block, x, heads)
        x = x + hiddens.pop(0 if fifo else -1)
    return _reference_head(model.backbone.visual, x), degradation


def test_controls_enter_in_reverse_order(tiny_daclip):
    model = trained_like(tiny_daclip)
    pixels = daclip_preprocess(torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        content, degradation = model.encode_pixels(pixels)
        ref_content, ref_degradation = reference_encode(model, pixels)
        fifo_content, _ = reference_encode(model, pixels, fifo=True)
    assert torch.allclose(degradation, ref_degradation, rtol=1e-4, atol=1e-5)
    assert torch.allclose(content, ref_content, rtol=1e-4, atol=1e-5)
    assert (content - fifo_content).abs().max() > 100 * (content - ref_content).abs().max()


def test_encode_text_is_normalised_and_frozen(tiny_daclip):
    embeddings = tiny_daclip.encode_text(['noisy', 'hazy', 'a photo of a dog'])
    assert embeddings.shape == (3, 512) and not embeddings.requires_grad
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match='list of strings'):
        tiny_daclip.encode_text('noisy')


def test_only_controller_linears_and_temperature_are_trainable(tiny_daclip):
    trainable = {name.split('.')[0] for name, p in tiny_daclip.named_parameters() if p.requires_grad}
    assert trainable == {'controller', 'control_linears', 'logit_scale'}
    assert all(not p.requires_grad for p in tiny_daclip.backbone.parameters())
    assert all(torch.count_nonzero(p) == 0 for p in tiny_daclip.control_linears.parameters())
    assert set(tiny_daclip.trainable_state_dict()) == {k for k in tiny_daclip.state_dict()
                                                       if not k.startswith('backbone.')}
    tiny_daclip.train()
    assert tiny_daclip.controller.training and not tiny_daclip.backbone.training


def official_state_dict(model: DACLIP) -> dict:
    """The original DaCLIP state dict of ``model``: logit_scale, clip.*, visual.* (alias), visual_control.*."""
    state = {'logit_scale': model.logit_scale.detach().clone()}
    state.update({f'clip.{k}': v.clone() for k, v in model.backbone.state_dict().items()})
    state.update({f'visual.{k}': v.clone() for k, v in model.backbone.visual.state_dict().items()})
    for key, value in model.controller.state_dict().items():
        key = 'transformer.transformer.' + key[len('transformer.'):] if key.startswith('transformer.') else key
        state[f'visual_control.{key}'] = value.clone()
    for i, linear in enumerate(model.control_linears):
        state[f'visual_control.transformer.zero_modules.{i}.weight'] = linear.weight.detach().clone()
        state[f'visual_control.transformer.zero_modules.{i}.bias'] = linear.bias.detach().clone()
    return state


def save_official_checkpoint(model: DACLIP, path: str, ddp: bool = True) -> str:
    """An open_clip training checkpoint as DA-CLIP's release: module. prefixes, AdamW state, a numpy lr scalar."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-5, betas=(0.9, 0.98), eps=1e-6)
    sum(p.sum() for p in trainable).backward()
    optimizer.step()
    optimizer_state = optimizer.state_dict()
    optimizer_state['param_groups'][0]['lr'] = np.float64(2.5e-5)  # as open_clip's scheduler leaves it
    prefix = 'module.' if ddp else ''
    torch.save({'epoch': 50, 'name': 'daclip_ViT-B-32', 'optimizer': optimizer_state,
                'state_dict': {prefix + k: v for k, v in official_state_dict(model).items()},
                'scaler': {'scale': 65536.0, 'growth_factor': 2.0}}, path)
    model.zero_grad(set_to_none=True)
    return path


@pytest.mark.parametrize('ddp', [True, False])
def test_official_checkpoint_reproduces_embeddings(tiny_daclip_config, tmp_path, ddp):
    torch.manual_seed(3)
    source = trained_like(DACLIP(backbone=tiny_daclip_config), seed=3)
    with torch.no_grad():
        source.logit_scale.fill_(4.2)
    path = save_official_checkpoint(source, str(tmp_path / 'daclip_tiny.pt'), ddp=ddp)
    assert is_daclip_file(path)
    torch.manual_seed(99)  # a different random backbone: everything must come from the file
    target = DACLIP(backbone=tiny_daclip_config)
    assert 'backbone' in target.load_weights(path)
    images = torch.rand(2, 3, 61, 77, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for got, expected in zip(target.encode(images), source.encode(images)):
            assert torch.equal(got, expected)
    assert torch.equal(target.logit_scale, source.logit_scale)
    assert torch.equal(target.encode_text(['hazy']), source.encode_text(['hazy']))


def test_converted_file_loads_without_the_original_and_via_pretrained(tiny_daclip_config, tmp_path):
    source = trained_like(DACLIP(backbone=tiny_daclip_config), seed=5)
    official = save_official_checkpoint(source, str(tmp_path / 'daclip_tiny.pt'))
    converted = convert_daclip_checkpoint(official, str(tmp_path / 'out'))
    assert converted == str(tmp_path / 'out' / 'daclip_tiny_daclip.pth')
    os.remove(official)
    images = torch.rand(1, 3, 50, 66, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = source.encode(images)
        for model in (DACLIP(backbone=tiny_daclip_config), DACLIP(backbone=tiny_daclip_config, pretrained=converted)):
            model.load_weights(converted)
            assert all(torch.equal(a, b) for a, b in zip(model.encode(images), expected))


def test_refuses_foreign_and_malicious_files(tiny_daclip, tmp_path):
    marker = tmp_path / 'code_ran'

    class Payload:
        def __reduce__(self):
            return open, (str(marker), 'w')

    evil = str(tmp_path / 'evil.pt')
    torch.save({'state_dict': official_state_dict(tiny_daclip), 'extra': Payload()}, evil)
    with pytest.raises(UnsafeCheckpointError, match='evil.pt'):
        tiny_daclip.load_weights(evil)
    assert not marker.exists()
    other = str(tmp_path / 'other.pth')
    torch.save({'params': {'conv.weight': torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match='other.pth is not a DA-CLIP checkpoint'):
        tiny_daclip.load_weights(other)
    wrong_size = str(tmp_path / 'wrong.pth')
    torch.save({'params': {'control_linears.0.weight': torch.zeros(3, 3)}}, wrong_size)
    with pytest.raises(ValueError, match='does not fit DACLIP'):
        tiny_daclip.load_weights(wrong_size)
    with pytest.raises(FileNotFoundError):
        tiny_daclip.load_weights(str(tmp_path / 'missing.pt'))


def test_official_manifest_maps_onto_vit_b_32():
    """The 631 entries of the real daclip_ViT-B-32 manifest map 1:1 (name and shape) onto DACLIP('ViT-B-32')."""
    with open(MANIFEST, encoding='utf-8') as f:
        rows = list(csv.DictReader(f, delimiter='\t'))
    assert len(rows) == 631
    official = {row['key']: torch.empty(json.loads(row['shape']), device='meta') for row in rows}
    mapped = {k: tuple(v.shape) for k, v in official_to_plugin_state_dict(official, MANIFEST).items()}
    model = DACLIP(backbone='ViT-B-32', pretrained=None)
    assert mapped == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 94_936_321 == sum(int(r['numel']) for r in rows if r['trainable'] == 'yes')
    content, degradation = model.encode(torch.rand(2, 3, 40, 56))
    assert content.shape == degradation.shape == (2, 512)


def test_loss_values_on_hand_made_embeddings():
    eye = torch.eye(3, 4)
    content, captions = eye.clone(), eye.clone()
    degradation = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    names = torch.tensor([[2.0, 0, 0, 0], [2.0, 0, 0, 0], [0, 3.0, 0, 0]])  # normalised by the loss
    scale = torch.tensor(10.0)
    content_loss, degradation_loss = DACLIPLoss()(content, degradation, captions, names, scale)
    # content: perfect pairs, logits 10 on the diagonal and 0 elsewhere, both directions alike
    assert torch.isclose(content_loss, torch.log(1 + 2 * torch.exp(torch.tensor(-10.0))), rtol=1e-5)
    # degradation: samples 0 and 1 share a name, so each has a same-score negative (no de-duplication)
    row = torch.log(2 + torch.exp(torch.tensor(-10.0)))
    assert torch.isclose(degradation_loss, (2 * row + torch.log(1 + 2 * torch.exp(torch.tensor(-10.0)))) / 3,
                         rtol=1e-5)
    # captions only for samples 0 and 2: the content loss is over those two
    skipped, _ = DACLIPLoss()(content, degradation, captions, names, scale, torch.tensor([True, False, True]))
    assert torch.isclose(skipped, torch.log(1 + torch.exp(torch.tensor(-10.0))), rtol=1e-5)
    none, _ = DACLIPLoss()(content, degradation, captions, names, scale, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0
    with pytest.raises(ValueError, match='four'):
        DACLIPLoss()(content, degradation[:2], captions, names, scale)


@pytest.mark.multiprocess
def test_converter_script_writes_the_daclip_file(tiny_daclip, tmp_path):
    official = save_official_checkpoint(trained_like(tiny_daclip), str(tmp_path / 'daclip_ViT-B-32.pt'))
    script = osp.join(REPO_ROOT, 'scripts', 'convert_official_checkpoint.py')
    result = subprocess.run([sys.executable, script, official, str(tmp_path / 'out')], capture_output=True, text=True,
                            cwd=REPO_ROOT, env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO_ROOT), timeout=300)
    assert result.returncode == 0, result.stderr
    written = tmp_path / 'out' / 'daclip_ViT-B-32_daclip.pth'
    assert str(written) in result.stdout and 'MiB' in result.stdout
    assert set(torch.load(written, weights_only=True)['params']) == set(tiny_daclip.state_dict())
