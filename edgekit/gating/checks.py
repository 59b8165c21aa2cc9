"""The gate's judgement, kept apart from measuring: thresholds and baseline limits over ``VariantMeasure``
values and ``Comparison``s. Pure functions, so every kind of outcome can be tested on constructed values.

A latency check whose bench rows were taken under CPU contention is ``not_measured``: a busy neighbour says
nothing about the model, so it is neither a pass nor a failure. Accuracy, parity and size never are."""

from __future__ import annotations

import math
from typing import Literal

from .config import GateConfig
from .report import MB, format_change, format_metric, format_ms, format_share
from .results import Check, CheckStatus, Comparison, VariantMeasure

Op = Literal[">=", "<="]

# threshold field -> (metric, how the message names it, op, VariantMeasure field, whether to say "on N images")
_THRESHOLDS: dict[str, tuple[str, str, Op, str, bool]] = {
    "min_accuracy": ("accuracy", "accuracy", ">=", "accuracy", True),
    "max_accuracy_drop": ("accuracy_drop", "accuracy drop vs PyTorch fp32", "<=", "accuracy_drop", True),
    "min_agreement": ("agreement", "top-1 agreement with PyTorch fp32", ">=", "agreement", True),
    "max_abs_diff": ("max_abs_diff", "largest |logit difference| vs PyTorch fp32", "<=", "max_abs_diff", False),
    "max_rel_diff": ("max_rel_diff", "largest logit difference relative to the logit spread", "<=", "max_rel_diff", False),
    "max_size_mb": ("size_mb", "file size", "<=", "size_bytes", False),
}


def evaluate(
    config: GateConfig,
    measures: dict[str, VariantMeasure],
    comparisons: list[Comparison],
    baseline_given: bool,
    target: str | None = None,
    emulation: str | None = None,
    baseline_on_target: bool = True,
) -> list[Check]:
    """One Check per configured threshold, in config order, then the baseline checks.

    ``target``: the target ``measures`` were measured on; every check is then named "<variant>.<metric>@<target>"
    and carries it. ``emulation``: why that target is emulated, if it is: its latency checks are skipped, since
    timings under emulation are not evidence of any device's speed (accuracy and parity there are real).
    ``baseline_on_target``: False when the baseline report has no figures from ``target`` (nothing is compared)."""
    checks = _thresholds(config, measures)
    if baseline_given:
        checks += baseline_checks(config, comparisons, None if baseline_on_target else (target or "this machine"))
    if target is None:
        return checks
    return [_on_target(check, target, emulation) for check in checks]


def _thresholds(config: GateConfig, measures: dict[str, VariantMeasure]) -> list[Check]:
    checks: list[Check] = []
    for variant, limits in config.variants.items():
        measure = measures.get(variant) or VariantMeasure(variant=variant)
        for field, (metric, words, op, source, on_images) in _THRESHOLDS.items():
            threshold = getattr(limits, field)
            if threshold is None:
                continue
            value = getattr(measure, source)
            if field == "max_size_mb" and value is not None:
                value = value / MB
            suffix = f" (on {measure.n_images} images)" if on_images and measure.n_images else ""
            checks.append(_threshold(variant, metric, value, threshold, op, words, suffix))
        for other, ratio in limits.min_speedup_vs.items():
            checks.append(_speedup(variant, other, measure, measures.get(other), ratio))
    return checks


def _is_latency(metric: str) -> bool:
    return metric.startswith("speedup_vs_") or metric == "baseline_relative_latency"


def _on_target(check: Check, target: str, emulation: str | None) -> Check:
    """``check`` named after, and carrying, the target it was measured on; a latency check of an emulated target skipped."""
    name = f"{check.name}@{target}"
    if emulation is not None and _is_latency(check.metric):
        message = f"{name}: skipped: {target} is emulated ({emulation}); its latencies are not evidence of any device's speed"
        return check.model_copy(update={"name": name, "target": target, "status": "skipped", "message": message})
    message = name + check.message.removeprefix(check.name)  # every message starts with its check's name
    return check.model_copy(update={"name": name, "target": target, "message": message})


def _threshold(variant: str, metric: str, value: float | None, threshold: float, op: Op, what: str, suffix: str = "") -> Check:
    name = f"{variant}.{metric}"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        # A threshold that cannot be measured fails: a gate that silently skips is no gate.
        return Check(
            name=name,
            variant=variant,
            metric=metric,
            value=None,
            threshold=threshold,
            op=op,
            status="fail",
            message=f"{name}: {variant} {what} was not measured (needs {op} {format_metric(metric, threshold)})",
        )
    # accuracies are differences of fractions: 0.945 - 0.94 is 0.0050000000000000044, not above 0.005
    slack = 1e-9 * max(1.0, abs(threshold))
    passed = value >= threshold - slack if op == ">=" else value <= threshold + slack
    bound = "minimum" if op == ">=" else "maximum"
    relation = "meets" if passed else ("is below" if op == ">=" else "exceeds")
    shown, limit = format_metric(metric, value), format_metric(metric, threshold)
    return Check(
        name=name,
        variant=variant,
        metric=metric,
        value=float(value),
        threshold=threshold,
        op=op,
        status="pass" if passed else "fail",
        message=f"{name}: {variant} {what} {shown} {relation} the {bound} {limit}{suffix}",
    )


