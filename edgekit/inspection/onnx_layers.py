"""The layers of an ONNX artifact, found in its float32 parent graph, and the graph edits that let ONNX Runtime show
their outputs.

A layer is a Conv/ConvTranspose/Gemm/MatMul node. Its tensor is what the next layer reads: the node's output, or,
when a Relu/Clip is its only consumer, the activation's output (ORT's quantizer folds that activation into the next
QuantizeLinear, and the Conv then writes under the activation's name). In a QDQ file that tensor is read through the
QuantizeLinear that follows it; the QuantizeLinear's uint8 output is exposed (not the DequantizeLinear's float one),
so ORT still fuses DequantizeLinear -> Conv -> QuantizeLinear into the int8 kernel it runs without the extra output,
and the values are dequantized here with the file's own scale and zero point.

Node and tensor names are shared by the float32 export, ORT's quantization pre-processing of it and every variant
made from them (QDQ int8 keeps node names and activation names), which is what ties an artifact's layer to its float
counterpart. The PyTorch module a layer belongs to comes from its weight's name (``layer1.0.conv1.weight``: the
dynamo exporter names initializers after parameters) and, for the reference tensor, from the node's
``pkg.torch.onnx.name_scopes`` metadata (the module whose output the node computes, ``layer1.0.bn1`` once
BatchNorm is folded into the Conv).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

import numpy as np

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
FOLDED_ACTIVATIONS = ("Relu", "Clip")
INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")
SCOPES_KEY = "pkg.torch.onnx.name_scopes"


@dataclass
class FloatLayer:
    """One layer as the float32 graph has it."""

    node: str
    op_type: str
    tensor: str  # what the next layer reads (through a folded Relu/Clip where there is one)
    pre_activation: str  # the node's own output
    activation: object | None  # the Relu/Clip NodeProto folded into ``tensor``, if any
    module: str | None  # the PyTorch module owning the weight ("layer1.0.conv1")
    scope: str | None  # the module whose output ``tensor`` is, per the exporter's name scopes
    pre_activation_scope: str | None = None


@dataclass
class ExposedTensor:
    """How to read a layer's tensor from a model: the graph output to add, and the dequantization it needs."""

    name: str
    scale: np.ndarray | None = None  # set when ``name`` is a QuantizeLinear's integer output
    zero_point: np.ndarray | None = None

    def value(self, array: np.ndarray) -> np.ndarray:
        if self.scale is None:
            return np.asarray(array, dtype=np.float32)
        zero = self.zero_point if self.zero_point is not None else np.zeros(())
        return ((np.asarray(array, dtype=np.float32) - zero.astype(np.float32)) * self.scale.astype(np.float32)).astype(np.float32)


def innermost_scope(node) -> str | None:
    """The innermost module path in a node's name-scope metadata (the last entry is the aten op, not a module)."""
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            modules = [s for s in scopes[:-1] if isinstance(s, str)]
            return modules[-1] if modules else None
    return None


def float_layers(model) -> list[FloatLayer]:
    """Every layer of a float graph in topological order."""
    initializers = {t.name for t in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in model.graph.output}
    layers = []
    for node in model.graph.node:
        if node.op_type not in LAYER_OPS or not node.output:
            continue
        output = node.output[0]
        following = consumers.get(output, [])
        activation = (
            following[0] if len(following) == 1 and following[0].op_type in FOLDED_ACTIVATIONS and output not in graph_outputs else None
        )
        weight = node.input[1] if len(node.input) > 1 else ""
        module = weight.removesuffix(".weight") if weight in initializers and weight.endswith(".weight") else None
        tensor = activation.output[0] if activation is not None else output
        layers.append(
            FloatLayer(
                node=node.name,
                op_type=node.op_type,
                tensor=tensor,
                pre_activation=output,
                activation=activation,
                module=module,
                scope=innermost_scope(activation) if activation is not None else innermost_scope(node),
                pre_activation_scope=innermost_scope(node),
            )
        )
    return layers


