"""``compile:`` from the options: parsing with clear errors, and a compiled tiny network equals eager (values and
gradients; ``aot_eager`` traces the network with dynamo and AOT autograd without needing a C++ build)."""
import pytest
import torch

import vlunet  # noqa: F401  (compat shim before basicsr)
from vlunet.archs.restormer_blocks import TransformerBlock
from vlunet.utils.precision import CompileOptions, compile_network, parse_compile_options

from helpers.networks import randomised, relative_error


def test_compile_options_parse_booleans_mappings_and_reject_bad_values():
    assert parse_compile_options(None) == CompileOptions() and not parse_compile_options(False).enabled
    assert parse_compile_options(True) == CompileOptions(enabled=True)
    assert parse_compile_options({'mode': 'max-autotune'}) == CompileOptions(True, 'max-autotune')
    assert not parse_compile_options({'enabled': False, 'backend': 'aot_eager'}).enabled
    for bad, named in (('yes', 'compile:'), ({'mode': 'fast'}, 'compile.mode'), ({'backend': 'gcc'}, 'compile.backend'),
                       ({'fullgraph': True}, 'unknown keys'), ({'enabled': 1}, 'compile.enabled')):
        with pytest.raises(ValueError, match=named):
            parse_compile_options(bad)
    net = torch.nn.Linear(2, 2)
    assert compile_network(net, False) is net and compile_network(net, CompileOptions()) is net


def test_a_compiled_tiny_network_matches_eager():
    """A Restormer block (channel attention, GDFN, layer norms, residuals): forward without autograd, and forward
    and backward in training."""
    torch._dynamo.reset()
    net = randomised(TransformerBlock(8, heads=2, ffn_expansion_factor=2.66))
    x = torch.randn(2, 8, 12, 10, generator=torch.Generator().manual_seed(0)).contiguous(
        memory_format=torch.channels_last)
    compiled = compile_network(net, parse_compile_options({'backend': 'aot_eager'}))
    assert compiled is not net
    with torch.no_grad():
        assert relative_error(compiled(x), net(x)) <= 1e-5
    eager_out = net(x)
    eager_grads = torch.autograd.grad(eager_out.square().mean(), list(net.parameters()))
    compiled_out = compiled(x)
    compiled_grads = torch.autograd.grad(compiled_out.square().mean(), list(net.parameters()))
    assert relative_error(compiled_out, eager_out) <= 1e-5
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads):
        assert relative_error(compiled_grad, eager_grad) <= 1e-4
    torch._dynamo.reset()