def _speedup(variant: str, other: str, measure: VariantMeasure, reference: VariantMeasure | None, ratio: float) -> Check:
    name, metric = f"{variant}.speedup_vs_{other}", f"speedup_vs_{other}"
    if reference is None or reference.p50_ms is None or measure.p50_ms is None:
        return Check(
            name=name,
            variant=variant,
            metric=metric,
            value=None,
            threshold=ratio,
            op=">=",
            status="fail",
            message=f"{name}: latency of {variant} and {other} in one bench run is needed but was not measured",
        )
    speedup = reference.p50_ms / measure.p50_ms
    timing = f"p50 {format_ms(measure.p50_ms)} vs {format_ms(reference.p50_ms)} ms, same {measure.runtime} run"
    contended = [m for m in (measure, reference) if m.contended]
    if contended:
        busy = ", ".join(f"{m.variant} ({format_share(m.contention_share)} of the CPU to other processes)" for m in contended)
        return Check(
            name=name,
            variant=variant,
            metric=metric,
            value=speedup,
            threshold=ratio,
            op=">=",
            status="not_measured",
            message=(
                f"{name}: not measured: bench timed {busy} under contention, so {format_metric(metric, speedup)} ({timing}) "
                "says nothing about the model; rerun on a quiet machine (strict_contention: true makes this exit 3)"
            ),
        )
    passed = speedup >= ratio
    verdict = "meets" if passed else "is below"
    return Check(
        name=name,
        variant=variant,
        metric=metric,
        value=speedup,
        threshold=ratio,
        op=">=",
        status="pass" if passed else "fail",
        message=(
            f"{name}: {variant} is {format_metric(metric, speedup)} as fast as {other} ({timing}), "
            f"{verdict} the minimum {format_metric(metric, ratio)}"
        ),
    )


# --- baseline limits ------------------------------------------------------------------------------


_BASELINE_LIMITS = {  # metric -> (policy field, how the limit reads)
    "relative_latency": ("max_slowdown", "latency relative to {anchor}"),
    "accuracy": ("max_accuracy_drop", "accuracy drop"),
    "agreement": ("max_agreement_drop", "agreement drop"),
    "size_bytes": ("max_size_growth", "size growth"),
}


def baseline_checks(config: GateConfig, comparisons: list[Comparison], lacking_target: str | None = None) -> list[Check]:
    """A check per compared metric that has a limit: it fails only for a move that is worse than the limit AND
    outside the noise; a latency move measured under contention is not measured. A configured variant the
    baseline lacks is skipped, not failed: a new variant has no past. ``lacking_target``: a target the baseline
    has no figures from (every variant is then skipped, saying so: a baseline compares like with like)."""
    policy = config.baseline
    checks = []
    for comparison in comparisons:
        field, label = _BASELINE_LIMITS[comparison.metric]
        limit = getattr(policy, field)
        if limit is not None:
            checks.append(_baseline_check(comparison, limit, label.format(anchor=policy.anchor)))
    compared = {c.variant for c in comparisons}
    for variant in config.variants:
        if variant not in compared:
            checks.append(
                Check(
                    name=f"{variant}.baseline",
                    variant=variant,
                    metric="baseline",
                    value=None,
                    threshold=None,
                    op="<=",
                    status="skipped",
                    message=f"{variant}.baseline: "
                    + (
                        f"the baseline report has no figures measured on {lacking_target}; nothing to compare"
                        if lacking_target
                        else "not in the baseline report; nothing to compare"
                    ),
                )
            )
    return checks


def _baseline_check(comparison: Comparison, limit: float, label: str) -> Check:
    metric = comparison.metric
    # Latency and size move relatively; accuracy and agreement are judged as absolute drops.
    worsening = comparison.change if metric in ("relative_latency", "size_bytes") else -comparison.change
    passed = not (worsening > limit and comparison.outside_noise)
    status: CheckStatus = "not_measured" if comparison.contended else ("pass" if passed else "fail")
    name = f"{comparison.variant}.baseline_{metric}"
    state = {"not_measured": "not measured (contended)", "fail": "regression"}.get(status, comparison.verdict)
    message = (
        f"{name}: {comparison.variant} {label} {format_change(metric, worsening)} vs baseline "
        f"({format_metric(metric, comparison.baseline)} -> {format_metric(metric, comparison.current)}; "
        f"noise {format_change(metric, comparison.noise, signed=False)}, "
        f"limit {format_change(metric, limit, signed=False)}): {state}"
    )
    return Check(
        name=name,
        variant=comparison.variant,
        metric=f"baseline_{metric}",
        value=worsening,
        threshold=limit,
        op="<=",
        status=status,
        message=message,
    )
