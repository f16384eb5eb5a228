"""NAFNet + DA-CLIP: the arch (odd sizes, guidance off = NAFNet against an independent reference, each
embedding changes the output), VLUNetModel with both DA-CLIP embeddings (frozen encoder, wiring, errors),
and a short training + resume through vlunet/train.py with the demo option file."""
import json
import os.path as osp
import re

import pytest
import torch
import torch.nn.functional as F
import yaml

import vlunet  # noqa: F401
from vlunet.archs.daclip.irsde_unet_arch import ConditionalUNet
from vlunet.archs.daclip.irsde_unet_blocks import DegradationPrompt, SpatialTransformer
from vlunet.archs.daclip.nafnet_daclip_arch import ContentCrossAttention, NAFNet, NAFNetDACLIP
from vlunet.archs.nafnet_blocks import NAFBlock
from vlunet.archs.padding import pad_to_multiple

from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

from helpers import REPO_ROOT, run_entry, smooth_image, write_image
from helpers.networks import TINY_DACLIP_CONFIG, TINY_DACLIP_NAME, register_tiny_daclip

TINY = {'width': 8, 'enc_blk_nums': [1, 2], 'middle_blk_num': 2, 'dec_blk_nums': [2, 1]}  # middle: 32 channels
CONTEXT_DIM = 16


