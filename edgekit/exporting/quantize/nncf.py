"""OpenVINO int8 with NNCF: plain post-training quantization, and the accuracy-aware fallback built on NNCF's own
``quantize_with_accuracy_control`` (the OpenVINO counterpart of ``ort_search.py``'s search for ONNX Runtime).

How NNCF's loop works (nncf 3.4, ``quantization/algorithms/accuracy_control``): it quantizes, validates the float
and the int8 model on the validation images, and while the drop exceeds ``max_drop`` it ranks the groups of
quantizers by how much the metric recovers on a subset of the images with that group removed, reverts the best
group to float, and validates again (stepping back once a step makes things worse). It only returns the model:
what was validated on the way is recorded here by the validation function, and which layers ended in float is
read from the returned graph. Everything it compiles runs on the CPU with ``inference_precision`` f32, the
setting edgekit's OpenVINO runtime uses too; the final verdict is measured by the caller through that runtime.

Bounds: NNCF's ``max_num_iterations`` is the step bound (one step reverts one group of quantizers, usually one
layer). NNCF has no time bound, so the validation function keeps one: once the time is up it reports the float
model's metric at the next validation of the whole set, NNCF's only early exit, and the model NNCF then returns is
re-measured honestly by the caller (the time bound can overrun by one ranking pass, which validates subsets).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel

from ...errors import ExportError, first_line
from ...parity_check import ParityMetrics, ParityThresholds, compare_logits, judge
from ...progress import quiet
from ...results import DataSource
from .fallback import with_margin  # one standard error inside the budget, as the ONNX Runtime search

INSTALL_HINT = "pip install 'edgekit[openvino]'"
RANKING_IMAGES = 100  # at most this many validation images rank the layer groups (NNCF picks those int8 gets wrong)
VALIDATION_BATCH = 16
# OpenVINO operations whose int8 version carries the compute (and whose float fallback costs speed).
COMPUTE_OPS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul")
# Operations that move int8 values without changing them, so a FakeQuantize before them still quantizes the layer after.
LAYOUT_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Transpose", "MaxPool", "StridedSlice", "Slice", "Split", "VariadicSplit", "Gather")


class NncfStep(BaseModel):
    """One validation of the whole validation set during NNCF's search."""

    action: str  # "quantize", "revert a layer group (step N)"
    top1_agreement: float
    accuracy_drop: float | None = None
    mean_abs_diff: float
    within_budget: bool  # judged one standard error inside the budget
    seconds: float  # since the search started


class NncfSearch(BaseModel):
    """What NNCF's accuracy-aware quantization did and where it ended (recorded in the export result)."""

    budget: ParityThresholds
    isa: str
    quantizer: str  # "nncf 3.4.0 quantize_with_accuracy_control"
    metric: str  # "accuracy" (labels) or "top1 agreement" (agreement with the fp32 model's top-1)
    max_drop: float  # absolute drop of that metric NNCF was asked to stay within
    validation_images: int
    ranking_images: int
    calibration: dict
    quantized_nodes: int  # compute layers (Convolution, MatMul...) in the graph
    steps: list[NncfStep]  # the plain int8 model first, then every step NNCF validated
    kept_float: list[str]  # compute layers of the final IR without int8 inputs
    within_budget: bool
    kept_step: int = -1  # which step's model the file is (-1: the model NNCF returned, measured after the search)
    final: ParityMetrics | None = None  # the file's model measured under edgekit's OpenVINO runtime settings
    stopped: str  # why the search ended, one line
    seconds: float


@dataclass
class ValidationImages:
    """The images the search validates on: model inputs, the fp32 reference logits, and labels where known."""

    inputs: np.ndarray
    reference: np.ndarray
    labels: np.ndarray | None
    source: DataSource


def require_nncf():
    try:
        import nncf
    except ImportError as exc:
        raise ExportError(f"OpenVINO int8 needs nncf from the openvino extra: {INSTALL_HINT}") from exc
    return nncf


def _settings(images: list[np.ndarray], overflow_fix: bool) -> dict[str, Any]:
    """The quantization settings shared by the plain and the accuracy-aware path, so the search starts from
    exactly the model plain int8 gives."""
    nncf = require_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    fix = OverflowFix.ENABLE if overflow_fix else OverflowFix.DISABLE
    return {
        "subset_size": len(images),
        "preset": nncf.QuantizationPreset.PERFORMANCE,
        "advanced_quantization_parameters": AdvancedQuantizationParameters(overflow_fix=fix),
    }


def quantize(model, images: list[np.ndarray], overflow_fix: bool) -> Any:
    """Plain NNCF post-training int8 of an ``openvino.Model`` calibrated on ``images`` (batch-1 arrays)."""
    nncf = require_nncf()
    if not images:
        raise ExportError("OpenVINO int8 needs at least one calibration image")
    settings = _settings(images, overflow_fix)
    try:
        with quiet():
            return nncf.quantize(
                model,
                nncf.Dataset(images),
                subset_size=settings["subset_size"],
                preset=settings["preset"],
                advanced_parameters=settings["advanced_quantization_parameters"],
            )
    except Exception as exc:  # nncf raises plain RuntimeError/ValueError
        raise ExportError(f"nncf.quantize failed: {first_line(exc, 300)}") from exc


