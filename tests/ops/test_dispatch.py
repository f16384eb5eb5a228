"""The device rules and the plain switch (vlunet.ops.dispatch): every network computes the same values and
gradients with and without its fast paths; on a device type other than the CPU no fast path runs; the plain
switch (context manager and VLUNET_PLAIN) turns every fast path off on the CPU."""
import pytest
import torch

import vlunet  # noqa: F401  (compat shim before basicsr)
import vlunet.ops
from vlunet.archs.daclip.irsde_unet_arch import ConditionalUNet
from vlunet.archs.daclip.nafnet_daclip_arch import NAFNetDACLIP
from vlunet.archs.perceiveir.perceiveir_arch import PerceiveIR
from vlunet.archs.restormer_arch import Restormer
from vlunet.archs.restormer_blocks import GatedFeedForward, TransformerBlocks, TransposedSelfAttention
from vlunet.archs.vlunet.vlunet_arch import VLUNet
from vlunet.ops import attention_backward, bands, dispatch, fast_blocks

from helpers.networks import TINY_VLUNET, channels_last_tensor, randomised, relative_error

TINY_PERCEIVEIR = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1],
                       degradation_dim=16, semantic_pretrained=None, semantic_layers=[1, 2, 3, 4],
                       semantic_image_size=32, semantic_kwargs={'embed_dim': 32, 'depth': 4, 'num_heads': 2,
                                                                'patch_size': 8})
CONTEXT = 16