def _randomised(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (NAFNet's zero beta/gamma and the zero output projections make new blocks identities)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return net.eval()


def _embeddings(batch: int, seed: int, dim: int = CONTEXT_DIM):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=generator), torch.randn(batch, dim, generator=generator)


# ---------------------------------------------------------------- an independent NAFNet (the paper's equations)

def _layer_norm(x, weight, bias):
    mean = x.mean(1, keepdim=True)
    variance = (x - mean).pow(2).mean(1, keepdim=True)
    return (x - mean) / (variance + 1e-6).sqrt() * weight[:, None, None] + bias[:, None, None]


def _gate(x):
    half = x.shape[1] // 2
    return x[:, :half] * x[:, half:]


def _reference_block(x, p, prefix, film=(0, 0, 0, 0)):
    """A NAFBlock; ``film`` = (shift_att, scale_att, shift_ffn, scale_ffn) applied to the two norms' outputs."""
    w = {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}
    y = _layer_norm(x, w['norm1.weight'], w['norm1.bias']) * (1 + film[1]) + film[0]
    y = F.conv2d(y, w['conv1.weight'], w['conv1.bias'])
    y = _gate(F.conv2d(y, w['conv2.weight'], w['conv2.bias'], padding=1, groups=y.shape[1]))
    y = y * F.conv2d(y.mean(dim=(2, 3), keepdim=True), w['sca.1.weight'], w['sca.1.bias'])
    x = x + F.conv2d(y, w['conv3.weight'], w['conv3.bias']) * w['beta']
    y = _layer_norm(x, w['norm2.weight'], w['norm2.bias']) * (1 + film[3]) + film[2]
    y = _gate(F.conv2d(y, w['conv4.weight'], w['conv4.bias']))
    return x + F.conv2d(y, w['conv5.weight'], w['conv5.bias']) * w['gamma']


def _reference_nafnet(p, image, enc, middle, dec):
    height, width = image.shape[-2:]
    multiple = 2 ** len(enc)
    image = F.pad(image, (0, -width % multiple, 0, -height % multiple), mode='reflect')
    x = F.conv2d(image, p['intro.weight'], p['intro.bias'], padding=1)
    skips = []
    for level, count in enumerate(enc):
        for j in range(count):
            x = _reference_block(x, p, f'encoders.{level}.{j}.')
        skips.append(x)
        x = F.conv2d(x, p[f'downs.{level}.weight'], p[f'downs.{level}.bias'], stride=2)
    for j in range(middle):
        x = _reference_block(x, p, f'middle_blks.{j}.')
    for level, count in enumerate(dec):
        x = F.pixel_shuffle(F.conv2d(x, p[f'ups.{level}.0.weight']), 2) + skips.pop()
        for j in range(count):
            x = _reference_block(x, p, f'decoders.{level}.{j}.')
    out = F.conv2d(x, p['ending.weight'], p['ending.bias'], padding=1) + image
    return out[..., :height, :width]


@pytest.mark.parametrize('size', [(16, 20), (13, 22)])
def test_guidance_off_is_nafnet(size):
    plain = _randomised(NAFNet(**TINY))
    off = NAFNetDACLIP(**TINY, context_dim=CONTEXT_DIM, use_degra_context=False, use_image_context=False)
    assert ARCH_REGISTRY.get('NAFNet') is NAFNet and plain.guidance_inputs == off.guidance_inputs == ()
    off.load_state_dict(plain.state_dict())  # strict: the same parameters, no guidance ones
    image = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _reference_nafnet(plain.state_dict(), image, TINY['enc_blk_nums'], TINY['middle_blk_num'],
                                     TINY['dec_blk_nums'])
        scale = float(expected.abs().max())  # outputs reach ~60: float32 rounding of the sums is ~1e-5 absolute
        assert torch.allclose(plain(image), expected, rtol=0, atol=1e-6 * scale)
        assert torch.equal(off.eval()(image), plain(image))
    with pytest.raises(ValueError, match='use_degra_context is off'):
        plain(image, degradation=torch.zeros(2, CONTEXT_DIM))


def test_nafblock_modulation_scales_and_shifts_both_norms():
    block = _randomised(NAFBlock(8, modulation_dim=6))
    film = (0.5, -0.3, 0.2, 0.7)
    with torch.no_grad():  # the mlp maps any vector to the constant (shift_att, scale_att, shift_ffn, scale_ffn)
        block.mlp[1].weight.zero_()
        block.mlp[1].bias.copy_(torch.tensor(film).repeat_interleave(8))
    x = torch.rand(2, 8, 5, 7, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        modulated = block(x, modulation=torch.randn(2, 6))
        assert torch.allclose(modulated, _reference_block(x, block.state_dict(), '', film), atol=1e-5)
        assert torch.allclose(block(x), _reference_block(x, block.state_dict(), ''), atol=1e-5)
    with pytest.raises(ValueError, match='built without modulation_dim'):
        _randomised(NAFBlock(8))(x, modulation=torch.randn(2, 6))


@pytest.mark.parametrize('size', [(13, 21), (5, 3), (1, 7)])
def test_guided_net_takes_any_size(size):
    net = _randomised(NAFNetDACLIP(**TINY, context_dim=CONTEXT_DIM))
    image = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(2))
    degradation, content = _embeddings(2, 3)
    with torch.no_grad():
        out = net(image, degradation=degradation, content=content)
        padded = net(pad_to_multiple(image, 4), degradation=degradation, content=content)
    assert out.shape == image.shape and torch.isfinite(out).all()
    assert torch.allclose(out, padded[..., :size[0], :size[1]], atol=1e-5)  # mirror padding inside, cropped back


@pytest.mark.parametrize('options', [{}, {'content_attention': 'cross_attention'}, {'degradation_input': 'embedding'},
                                     {'content_attention_levels': 1}])
def test_prompt_and_content_each_change_the_output(options):
    deep = options.get('content_attention_levels', 0) == 1
    sizes = {**TINY, 'width': 16} if deep else TINY  # attending widths: multiples of 32
    net = _randomised(NAFNetDACLIP(**sizes, context_dim=CONTEXT_DIM, **options))
    assert net.guidance_inputs == ('degradation', 'content')
    image = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    degradation, content = _embeddings(2, 5)
    other_degradation, other_content = _embeddings(2, 6)
    with torch.no_grad():
        out = net(image, degradation=degradation, content=content)
        assert torch.equal(out, net(image, degradation=degradation, content=content))
        assert (out - net(image, degradation=other_degradation, content=content)).abs().max() > 1e-3
        assert (out - net(image, degradation=degradation, content=other_content)).abs().max() > 1e-3
    blocks = [*(b for level in net.encoders for b in level), *net.middle_blks,
              *(b for level in net.decoders for b in level)]
    assert all(block.mlp is not None for block in blocks)  # the prompt reaches every block
    attention = ContentCrossAttention if options.get('content_attention') == 'cross_attention' else SpatialTransformer
    attending = [*net.middle_blks, *(net.encoders[1] if deep else []), *(net.decoders[0] if deep else [])]
    assert all(isinstance(block.attention, attention) for block in attending)
    assert all(block.attention is None for block in blocks if not any(block is b for b in attending))
    assert (net.degradation_prompt is None) == (options.get('degradation_input') == 'embedding')


def test_missing_or_misshapen_embeddings_and_bad_configurations_are_named():
    net = NAFNetDACLIP(**TINY, context_dim=CONTEXT_DIM)
    image = torch.rand(1, 3, 8, 8)
    degradation, content = _embeddings(1, 0)
    with pytest.raises(ValueError, match='use_image_context is on, so content='):
        net(image, degradation=degradation)
    with pytest.raises(ValueError, match=r'degradation must be \(B, context_dim\) = \(1, 16\), got \(1, 8\)'):
        net(image, degradation=degradation[:, :8], content=content)
    with pytest.raises(ValueError, match='multiples of 32'):
        NAFNetDACLIP(width=4, enc_blk_nums=[1], dec_blk_nums=[1])
    with pytest.raises(ValueError, match='same length'):
        NAFNetDACLIP(width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1])
    with pytest.raises(ValueError, match="content_attention must be one of spatial_transformer, cross_attention"):
        NAFNetDACLIP(**TINY, content_attention='self')


