"""Export of restoration networks with dynamic image sizes: ``torch.export`` programs and ONNX.

The exported graph takes (B, 3, H, W) images of any height and width from :data:`MIN_EXPORT_SIZE`
up, including sizes that are not multiples of the network's size multiple: the mirror padding and
the final crop (``vlunet.archs.padding``) are index arithmetic on the symbolic sizes, so they are
part of the graph instead of constants of the example input. Batch size is dynamic too.

A guided network (``forward(image, degradation)``) is exported with the degradation vector
(B, D) as its second input, or with one fixed vector folded in (:class:`FixedDegradation`), e.g. the
CLIP embedding of a known degradation, so that runtimes without CLIP can run it on one input.

ONNX export needs the ``export`` extra (``pip install -e '.[export]'``: onnx, onnxscript,
onnxruntime); ``torch.export`` needs nothing beyond torch.
"""
import inspect
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.export import Dim, ExportedProgram

MIN_EXPORT_SIZE = 9
"""Smallest exportable height/width. Below it the deepest level of an 8-multiple network is 1×1,
which ``torch.export`` treats as a separate (specialised) case; pad such tiny images yourself."""
IMAGE_INPUT, DEGRADATION_INPUT, OUTPUT_NAME = 'image', 'degradation', 'restored'


class FixedDegradation(nn.Module):
    """``net`` guided by one fixed degradation vector: forward(image (B, 3, H, W)) -> (B, 3, H, W).

    Args:
        net: A network with ``forward(image, degradation)``.
        degradation: (1, D) or (D,) vector, stored as a buffer (saved and exported with the net).
    """

    def __init__(self, net: nn.Module, degradation: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer('degradation', degradation.detach().reshape(1, -1).clone())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image, self.degradation.expand(image.shape[0], -1))


def takes_degradation(net: nn.Module) -> bool:
    """Whether ``net`` takes a degradation vector: ``degradation`` in its declared ``guidance_inputs``
    (NAFNetDACLIP; none for plain NAFNet), else a ``degradation`` argument of ``net.forward``."""
    declared = getattr(net, 'guidance_inputs', None)
    if declared is not None:
        return DEGRADATION_INPUT in declared
    return 'degradation' in inspect.signature(net.forward).parameters


def check_exportable(net: nn.Module) -> None:
    """``ValueError`` naming any guidance input besides ``degradation`` that ``net`` takes (e.g. NAFNetDACLIP's
    ``content``): exported graphs take only ``image`` and ``degradation``."""
    unsupported = [name for name in getattr(net, 'guidance_inputs', ()) if name != DEGRADATION_INPUT]
    if unsupported:
        raise ValueError(f'{type(net).__name__} takes the {" and ".join(unsupported)} embedding ({unsupported[0]}=), '
                         f'which export does not support (inputs: {IMAGE_INPUT} and {DEGRADATION_INPUT} only); export '
                         'it with that guidance off (NAFNetDACLIP: use_image_context: false), or run it in PyTorch.')


def degradation_dim(net: nn.Module) -> int:
    """Length D of the degradation vector ``net`` expects (``context_dim`` or ``config['degradation_dim']``,
    default 512)."""
    return int(getattr(net, 'context_dim', 0) or getattr(net, 'config', {}).get('degradation_dim', 512))


def example_inputs(net: nn.Module, height: int = 37, width: int = 53) -> Tuple[torch.Tensor, ...]:
    """(image,) or (image, degradation) with batch 2 and a size that is not a multiple of 8.

    Batch 2 and an odd size keep the exporter from specialising the graph to batch 1 or to one
    residue of the size.
    """
    device = next(net.parameters()).device
    image = torch.rand(2, 3, height, width, device=device)
    if not takes_degradation(net):
        return (image,)
    return image, torch.randn(2, degradation_dim(net), device=device)


def _dynamic_shapes(inputs: Tuple[torch.Tensor, ...]) -> tuple:
    # AUTO rather than named dims: the solver cannot prove some guards that hold for every size
    # (e.g. ceil(H/8)*8 >= H) and would reject named dims; the exported range is checked below.
    side = Dim.AUTO(min=MIN_EXPORT_SIZE)
    image = {0: Dim.AUTO, 2: side, 3: side}
    return (image, {0: Dim.AUTO})[:len(inputs)]


