"""Accuracy-aware int8: quantize, check the budget on held-out images, and return the most sensitive layers to
float one at a time until the budget holds, or say that no int8 within the budget was found.

The loop follows NNCF's ``quantize_with_accuracy_control`` and Intel Neural Compressor's fallback: rank the
quantized layers by how much the model's output improves when that layer alone is computed in float, revert the
worst, re-validate, and re-rank when a step does not help. Two things keep it affordable on a laptop CPU:
- calibration runs once; every re-quantization reuses its ranges (``ort.calibrate`` / ``quantize_with_ranges``);
- ranking does not re-quantize: a layer is "put back in float" by rewiring its inputs around their
  DequantizeLinear nodes in memory (``float_node``), and scored on a few calibration images against fp32.
Every step's file is a real re-quantization, validated on the run's parity images, under the runtime settings
(``session_config``) the model will carry, so what the search measures is what the user gets.

The loop itself (``search_layers``) knows no format: ONNX Runtime (``search_int8``) and ExecuTorch
(``pt2e.search_pt2e``) each hand it a way to quantize-and-validate a set of float layers and a way to rank them,
and both record the same ``Int8Search``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel

from ...errors import ExportError, ModelError
from ...parity_check import ParityMetrics, ParityThresholds
from ...safety import onnx_session
from .ort import FloatActivations, Ranges, load_model, quantize_with_ranges, sort_topologically

QUANTIZABLE = ("Conv", "Gemm", "MatMul", "ConvTranspose")
MAX_STEPS = 24  # layers returned to float before giving up
MAX_SECONDS = 600.0
MAX_RERANKS = 3
RANKING_IMAGES = 32


class FallbackStep(BaseModel):
    """One validated model on the way to the budget."""

    action: str  # "quantize", "keep <node> in float"
    kept_float: list[str]
    top1_agreement: float
    accuracy_drop: float | None = None
    mean_abs_diff: float
    within_budget: bool
    seconds: float


class Int8Search(BaseModel):
    """What the accuracy-aware search did and where it ended (recorded in the export result)."""

    budget: ParityThresholds
    isa: str
    session_config: dict[str, str]
    calibration: dict
    quantized_nodes: int  # quantizable nodes in the graph
    steps: list[FallbackStep]
    kept_float: list[str]
    within_budget: bool
    kept_step: int = -1  # which step's model the file is: the last (within budget), else the best validated one
    stopped: str  # why the search ended, one line
    seconds: float


@dataclass
class Validation:
    """How a candidate is judged: run it, compare with fp32, apply the budget."""

    evaluate: Callable[[Any], ParityMetrics]  # runs the candidate (an ONNX file under the model's runtime settings, a GraphModule)
    within_budget: Callable[[ParityMetrics], bool]


@dataclass
class Ranking:
    """Scores candidate nodes by output error vs fp32 on a few images, with one node at a time put back in float."""

    inputs: np.ndarray  # model inputs (float NCHW or uint8 NHWC), a few calibration images
    reference: np.ndarray  # fp32 logits for those inputs
    session_config: dict[str, str]

    def scores(self, qdq_path: Path, float_path: Path, candidates: list[str], tick: Callable[[str], None]) -> list[tuple[float, str]]:
        """(error with the node in float, node), lowest error first: the node whose float version helps most."""
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
        return float(np.mean(np.abs(logits - self.reference)) / (np.std(self.reference) + 1e-12))


@dataclass
class LayerSearch:
    """Where the generic search ended: every validated step, and which one the caller should keep."""

    steps: list[FallbackStep]
    kept_float: list[str]
    within_budget: bool
    kept_step: int
    stopped: str

    def record(
        self, budget: ParityThresholds, isa: str, session_config: dict[str, str], calibration: dict, quantized_nodes: int, started: float
    ) -> Int8Search:
        """The search as the export result records it (one record for every format's search)."""
        return Int8Search(
            budget=budget,
            isa=isa,
            session_config=session_config,
            calibration=calibration,
            quantized_nodes=quantized_nodes,
            steps=self.steps,
            kept_float=self.kept_float,
            within_budget=self.within_budget,
            kept_step=self.kept_step,
            stopped=self.stopped,
            seconds=round(time.perf_counter() - started, 2),
        )


def search_layers(
    layers: list[str],
    start_float: list[str],
    evaluate: Callable[[list[str]], ParityMetrics],
    within_budget: Callable[[ParityMetrics], bool],
    rank: Callable[[list[str], list[str]], list[str]],
    *,
    max_steps: int = MAX_STEPS,
    max_seconds: float = MAX_SECONDS,
    progress: Callable[[str], None] = lambda _: None,
) -> LayerSearch:
    """Return ``layers`` to float one at a time, the most helpful first, until ``within_budget`` holds.

    The format's side is three functions: ``evaluate(kept_float)`` quantizes with those layers in float and compares
    with fp32; ``rank(kept_float, candidates)`` orders candidates, the one whose float version helps most first;
    ``within_budget(metrics)`` judges. The result names the first step within the budget, or else the best one
    validated (``kept_step``): the caller leaves that step's model behind.
    """
    started = time.perf_counter()
    kept = list(start_float)
    steps: list[FallbackStep] = []

    def attempt(action: str) -> FallbackStep:
        step_started = time.perf_counter()
        metrics = evaluate(list(kept))
        step = FallbackStep(
            action=action,
            kept_float=list(kept),
            top1_agreement=metrics.top1_agreement,
            accuracy_drop=metrics.accuracy_drop,
            mean_abs_diff=metrics.mean_abs_diff,
            within_budget=within_budget(metrics),
            seconds=round(time.perf_counter() - step_started, 2),
        )
        steps.append(step)
        progress(
            f"{action}: agreement {step.top1_agreement:.1%}"
            + (f", accuracy drop {step.accuracy_drop:+.1%}" if step.accuracy_drop is not None else "")
        )
        return step

    best = attempt("quantize")
    order: list[str] = []
    reranks = 0
    stopped = "within budget" if best.within_budget else ""
    while not stopped:
        if len(steps) > max_steps:
            stopped = f"stopped after {max_steps} layers back in float without reaching the budget (raise --max-fallback-steps)"
            break
        if time.perf_counter() - started > max_seconds:
            stopped = f"stopped at the {max_seconds:.0f} s time bound without reaching the budget (raise --max-fallback-seconds)"
            break
        if not order:
            if reranks >= MAX_RERANKS:
                stopped = f"no layer left whose float version helps (ranked {reranks} times)"
                break
            reranks += 1
            candidates = [n for n in layers if n not in kept]
            if not candidates:
                stopped = "every quantizable layer is in float and the budget still does not hold"
                break
            order = rank(list(kept), candidates)
            if not order:
                stopped = "no layer could be ranked"
                break
        layer = order.pop(0)
        kept.append(layer)
        step = attempt(f"keep {layer} in float")
        if step.within_budget:
            stopped = "within budget"
        elif step.top1_agreement <= best.top1_agreement and step.mean_abs_diff >= best.mean_abs_diff:
            order = []  # this layer did not help: the ranking is stale, rank again around what is in float now
        if _better(step, best):
            best = step
    final = steps[-1]
    if not final.within_budget and best is not final:
        # Returning layers to float does not improve the model monotonically (on near-tie images the validated
        # agreement wandered by +-3 points from step to step), so the model left behind is the best one seen.
        final = best
    return LayerSearch(steps, final.kept_float, final.within_budget, steps.index(final), stopped)


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


def with_margin(metrics: ParityMetrics) -> ParityMetrics:
    """The metrics moved one standard error against the model, for judging a step of the search.

    The search stops only when the budget holds one standard error inside its limit: stopping at the first sample
    that happens to pass overfits the validation images (seen: -0.4 pt on val, -2.8 pt on test digits)."""
    update = {}
    if metrics.accuracy_drop is not None and metrics.accuracy_drop_se is not None:
        update["accuracy_drop"] = metrics.accuracy_drop + metrics.accuracy_drop_se
    if metrics.top1_agreement_se is not None:
        update["top1_agreement"] = metrics.top1_agreement - metrics.top1_agreement_se
    return metrics.model_copy(update=update)


def _better(step: FallbackStep, best: FallbackStep) -> bool:
    """Closer to fp32: lower accuracy drop where labels exist, then higher agreement, then smaller logit error."""

    def key(s: FallbackStep) -> tuple[float, float, float]:
        return (-(s.accuracy_drop or 0.0), s.top1_agreement, -s.mean_abs_diff)

    return key(step) > key(best)


def float_node(qdq, name: str, float_model):
    """A copy of the QDQ model in which node ``name`` reads float inputs: each input that comes through a
    DequantizeLinear is rewired to the float tensor behind it (for activations the float activation as the float
    model computes it, see ``ort.FloatActivations``; for weights and bias the original float initializer). None if
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


def ort_session(model: bytes | str | Path, session_config: dict[str, str]):
    """An ORT CPU session for an ONNX model (a file or serialized bytes) under the given session config."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in session_config.items():
        options.add_session_config_entry(key, value)
    try:
        return onnx_session(model if isinstance(model, bytes) else Path(model), options)
    except ModelError as exc:
        raise ExportError(f"a quantized candidate cannot be run: {exc}") from exc


def run_onnx(model: bytes | str | Path, inputs: np.ndarray, session_config: dict[str, str], batch: int = 16) -> np.ndarray:
    """Logits of an ONNX model (a file or serialized bytes) under the given ORT session config."""
    session = ort_session(model, session_config)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: inputs[i : i + batch]})[0] for i in range(0, len(inputs), batch)]).astype(np.float32)