def test_the_prompt_module_is_the_irsde_unets():
    unet = ConditionalUNet(nf=8, ch_mult=[1, 2], context_dim=CONTEXT_DIM, use_image_context=False)
    prompt = DegradationPrompt(CONTEXT_DIM, 32)  # the U-Net's time embedding: 4 * nf
    prompt.load_state_dict({k: v for k, v in unet.state_dict().items() if k.startswith(('prompt', 'text_mlp'))})
    degradation, _ = _embeddings(3, 9)
    with torch.no_grad():
        added = unet._time_embedding(5, 3, torch.device('cpu'), degradation) - \
            unet._time_embedding(5, 3, torch.device('cpu'), None)
        assert torch.allclose(prompt(degradation), added, atol=1e-6)


def test_default_configuration_parameter_counts():
    def count(net):
        return sum(p.numel() for p in net.parameters())
    assert count(NAFNet()) == 17_111_907  # NAFNet width 32, blocks [1, 1, 1, 28] / 1 / [1, 1, 1, 1]
    assert count(NAFNetDACLIP()) == 24_905_827


# ---------------------------------------------------------------- VLUNetModel with both DA-CLIP embeddings

@pytest.fixture(scope='module')
def daclip_config(tmp_path_factory) -> str:
    return register_tiny_daclip(str(tmp_path_factory.mktemp('nafnet_daclip_config')))


def _model(tmp_path, network: dict, encoder=None):
    opt = {'name': 'unit', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'is_train': True, 'dist': False,
           'network_g': network, 'degradation_encoder': encoder,
           'path': {'models': str(tmp_path), 'training_states': str(tmp_path)},
           'train': {'optim_g': {'type': 'AdamW', 'lr': 1e-3}, 'total_iter': 2,
                     'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5},
                     'pixel_opt': {'type': 'MSELoss', 'loss_weight': 1.0, 'reduction': 'mean'}}}
    torch.manual_seed(0)
    return MODEL_REGISTRY.get('VLUNetModel')(opt)


def test_model_passes_both_embeddings_and_the_encoder_gets_no_gradient(tmp_path, daclip_config):
    network = {'type': 'NAFNetDACLIP', **TINY, 'context_dim': 512}
    model = _model(tmp_path, network, {'type': 'DACLIP', 'backbone': daclip_config})
    encoder = model.degradation_encoder
    lq = torch.rand(2, 3, 20, 28, generator=torch.Generator().manual_seed(7))
    model.feed_data({'lq': lq, 'gt': lq.clamp(0.2, 0.8)})
    content, degradation = encoder.encode(lq)
    assert torch.equal(model.content, content) and torch.equal(model.degradation, degradation)
    model.optimize_parameters(1)
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())
    assert all(p.grad is not None for p in model.net_g.parameters())
    optimised = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert not optimised & {id(p) for p in encoder.parameters()}
    _randomised(model.net_g, seed=3)
    model.test()
    with torch.no_grad():
        expected = model.net_g(lq, degradation=degradation, content=content)
        other = model.net_g(lq, degradation=degradation, content=content.flip(0))
    assert torch.equal(model.output, expected) and not torch.allclose(model.output, other)
    model.save_network(model.net_g, 'net_g', 1)
    saved = torch.load(tmp_path / 'net_g_1.pth', weights_only=True)['params']
    assert not any(k.startswith(('backbone.', 'controller.', 'control_linears.')) for k in saved)


