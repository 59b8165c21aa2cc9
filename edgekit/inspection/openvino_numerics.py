"""Per-layer numerics of an OpenVINO IR against the float32 PyTorch model.

edgekit converts the IR from its float32 ONNX export, so the IR keeps the ONNX names: a Convolution's friendly name
is the ONNX node's (``node_Conv_296``) and its output tensor keeps the ONNX tensor name. A layer's tensor is found by
that name; in an NNCF int8 IR the FakeQuantize that reads it gives what the next layer sees, and that FakeQuantize's
output is added as an extra output of the ov.Model (``Model.add_outputs``), compiled in float32 as edgekit's
openvino runtime compiles. Matching to PyTorch modules and the verdict are shared with ONNX (``onnx_numerics``).

Own error (a layer fed from float): a second copy of the IR in which every int8 layer reads the float32 graph's
tensor through its own FakeQuantize (``openvino_own``), run on the same batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..results import DataSource
from ..safety import check_onnx_file
from .metrics import ErrorAccumulator
from .onnx_layers import ExposedTensor, Graph, float_layers
from .onnx_numerics import BATCH, MATCH_IMAGES, Layer, match_layers, verdict
from .openvino_own import own_outputs
from .results import Numerics
from .torch_capture import ModuleOutputs

LAYER_TYPES = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData")
COMPILE_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}  # as edgekit's openvino runtime


def _tensor_outputs(ov_model) -> dict[str, object]:
    """ONNX tensor name -> the ov.Model output port carrying it, moved past a FakeQuantize reading it (int8)."""
    ports = {}
    for op in ov_model.get_ordered_ops():
        for output in op.outputs():
            for name in output.get_names():
                ports[name] = output
    for name, port in list(ports.items()):
        quantize = next((t.get_node() for t in port.get_target_inputs() if t.get_node().get_type_name() == "FakeQuantize"), None)  # type: ignore[attr-defined]
        if quantize is not None:
            ports[name] = quantize.output(0)
    return ports


def onnx_node_name(friendly_name: str) -> str:
    """The ONNX node an IR op came from: the converter names the parts of a split op ``node_Conv_3/WithoutBiases``."""
    return friendly_name.split("/")[0]


def _own_error(core, artifact: Path, float_onnx: Path, layers: list[Layer]):
    """(an infer request on the own-error copy of the IR, layer node -> its compiled output port), or (None, {})
    when the IR has no int8 layer to feed from float (see ``openvino_own``)."""
    from ..runtimes.openvino import read_ir

    copy, _ = read_ir(artifact)
    ops = {onnx_node_name(op.get_friendly_name()): op for op in copy.get_ordered_ops() if _quantized(op)}
    wanted = {layer.float_layer.node: layer.float_layer.tensor for layer in layers if layer.float_layer.node in ops}
    ports = own_outputs(copy, core.read_model(str(float_onnx)), {name: ops[name] for name in wanted}, wanted)
    if not ports:
        return None, {}
    names = {node: f"edgekit_inspect_own_{index}" for index, node in enumerate(ports)}
    for node, port in ports.items():
        port.get_tensor().add_names({names[node]})  # type: ignore[attr-defined]
    copy.add_outputs(list(ports.values()))  # by port: the name cache predates the rewiring
    compiled = core.compile_model(copy, "CPU", COMPILE_CONFIG)
    by_name = {name: output for output in compiled.outputs for name in output.get_names()}
    return compiled.create_infer_request(), {node: by_name[name] for node, name in names.items()}


def _quantized(op) -> bool:
    return op.get_type_name() in LAYER_TYPES and op.input(0).get_source_output().get_node().get_type_name() == "FakeQuantize"


def ir_layer_precisions(ov_model) -> dict[str, str]:
    """ONNX node name -> what the IR asks of each layer: int8 where a FakeQuantize feeds its data input."""
    precisions = {}
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() in LAYER_TYPES:
            precisions[onnx_node_name(op.get_friendly_name())] = "int8" if _quantized(op) else "fp32"
    return precisions


def openvino_numerics(
    model, artifact: Path, float_candidates: list[Path], inputs: np.ndarray, reference_inputs: np.ndarray, source: DataSource, threshold
) -> Numerics:
    """Compare every layer of the IR ``artifact`` with ``model`` (float32 PyTorch) on the same images."""
    import onnx
    import openvino as ov

    from ..runtimes.openvino import read_ir

    ov_model, _ = read_ir(artifact)  # digest-checked, metadata validated
    check_onnx_file(float_candidates[0])
    float_model = onnx.load(str(float_candidates[0]))
    ports, precisions = _tensor_outputs(ov_model), ir_layer_precisions(ov_model)
    layers: list[Layer] = []
    chosen: list = []
    notes: list[str] = []
    for found in float_layers(float_model):
        port = ports.get(found.tensor)
        if port is None:
            notes.append(f"{found.node}: the IR has no tensor {found.tensor!r}; not compared")
            continue
        layers.append(Layer(found, precisions.get(found.node, "fp32"), ExposedTensor(found.tensor)))
        chosen.append(port)
    if not layers:
        raise ModelError(f"{artifact} shares no layer tensor with its float32 ONNX graph; was it converted from another export?")
    match_layers(model, layers, float_model, Graph(float_model), inputs[:MATCH_IMAGES], reference_inputs[:MATCH_IMAGES])
    logits_name = next(iter(ov_model.outputs[0].get_names()), None)
    names = [f"edgekit_inspect_{index}" for index in range(len(chosen))]
    for port, name in zip(chosen, names):
        port.get_tensor().add_names({name})  # FakeQuantize outputs have no name; added outputs are found by these
    core = ov.Core()
    ov_model.add_outputs(names)
    compiled = core.compile_model(ov_model, "CPU", COMPILE_CONFIG)
    own_request, own_ports = _own_error(core, artifact, float_candidates[0], layers)
    request = compiled.create_infer_request()
    by_name = {name: output for output in compiled.outputs for name in output.get_names()}
    extra = [by_name[name] for name in names]
    logits_port = by_name.get(logits_name, compiled.output(0)) if logits_name else compiled.output(0)
    fixed = compiled.input(0).get_partial_shape()[0]
    step = fixed.get_length() if fixed.is_static else BATCH
    logits = ErrorAccumulator()
    for layer in layers:
        layer.accumulated_sums = ErrorAccumulator()
        if layer.float_layer.node in own_ports:
            layer.own_sums = ErrorAccumulator()
    wanted = {layer.reference.key[0] for layer in layers if layer.reference is not None and layer.reference.key is not None}
    with ModuleOutputs(model, wanted) as hooks:
        for start in range(0, len(inputs), step):
            reference_logits, captured = hooks.run(reference_inputs[start : start + step])
            batch = np.ascontiguousarray(inputs[start : start + step])
            result = request.infer({0: batch})
            own = own_request.infer({0: batch}) if own_request is not None else {}
            logits.add(reference_logits, np.asarray(result[logits_port]))
            for layer, port in zip(layers, extra):
                reference = layer.reference.value(captured, None) if layer.reference is not None else None
                if reference is not None and layer.accumulated_sums is not None:
                    layer.accumulated_sums.add(reference, np.asarray(result[port], dtype=np.float32))
                if reference is not None and layer.own_sums is not None:
                    layer.own_sums.add(reference, np.asarray(own[own_ports[layer.float_layer.node]], dtype=np.float32))
    if any(layer.reference is not None and layer.reference.key is None for layer in layers):
        notes.append("layers without a matching PyTorch module are left out for the IR (the ONNX file of the run shows them)")
    int8 = sum(layer.precision == "int8" for layer in layers)
    if len(own_ports) < int8:
        notes.append(
            f"own error computed for {len(own_ports)} of the IR's {int8} int8 layers (the float graph lacks the others' input tensor)"
        )
    return verdict(layers, logits, len(inputs), source, threshold, notes)
