"""Per-layer numerics for an ExecuTorch int8 program, by the pt2e eager fallback: the run's model quantized again here
the way edgekit's ExecuTorch export quantizes (``XNNPACKQuantizer`` through ``quantize.pt2e.Pt2eInt8``, every layer
int8), converted with reference quantize/dequantize ops and run in PyTorch eager. Each conv/linear node is named by
its module (``nn_module_stack``); its tensor is the one the next layer reads (after its activation and its output
quantize/dequantize). The float twin of that tensor (the prepared model, whose observers pass values through, with
BatchNorm folded the same way) ties it to a PyTorch module output by value, as ``matching`` does for ONNX.

Own error (a layer fed from float): a second run of the converted graph in which every int8 layer reads, through
its own input quantize/dequantize, the prepared graph's float value of the tensor it quantizes (same node names in
both graphs) instead of its input; only that edge changes, so the previous layer's chain (which ends in the same
quantize) is untouched, and one run gives every layer's figure.

This is not the .pte's own arithmetic (XNNPACK kernels), nor its layers kept in float by the accuracy search; the
result says so. The .pte's own logits are compared beside it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .matching import MATCH_TOLERANCE, relative_error
from .metrics import ErrorAccumulator
from .results import LayerNumerics
from .torch_capture import Key, ModuleOutputs, key_name

PASS_THROUGH = ("relu", "relu_", "hardtanh", "hardtanh_", "clamp", "quantize_per_tensor", "dequantize_per_tensor")
CALIBRATION_IMAGES = 64


@dataclass
class Pt2eLayer:
    node: str  # the conv/linear node's name (the same in the prepared and the converted graph)
    tensor: str  # the converted graph's node whose output the next layer reads
    module: str
    precision: str
    key: Key | None = None
    description: str = ""
    shape: tuple[int, ...] = ()
    float_tensor: str = ""  # the same point in the prepared (float) graph
    activation: tuple[float, float] | None = None  # a functional relu/hardtanh on the way: its (min, max), applied here
    source: str | None = None  # the float tensor its input quantize reads (int8 layers)
    sums: ErrorAccumulator | None = None
    own_sums: ErrorAccumulator | None = None


def _reads(node) -> str:
    """The node after ``node`` whose output the next layer reads: through its activation, observer and Q/DQ."""
    while True:
        users = list(node.users)
        if len(users) != 1 and not (_op(node) == "quantize_per_tensor" and users and all(_op(u) == "dequantize_per_tensor" for u in users)):
            return node.name
        following = users[0]
        if _op(following) not in PASS_THROUGH and not (
            following.op == "call_module" and str(following.target).startswith("activation_post_process")
        ):
            return node.name
        node = following


def _activation(node) -> tuple[float, float] | None:
    """The (min, max) of the first relu/hardtanh/clamp on the single-user chain after ``node``, if any."""
    while len(node.users) == 1:
        node = next(iter(node.users))
        op = _op(node)
        if op in ("relu", "relu_"):
            return (0.0, float("inf"))
        if op in ("hardtanh", "hardtanh_", "clamp"):
            low = node.args[1] if len(node.args) > 1 and node.args[1] is not None else -1.0 if op != "clamp" else -float("inf")
            high = node.args[2] if len(node.args) > 2 and node.args[2] is not None else 1.0 if op != "clamp" else float("inf")
            return (float(low), float(high))
        if op not in PASS_THROUGH and not (node.op == "call_module" and str(node.target).startswith("activation_post_process")):
            return None
    return None


def _closest(target: np.ndarray, captured: dict[Key, np.ndarray]) -> Key | None:
    """The module output equal to ``target`` (the innermost module on ties), if one is within MATCH_TOLERANCE."""
    scored = sorted((relative_error(target, value), -len(key[0]), key) for key, value in captured.items() if value.shape == target.shape)
    return scored[0][2] if scored and scored[0][0] <= MATCH_TOLERANCE else None


def _match(layer: Pt2eLayer, floats: dict[str, np.ndarray], captured: dict[Key, np.ndarray], calls: dict[str, int]) -> None:
    """Tie ``layer`` to a module output: its tensor's, else its pre-activation's with the functional activation
    applied here (``torch.relu(self.conv1(x))`` has no module for the relu)."""
    layer.key = _closest(floats[layer.float_tensor], captured)
    if layer.key is not None:
        layer.description = key_name(layer.key, calls.get(layer.key[0], 1))
        layer.activation = None
    elif layer.activation is not None and layer.node in floats:
        layer.key = _closest(floats[layer.node], captured)
        if layer.key is not None:
            layer.description = f"{key_name(layer.key, calls.get(layer.key[0], 1))}, then clamped to {layer.activation}"


def _reference(layer: Pt2eLayer, captured: dict[Key, np.ndarray]) -> np.ndarray:
    assert layer.key is not None
    value = captured[layer.key]
    return value if layer.activation is None else np.clip(value, *layer.activation)


def _op(node) -> str:
    target = getattr(node, "target", None)
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def _layers(converted) -> list[Pt2eLayer]:
    from ..exporting.quantize.pt2e import layer_name

    found = []
    for node in converted.graph.nodes:
        module = layer_name(node)
        if module is None:
            continue
        source = node.args[0]
        precision = "int8" if _op(source) == "dequantize_per_tensor" else "fp32"
        found.append(Pt2eLayer(node.name, _reads(node), module, precision, source=_quantized_source(source)))
    return found


def _quantized_source(dequantize) -> str | None:
    """The float node a dequantize(quantize(x)) pair reads: the layer's input before its own quantization."""
    if _op(dequantize) != "dequantize_per_tensor" or not dequantize.args:
        return None
    quantize = dequantize.args[0]
    if _op(quantize) != "quantize_per_tensor" or not quantize.args:
        return None
    return getattr(quantize.args[0], "name", None)