def _check_dynamic(program: ExportedProgram) -> None:
    """Raise if the exporter fixed batch, height or width to the example's value."""
    image = program.graph_signature.user_inputs[0]
    placeholder = next(node for node in program.graph.nodes if node.op == 'placeholder' and node.name == image)
    static = [axis for axis, size in zip(('batch', 'height', 'width'), placeholder.meta['val'].shape[:1] +
                                         placeholder.meta['val'].shape[2:]) if isinstance(size, int)]
    if static:
        raise RuntimeError(f'the export fixed the {", ".join(static)} of the input to the example size: the network '
                           'branches on its input size somewhere (see TORCH_LOGS=+dynamic).')


def export_program(net: nn.Module) -> ExportedProgram:
    """``torch.export`` program of ``net`` (eval mode) with dynamic batch, height and width."""
    check_exportable(net)
    net = net.eval()
    inputs = example_inputs(net)
    with torch.no_grad():
        program = torch.export.export(net, inputs, dynamic_shapes=_dynamic_shapes(inputs))
    _check_dynamic(program)
    return program


def export_onnx(program: ExportedProgram, path: str) -> None:
    """Write ``program`` (from :func:`export_program`) as an ONNX file with dynamic batch, height and width.

    Inputs are named ``image`` (and ``degradation``), the output ``restored``.
    """
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as error:
        raise ImportError('ONNX export needs the export extra: pip install -e ".[export]" '
                          '(onnx, onnxscript, onnxruntime).') from error
    num_inputs = len(program.graph_signature.user_inputs)
    onnx_program = torch.onnx.export(program, input_names=[IMAGE_INPUT, DEGRADATION_INPUT][:num_inputs],
                                     output_names=[OUTPUT_NAME], dynamo=True, verbose=False)
    onnx_program.save(path)


@dataclass
class ExportCheck:
    """Agreement of an exported model with PyTorch on one input size."""
    batch: int
    height: int
    width: int
    max_relative_error: float


def _relative_error(output: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(output - reference).max() / max(float(np.abs(reference).max()), 1e-12))


def _check_inputs(net: nn.Module, batch: int, height: int, width: int, seed: int) -> Tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, height, width, generator=generator)
    if not takes_degradation(net):
        return (image,)
    return image, torch.randn(batch, degradation_dim(net), generator=generator)


def check_onnx(path: str, net: nn.Module, sizes: Sequence[Tuple[int, int, int]]) -> List[ExportCheck]:
    """Run the ONNX file with onnxruntime (CPU) and PyTorch's ``net`` on (batch, height, width) inputs."""
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    names = [item.name for item in session.get_inputs()]
    net = net.eval().cpu()
    checks = []
    for index, (batch, height, width) in enumerate(sizes):
        inputs = _check_inputs(net, batch, height, width, seed=index)
        with torch.no_grad():
            reference = net(*inputs).numpy()
        output = session.run(None, {name: tensor.numpy() for name, tensor in zip(names, inputs)})[0]
        checks.append(ExportCheck(batch, height, width, _relative_error(output, reference)))
    return checks


def check_program(program: ExportedProgram, net: nn.Module,
                  sizes: Sequence[Tuple[int, int, int]]) -> List[ExportCheck]:
    """Run the exported program and ``net`` on (batch, height, width) inputs (CPU)."""
    module = program.module()
    net = net.eval().cpu()
    checks = []
    for index, (batch, height, width) in enumerate(sizes):
        inputs = _check_inputs(net, batch, height, width, seed=index)
        with torch.no_grad():
            reference, output = net(*inputs).numpy(), module(*inputs).numpy()
        checks.append(ExportCheck(batch, height, width, _relative_error(output, reference)))
    return checks


def fixed_degradation_or_none(net: nn.Module, degradation: Optional[torch.Tensor]) -> nn.Module:
    """``net`` itself, or ``net`` with ``degradation`` folded in (:class:`FixedDegradation`)."""
    if degradation is None:
        return net
    if not takes_degradation(net):
        raise ValueError(f'{type(net).__name__} takes no degradation vector; export it without one.')
    return FixedDegradation(net, degradation)
