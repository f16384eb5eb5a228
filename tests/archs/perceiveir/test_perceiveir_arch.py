"""PerceiveIR (Perceive-IR stage 2): sizes, Z, the frozen DINO kept out of training and checkpoints, weights files."""
import pytest
import torch

import vlunet  # noqa: F401
from vlunet.archs.perceiveir.perceiveir_arch import PerceiveIR
from vlunet.archs.perceiveir.perceiveir_blocks import FrozenDINOFeatures, build_semantic_vit

from basicsr.archs import build_network

# init_values 1: full-strength layer scale, so random blocks change the tokens (DINO-v2's 1e-5 nearly hides them)
TINY_VIT = {'embed_dim': 32, 'depth': 4, 'num_heads': 2, 'patch_size': 8, 'init_values': 1.0}
TINY = {'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1, 'heads': [1, 2, 2, 4],
        'degradation_dim': 16, 'semantic_layers': [1, 2, 3, 4], 'semantic_image_size': 32,
        'semantic_kwargs': TINY_VIT}
DEFAULT_PARAMETERS = 38_615_516  # documented in the module docstring (paper 42.02 M, release 33.90 M)


def tiny(**options) -> PerceiveIR:
    return PerceiveIR(**{**TINY, **options})


def restore(net: PerceiveIR, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(image)


def test_default_configuration_parameter_count_excludes_dino():
    with torch.device('meta'):
        net = build_network({'type': 'PerceiveIR'})
    assert sum(p.numel() for p in net.parameters()) == DEFAULT_PARAMETERS
    assert sum(p.numel() for p in net.semantic_encoder.parameters()) == 85_724_928  # ViT-B/14 at 224
    assert net.semantic_encoder.width == 768 and net.semantic_encoder.block_indices == [0, 3, 7, 11]


@pytest.mark.parametrize('size', [(37, 29), (1, 5), (16, 16)])
def test_any_size_gives_the_input_size_and_a_unit_z(size):
    torch.manual_seed(0)
    net = tiny().eval()
    image = torch.rand(2, 3, *size)
    with torch.no_grad():
        restored, z = net(image, return_degradation=True)
    assert restored.shape == image.shape and torch.isfinite(restored).all()
    assert not torch.allclose(restored, image)
    assert z.shape == (2, 16)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2))


def test_output_is_the_input_plus_the_network_residual():
    net = tiny().eval()
    torch.nn.init.zeros_(net.output.weight)
    image = torch.rand(1, 3, 11, 14)
    assert torch.equal(restore(net, image), image)


def test_z_depends_only_on_its_own_image():
    torch.manual_seed(0)
    net = tiny().eval()
    images = torch.rand(3, 3, 24, 20)
    with torch.no_grad():
        _, z_batch = net(images, return_degradation=True)
        z_alone = torch.cat([net.degradation_representation(images[i:i + 1]) for i in range(3)])
        net.semantic_encoder.vit.cls_token.add_(1.0)  # Z does not see DINO
        z_after = net.degradation_representation(images)
    torch.testing.assert_close(z_batch, z_alone)
    torch.testing.assert_close(z_after, z_batch)
    assert (z_batch[0] - z_batch[1]).abs().max() > 1e-3


def test_dino_gets_no_gradient_and_every_trainable_parameter_does():
    net = tiny().train()
    restored, z = net(torch.rand(2, 3, 20, 18), return_degradation=True)
    (restored.square().mean() + z.sum()).backward()
    vit = net.semantic_encoder.vit
    assert all(not p.requires_grad and p.grad is None for p in vit.parameters())
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []  # DDP without find_unused_parameters: everything trainable is used (CFE through PGM)
    assert all(p.requires_grad for p in net.parameters())


def test_dino_is_outside_parameters_and_state_dict_but_moves_with_the_network():
    net = tiny()
    vit_ids = {id(p) for p in net.semantic_encoder.parameters()}
    assert vit_ids and not vit_ids & {id(p) for p in net.parameters()}
    assert not any(key.startswith(('semantic', 'vit')) or '.vit.' in key for key in net.state_dict())
    net = net.to(torch.float64)
    assert {p.dtype for p in net.semantic_encoder.parameters()} == {torch.float64}
    assert net.semantic_encoder.mean.dtype == torch.float64
    assert restore(net, torch.rand(1, 3, 9, 9, dtype=torch.float64)).dtype == torch.float64


