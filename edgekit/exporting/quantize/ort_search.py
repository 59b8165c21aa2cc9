"""The accuracy-aware int8 search for ONNX Runtime: the generic loop (``fallback.search_layers``) given ONNX's way to
quantize a set of float layers and to rank the candidates.

Two things keep it affordable on a laptop CPU:
- calibration runs once; every re-quantization reuses its ranges (``ort.calibrate`` / ``qdq.quantize_with_ranges``);
- ranking does not re-quantize: a layer is "put back in float" by rewiring its inputs around their
  DequantizeLinear nodes in memory (``float_node``), and scored on a few calibration images against fp32.
Every step's file is a real re-quantization, validated under the ORT session config (``Ranking.session_config``)
the model will carry.

Separate from ``fallback.py`` so that the loop stays free of ONNX; ExecuTorch's counterpart is ``pt2e.py``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ...parity_check import ParityMetrics, ParityThresholds
from .fallback import MAX_SECONDS, MAX_STEPS, Int8Search, Validation, output_error, search_layers
from .ort import Ranges, load_model, run_onnx, sort_topologically
from .qdq import FloatActivations, quantize_with_ranges

QUANTIZABLE = ("Conv", "Gemm", "MatMul", "ConvTranspose")


@dataclass
class Ranking:
    """Scores candidate nodes by output error vs fp32 on a few images, with one node at a time put back in float."""

    inputs: np.ndarray  # model inputs (float NCHW or uint8 NHWC), a few calibration images
    reference: np.ndarray  # fp32 logits for those inputs
    session_config: dict[str, str]

    def scores(self, qdq_path: Path, float_path: Path, candidates: Iterable[str], tick: Callable[[str], None]) -> list[tuple[float, str]]:
        """(error with the node in float, node), lowest error first: the node whose float version helps most.
        ``candidates`` is read once, in order (a progress bar's iterator will do)."""
        qdq, float_model = load_model(qdq_path), load_model(float_path)
        scored = []
        for name in candidates:
            tick(f"ranking {name}")
            edited = float_node(qdq, name, float_model)
            if edited is None:
                continue
            scored.append((self.error(edited.SerializeToString()), name))
        return sorted(scored)

    def error(self, model: bytes | str) -> float:
        logits = run_onnx(model, self.inputs, self.session_config)
        return output_error(logits, self.reference)


def search_int8(
    prepared: Path,
    out: Path,
    ranges: Ranges,
    start_excluded: list[str],
    validation: Validation,
    ranking: Ranking,
    budget: ParityThresholds,
    isa: str,
    *,
    max_steps: int = MAX_STEPS,
    max_seconds: float = MAX_SECONDS,
    metadata_from: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> Int8Search:
    """Quantize ``prepared`` (ONNX) into ``out`` within ``budget`` if a model with some nodes in float gets there.

    ``out`` ends as the first validated model within the budget, or else as the best one validated (``kept_step``);
    the result says whether it is within the budget.
    """
    started = time.perf_counter()
    workdir = out.parent

    def evaluate(excluded: list[str]) -> ParityMetrics:
        quantize_with_ranges(prepared, out, ranges, excluded, metadata_from=metadata_from)
        return validation.evaluate(out)

    def rank(excluded: list[str], candidates: list[str]) -> list[str]:
        current = workdir / "ranking-base.onnx"
        quantize_with_ranges(prepared, current, ranges, excluded)
        return [name for _, name in ranking.scores(current, prepared, candidates, progress)]

    quantizable = [n.name for n in load_model(prepared).graph.node if n.op_type in QUANTIZABLE and n.name]
    search = search_layers(
        quantizable,
        start_excluded,
        evaluate,
        validation.within_budget,
        rank,
        max_steps=max_steps,
        max_seconds=max_seconds,
        progress=progress,
    )
    if search.kept_step != len(search.steps) - 1:
        quantize_with_ranges(prepared, out, ranges, search.kept_float, metadata_from=metadata_from)
    calibration = {"method": ranges.method, "images": ranges.images}
    return search.record(budget, isa, ranking.session_config, calibration, len(quantizable), started)


def float_node(qdq, name: str, float_model):
    """A copy of the QDQ model in which node ``name`` reads float inputs: each input that comes through a
    DequantizeLinear is rewired to the float tensor behind it (for activations the float activation as the float
    model computes it, see ``qdq.FloatActivations``; for weights and bias the original float initializer). None if
    the node is not there or not quantized."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    float_nodes = {n.name: n for n in float_model.graph.node}
    float_initializers = {t.name: t for t in float_model.graph.initializer}
    activations = FloatActivations(model, float_model)
    nodes = {n.name: n for n in model.graph.node}
    target, original = nodes.get(name), float_nodes.get(name)
    if target is None or original is None or len(original.input) != len(target.input):
        return None
    producers = {out: n for n in model.graph.node for out in n.output}
    present = {t.name for t in model.graph.initializer}
    changed = False
    for index, tensor in enumerate(target.input):
        dequantize = producers.get(tensor)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        released = activations.behind(tensor)  # an activation: the float tensor behind its Q/DQ pair
        if released is not None:
            target.input[index] = released
        elif original.input[index] in float_initializers:  # a weight or bias: its float initializer
            # The QDQ graph may reuse the float name for the DequantizeLinear output, so the copy gets its own name.
            copy_name = original.input[index] + "_edgekit_float"
            if copy_name not in present:
                weight = onnx.TensorProto()
                weight.CopyFrom(float_initializers[original.input[index]])
                weight.name = copy_name
                model.graph.initializer.append(weight)
                present.add(copy_name)
            target.input[index] = copy_name
        else:
            continue
        changed = True
    if activations.added:
        sort_topologically(model.graph)
    return model if changed else None