def search_metric(budget: ParityThresholds, has_labels: bool) -> tuple[str, float] | None:
    """(metric, max_drop) NNCF optimizes for ``budget``: accuracy where labels exist and the budget limits it, else
    top-1 agreement with fp32 (its drop from the float model's 1.0 is 1 - min_agreement); None if neither is limited."""
    if has_labels and budget.max_accuracy_drop is not None:
        return "accuracy", budget.max_accuracy_drop
    if budget.min_agreement is not None:
        return "top1 agreement", round(1.0 - budget.min_agreement, 12)
    return None


def within_budget(metrics: ParityMetrics, budget: ParityThresholds) -> bool:
    """The budget holds one standard error inside its limit (see ``fallback.with_margin``: stopping at the first
    validation that happens to pass overfits the validation images)."""
    return not judge(with_margin(metrics), budget)[0]


def float_layers(model) -> tuple[list[str], int]:
    """(compute layers whose data input is not int8, number of compute layers) of an ``openvino.Model``: NNCF puts a
    FakeQuantize in front of every layer it quantizes (before any reshape on the way, as in front of a classifier)
    and removes it from every layer it reverts to float."""
    compute = [op for op in model.get_ordered_ops() if op.get_type_name() in COMPUTE_OPS]
    return [op.get_friendly_name() for op in compute if not _int8_input(op)], len(compute)


def _int8_input(op) -> bool:
    node = op.input_value(0).get_node()
    while node.get_type_name() in LAYOUT_OPS:
        node = node.input_value(0).get_node()
    return node.get_type_name() == "FakeQuantize"


@dataclass
class _Validator:
    """NNCF's validation function: runs a compiled candidate on the validation images (all of them, or the subset
    NNCF ranks on), returns the metric and its per-image values, records every whole-set validation as a step, and
    applies the time and step bounds."""

    images: ValidationImages
    budget: ParityThresholds
    metric: str
    max_steps: int
    max_seconds: float
    progress: Callable[[str], None]
    started: float = field(default_factory=time.perf_counter)
    float_metric: float | None = None  # NNCF's first whole-set validation is the float model
    steps: list[NncfStep] = field(default_factory=list)
    stop: str = ""  # "time" or "steps" once a bound told NNCF to stop

    def __call__(self, compiled, items) -> tuple[float, list[float]]:
        indices = np.asarray(list(items), dtype=np.int64)
        metrics, hits = self._measure(compiled, indices)
        if len(indices) < len(self.images.inputs):  # a ranking subset (kept smaller than the set on purpose)
            self.progress("NNCF: ranking the layer groups")
            return float(np.mean(hits)), hits  # the raw metric: a margin on a few images would distort the order
        # A whole-set validation decides whether NNCF stops, so its metric is one standard error worse (see with_margin).
        if self.metric == "accuracy":
            value = (metrics.variant_accuracy or 0.0) - (metrics.accuracy_drop_se or 0.0)
        else:
            value = metrics.top1_agreement - (metrics.top1_agreement_se or 0.0)
        if self.float_metric is None:
            self.float_metric = value
            return value, hits
        self._record(metrics)
        if not self.steps[-1].within_budget and not self.stop:
            # NNCF applies the step bound itself, except 0 steps (it fails on max_num_iterations=0).
            if time.perf_counter() - self.started > self.max_seconds:
                self.stop = "time"
            elif self.max_steps < 1:
                self.stop = "steps"
            if self.stop:
                return self.float_metric, hits  # NNCF's only early exit ("no drop"); the caller re-measures the model
        return value, hits

    def _measure(self, compiled, indices: np.ndarray) -> tuple[ParityMetrics, list[float]]:
        inputs = self.images.inputs[indices]
        logits = np.concatenate([compiled(inputs[i : i + VALIDATION_BATCH])[0] for i in range(0, len(inputs), VALIDATION_BATCH)])
        labels = self.images.labels[indices] if self.images.labels is not None else None
        metrics = compare_logits(self.images.reference[indices], logits, labels, self.images.source)
        target = labels if self.metric == "accuracy" and labels is not None else self.images.reference[indices].argmax(1)
        return metrics, [float(hit) for hit in logits.argmax(1) == target]

    def _record(self, metrics: ParityMetrics) -> None:
        action = "quantize" if not self.steps else f"revert a layer group (step {len(self.steps)})"
        step = NncfStep(
            action=action,
            top1_agreement=metrics.top1_agreement,
            accuracy_drop=metrics.accuracy_drop,
            mean_abs_diff=metrics.mean_abs_diff,
            within_budget=within_budget(metrics, self.budget),
            seconds=round(time.perf_counter() - self.started, 2),
        )
        self.steps.append(step)
        drop = f", accuracy drop {step.accuracy_drop:+.1%}" if step.accuracy_drop is not None else ""
        self.progress(f"NNCF {action}: agreement {step.top1_agreement:.1%}{drop}")