@dataclass
class Graph:
    """Lookups over one model's graph."""

    model: object
    producers: dict = field(init=False)
    consumers: dict = field(init=False)
    initializers: dict = field(init=False)
    nodes: dict = field(init=False)

    def __post_init__(self):
        graph = self.model.graph  # type: ignore[attr-defined]
        self.producers = {out: n for n in graph.node for out in n.output}
        self.consumers = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.nodes = {n.name: n for n in graph.node}

    def constant(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        tensor = self.initializers.get(name)
        return numpy_helper.to_array(tensor) if tensor is not None else None

    def made_by(self, name: str, op_type: str):
        node = self.producers.get(name)
        return node if node is not None and node.op_type == op_type else None


def exposed(graph: Graph, tensor: str) -> ExposedTensor | None:
    """How the artifact's ``tensor`` is read: through the QuantizeLinear that reads it (int8 as the next layer sees
    it), else the tensor itself; None when the artifact has no such tensor."""
    if tensor not in graph.producers:
        return None
    quantize = next((n for n in graph.consumers.get(tensor, []) if n.op_type == "QuantizeLinear"), None)
    if quantize is None:
        return ExposedTensor(tensor)
    scale = graph.constant(quantize.input[1])
    zero = graph.constant(quantize.input[2]) if len(quantize.input) > 2 and quantize.input[2] else None
    if scale is None or scale.size != 1:
        return ExposedTensor(tensor)  # a per-channel activation scale: read the float tensor instead
    return ExposedTensor(quantize.output[0], scale.reshape(()), None if zero is None else zero.reshape(()))


def module_of(graph: Graph, node) -> str | None:
    """The PyTorch module owning a layer's weight, from the weight's name, also behind a DequantizeLinear
    (``layer1.0.conv1.weight_quantized``) or a Cast (fp16)."""
    if len(node.input) < 2:
        return None
    name = node.input[1]
    for _ in range(3):
        producer = graph.producers.get(name)
        if producer is None or producer.op_type not in ("DequantizeLinear", "Cast", "Transpose"):
            break
        name = producer.input[0]
    for suffix in ("_quantized", "_fp16"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".weight") if name.endswith(".weight") else None


def layer_precision(graph: Graph, node_name: str, tensor: str) -> str:
    """What the file asks of a layer: int8 (its input and weight come through DequantizeLinear, or an integer op
    computes it), int8-dynamic (MatMulInteger/ConvInteger on the fly), fp16, or fp32."""
    import onnx

    node = graph.nodes.get(node_name)
    if node is None:
        producer = graph.producers.get(tensor)
        seen, frontier = 0, [producer] if producer is not None else []
        while frontier and seen < 8:  # a dynamic-int8 Gemm: MatMulInteger -> Mul -> Add under the Gemm's output name
            current = frontier.pop()
            seen += 1
            if current.op_type in INTEGER_OPS:
                return "int8-dynamic"
            frontier += [graph.producers[i] for i in current.input if i in graph.producers]
        return "fp32"
    if node.op_type in INTEGER_OPS:
        return "int8"
    if len(node.input) > 1 and graph.made_by(node.input[0], "DequantizeLinear") and graph.made_by(node.input[1], "DequantizeLinear"):
        return "int8"
    weight = graph.initializers.get(node.input[1]) if len(node.input) > 1 else None
    if weight is not None and weight.data_type == onnx.TensorProto.FLOAT16:
        return "fp16"
    return "fp32"


def with_outputs(model, names: list[str]) -> bytes:
    """A copy of ``model`` whose graph also outputs ``names`` (their element types from shape inference)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    types = _element_types(copy)
    for name in names:
        if name not in present:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
            present.add(name)
    return copy.SerializeToString()


def _element_types(model) -> dict[str, int]:
    """Tensor name -> ONNX element type, from the graph's value_info and shape inference, and from what produces it
    (a QuantizeLinear's output has its zero point's type)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        value_info = list(inferred.graph.value_info)
    except Exception:  # shape inference fails on some contrib ops; the fallbacks below still apply
        value_info = list(model.graph.value_info)
    types = {v.name: v.type.tensor_type.elem_type for v in value_info if v.type.tensor_type.elem_type}
    initializers = {t.name: t.data_type for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in initializers:
            types[node.output[0]] = initializers[node.input[2]]
    return types
