"""The error each int8 layer adds on its own: one model that runs the float32 graph and, beside it, a copy of every
quantized layer of the QDQ artifact (its input QuantizeLinear/DequantizeLinear, weight and bias DequantizeLinear,
the layer, its output QuantizeLinear) fed the float graph's tensor instead of the quantized model's. One pass gives
every layer's output on float input, with its own input quantization, int8 weights and output quantization, so the
difference from the float reference is the error that layer alone adds (ORT's ``qdq_loss_debug`` and NNCF report
the same split). The copies fuse into the same integer kernels as the artifact's layers."""

from __future__ import annotations

from .onnx_layers import ExposedTensor, FloatLayer, Graph, exposed

RELEASED_SUFFIX = "_edgekit_float"  # edgekit's copies of float activations behind a released Q/DQ pair (quantize/ort.py)


def own_error_model(float_model, artifact, layers: list[FloatLayer]) -> tuple[bytes | None, dict[str, ExposedTensor]]:
    """(the merged model, node name -> how to read that layer's own output) for every quantized layer that reads a
    tensor the float graph has; (None, {}) when no layer qualifies."""
    import onnx

    float_graph, artifact_graph = Graph(float_model), Graph(artifact)
    merged = onnx.ModelProto()
    merged.CopyFrom(float_model)
    merged.ClearField("opset_import")
    merged.opset_import.extend(_union_opsets(float_model, artifact))
    readers: dict[str, ExposedTensor] = {}
    for index, layer in enumerate(layers):
        part = _layer_part(artifact_graph, float_graph, layer)
        if part is None:
            continue
        nodes, source = part
        suffix = f"__own{index}"
        renamed = _copy_nodes(merged, artifact_graph, nodes, source, suffix)
        output_q = nodes[-1] if nodes[-1].op_type == "QuantizeLinear" else None
        if output_q is not None:
            base = exposed(artifact_graph, output_q.input[0])
            readers[layer.node] = ExposedTensor(
                renamed[output_q.output[0]], base.scale if base else None, base.zero_point if base else None
            )
        else:
            readers[layer.node] = ExposedTensor(renamed[nodes[-1].output[0]])
        merged.graph.output.append(
            onnx.helper.make_tensor_value_info(readers[layer.node].name, _output_type(artifact_graph, nodes[-1]), None)
        )
    if not readers:
        return None, {}
    return merged.SerializeToString(), readers


def _layer_part(artifact: Graph, float_graph: Graph, layer: FloatLayer):
    """(the artifact's nodes that make up the layer, in order, and the float tensor its input quantization reads),
    or None when the layer is not QDQ-quantized in the artifact."""
    node = artifact.nodes.get(layer.node)
    if node is None or len(node.input) < 2:
        return None
    dequantize_x = artifact.made_by(node.input[0], "DequantizeLinear")
    dequantize_w = artifact.made_by(node.input[1], "DequantizeLinear")
    if dequantize_x is None or dequantize_w is None:
        return None
    quantize_x = artifact.made_by(dequantize_x.input[0], "QuantizeLinear")
    if quantize_x is None:
        return None
    source = quantize_x.input[0]
    if source not in float_graph.producers and source.endswith(RELEASED_SUFFIX):
        source = source.removesuffix(RELEASED_SUFFIX)
    if source not in float_graph.producers and source not in {i.name for i in float_graph.model.graph.input}:  # type: ignore[attr-defined]
        return None
    nodes = [quantize_x, dequantize_x, dequantize_w]
    for extra in node.input[2:]:
        bias = artifact.made_by(extra, "DequantizeLinear")
        if bias is not None:
            nodes.append(bias)
    nodes.append(node)
    output_q = next((n for n in artifact.consumers.get(node.output[0], []) if n.op_type == "QuantizeLinear"), None)
    if output_q is not None:
        nodes.append(output_q)
    return nodes, source


def _copy_nodes(merged, artifact: Graph, nodes, source: str, suffix: str) -> dict[str, str]:
    """Append copies of ``nodes`` to ``merged``: their quantization input reads ``source`` from the float graph,
    every other tensor and initializer gets ``suffix``. Returns original output name -> copied name."""
    import onnx

    renamed: dict[str, str] = {}
    copied_initializers: set[str] = set()
    for original in nodes:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        node.name = original.name + suffix
        for position, name in enumerate(original.input):
            if not name:
                continue
            if original is nodes[0] and position == 0:
                node.input[position] = source
            elif name in renamed:
                node.input[position] = renamed[name]
            elif name in artifact.initializers:
                node.input[position] = name + suffix
                if name not in copied_initializers:
                    tensor = onnx.TensorProto()
                    tensor.CopyFrom(artifact.initializers[name])
                    tensor.name = name + suffix
                    merged.graph.initializer.append(tensor)
                    copied_initializers.add(name)
        for position, name in enumerate(original.output):
            renamed[name] = name + suffix
            node.output[position] = renamed[name]
        merged.graph.node.append(node)
    return renamed


def _union_opsets(*models):
    import onnx

    versions: dict[str, int] = {}
    for model in models:
        for entry in model.opset_import:
            versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    return [onnx.helper.make_opsetid(domain, version) for domain, version in versions.items()]


def _output_type(artifact: Graph, node) -> int:
    import onnx

    if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in artifact.initializers:
        return artifact.initializers[node.input[2]].data_type
    return onnx.TensorProto.FLOAT
