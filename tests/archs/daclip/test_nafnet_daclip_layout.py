"""NAFNet(+DA-CLIP) stores its blocks' convolution weights channels-last, the layout their gradients have
(the blocks' layer norms return channels-last maps), so DDP's gradient buckets take every gradient without
a copy or the "Grad strides do not match bucket view strides" warning; outputs and gradients are unchanged."""
import pytest
import torch
from torch import nn

import vlunet  # noqa: F401
from vlunet.archs.nafnet_blocks import NAFBlock

from basicsr.archs import build_network

TINY = {'width': 8, 'enc_blk_nums': [1, 2], 'middle_blk_num': 2, 'dec_blk_nums': [2, 1]}
NETWORKS = {
    'NAFNetDACLIP': {'type': 'NAFNetDACLIP', **TINY, 'context_dim': 16},
    'NAFNetDACLIP cross-attention, deep': {'type': 'NAFNetDACLIP', **TINY, 'width': 16, 'context_dim': 16,
                                           'content_attention': 'cross_attention', 'content_attention_levels': 1},
    'NAFNet': {'type': 'NAFNet', **TINY},
}


def _network(name: str, contiguous: bool = False) -> nn.Module:
    """The network with random weights; ``contiguous``: every weight in the default (contiguous) strides."""
    torch.manual_seed(0)
    net = build_network(dict(NETWORKS[name]))
    generator = torch.Generator().manual_seed(1)
    for parameter in net.parameters():
        if contiguous:
            parameter.data = torch.empty(parameter.shape)
        with torch.no_grad():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return net


def _loss(net: nn.Module) -> tuple:
    """(output, loss) of a batch of 2 (the CPU backend's layout choices depend on the batch)."""
    generator = torch.Generator().manual_seed(2)
    image = torch.rand(2, 3, 27, 21, generator=generator)
    guidance = {name: torch.randn(2, net.context_dim, generator=generator) for name in net.guidance_inputs}
    output = net(image, **guidance)
    return output, output.square().mean()


def _channels_last(parameter: torch.Tensor) -> bool:
    return parameter.stride() == torch.empty_like(parameter, memory_format=torch.channels_last).stride()


# The CPU backend's weight-gradient layout of the 1x1 convolutions depends on the thread count (with contiguous
# weights: the depthwise conv2 mismatched with 1 thread, every block convolution with 2 threads and batch 2).
CASES = [(name, 1) for name in NETWORKS] + [('NAFNetDACLIP', 2)]


@pytest.fixture
def threads(request):
    """Run the test with ``request.param`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize('name, threads', CASES, indirect=['threads'])
def test_weights_have_the_layout_of_their_gradients(name, threads):
    net = _network(name)
    blocks = [block for block in net.modules() if isinstance(block, NAFBlock)]
    own = [getattr(block, name).weight for block in blocks for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')]
    own += [block.sca[1].weight for block in blocks if block.attention is None]
    outside = [module.weight for module in (net.intro, *net.downs, *(up[0] for up in net.ups), net.ending)]
    assert all(_channels_last(weight) for weight in own)  # they convolve the layer norms' channels-last maps
    assert all(weight.stride() == torch.empty(weight.shape).stride() for weight in outside)  # contiguous maps
    _loss(net)[1].backward()
    with_gradients = [(key, p) for key, p in net.named_parameters() if p.grad is not None]
    assert all(p.grad is not None for p in own + outside)
    assert not [key for key, p in with_gradients if p.grad.stride() != p.stride()]  # DDP: no copy, no warning


@pytest.mark.parametrize('name, threads', CASES, indirect=['threads'])
def test_the_layout_leaves_outputs_and_gradients_unchanged(name, threads):
    stored, contiguous = _network(name), _network(name, contiguous=True)
    assert any(p.stride() != q.stride() for p, q in zip(stored.parameters(), contiguous.parameters()))
    (output, loss), (reference, reference_loss) = _loss(stored), _loss(contiguous)
    loss.backward()
    reference_loss.backward()
    torch.testing.assert_close(output, reference, rtol=0, atol=1e-6 * float(reference.detach().abs().max()))
    for (key, p), q in zip(stored.named_parameters(), contiguous.parameters()):
        assert (p.grad is None) == (q.grad is None), key
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-6 * float(q.grad.abs().max()) + 1e-12,
                                       msg=key)
