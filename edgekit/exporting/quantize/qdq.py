"""Static int8 as edgekit makes it: ONNX Runtime's QDQ model, then edits of its graph so that it is what was asked.

``quantize_static`` is the whole recipe (pre-process, calibrate, quantize with the first and last layers in float);
``quantize_with_ranges`` is one re-quantization from ranges computed once, which the accuracy-aware search
(``ort_search.py``) repeats with other layers in float. After ORT's quantizer (``ort.quantize_qdq``) each one
- feeds every layer kept in float its float input (``release_float_layers``, ``FloatActivations``), removing the
  Q/DQ pairs left without a reader, since ORT would otherwise run such a layer in per-tensor int8;
- re-rounds the int8 weights and corrects the biases (``rounding.py``).

Separate from ``ort.py`` because these are edits of a graph, not calls of ORT's tooling, and the place where the
pieces meet: this module imports ``ort`` and ``rounding``, and neither imports it.

Why the first Conv and the final Gemm/MatMul stay in float by default: they see raw pixels and produce the logits,
the layers most sensitive to int8 (``benchmarks/bench_quantization.py``'s "every layer int8" row against "plain";
tables in ``benchmarks/results/``). What else must stay float is found by the search.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from ...files import atomic_path
from ...progress import quiet
from .ort import Ranges, calibrate, copy_metadata, load_model, prepare, quantize_qdq, sort_topologically
from .rounding import correct_biases, round_weights_gptq

FLOAT_LAYER_TYPES = ("Conv", "ConvTranspose", "Gemm")  # what ORT's WeightBiasQuantization rewrites


def quantize_static(
    onnx_in: str | os.PathLike,
    onnx_out: str | os.PathLike,
    calibration_batches: Iterable[np.ndarray],
    method: str = "percentile",
    per_channel: bool = True,
    exclude_first_last: bool = True,
    info: dict | None = None,
    exclude: Iterable[str] = (),
    bias_correction: bool = True,
    gptq: bool = True,
) -> Path:
    """Static QDQ int8 (uint8 activations, int8 weights) calibrated on ``calibration_batches``.

    ``calibration_batches`` yields arrays the model accepts (e.g. float32 NCHW, a few hundred real
    images in total). ``method``: minmax, entropy or percentile (99.999). ``exclude_first_last`` keeps the
    first Conv and the final Gemm/MatMul in float32 (see the module docstring for why); ``exclude`` names more
    nodes to keep in float. ``gptq``, ``bias_correction``: see ``rounding.ConvInputs``. ``info``, if given, receives
    what was done: nodes kept in float, number of calibration images. Intermediate files live in a private temporary
    directory.
    """
    with tempfile.TemporaryDirectory(prefix="edgekit-quant-") as workdir:
        prepared = prepare(onnx_in, Path(workdir) / "prepared.onnx")
        ranges = calibrate(prepared, calibration_batches, method, Path(workdir))
        excluded = (first_and_last_compute_nodes(load_model(prepared)) if exclude_first_last else []) + [n for n in exclude]
        quantize_with_ranges(
            prepared,
            onnx_out,
            ranges,
            excluded,
            per_channel=per_channel,
            metadata_from=onnx_in,
            bias_correction=bias_correction,
            gptq=gptq,
        )
    if info is not None:
        info.update({"kept_float": excluded, "calibration_images": ranges.images, "calibration_method": method})
    return Path(onnx_out)


def quantize_with_ranges(
    prepared: Path,
    onnx_out: str | os.PathLike,
    ranges: Ranges,
    excluded: Iterable[str],
    per_channel: bool = True,
    metadata_from: str | os.PathLike | None = None,
    bias_correction: bool = True,
    gptq: bool = True,
) -> Path:
    """QDQ int8 of ``prepared`` with precomputed ``ranges``, keeping ``excluded`` nodes in float; written atomically.

    ``gptq``: each quantized Conv's weights are rounded to move its output least on the calibration images;
    ``bias_correction``: its int32 bias then absorbs the mean shift that rounding leaves (see ``rounding.ConvInputs``)."""
    with atomic_path(onnx_out) as tmp, quiet():
        quantize_qdq(prepared, tmp, ranges, excluded, per_channel, source=metadata_from or prepared)
        refined, float_model = load_model(tmp), load_model(prepared)
        release_float_layers(refined, float_model)
        if gptq and ranges.input_moments:
            round_weights_gptq(refined, float_model, ranges.input_moments, cache=ranges.rounded)
        if bias_correction and ranges.input_means:
            correct_biases(refined, float_model, ranges.input_means)
        tmp.write_bytes(refined.SerializeToString())
        if metadata_from is not None:
            copy_metadata(metadata_from, tmp)
    return Path(onnx_out)


def release_float_layers(qdq, float_model):
    """``qdq`` with every layer left in float (a float weight initializer) reading float input: where its input
    comes through a DequantizeLinear of a QuantizeLinear, it reads the float activation behind them instead
    (``FloatActivations``), and Q/DQ pairs left without a consumer are removed. Returns ``qdq`` (edited in place).

    Why: ONNX Runtime's basic graph optimizations include ``WeightBiasQuantization`` (ORT 1.20+), which quantizes
    the weights of any Conv/ConvTranspose/Gemm whose input comes from a per-tensor DequantizeLinear, to
    *per-tensor* int8 at session load. A layer "kept in float" by ``nodes_to_exclude`` therefore ran in per-tensor
    int8, the worst choice there is, and the accuracy-aware search measured layers that were not what it asked for.
    """
    initializers = {t.name for t in qdq.graph.initializer}
    activations = FloatActivations(qdq, float_model)
    for node in list(qdq.graph.node):
        if node.op_type in FLOAT_LAYER_TYPES and len(node.input) > 1 and node.input[1] in initializers:
            released = activations.behind(node.input[0])
            if released is not None:
                node.input[0] = released
    _remove_dead_qdq(qdq)
    if activations.added:
        sort_topologically(qdq.graph)
    return qdq


class FloatActivations:
    """The float tensor behind a DequantizeLinear, as the float model computes it.

    ORT's quantizer folds a Relu/Clip that follows a Conv into the next QuantizeLinear's range: the Conv then
    writes straight to the activation's name, and only the QuantizeLinear clamps. Reading the QuantizeLinear's
    input in float would skip the activation (a ReLU6 network lost all agreement that way), so a copy of the float
    model's activation node is added in front of the reader.
    """

    def __init__(self, qdq, float_model):
        self.qdq = qdq
        self.producers = {out: n for n in qdq.graph.node for out in n.output}
        self.float_producers = {out: n for n in float_model.graph.node for out in n.output}
        self.float_initializers = {t.name: t for t in float_model.graph.initializer}
        self.added = False

    def behind(self, tensor: str) -> str | None:
        """The float tensor that ``tensor`` (a DequantizeLinear output) dequantizes; None if there is none to read."""
        dequantize = self.producers.get(tensor)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            return None
        quantize = self.producers.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear":
            return None
        source = quantize.input[0]
        original, current = self.float_producers.get(source), self.producers.get(source)
        if original is None or current is None or original.op_type not in ("Relu", "Clip") or current.op_type == original.op_type:
            return source
        copy_name = source + "_edgekit_float"
        if copy_name in self.producers:
            return copy_name
        return self._copy_activation(original, source, copy_name)

    def _copy_activation(self, original, source: str, copy_name: str) -> str | None:
        """Add a copy of the float model's activation ``original`` reading ``source`` and writing ``copy_name``
        (with the bounds it reads); None if a bound is computed by a node."""
        import onnx

        present = {t.name for t in self.qdq.graph.initializer}
        for bound in original.input[1:]:
            if bound and bound not in present:
                if bound not in self.float_initializers:
                    return None  # a bound computed by a node: leave this layer as the quantizer made it
                self.qdq.graph.initializer.append(self.float_initializers[bound])
        activation = onnx.NodeProto()
        activation.CopyFrom(original)
        activation.name = (original.name or source) + "_edgekit_float"
        activation.input[0] = source
        del activation.output[:]
        activation.output.append(copy_name)
        self.qdq.graph.node.append(activation)  # the caller sorts the graph
        self.producers[copy_name] = activation
        self.added = True
        return copy_name


def _remove_dead_qdq(model) -> None:
    """Drop QuantizeLinear/DequantizeLinear nodes whose outputs nothing reads (repeated: a Q feeds only its DQ)."""
    while True:
        used = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in n.output)]
        if not dead:
            return
        for node in dead:
            model.graph.node.remove(node)


def first_and_last_compute_nodes(model) -> list[str]:
    """Names of the first Conv and the last Gemm/MatMul in graph (topological) order: the layers most
    sensitive to int8, since they see raw pixels and produce the logits."""
    nodes = list(model.graph.node)
    first = next((n.name for n in nodes if n.op_type == "Conv"), None)
    last = next((n.name for n in reversed(nodes) if n.op_type in ("Gemm", "MatMul")), None)
    return [name for name in (first, last) if name]
