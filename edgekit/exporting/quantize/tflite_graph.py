"""A float .tflite's graph as the int8 search sees it: its ops in order, each tied to the torch module it came from,
and the float weights and biases of its layers.

litert-torch names every tensor after the module path that made it, ``<root class>/<class>_<attribute>/...`` (e.g.
"timm.models.efficientnet.EfficientNet/torch.nn.modules.container.Sequential_blocks/.../Conv2d_conv_dw;1"), with
the locations of the ops fused into it (BatchNorm, ReLU6) joined by ";;". ``module_name`` turns such a location into
the torch module name ("blocks.1.0.conv_dw"), checked against the model's own ``named_modules()``, so the layers kept
in float are named as ONNX Runtime's and ExecuTorch's searches name them. An op's *scope* (its output tensor names
joined by ";", plus a trailing ";") is what ai-edge-quantizer matches its recipe regexes against.

Grouping by module matters: the stem's PAD and the input's NCHW->NHWC TRANSPOSE carry the first conv's name, so
keeping that conv in float keeps the whole input path float (FINDINGS: with the TRANSPOSE quantized, the input
itself was int8 and even all 50 conv/FC layers of Lite0 in float reached only 90.5% agreement).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Collection

import numpy as np

QUANTIZABLE = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
_LAYER_CLASSES = ("Conv1d", "Conv2d", "Conv2dSame", "Linear", "ConvTranspose2d", "ScaledStdConv2d")


@dataclass(frozen=True)
class Op:
    """One op of the graph: its place, kind, ai-edge-quantizer scope and torch module (None where unnamed)."""

    index: int
    kind: str
    scope: str
    module: str | None
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    @property
    def is_layer(self) -> bool:
        return self.kind in QUANTIZABLE


def module_name(location: str, known: Collection[str] = ()) -> str | None:
    """ "<root>/<class>_<attribute>/..." -> "attribute.attribute..." (None for a location that is no module path).

    The class and the attribute are split at the "_" that makes a module ``known`` has (a class or an attribute
    may hold "_" too); without ``known``, at the first "_"."""
    location = re.sub(r";\d*$", "", location)
    parts = location.split("/")
    if len(parts) < 2 and "." not in location:
        return None
    path = ""
    for component in parts[1:]:  # the first is the root module's class, which has no attribute
        leaf = component.rsplit(".", 1)[-1]
        splits = [i for i, ch in enumerate(leaf) if ch == "_"]
        if not splits:
            return None
        names = [f"{path}.{leaf[i + 1 :]}" if path else leaf[i + 1 :] for i in splits]
        path = next((name for name in names if name in known), names[0])
    return path or None


def layer_name(tensor_name: str, known: Collection[str] = ()) -> str | None:
    """The conv/linear module behind a fused op, from a tensor name (the fused ops' locations come first)."""
    for location in reversed(tensor_name.split(";;")):
        last = re.sub(r";\d*$", "", location).rsplit("/", 1)[-1].rsplit(".", 1)[-1]
        if last.split("_", 1)[0] in _LAYER_CLASSES:
            return module_name(location, known)
    return None


def _other_module(tensor_name: str, known: Collection[str]) -> str | None:
    """A non-layer op's module: the shortest module path among its fused locations (a residual ADD carries its
    block, its activation and its BatchNorm: the block names it)."""
    names = [name for name in (module_name(location, known) for location in tensor_name.split(";;")) if name]
    return min(names, key=lambda name: name.count(".")) if names else None


def graph_ops(model, known: Collection[str] = ()) -> list[Op]:
    """Every op of the first subgraph of a ``ModelT``, in graph order."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    codes = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    graph = model.subgraphs[0]
    ops = []
    for index, op in enumerate(graph.operators):
        kind = codes.get(flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex]), "?")
        names = [graph.tensors[i].name.decode() for i in op.outputs if i != -1]
        outputs = ";".join(names)
        if kind in QUANTIZABLE:
            # a graph output is renamed to the signature's ("serving_default_output_0_output"): the weight still knows
            weight = graph.tensors[op.inputs[1]].name.decode() if len(op.inputs) > 1 else ""
            module = layer_name(outputs, known) or layer_name(weight, known)
        else:
            module = _other_module(outputs, known)
        inputs = tuple(int(i) for i in op.inputs)
        ops.append(Op(index, kind, outputs + ";" if names else "", module, inputs, tuple(int(i) for i in op.outputs)))
    return ops


def float_array(model, tensor_index: int) -> np.ndarray | None:
    """A constant float32 tensor's values (a copy), None when it is not one."""
    tensor = model.subgraphs[0].tensors[tensor_index]
    data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
    if data is None or len(data) == 0 or tensor.type != 0:  # 0: TensorType.FLOAT32
        return None
    return np.frombuffer(bytes(data), np.float32).reshape(tuple(tensor.shape)).copy()


def set_float_array(model, tensor_index: int, values: np.ndarray) -> None:
    tensor = model.subgraphs[0].tensors[tensor_index]
    model.buffers[tensor.buffer].data = np.frombuffer(np.ascontiguousarray(values, np.float32).tobytes(), np.uint8)


def channel_axis(kind: str) -> int:
    """The output-channel axis of a layer's weight: [O, kh, kw, I] for CONV_2D, [1, kh, kw, C] for depthwise."""
    return 3 if kind == "DEPTHWISE_CONV_2D" else 0


def privatize_constants(model, slots: list[tuple[int, int]]) -> int:
    """Give each (op index, input slot) constant a tensor and buffer of its own, in place; returns how many were shared.

    The converter stores equal constants once (a fresh model's zero biases share one tensor), and an edit of one
    layer's bias or weights must not change another's."""
    import copy

    from ai_edge_litert import schema_py_generated as schema

    graph = model.subgraphs[0]
    readers: dict[int, int] = {}
    for op in graph.operators:
        for index in op.inputs:
            readers[index] = readers.get(index, 0) + 1
    buffer_users: dict[int, int] = {}
    for tensor in graph.tensors:
        buffer_users[tensor.buffer] = buffer_users.get(tensor.buffer, 0) + 1
    shared = 0
    for op_index, slot in slots:
        op = graph.operators[op_index]
        index = op.inputs[slot]
        tensor = graph.tensors[index]
        if readers.get(index, 0) <= 1 and buffer_users.get(tensor.buffer, 0) <= 1:
            continue
        readers[index] -= 1
        buffer_users[tensor.buffer] -= 1
        twin, buffer = copy.copy(tensor), schema.BufferT()
        buffer.data = np.array(model.buffers[tensor.buffer].data, dtype=np.uint8, copy=True)
        model.buffers.append(buffer)
        twin.buffer = len(model.buffers) - 1
        twin.name = tensor.name + f";private{op_index}".encode()
        graph.tensors.append(twin)
        op.inputs[slot] = len(graph.tensors) - 1
        shared += 1
    return shared
