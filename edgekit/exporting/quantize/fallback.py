"""Accuracy-aware int8, the loop every format shares: quantize, check the budget on held-out images, and return the
most sensitive layers to float one at a time until the budget holds, or say that no int8 within the budget was found.

The loop follows NNCF's ``quantize_with_accuracy_control`` and Intel Neural Compressor's fallback: rank the
quantized layers by how much the model's output improves when that layer alone is computed in float, revert the
worst, re-validate, and re-rank when a step does not help. Every step is a real re-quantization, validated on the
run's parity images under the runtime settings the model will carry, so what the search measures is what the user
gets.

This module knows no format and imports no runtime: ONNX Runtime (``ort_search.search_int8``) and ExecuTorch
(``pt2e.search_pt2e``) each hand ``search_layers`` a way to quantize-and-validate a set of float layers and a way to
rank them, and both record the same ``Int8Search``. The bounds here are the defaults of ``edgekit export``'s
``--max-fallback-steps`` and ``--max-fallback-seconds`` (``exporting/options.py`` reads them from here).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel

from ...parity_check import ParityMetrics, ParityThresholds

MAX_STEPS = 24  # layers returned to float before giving up
MAX_SECONDS = 900.0  # the search's time bound
MAX_RERANKS = 3
RANKING_IMAGES = 32  # calibration images that rank the layers (each ranking runs every candidate on them)


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


def output_error(logits: np.ndarray, reference: np.ndarray) -> float:
    """The score every format's ranking orders layers by: the logits' mean absolute error against float32's, in
    units of the reference's spread (comparable across models and batches)."""
    return float(np.mean(np.abs(np.asarray(logits) - reference)) / (np.std(reference) + 1e-12))


@dataclass
class Validation:
    """How a candidate is judged: run it, compare with fp32, apply the budget."""

    evaluate: Callable[[Any], ParityMetrics]  # runs the candidate (an ONNX file under the model's runtime settings, a GraphModule)
    within_budget: Callable[[ParityMetrics], bool]


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
    trail = _Trail(evaluate, within_budget, progress, list(start_float))
    best = trail.attempt("quantize")
    order: list[str] = []
    reranks = 0
    stopped = "within budget" if best.within_budget else ""
    while not stopped:
        stopped = _bound_reached(len(trail.steps), max_steps, started, max_seconds)
        if stopped:
            break
        if not order:
            if reranks >= MAX_RERANKS:
                stopped = f"no layer left whose float version helps (ranked {reranks} times)"
                break
            reranks += 1
            order, stopped = _ranked(layers, trail.kept, rank)
            if stopped:
                break
        layer = order.pop(0)
        trail.kept.append(layer)
        step = trail.attempt(f"keep {layer} in float")
        if step.within_budget:
            stopped = "within budget"
        elif step.top1_agreement <= best.top1_agreement and step.mean_abs_diff >= best.mean_abs_diff:
            order = []  # this layer did not help: the ranking is stale, rank again around what is in float now
        if _better(step, best):
            best = step
    return trail.result(best, stopped)


@dataclass
class _Trail:
    """The layers in float now, and every step validated so far."""

    evaluate: Callable[[list[str]], ParityMetrics]
    within_budget: Callable[[ParityMetrics], bool]
    progress: Callable[[str], None]
    kept: list[str]
    steps: list[FallbackStep] = field(default_factory=list)

    def attempt(self, action: str) -> FallbackStep:
        """Quantize and validate with ``kept`` in float, as the step called ``action``."""
        step_started = time.perf_counter()
        metrics = self.evaluate(list(self.kept))
        step = FallbackStep(
            action=action,
            kept_float=list(self.kept),
            top1_agreement=metrics.top1_agreement,
            accuracy_drop=metrics.accuracy_drop,
            mean_abs_diff=metrics.mean_abs_diff,
            within_budget=self.within_budget(metrics),
            seconds=round(time.perf_counter() - step_started, 2),
        )
        self.steps.append(step)
        self.progress(
            f"{action}: agreement {step.top1_agreement:.1%}"
            + (f", accuracy drop {step.accuracy_drop:+.1%}" if step.accuracy_drop is not None else "")
        )
        return step

    def result(self, best: FallbackStep, stopped: str) -> LayerSearch:
        """The search ending with ``stopped``: its last step if within the budget, else ``best``."""
        final = self.steps[-1]
        if not final.within_budget and best is not final:
            # Returning layers to float does not improve the model monotonically (on near-tie images the validated
            # agreement wanders by a few points from step to step), so the model left behind is the best one seen.
            final = best
        return LayerSearch(self.steps, final.kept_float, final.within_budget, self.steps.index(final), stopped)


def _bound_reached(steps: int, max_steps: int, started: float, max_seconds: float) -> str:
    """Why the search stops here, or "" while it is within its bounds."""
    if steps > max_steps:
        return f"stopped after {max_steps} layers back in float without reaching the budget (raise --max-fallback-steps)"
    if time.perf_counter() - started > max_seconds:
        return f"stopped at the {max_seconds:.0f} s time bound without reaching the budget (raise --max-fallback-seconds)"
    return ""


def _ranked(layers: list[str], kept: list[str], rank: Callable[[list[str], list[str]], list[str]]) -> tuple[list[str], str]:
    """(the layers not in float, the most helpful first, "") or ([], why none can be ranked)."""
    candidates = [n for n in layers if n not in kept]
    if not candidates:
        return [], "every quantizable layer is in float and the budget still does not hold"
    order = rank(list(kept), candidates)
    if not order:
        return [], "no layer could be ranked"
    return order, ""


def with_margin(metrics: ParityMetrics) -> ParityMetrics:
    """The metrics moved one standard error against the model, for judging a step of the search.

    The search stops only when the budget holds one standard error inside its limit: stopping at the first sample
    that happens to pass overfits the validation images (held-out images then lose more than the budget allows)."""
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
