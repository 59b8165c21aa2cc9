"""Which PyTorch module output each layer's float tensor is.

The exporter's name scopes say which module a node belongs to, but not which call of a module that runs twice
(ResNet's shared ``relu``), and a functional activation (``torch.relu(self.conv1(x))``) has no module at all. So a
candidate is accepted only when its values equal the float32 ONNX graph's tensor on a few real images (relative
max difference under ``MATCH_TOLERANCE``; a wrong match differs by orders of magnitude more):

1. the module the name scopes give (each of its calls);
2. any module output of the same shape;
3. a module output equal to the layer's pre-activation tensor, with the graph's Relu/Clip applied to it here;
4. none: the float32 ONNX graph's own tensor is the reference (it equals PyTorch at the logits to float32
   round-off), and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .onnx_layers import FloatLayer, Graph
from .torch_capture import Key, key_name

MATCH_TOLERANCE = 1e-3


@dataclass
class Reference:
    """Where a layer's float32 reference comes from."""

    key: Key | None  # the PyTorch module call; None: the float32 ONNX graph's tensor
    activation: object | None  # a Relu/Clip NodeProto to apply to the module's output (a functional activation)
    description: str
    matched_by: str
    float_graph: Graph | None = None

    def value(self, captured: dict[Key, np.ndarray], graph_tensor: np.ndarray | None) -> np.ndarray | None:
        if self.key is None:
            return graph_tensor
        output = captured.get(self.key)
        if output is None or self.activation is None or self.float_graph is None:
            return output
        return apply_activation(self.activation, output, self.float_graph)


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    if reference.shape != candidate.shape:
        return float("inf")
    scale = float(np.max(np.abs(reference))) or 1.0
    return float(np.max(np.abs(reference - candidate))) / scale


def _best(target: np.ndarray, captured: dict[Key, np.ndarray], keys: list[Key]) -> tuple[Key, float] | None:
    scored = sorted((relative_error(target, captured[key]), -len(key[0]), key) for key in keys if captured[key].shape == target.shape)
    if not scored or scored[0][0] > MATCH_TOLERANCE:
        return None
    return scored[0][2], scored[0][0]


def match_layer(
    layer: FloatLayer, graph_tensors: dict[str, np.ndarray], captured: dict[Key, np.ndarray], calls: dict[str, int], graph: Graph
) -> Reference:
    """The reference for one layer (see the module docstring for the order tried)."""
    target = graph_tensors.get(layer.tensor)
    if target is None:
        return Reference(None, None, "float32 ONNX graph", "the graph's tensor (not computed for matching)")
    if layer.scope is not None:
        scoped = [key for key in captured if key[0] == layer.scope]
        found = _best(target, captured, scoped)
        if found is not None:
            return Reference(
                found[0], None, key_name(found[0], calls.get(found[0][0], 1)), f"name scope, checked by value (rel. diff {found[1]:.1e})"
            )
    found = _best(target, captured, list(captured))
    if found is not None:
        return Reference(
            found[0],
            None,
            key_name(found[0], calls.get(found[0][0], 1)),
            f"value (rel. diff {found[1]:.1e}; name scope {layer.scope or 'absent'})",
        )
    pre = graph_tensors.get(layer.pre_activation)
    if layer.activation is not None and pre is not None:
        scoped = [key for key in captured if key[0] == layer.pre_activation_scope] or list(captured)
        found = _best(pre, captured, scoped) or _best(pre, captured, list(captured))
        if found is not None:
            description = f"{key_name(found[0], calls.get(found[0][0], 1))}, then {layer.activation.op_type}"  # type: ignore[attr-defined]
            how = f"value of the pre-activation (rel. diff {found[1]:.1e}), the graph's functional {layer.activation.op_type} applied"  # type: ignore[attr-defined]
            return Reference(found[0], layer.activation, description, how, graph)
    return Reference(None, None, "float32 ONNX graph", "no PyTorch module output equals this tensor; the float32 graph's own tensor")


def apply_activation(node, values: np.ndarray, graph: Graph) -> np.ndarray:
    """A Relu or Clip node of the float graph applied to a numpy array (its bounds from inputs or attributes)."""
    if node.op_type == "Relu":
        return np.maximum(values, 0.0)
    low, high = -np.inf, np.inf
    for attribute in node.attribute:  # Clip before opset 11 keeps its bounds as attributes
        if attribute.name == "min":
            low = attribute.f
        elif attribute.name == "max":
            high = attribute.f
    if len(node.input) > 1 and node.input[1]:
        bound = graph.constant(node.input[1])
        low = float(bound) if bound is not None else low
    if len(node.input) > 2 and node.input[2]:
        bound = graph.constant(node.input[2])
        high = float(bound) if bound is not None else high
    return np.clip(values, low, high)
