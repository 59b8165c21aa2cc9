"""The accuracy search's score for the layers of an OpenVINO int8 IR: the logits' error against the float32 graph
with that layer alone back in float (``fallback.output_error``, the score the ONNX Runtime, ExecuTorch and LiteRT
searches rank layers by). NNCF's own accuracy control ranks groups of quantizers inside its loop and returns only
the model, so the same question is asked of the IR here: a copy of it in which the layer reads the tensor behind its
FakeQuantize and the float32 weights (from the float32 ONNX graph the IR was converted from, which OpenVINO reads
with the same names and weight shapes), compiled in float32 as edgekit's openvino runtime compiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..progress import track
from .onnx_numerics import BATCH
from .openvino_numerics import COMPILE_CONFIG, LAYER_TYPES, onnx_node_name

FOLDABLE = ("Reshape", "Squeeze", "Unsqueeze", "Convert")  # between a float weight Constant and its layer


def search_errors(artifact: Path, float_onnx: Path, inputs: np.ndarray, candidates: list[str]) -> dict[str, float]:
    """ONNX node name -> the score, for every one of ``candidates`` (int8 layers) the IR lets go back to float."""
    import openvino as ov

    from ..exporting.quantize.fallback import RANKING_IMAGES, output_error
    from ..runtimes.openvino import read_ir

    core = ov.Core()
    inputs = np.ascontiguousarray(inputs[:RANKING_IMAGES])
    float_model = core.read_model(str(float_onnx))
    reference = _logits(core, float_model, inputs)
    float_weights = {onnx_node_name(op.get_friendly_name()): op.input(1).get_source_output() for op in _layers(float_model)}
    ir, _ = read_ir(artifact)  # digest-checked, metadata validated
    scores = {}
    for name in track(candidates, "scoring layers as the accuracy search does"):
        model = ir.clone()
        layer = next((op for op in _layers(model) if onnx_node_name(op.get_friendly_name()) == name), None)
        weight = _constant(float_weights[name]) if name in float_weights else None
        if layer is None or weight is None or list(weight.shape) != list(layer.input(1).get_partial_shape().to_shape()):
            continue
        quantize = layer.input(0).get_source_output().get_node()
        if quantize.get_type_name() != "FakeQuantize":
            continue
        layer.input(0).replace_source_output(quantize.input_value(0))
        layer.input(1).replace_source_output(ov.opset13.constant(weight).output(0))
        scores[name] = output_error(_logits(core, model, inputs), reference)
    return scores


def _layers(model):
    return [op for op in model.get_ordered_ops() if op.get_type_name() in LAYER_TYPES]


def _constant(port) -> np.ndarray | None:
    """The float32 values behind a weight port: a Constant, through reshapes and converts; None if computed."""
    node = port.get_node()
    while node.get_type_name() in FOLDABLE:
        node = node.input(0).get_source_output().get_node()
    if node.get_type_name() != "Constant":
        return None
    shape = port.get_partial_shape()
    return np.asarray(node.get_data(), dtype=np.float32).reshape(shape.to_shape()) if shape.is_static else None


def _logits(core, model, inputs: np.ndarray) -> np.ndarray:
    compiled = core.compile_model(model, "CPU", COMPILE_CONFIG)
    request = compiled.create_infer_request()
    batches = range(0, len(inputs), BATCH)
    return np.concatenate([np.asarray(request.infer({0: inputs[start : start + BATCH]})[compiled.output(0)]) for start in batches])