def _outputs(graph_module, names: set[str], batch: np.ndarray, feed: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The outputs of the nodes ``names`` for one batch, copied as they are made (in-place ops follow). Each layer
    node in ``feed`` reads the value given there through its own input quantize/dequantize instead of its input
    (only that edge: the quantize node's other readers, the previous layer's chain among them, are left as they are)."""
    import torch

    captured: dict[str, np.ndarray] = {}
    feed = feed or {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            value = self._fed(node) if node.name in feed else super().run_node(node)
            if node.name in names and isinstance(value, torch.Tensor):
                captured[node.name] = value.detach().float().clone().numpy()
            return value

        def _fed(self, node):
            dequantize = node.args[0]
            quantize = dequantize.args[0]
            # the pair's scales and zero points only: the env may already have dropped the tensor they read
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            q_args, q_kwargs = self.map_nodes_to_values(quantize.args[1:], quantize), self.map_nodes_to_values(quantize.kwargs, quantize)
            dq_args = self.map_nodes_to_values(dequantize.args[1:], dequantize)
            dq_kwargs = self.map_nodes_to_values(dequantize.kwargs, dequantize)
            quantized = quantize.target(torch.from_numpy(feed[node.name]), *q_args, **q_kwargs)
            return node.target(dequantize.target(quantized, *dq_args, **dq_kwargs), *args[1:], **kwargs)

    with torch.no_grad():
        Recorder(graph_module).run(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    return captured


def pt2e_layers(
    model, reference_inputs: np.ndarray, calibration: list[np.ndarray], search_ranking: bool = False
) -> tuple[list[LayerNumerics], list[str]]:
    """(the layers compared, notes) for ``model`` quantized with edgekit's pt2e recipe on ``calibration``;
    ``search_ranking``: also each layer's score as the ExecuTorch accuracy search ranks it (``rank_layers``)."""
    import torch

    from ..exporting.executorch import int8_quantizer
    from ..exporting.quantize.fallback import RANKING_IMAGES
    from ..exporting.quantize.pt2e import EAGER_BATCH, Pt2eInt8, rank_layers, run_eager
    from .ranking import apply_scores

    example = torch.from_numpy(reference_inputs[:2])
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=EAGER_BATCH)},))
    int8 = Pt2eInt8(program.module(), int8_quantizer, calibration)
    prepared, converted = int8.prepared([]), int8.converted([])
    layers = _layers(converted)
    prepared_nodes = {node.name: node for node in prepared.graph.nodes}
    layers = [layer for layer in layers if layer.node in prepared_nodes]
    for layer in layers:
        layer.float_tensor = _reads(prepared_nodes[layer.node])
        layer.activation = _activation(prepared_nodes[layer.node])
    names = {layer.tensor for layer in layers}
    first = reference_inputs[:2]
    floats = _outputs(prepared, {layer.float_tensor for layer in layers} | {layer.node for layer in layers}, first)
    with ModuleOutputs(model) as hooks:
        _, captured = hooks.run(first)
        calls = dict(hooks.calls)
    for layer in layers:
        _match(layer, floats, captured, calls)
        layer.sums = ErrorAccumulator()
        layer.own_sums = ErrorAccumulator() if layer.source in prepared_nodes else None
        layer.shape = tuple(floats[layer.float_tensor].shape[1:])
    kept = [layer for layer in layers if layer.key is not None]
    sources = {layer.source for layer in kept if layer.own_sums is not None}
    with ModuleOutputs(model, {layer.key[0] for layer in kept if layer.key is not None}) as hooks:
        for start in range(0, len(reference_inputs), EAGER_BATCH):
            batch = reference_inputs[start : start + EAGER_BATCH]
            _, captured = hooks.run(batch)
            quantized = _outputs(converted, names, batch)
            floats = _outputs(prepared, sources, batch) if sources else {}  # type: ignore[arg-type]
            fed = {layer.node: floats[layer.source] for layer in kept if layer.own_sums is not None and layer.source in floats}
            own = _outputs(converted, names, batch, feed=fed) if fed else {}
            for layer in kept:
                assert layer.sums is not None
                reference = _reference(layer, captured)
                layer.sums.add(reference, quantized[layer.tensor])
                if layer.own_sums is not None and layer.node in fed:
                    layer.own_sums.add(reference, own[layer.tensor])
    results = [_result(index, layer) for index, layer in enumerate(kept)]
    if search_ranking:
        inputs = reference_inputs[:RANKING_IMAGES]
        ranked = rank_layers(int8.converted([], fold=False), int8.layers, inputs, run_eager(int8.module, inputs))
        apply_scores(results, {name: error for error, name in ranked}, by_node=False)
    notes = [
        f"per-layer figures: pt2e eager fallback, the model quantized again here with edgekit's XNNPACKQuantizer recipe "
        f"(every layer int8, calibrated on {int8.images} images) and run in PyTorch eager; not the .pte's XNNPACK kernels "
        "nor the layers its export kept in float. The logits are the .pte's own"
    ]
    if len(kept) < len(layers):
        notes.append(f"{len(layers) - len(kept)} pt2e layers match no PyTorch module output and are left out")
    return results, notes


def _result(index: int, layer: Pt2eLayer) -> LayerNumerics:
    assert layer.sums is not None
    return LayerNumerics(
        index=index,
        layer=layer.module,
        node=layer.node,
        op_type="linear" if layer.node.startswith("linear") else "conv2d",
        precision=layer.precision,
        tensor=layer.tensor,
        shape=list(layer.shape),
        reference=layer.description,
        matched_by="value, against the pt2e model's float twin (pt2e eager fallback)",
        accumulated=layer.sums.stats(),
        own=layer.own_sums.stats() if layer.own_sums is not None and layer.own_sums.cosines else None,
    )