def test_plain_nafnet_needs_no_encoder_and_guided_nafnet_needs_daclip(tmp_path, tiny_clip_name):
    model = _model(tmp_path, {'type': 'NAFNet', **TINY})
    lq = torch.rand(1, 3, 9, 11)
    model.feed_data({'lq': lq})
    model.test()
    assert model.degradation is None and model.content is None
    assert torch.equal(model.output, model.net_g.eval()(lq))
    with pytest.raises(ValueError, match=r'takes degradation and content embeddings .* set degradation_encoder'):
        _model(tmp_path, {'type': 'NAFNetDACLIP', **TINY, 'context_dim': 512})
    with pytest.raises(TypeError, match=r'DegradationCLIP has no encode\(images\) -> \(content, degradation\)'):
        _model(tmp_path, {'type': 'NAFNetDACLIP', **TINY, 'context_dim': 512},
               {'type': 'DegradationCLIP', 'backbone': tiny_clip_name})


# ---------------------------------------------------------------- training through vlunet/train.py

def _demo_options(root, total_iter: int) -> dict:
    """options/demo/train_nafnet_daclip_demo.yml as shipped, on tiny generated data with a tiny DA-CLIP."""
    with open(osp.join(REPO_ROOT, 'options/demo/train_nafnet_daclip_demo.yml'), encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    opt = json.loads(json.dumps(opt))  # aliases resolved into plain copies
    opt['network_g'].update(width=8)
    opt['degradation_encoder']['backbone'] = str(root / f'{TINY_DACLIP_NAME}.json')
    for phase, dataset in opt['datasets'].items():
        dataset['tasks'] = dataset['tasks'][:3]
        for task in dataset['tasks']:
            task['source']['dataroot_gt'] = str(root / phase)
        dataset['gt_size'] = 24
    opt['datasets']['train']['batch_size_per_gpu'] = 6
    opt['train'].update(total_iter=total_iter, scheduler={'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5})
    opt['train']['optim_g']['lr'] = 3e-3
    opt['val']['val_freq'] = 30
    opt['logger'].update(print_freq=1, save_checkpoint_freq=30)
    return opt


def _write_options(path, opt: dict) -> str:
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return str(path)


def _log(root) -> str:
    return ''.join(open(p, encoding='utf-8').read()
                   for p in sorted((root / 'experiments/NAFNet_DACLIP_demo').glob('train_*.log')))


@pytest.mark.multiprocess
def test_demo_option_trains_lowers_the_loss_and_resumes(tmp_path):
    for phase, count in (('train', 4), ('val', 1)):
        for i in range(count):
            write_image(str(tmp_path / phase / f'{i}.png'), smooth_image(20 + i, 32, 36))
    (tmp_path / f'{TINY_DACLIP_NAME}.json').write_text(json.dumps(TINY_DACLIP_CONFIG))
    result = run_entry('train', ['-opt', _write_options(tmp_path / 'train.yml', _demo_options(tmp_path, 30))],
                       str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(v) for v in re.findall(r'l_pix: ([0-9.e+-]+)', _log(tmp_path))]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    saved = torch.load(tmp_path / 'experiments/NAFNet_DACLIP_demo/models/net_g_30.pth', weights_only=True)['params']
    assert any(k.startswith('degradation_prompt.') for k in saved) and not any('controller' in k for k in saved)
    assert re.search(r'Validation demo-daclip-restoration-val(?:.*\n)*?\s+# psnr: [0-9.]+', _log(tmp_path))
    resumed = run_entry('train', ['-opt', _write_options(tmp_path / 'resume.yml', _demo_options(tmp_path, 32)),
                                  '--auto_resume'], str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = _log(tmp_path)
    assert re.search(r'iter:\s+31,', log) and re.search(r'iter:\s+32,', log)
    assert len(re.findall(r'iter:\s+1,', log)) == 1  # continued from iteration 30, not restarted
