"""The error each int8 layer of an OpenVINO IR adds on its own, as ``onnx_own`` does for a QDQ file: a copy of the IR
in which every int8 layer's input FakeQuantize reads the float32 graph's tensor (the ONNX export the IR was converted
from, read by OpenVINO with the same tensor names, joined to the copy's input) instead of the IR's own, and the
layer's output goes through a copy of the FakeQuantize the next layer reads it by. Each layer then sees float input
with its own input quantization, runs its int8 weights and its bias, and is read through the FakeQuantize the next
layer reads it by: the difference from the float reference is what that layer alone adds. One inference gives every
layer's figure (what lies between the layers in the copy mixes float and int8 tensors and is not read).

The Python API cannot clone an arbitrary op, so the copy is the whole IR re-read (``read_ir``) and rewired; only the
input FakeQuantize ops are made anew (``opset13.fake_quantize``, with the IR's own ranges and levels)."""

from __future__ import annotations

FAKE_QUANTIZE = "FakeQuantize"


def own_outputs(copy, float_model, layers: dict[str, object], tensors: dict[str, str]) -> dict[str, object]:
    """Layer name -> the port carrying its own output, in ``copy`` (a fresh copy of the IR, changed in place: the
    float graph joins it, reading its input). ``layers`` maps names to the copy's int8 layer ops, ``tensors`` names
    to the tensor each layer is compared at (the copy's own port for it, or the FakeQuantize reading it, as the
    accumulated figure is read). Layers whose input tensor the float graph lacks are left out."""
    float_ports = _named_ports(float_model)
    copy_ports = _named_ports(copy)
    rewired = []
    for name, layer in layers.items():
        quantize = layer.input(0).get_source_output().get_node()  # type: ignore[attr-defined]
        source = next((float_ports[n] for n in quantize.input_value(0).get_names() if n in float_ports), None)
        if quantize.get_type_name() == FAKE_QUANTIZE and source is not None and tensors[name] in copy_ports:
            rewired.append((name, layer, quantize, source))
    ports = {}
    for name, layer, quantize, source in rewired:
        port = copy_ports[tensors[name]]
        reader = next((t.get_node() for t in port.get_target_inputs() if t.get_node().get_type_name() == FAKE_QUANTIZE), None)  # type: ignore[attr-defined]
        layer.input(0).replace_source_output(_fake_quantize(quantize, source))  # type: ignore[attr-defined]
        ports[name] = reader.output(0) if reader is not None else port  # the reader still reads this layer's output
    if ports:
        (parameter,) = copy.get_parameters()
        (float_parameter,) = float_model.get_parameters()
        for target in list(float_parameter.output(0).get_target_inputs()):
            target.replace_source_output(parameter.output(0))
    return ports


def _named_ports(model) -> dict[str, object]:
    return {name: output for op in model.get_ordered_ops() for output in op.outputs() for name in output.get_names()}


def _fake_quantize(like, value):
    """A new FakeQuantize reading ``value`` with ``like``'s ranges and levels."""
    import openvino as ov

    attributes = like.get_attributes()
    ranges = [like.input_value(i) for i in range(1, 5)]
    made = ov.opset13.fake_quantize(
        value, *ranges, levels=int(attributes["levels"]), auto_broadcast=str(attributes["auto_broadcast"]).upper()
    )
    made.set_friendly_name(like.get_friendly_name() + "/edgekit_own")
    return made.output(0)