def test_frozen_dino_stays_in_eval_mode():
    net = tiny().train()
    assert net.training and net.cfe.training
    assert not any(module.training for module in net.semantic_encoder.modules())
    net.semantic_encoder.train()
    assert not net.semantic_encoder.vit.training


def test_save_and_strict_load_give_identical_output(tmp_path):
    torch.manual_seed(1)
    net = tiny().eval()
    image = torch.rand(1, 3, 19, 23)
    path = tmp_path / 'net.pth'
    torch.save(net.state_dict(), path)
    torch.manual_seed(2)
    fresh = tiny().eval()
    assert not torch.equal(restore(fresh, image), restore(net, image))
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert torch.equal(restore(fresh, image), restore(net, image))


def test_random_dino_weights_are_the_same_in_every_build():
    torch.manual_seed(3)
    first = tiny().semantic_encoder.vit.state_dict()
    torch.manual_seed(4)
    second = tiny().semantic_encoder.vit.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_semantic_features_change_the_output():
    torch.manual_seed(0)
    net = tiny().eval()
    image = torch.rand(1, 3, 24, 24)
    before = restore(net, image)
    features = net.semantic_encoder(image)
    assert [f.shape for f in features] == [(1, 32)] * 4
    # four different blocks (feature norms ~0.16)
    assert all((a - b).abs().max() > 0.01 for a, b in zip(features[:-1], features[1:]))
    with torch.no_grad():
        net.semantic_encoder.vit.blocks[0].attn.qkv.weight.mul_(3.0)
    assert (restore(net, image) - before).abs().max() > 1e-3


def test_class_token_of_the_chosen_blocks_before_the_final_norm():
    encoder = FrozenDINOFeatures('vit_base_patch14_dinov2', None, [2, 4], 32, TINY_VIT)
    image = torch.rand(2, 3, 40, 30)
    with torch.no_grad():
        x = torch.nn.functional.interpolate(image, size=(32, 32), mode='bicubic', align_corners=False)
        x = encoder.vit._pos_embed(encoder.vit.patch_embed((x - encoder.mean) / encoder.std))
        tokens = []
        for block in encoder.vit.blocks:
            x = block(x)
            tokens.append(x[:, 0])
    features = encoder(image)
    torch.testing.assert_close(features[0], tokens[1])
    torch.testing.assert_close(features[1], tokens[3])


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_local_weights_file_is_loaded(tmp_path, suffix):
    source = tiny(semantic_pretrained=None).semantic_encoder.vit
    state = {k: v + 0.5 for k, v in source.state_dict().items()}
    path = str(tmp_path / f'dino{suffix}')
    if suffix == '.pth':
        torch.save(state, path)
    else:
        from safetensors.torch import save_file
        save_file(state, path)
    loaded = tiny(semantic_pretrained=path)
    assert not loaded.random_semantic_encoder
    assert all(torch.equal(v, state[k]) for k, v in loaded.semantic_encoder.vit.state_dict().items())


def test_meta_format_file_at_another_size_is_converted(tmp_path):
    """Meta's torch-hub layout (mask_token, position embedding for another grid) loads through timm's filter."""
    source = build_semantic_vit('vit_base_patch14_dinov2', None, 48, TINY_VIT)  # 6x6 patch grid
    state = {**source.state_dict(), 'mask_token': torch.zeros(1, 32)}
    path = str(tmp_path / 'dinov2_vitb14_pretrain.pth')
    torch.save(state, path)
    vit = tiny(semantic_pretrained=path).semantic_encoder.vit  # 32x32 input: 4x4 grid
    assert vit.pos_embed.shape == (1, 1 + 16, 32)
    torch.testing.assert_close(vit.pos_embed[:, 0], state['pos_embed'][:, 0])  # class position kept
    assert torch.equal(vit.blocks[3].mlp.fc2.weight, state['blocks.3.mlp.fc2.weight'])