def _perturbed(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` with every trainable parameter moved off its (often zero or constant) initial value."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return net


def _image(batch: int = 2, height: int = 19, width: int = 23, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _vector(seed: int) -> torch.Tensor:
    return torch.randn(2, CONTEXT, generator=torch.Generator().manual_seed(seed))


# name -> (network factory, forward on an image, whether the network has fast paths)
ARCHS = {
    'VLUNet': (lambda: VLUNet(**{**TINY_VLUNET, 'degradation_dim': CONTEXT}),
               lambda net, image: net(image, _vector(5)), True),
    'Restormer': (lambda: Restormer(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 2, 2, 4)),
                  lambda net, image: net(image), True),
    'PerceiveIR': (lambda: PerceiveIR(**TINY_PERCEIVEIR), lambda net, image: net(image), True),
    'ConditionalUNet': (lambda: ConditionalUNet(nf=8, ch_mult=(1, 2, 4, 8), context_dim=CONTEXT),
                        lambda net, image: net(image, image.flip(-1), 7, _vector(5), _vector(6)), True),
    'NAFNetDACLIP': (lambda: NAFNetDACLIP(width=8, enc_blk_nums=(1, 1), middle_blk_num=1, dec_blk_nums=(1, 1),
                                          context_dim=CONTEXT),
                     lambda net, image: net(image, _vector(5), _vector(6)), False),
}


@pytest.fixture
def dispatch_spy(monkeypatch):
    """The answers of the dispatch point, (path, allowed) in call order."""
    answers = []
    original = dispatch.fast_path_allowed
    monkeypatch.setattr(dispatch, 'fast_path_allowed',
                        lambda path, x: answers.append((path, original(path, x))) or answers[-1][1])
    return answers


def _output_and_gradients(net: torch.nn.Module, run, image: torch.Tensor):
    net.zero_grad(set_to_none=True)
    out = run(net, image)
    out.square().mean().backward()
    return out.detach(), {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('name', sorted(ARCHS))
def test_every_network_computes_the_same_with_and_without_fast_paths(name, monkeypatch, dispatch_spy):
    build, run, has_fast_paths = ARCHS[name]
    torch.manual_seed(0)
    net = _perturbed(build()).eval()
    image = _image()
    monkeypatch.setattr(bands, 'BAND_BYTES', 2048)  # bands of a few rows at every level
    with torch.no_grad():
        fast = run(net, image)
        assert any(allowed for _, allowed in dispatch_spy) == has_fast_paths
        dispatch_spy.clear()
        with vlunet.ops.plain():
            plain = run(net, image)
    assert dispatch_spy and not any(allowed for _, allowed in dispatch_spy) or not has_fast_paths
    assert relative_error(fast, plain) <= 1e-5

    fast, fast_grads = _output_and_gradients(net.train(), run, image)
    with vlunet.ops.plain():
        plain, plain_grads = _output_and_gradients(net, run, image)
    assert relative_error(fast, plain) <= 1e-5
    assert fast_grads.keys() == plain_grads.keys() and fast_grads
    scale = max(grad.abs().max() for grad in plain_grads.values())
    for key, grad in plain_grads.items():  # each within 1e-5 of its own size, or of the largest gradient
        assert (fast_grads[key] - grad).abs().max() <= 1e-5 * max(grad.abs().max(), 1e-2 * scale), key


def test_plain_environment_variable_turns_the_fast_paths_off(monkeypatch, dispatch_spy):
    net = _perturbed(VLUNet(**TINY_VLUNET)).eval()
    image = _image(batch=1)
    for value, allowed in (('1', False), ('0', True), ('', True), ('yes', False)):
        monkeypatch.setenv(dispatch.PLAIN_ENV, value)
        dispatch_spy.clear()
        with torch.no_grad():
            net(image)
        assert {answer for _, answer in dispatch_spy} == {allowed}, value
    assert vlunet.ops.plain_requested()
    monkeypatch.delenv(dispatch.PLAIN_ENV)
    assert not vlunet.ops.plain_requested()


class _Taken:
    """Counts the calls of the fast paths' own functions (bands, vector padding, hand-written backward)."""

    def __init__(self, monkeypatch):
        self.calls = {}
        for module, name in ((bands, 'depthwise_bands'), (fast_blocks, 'vector_aligned_weights'),
                             (attention_backward, 'fused_projected_attention')):
            original = getattr(module, name)
            monkeypatch.setattr(module, name, self._counting(name, original))

    def _counting(self, name, original):
        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return original(*args, **kwargs)
        return counted


def _block_calls(monkeypatch):
    """Runs the MDTA, the GDFN and a block chain with in-place permission, without and with autograd; returns
    (whether a residual was written in place, the fast paths' function calls)."""
    taken = _Taken(monkeypatch)
    monkeypatch.setattr(bands, 'BAND_BYTES', 2 * 24 * 11 * 4)  # bands at width 11
    written_in_place = []
    for module in (randomised(TransposedSelfAttention(8, heads=2)), randomised(GatedFeedForward(8, 2.66))):
        x, residual = channels_last_tensor(2, 8, 13, 11, seed=0), channels_last_tensor(2, 8, 13, 11, seed=1)
        with torch.no_grad():
            for band_bytes in (bands.BAND_BYTES, 1 << 40):  # in bands, whole maps
                monkeypatch.setattr(bands, 'BAND_BYTES', band_bytes)
                written_in_place.append(module(x, residual, in_place=True).data_ptr() == residual.data_ptr())
        module(x.requires_grad_(), residual).sum().backward()
    chain = randomised(TransformerBlocks.of(8, 2, 2, 2.66))
    x = channels_last_tensor(1, 8, 13, 11, seed=2)
    with torch.no_grad():
        written_in_place.append(chain(x, overwrite_input=True).data_ptr() == x.data_ptr())
    return any(written_in_place), taken.calls


def test_on_the_cpu_the_fast_paths_run(monkeypatch):
    in_place, calls = _block_calls(monkeypatch)
    assert in_place
    assert set(calls) == {'depthwise_bands', 'vector_aligned_weights', 'fused_projected_attention'}


@pytest.mark.parametrize('device_type', ['cuda', 'mps', 'xpu'])
def test_on_other_devices_no_fast_path_runs(monkeypatch, dispatch_spy, device_type):
    """A fake device type (the tensors stay on the CPU): the blocks take their plain computation."""
    monkeypatch.setattr(dispatch, 'device_type', lambda x: device_type)
    in_place, calls = _block_calls(monkeypatch)
    assert not in_place and calls == {}
    assert dispatch_spy and not any(allowed for _, allowed in dispatch_spy)
    assert not dispatch.bands_allowed(torch.zeros(1)) and not dispatch.vector_padding_allowed(torch.zeros(1))


def test_the_plain_switch_turns_every_fast_path_off_on_the_cpu(monkeypatch, dispatch_spy):
    with vlunet.ops.plain():
        in_place, calls = _block_calls(monkeypatch)
        assert not any(dispatch.fast_path_allowed(path, torch.zeros(1)) for path in dispatch.FAST_PATHS)
    assert not in_place and calls == {}
    assert dispatch_spy and not any(allowed for _, allowed in dispatch_spy[:-len(dispatch.FAST_PATHS)])
    assert all(dispatch.fast_path_allowed(path, torch.zeros(1)) for path in dispatch.FAST_PATHS)


def test_every_fast_path_is_measured_on_the_cpu_only():
    assert set(dispatch.MEASURED_DEVICES) == set(dispatch.FAST_PATHS)
    assert all(devices == {'cpu'} for devices in dispatch.MEASURED_DEVICES.values())