def quantize_within_budget(
    model,
    calibration: list[np.ndarray],
    images: ValidationImages,
    budget: ParityThresholds,
    measure: Callable[[Any], ParityMetrics],
    *,
    overflow_fix: bool,
    isa: str,
    max_steps: int,
    max_seconds: float,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[Any, NncfSearch]:
    """(int8 ``openvino.Model``, NncfSearch): NNCF int8 of ``model``, with layers reverted to float by NNCF's
    accuracy control until ``budget`` holds one standard error inside its limit on ``images``, or a bound stops it.

    ``measure`` runs a candidate the way the user will (edgekit's OpenVINO runtime) and gives its metrics on
    ``images``; the verdict comes from it. Out of budget, the model left is the better of the plain int8 and NNCF's.
    """
    nncf = require_nncf()
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    chosen = search_metric(budget, images.labels is not None)
    if chosen is None or len(images.inputs) < 2:
        raise ExportError("the NNCF search needs an accuracy or agreement budget and at least 2 validation images")
    metric, max_drop = chosen
    started = time.perf_counter()
    validator = _Validator(images, budget, metric, max_steps, max_seconds, progress, started=started)
    ranking_images = min(RANKING_IMAGES, len(images.inputs) - 1)  # smaller than the set, so ranking calls are told apart
    restorer = AdvancedAccuracyRestorerParameters(
        max_num_iterations=max(1, max_steps),  # 0 steps is applied by the validator (NNCF fails on 0)
        ranking_subset_size=ranking_images,
        num_ranking_workers=1,  # NNCF would compile candidates in parallel threads; the CPU is small and shared
    )
    settings = _settings(calibration, overflow_fix)
    try:
        with quiet():
            quantized = nncf.quantize_with_accuracy_control(
                model,
                nncf.Dataset(calibration),
                nncf.Dataset(list(range(len(images.inputs))), lambda index: images.inputs[index : index + 1]),
                validation_fn=validator,
                max_drop=max_drop,
                drop_type=nncf.DropType.ABSOLUTE,
                advanced_accuracy_restorer_parameters=restorer,
                **settings,
            )
    except Exception as exc:  # nncf raises plain RuntimeError/ValueError
        raise ExportError(f"nncf.quantize_with_accuracy_control failed: {first_line(exc, 300)}") from exc
    final = measure(quantized)
    kept_step = -1
    if not within_budget(final, budget) and validator.steps and _better(validator.steps[0], final):
        # NNCF keeps one step that made things worse before it steps back, so its model can end below plain int8.
        quantized, kept_step = quantize(model, calibration, overflow_fix), 0
        final = measure(quantized)
    kept_float, compute_layers = float_layers(quantized)
    within = within_budget(final, budget)
    return quantized, NncfSearch(
        budget=budget,
        isa=isa,
        quantizer=f"nncf {nncf.__version__} quantize_with_accuracy_control",
        metric=metric,
        max_drop=max_drop,
        validation_images=len(images.inputs),
        ranking_images=ranking_images,
        calibration={"images": len(calibration), "overflow_fix": overflow_fix},
        quantized_nodes=compute_layers,
        steps=validator.steps,
        kept_float=kept_float,
        within_budget=within,
        kept_step=kept_step,
        final=final,
        stopped=_stopped(within, validator, max_steps, max_seconds),
        seconds=round(time.perf_counter() - started, 2),
    )


def _stopped(within: bool, validator: _Validator, max_steps: int, max_seconds: float) -> str:
    reverted = len(validator.steps) - 1
    if within:
        return "within budget" if reverted > 0 else "within budget as plain NNCF int8"
    if validator.stop == "time":
        return f"stopped at the {max_seconds:.0f} s time bound without reaching the budget (raise --max-fallback-seconds)"
    if validator.stop == "steps" or reverted >= max_steps:
        return f"stopped after {max_steps} layer group(s) back in float without reaching the budget (raise --max-fallback-steps)"
    if validator.steps and validator.steps[-1].within_budget:
        return "NNCF's last validation was within budget but the saved model is not under edgekit's runtime settings"
    return f"NNCF's accuracy control ended without reaching the budget ({reverted} layer group(s) reverted to float)"


def _better(step: NncfStep, metrics: ParityMetrics) -> bool:
    """Whether a validated step is closer to fp32 than ``metrics``: lower accuracy drop, then higher agreement."""
    return (-(step.accuracy_drop or 0.0), step.top1_agreement, -step.mean_abs_diff) > (
        -(metrics.accuracy_drop or 0.0),
        metrics.top1_agreement,
        -metrics.mean_abs_diff,
    )
