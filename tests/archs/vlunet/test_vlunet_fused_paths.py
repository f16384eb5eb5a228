"""The fused VLUNet paths (1x1 convolutions as matrix products, attention weights merged with the output
projection, residual sums inside the products, in-place gating without autograd) compute the official
function and its gradients; autograd and no-autograd paths agree; autocast keeps float32 residuals."""
import torch
import torch.nn.functional as F

import vlunet  # noqa: F401  (compat shim before basicsr)
from benchmarks.reimplementations.vlunet_release import OfficialVLUNet
from vlunet.archs.restormer_blocks import TransformerBlock
from vlunet.convert.vlunet_checkpoint import official_to_plugin_key, plugin_to_official_state_dict
from vlunet.ops.attention import channel_attention, projected_attention
from vlunet.ops.channels_last import pointwise

from helpers.networks import relative_error
from helpers.networks import tiny_net as arch_tiny_net


def tiny_net(seed: int):
    return arch_tiny_net(seed, heads=(1, 2, 2, 4)).train()


def test_gradients_equal_the_official_computation():
    net = tiny_net(seed=7)
    official = OfficialVLUNet(plugin_to_official_state_dict(net.state_dict())).train()
    image, degradation = torch.rand(2, 3, 16, 24), torch.randn(2, 512)
    target = torch.rand(2, 3, 16, 24)
    F.l1_loss(net(image, degradation), target).backward()
    F.l1_loss(official(image, degradation), target).backward()
    ours = dict(net.named_parameters())
    # rounding noise: e.g. a 1-channel key's 1x1 weight only scales channels that are L2-normalised next
    negligible = 1e-6 * max(w.grad.abs().max() for w in official.weights if w.grad is not None)
    compared = 0
    for name, reference in zip(official.names, official.weights):
        parameter = ours[official_to_plugin_key(name)]
        if reference.grad is None or not reference.grad.abs().max() > negligible:
            assert parameter.grad is None or not parameter.grad.abs().max() > 10 * negligible, name
            continue
        assert relative_error(parameter.grad, reference.grad) <= 1e-4, name
        compared += 1
    assert compared > 0.9 * sum(p.requires_grad for p in net.parameters())


def test_no_grad_path_equals_the_autograd_path():
    net = tiny_net(seed=8)
    image, degradation = torch.rand(2, 3, 21, 19), torch.randn(2, 512)
    with_graph = net(image, degradation)
    with torch.no_grad():
        without = net(image, degradation)
    assert with_graph.requires_grad and not without.requires_grad
    assert relative_error(without, with_graph.detach()) <= 1e-6


def test_pointwise_reads_a_channel_slice_and_fuses_the_residual():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 7, 1, bias=False)
    wide = torch.randn(2, 10, 6, 4).contiguous(memory_format=torch.channels_last)
    half = wide[:, :5]
    residual = torch.randn(2, 7, 6, 4).contiguous(memory_format=torch.channels_last)
    expected = conv(half.contiguous())
    assert torch.allclose(pointwise(half, conv), expected, atol=1e-6)
    assert torch.allclose(pointwise(half, conv, residual), expected + residual, atol=1e-6)
    assert pointwise(half, conv, residual).is_contiguous(memory_format=torch.channels_last)


def test_projected_attention_is_the_projection_of_channel_attention():
    torch.manual_seed(1)
    query, key, value, residual = (torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last)
                                   for _ in range(4))
    temperature, project_out = torch.rand(2, 1, 1) + 0.5, torch.nn.Conv2d(8, 8, 1, bias=False)
    attended = project_out(channel_attention(query, key, value, temperature, 2))
    scale = torch.tensor([0.3])
    out = projected_attention(query, key, value, temperature, 2, project_out, residual, scale, residual_weight=-1.0)
    assert torch.allclose(out, scale * attended - residual, atol=1e-5)
    assert torch.allclose(projected_attention(query, key, value, temperature, 2, project_out), attended, atol=1e-5)


def test_autocast_keeps_a_float32_residual_stream_float32():
    torch.manual_seed(2)
    block = TransformerBlock(8, 2, 2.66)
    x = torch.randn(1, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = block(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = block(x)
    assert low.dtype == torch.float32  # the residual is added in float32, not rounded to bf16
    assert 0 < relative_error(low, expected) < 0.05