def test_unreachable_tag_names_the_files_to_download(monkeypatch):
    import timm

    def offline(name, pretrained=False, **kwargs):
        raise OSError('offline') if pretrained else AssertionError('only the pretrained build is expected')
    monkeypatch.setattr(timm, 'create_model', offline)
    with pytest.raises(RuntimeError, match=r'lvd142m are neither cached nor downloadable.*model\.safetensors.*'
                                           r'dinov2_vitb14_pretrain\.pth'):
        tiny(semantic_pretrained='lvd142m')


def test_bad_semantic_weights_are_named(tmp_path):
    missing = str(tmp_path / 'dinov2_vitb14_pretrain.pth')
    with pytest.raises(FileNotFoundError, match=r'dinov2_vitb14_pretrain\.pth.*does not exist.*'
                                                r'timm/vit_base_patch14_dinov2\.lvd142m'):
        tiny(semantic_pretrained=missing)
    with pytest.raises(ValueError, match=r"neither a file nor a timm tag.*lvd142m"):
        tiny(semantic_pretrained='imagenet')
    wrong = tmp_path / 'wrong.pth'
    torch.save({'weight': torch.zeros(2)}, wrong)
    with pytest.raises(ValueError, match=r'wrong\.pth.*does not fit'):
        tiny(semantic_pretrained=str(wrong))


@pytest.mark.parametrize('options, message', [
    ({'backbone': 'nafnet'}, 'only restormer'),
    ({'bias': True}, 'bias-free'),
    ({'heads': [1, 2, 4]}, '4 levels'),
    ({'semantic_layers': [1, 2, 3, 5]}, r'1\.\.4'),
    ({'semantic_layers': [2, 1, 3, 4]}, 'increasing'),
    ({'inp_channels': 1, 'out_channels': 1}, 'must be 3'),
    ({'heads': [3, 2, 2, 4]}, 'level 1'),
    ({'semantic_kwargs': {**TINY_VIT, 'img_size': 64}}, 'semantic_image_size'),
    ({'semantic_image_size': 36}, 'multiple of the patch size 8'),
])
def test_bad_configurations_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        tiny(**options)


def test_bad_images_are_named():
    net = tiny()
    with pytest.raises(ValueError, match='float RGB'):
        net(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match='float RGB'):
        net.degradation_representation(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_weights_have_the_layout_of_their_gradients():
    """3x3 weights of the channels-last body are channels-last, the CFE's (NCHW input) stay contiguous: with
    channels-last CFE weights, official-size training with two CFE passes corrupted torch's heap (2.14.1, CPU)."""
    net = tiny()
    body = [p for name, p in net.named_parameters() if p.dim() == 4 and p.shape[-1] == 3 and p.shape[1] > 1
            and not name.startswith('cfe.')]
    assert body and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in body)
    assert all(p.is_contiguous() for name, p in net.named_parameters() if name.startswith('cfe.'))
    images = torch.rand(2, 3, 24, 20)
    restored, z = net(images, return_degradation=True)
    (restored.mean() + (z * net.degradation_representation(torch.rand(2, 3, 24, 20))).sum()).backward()
    mismatched = [name for name, p in net.named_parameters() if p.grad is not None and p.grad.stride() != p.stride()]
    assert not mismatched  # DDP's buckets take every gradient without a copy or a warning


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_reduced_precision_autocast_at_256_is_finite_and_close_to_fp32(dtype):
    torch.manual_seed(0)
    net = tiny().eval()
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    expected = restore(net, image)
    residual_dtypes = set()
    net.output.register_forward_hook(lambda module, inputs, output: residual_dtypes.add(output.dtype))
    with torch.autocast('cpu', dtype=dtype):
        low = restore(net, image)
    assert residual_dtypes == {dtype}  # the network did run in reduced precision
    assert torch.isfinite(low).all()
    error = ((low.float() - expected).abs().max() / expected.abs().max()).item()
    assert 0 < error < 0.05
