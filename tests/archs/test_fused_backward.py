"""The float32 training paths give the generic paths' values and gradients: the attentions' hand-written backward
(vlunet.ops.attention_backward: one channels-last gradient map, all-zero channels handled) and the GDFN's
separate gate and content maps. They are used only where they apply (float32 training)."""
import pytest
import torch
import torch.nn.functional as F

from vlunet.archs.restormer_blocks import GatedFeedForward, TransposedSelfAttention
from vlunet.archs.vlunet.gradient_step import DegradationGuidedGradientStep
from vlunet.ops import dispatch
from vlunet.ops.attention_backward import AttentionChannels, fused_projected_attention


def channels_last(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


def randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for parameter in module.parameters():
        parameter.data.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module


def backward_nodes(out: torch.Tensor) -> set:
    """The class names of every node in out's autograd graph."""
    names, pending, seen = set(), [out.grad_fn], set()
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        pending.extend(next_node for next_node, _ in node.next_functions)
    return names


def outputs_and_gradients(run, inputs, grad_out):
    out = run()
    return out, torch.autograd.grad(out, inputs, grad_out, allow_unused=True)


def assert_same_as_autograd(monkeypatch, run, inputs, fused_only: str, plain_only: str):
    """run() on the training path equals run() on the generic path: output and gradients. ``fused_only`` /
    ``plain_only``: a backward node only in the training / generic path's graph."""
    torch.manual_seed(0)
    out = run()
    assert fused_only in backward_nodes(out) and plain_only not in backward_nodes(out)
    grad_out = torch.randn(out.shape)
    fused, fused_grads = outputs_and_gradients(run, inputs, grad_out)
    monkeypatch.setattr(dispatch, 'fused_backward_allowed', lambda x: False)
    plain, plain_grads = outputs_and_gradients(run, inputs, grad_out)
    assert fused_only not in backward_nodes(plain) and plain_only in backward_nodes(plain)
    assert torch.allclose(fused, plain, rtol=1e-5, atol=1e-6)
    for index, (ours, reference) in enumerate(zip(fused_grads, plain_grads)):
        assert ours is not None and reference is not None, index
        assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-5 * reference.abs().max()), index


@pytest.mark.parametrize('heads', [1, 3])
def test_self_attention_with_residual_and_scale_matches_autograd(monkeypatch, heads):
    attention = randomised(TransposedSelfAttention(12, heads), seed=1)
    x, residual = channels_last(2, 12, 9, 7).requires_grad_(), channels_last(2, 12, 9, 7).requires_grad_()
    scale = torch.tensor([0.7], requires_grad=True)
    inputs = [x, residual, scale, *attention.parameters()]
    assert_same_as_autograd(monkeypatch, lambda: attention(x, residual=residual, scale=scale), inputs,
                            '_ProjectedChannelAttentionBackward', 'SplitBackward0')


def test_gated_feed_forward_matches_autograd(monkeypatch):
    ffn = randomised(GatedFeedForward(8, 2.66), seed=2)
    x, residual = channels_last(2, 8, 6, 11).requires_grad_(), channels_last(2, 8, 6, 11).requires_grad_()
    assert_same_as_autograd(monkeypatch, lambda: ffn(x, residual=residual), [x, residual, *ffn.parameters()],
                            '_WeightHalvesBackward', 'SplitBackward0')


def test_degradation_guided_gradient_step_matches_autograd(monkeypatch):
    step = randomised(DegradationGuidedGradientStep(16, num_keys=3, key_channels=4, key_size=6, degradation_dim=10,
                                                    heads=2), seed=3)
    x, degraded = channels_last(2, 16, 10, 8).requires_grad_(), channels_last(2, 16, 10, 8).requires_grad_()
    degradation = torch.randn(2, 10, requires_grad=True)
    inputs = [x, degraded, degradation, *step.parameters()]
    assert_same_as_autograd(monkeypatch, lambda: step(x, degraded, degradation), inputs,
                            '_ProjectedChannelAttentionBackward', 'SplitBackward0')


def test_gradients_come_as_one_channels_last_map():
    qkv = channels_last(2, 12, 5, 6).requires_grad_()
    out = fused_projected_attention(qkv, None, AttentionChannels(0, 4, 8, 4, heads=2), torch.ones(2, 1, 1),
                                    torch.randn(4, 4, 1, 1))
    grad, = torch.autograd.grad(out, qkv, torch.randn(out.shape))
    assert grad.shape == qkv.shape and grad.is_contiguous(memory_format=torch.channels_last)


def test_an_all_zero_channel_gets_the_official_finite_gradients():
    """F.normalize (the official code) gives an all-zero channel a zero norm gradient, not NaN."""
    qkv = channels_last(1, 6, 4, 5).double()
    qkv[:, 1] = 0  # query channel 1
    qkv[:, 3] = 0  # key channel 0
    temperature, weight = torch.rand(1, 1, 1, dtype=torch.float64) + 0.5, torch.randn(2, 2, 1, 1, dtype=torch.float64)
    ours_input, official_input = qkv.clone().requires_grad_(), qkv.clone().requires_grad_()
    out = fused_projected_attention(ours_input, None, AttentionChannels(0, 2, 4, 2, heads=1), temperature, weight)
    grad_out = torch.randn(out.shape, dtype=torch.float64)
    ours, = torch.autograd.grad(out, ours_input, grad_out)
    q, k, v = (part.flatten(2) for part in official_input.chunk(3, dim=1))
    attention = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(1, 2) * temperature).softmax(dim=-1)
    official_out = F.conv2d((attention @ v).view(1, 2, 4, 5), weight)
    official, = torch.autograd.grad(official_out, official_input, grad_out)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, official, atol=1e-12)


def test_used_only_for_float32_training_on_cpu():
    attention = TransposedSelfAttention(8, 2)
    x = channels_last(1, 8, 4, 4)
    ffn = GatedFeedForward(8, 2.66)
    x.requires_grad_()
    assert '_ProjectedChannelAttentionBackward' in backward_nodes(attention(x))
    assert 'SplitBackward0' not in backward_nodes(ffn(x))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert '_ProjectedChannelAttentionBackward' not in backward_nodes(attention(x))
        assert 'SplitBackward0' in backward_nodes(ffn(x))
    with torch.no_grad():
        assert attention(x).grad_fn is None
    assert dispatch.fused_backward_allowed(x)
    assert not dispatch.fused_backward_allowed(torch.empty(1, 8, 4, 4, device='meta').contiguous(
        memory_format=torch.channels_last))  # CPU only: CUDA keeps autograd's path
    assert '_ProjectedChannelAttentionBackward' not in backward_nodes(attention.double()(x.double()))
