"""Per-layer numerics of an ONNX artifact (fp32, fp16, int8 QDQ, int8-dynamic) against the float32 PyTorch model.

Three ORT sessions run the same images batch by batch: the artifact with its layers' tensors exposed (the error
accumulated up to each layer), for int8 the own-error model (``onnx_own``: each layer fed from float), and PyTorch
with forward hooks on the modules the layers were matched to (``matching``). Only running sums are kept
(``metrics.ErrorAccumulator``), so Lite0 at 224 px needs no more memory than one batch of its activations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgekitError, ModelError
from ..results import DataSource
from ..safety import check_onnx_file, onnx_session
from .matching import Reference, match_layer
from .metrics import ErrorAccumulator, first_below, worst
from .onnx_layers import ExposedTensor, FloatLayer, Graph, exposed, float_layers, layer_precision, with_outputs
from .onnx_own import own_error_model
from .results import LayerNumerics, Numerics
from .torch_capture import ModuleOutputs

BATCH = 8
MATCH_IMAGES = 2  # images the layer-to-module matching runs on


@dataclass
class Layer:
    """One layer being compared: where to read it in the artifact, its reference, and its running sums."""

    float_layer: FloatLayer
    precision: str
    artifact: ExposedTensor
    reference: Reference | None = None
    own: ExposedTensor | None = None
    shape: tuple[int, ...] = ()
    accumulated_sums: ErrorAccumulator | None = None
    own_sums: ErrorAccumulator | None = None


def onnx_numerics(
    model,
    artifact: Path,
    float_candidates: list[Path],
    inputs: np.ndarray,
    reference_inputs: np.ndarray,
    source: DataSource,
    session_config: dict[str, str],
    threshold: tuple[float, str],
) -> Numerics:
    """Compare every layer of ``artifact`` with ``model`` (float32 PyTorch) on ``inputs`` (what the artifact takes)
    and ``reference_inputs`` (the same pixels as the model takes them). ``float_candidates`` are float32 graphs the
    artifact may have been made from (its export, ORT's pre-processing of it); the one sharing most layer names is
    used."""
    import onnx

    check_onnx_file(artifact)
    artifact_model = onnx.load(str(artifact))
    float_model = _closest_float_graph(artifact_model, float_candidates)
    artifact_graph, float_graph = Graph(artifact_model), Graph(float_model)
    layers: list[Layer] = []
    notes: list[str] = []
    for found in float_layers(float_model):
        reader = exposed(artifact_graph, found.tensor)
        if reader is None:
            notes.append(f"{found.node}: the artifact has no tensor {found.tensor!r} (the layer was rewritten); not compared")
            continue
        layers.append(Layer(found, layer_precision(artifact_graph, found.node, found.tensor), reader))
    if not layers:
        raise ModelError(f"{artifact} shares no Conv/Gemm/MatMul tensor with its float32 graph; was it made from another model?")
    match_layers(model, layers, float_model, float_graph, inputs[:MATCH_IMAGES], reference_inputs[:MATCH_IMAGES])
    own_model, own_readers = own_error_model(
        float_model, artifact_model, [layer.float_layer for layer in layers if layer.precision == "int8"]
    )
    for layer in layers:
        layer.own = own_readers.get(layer.float_layer.node)
    logits = _accumulate(model, artifact_model, float_model, own_model, layers, inputs, reference_inputs, session_config, notes)
    return verdict(layers, logits, len(inputs), source, threshold, notes)


def _closest_float_graph(artifact_model, candidates: list[Path]):
    import onnx

    names = {n.name for n in artifact_model.graph.node}
    best, best_shared = None, -1
    for path in candidates:
        check_onnx_file(path)
        candidate = onnx.load(str(path))
        shared = sum(1 for layer in float_layers(candidate) if layer.node in names or layer.tensor in names)
        if shared > best_shared:
            best, best_shared = candidate, shared
    if best is None:
        raise ModelError("no float32 ONNX graph to compare the artifact's layers with; export the run's fp32 model first")
    return best


def ort_session(model_bytes: bytes, session_config: dict[str, str] | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in (session_config or {}).items():
        options.add_session_config_entry(key, value)
    return onnx_session(model_bytes, options)


def match_layers(model, layers: list[Layer], float_model, float_graph: Graph, inputs: np.ndarray, reference_inputs: np.ndarray) -> None:
    """Tie every layer to its PyTorch reference on a few images (see ``matching``)."""
    names = sorted({name for layer in layers for name in (layer.float_layer.tensor, layer.float_layer.pre_activation)})
    session = ort_session(with_outputs(float_model, names))
    graph_tensors = dict(zip(names, session.run(names, {session.get_inputs()[0].name: inputs})))
    with ModuleOutputs(model) as hooks:
        _, captured = hooks.run(reference_inputs)
        calls = dict(hooks.calls)
    for layer in layers:
        layer.reference = match_layer(layer.float_layer, graph_tensors, captured, calls, float_graph)
        layer.shape = tuple(graph_tensors[layer.float_layer.tensor].shape[1:])


def _accumulate(model, artifact_model, float_model, own_model, layers, inputs, reference_inputs, session_config, notes) -> ErrorAccumulator:
    """Run every image through PyTorch, the exposed artifact and the own-error model; returns the logits' sums."""
    artifact_names = [layer.artifact.name for layer in layers]
    artifact_session = ort_session(with_outputs(artifact_model, artifact_names), session_config)
    plain_session = ort_session(artifact_model.SerializeToString(), session_config)
    fallback = [layer.float_layer.tensor for layer in layers if layer.reference is not None and layer.reference.key is None]
    own_names = [layer.own.name for layer in layers if layer.own is not None]
    aux_session = None
    if own_model is not None or fallback:
        import onnx

        base = onnx.load_from_string(own_model) if own_model is not None else float_model
        aux_session = ort_session(with_outputs(base, fallback), session_config)
    input_name = artifact_session.get_inputs()[0].name
    output_name = artifact_session.get_outputs()[0].name
    wanted = {layer.reference.key[0] for layer in layers if layer.reference is not None and layer.reference.key is not None}
    logits = ErrorAccumulator()
    for layer in layers:
        layer.accumulated_sums, layer.own_sums = ErrorAccumulator(), ErrorAccumulator() if layer.own is not None else None
    changed = 0.0
    with ModuleOutputs(model, wanted) as hooks:
        fixed = _fixed_batch(artifact_model)  # a fixed-batch twin (-b4) takes whole batches of its size only
        if fixed is not None and fixed > len(inputs):
            raise EdgekitError(
                f"the artifact takes batches of exactly {fixed} images and only {len(inputs)} are at hand; pass more with --data"
            )
        step = fixed or BATCH
        for start in range(0, len(inputs) - len(inputs) % fixed if fixed else len(inputs), step):
            batch, reference_batch = inputs[start : start + step], reference_inputs[start : start + step]
            reference_logits, captured = hooks.run(reference_batch)
            values = dict(zip([output_name, *artifact_names], artifact_session.run([output_name, *artifact_names], {input_name: batch})))
            plain = plain_session.run([output_name], {input_name: batch})[0]
            spread = float(np.max(plain) - np.min(plain)) or 1.0
            changed = max(changed, float(np.max(np.abs(plain - values[output_name]))) / spread)
            logits.add(reference_logits, values[output_name])
            aux = dict(zip(own_names + fallback, aux_session.run(own_names + fallback, {input_name: batch}))) if aux_session else {}
            for layer in layers:
                _add_batch(layer, captured, values, aux)
    if changed > 1e-3:
        notes.append(
            f"exposing the layers' outputs moved the artifact's logits by up to {changed:.2g} of their spread (ONNX Runtime fused the graph "
            "differently); the per-layer figures are of the exposed graph, the logits' of the file"
        )
    return logits


def _fixed_batch(model) -> int | None:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


def _add_batch(layer: Layer, captured, values, aux) -> None:
    reference = layer.reference.value(captured, aux.get(layer.float_layer.tensor)) if layer.reference is not None else None
    if reference is None:
        return
    assert layer.accumulated_sums is not None
    layer.accumulated_sums.add(reference, layer.artifact.value(values[layer.artifact.name]))
    if layer.own is not None and layer.own_sums is not None and layer.own.name in aux:
        layer.own_sums.add(reference, layer.own.value(aux[layer.own.name]))


def verdict(
    layers: list[Layer], logits: ErrorAccumulator, images: int, source: DataSource, threshold: tuple[float, str], notes
) -> Numerics:
    results = []
    for index, layer in enumerate(layers):
        if layer.reference is None or layer.accumulated_sums is None or not layer.accumulated_sums.cosines:
            continue
        own = layer.own_sums.stats() if layer.own_sums is not None and layer.own_sums.cosines else None
        results.append(
            LayerNumerics(
                index=index,
                layer=layer.float_layer.module or layer.float_layer.node,
                node=layer.float_layer.node,
                op_type=layer.float_layer.op_type,
                precision=layer.precision,
                tensor=layer.float_layer.tensor,
                shape=list(layer.shape),
                reference=layer.reference.description,
                matched_by=layer.reference.matched_by,
                accumulated=layer.accumulated_sums.stats(),
                own=own,
            )
        )
    return Numerics(
        images=images,
        data_source=source,
        threshold_db=threshold[0],
        threshold_reason=threshold[1],
        layers=results,
        first_diverging=first_below(results, threshold[0]),
        worst=worst(results),
        worst_own=worst(results, own=True),
        worst_own_channel=worst(results, own=True, per_channel=True),
        logits=logits.stats(),
        notes=notes,
    )
