"""The gate's judgement, kept apart from measuring: thresholds and baseline comparisons over
``VariantMeasure`` values. Pure functions, so every kind of failure can be tested on constructed values."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .errors import EdgekitError
from .gate import Check, Comparison, GateConfig, VariantMeasure

MB = 1_000_000


def evaluate(config: GateConfig, measures: dict[str, VariantMeasure], comparisons: list[Comparison], baseline_given: bool) -> list[Check]:
    """One Check per configured threshold, in config order, then the baseline checks."""
    checks: list[Check] = []
    for variant, limits in config.variants.items():
        measure = measures.get(variant) or VariantMeasure(variant=variant)
        n = f" (on {measure.n_images} images)" if measure.n_images else ""
        if limits.min_accuracy is not None:
            checks.append(_threshold(variant, "accuracy", measure.accuracy, limits.min_accuracy, ">=", _pct, "accuracy", n))
        if limits.max_accuracy_drop is not None:
            checks.append(_threshold(variant, "accuracy_drop", measure.accuracy_drop, limits.max_accuracy_drop, "<=", _pct,
                                     "accuracy drop vs PyTorch fp32", n))
        if limits.min_agreement is not None:
            checks.append(_threshold(variant, "agreement", measure.agreement, limits.min_agreement, ">=", _pct,
                                     "top-1 agreement with PyTorch fp32", n))
        if limits.max_abs_diff is not None:
            checks.append(_threshold(variant, "max_abs_diff", measure.max_abs_diff, limits.max_abs_diff, "<=", _sci,
                                     "largest |logit difference| vs PyTorch fp32"))
        if limits.max_rel_diff is not None:
            checks.append(_threshold(variant, "max_rel_diff", measure.max_rel_diff, limits.max_rel_diff, "<=", _sci,
                                     "largest logit difference relative to the logit spread"))
        if limits.max_size_mb is not None:
            size = measure.size_bytes / MB if measure.size_bytes is not None else None
            checks.append(_threshold(variant, "size_mb", size, limits.max_size_mb, "<=", lambda v: f"{v:.2f} MB", "file size"))
        for other, ratio in limits.min_speedup_vs.items():
            checks.append(_speedup(variant, other, measure, measures.get(other), ratio))
    if baseline_given:
        checks += _baseline_checks(config, comparisons, measures)
    return checks


def _threshold(variant, metric, value, threshold, op, fmt, what, suffix="") -> Check:
    name = f"{variant}.{metric}"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        # A threshold that cannot be measured fails: a gate that silently skips is no gate.
        return Check(name=name, variant=variant, metric=metric, value=None, threshold=threshold, op=op, passed=False,
                     message=f"{name}: {variant} {what} was not measured (needs {op} {fmt(threshold)})")
    # accuracies are differences of fractions: 0.945 - 0.94 is 0.0050000000000000044, not above 0.005
    slack = 1e-9 * max(1.0, abs(threshold))
    passed = value >= threshold - slack if op == ">=" else value <= threshold + slack
    bound = "minimum" if op == ">=" else "maximum"
    relation = "meets" if passed else ("is below" if op == ">=" else "exceeds")
    return Check(name=name, variant=variant, metric=metric, value=float(value), threshold=threshold, op=op, passed=passed,
                 message=f"{name}: {variant} {what} {fmt(value)} {relation} the {bound} {fmt(threshold)}{suffix}")


def _speedup(variant: str, other: str, measure: VariantMeasure, reference: VariantMeasure | None, ratio: float) -> Check:
    name = f"{variant}.speedup_vs_{other}"
    if reference is None or reference.p50_ms is None or measure.p50_ms is None:
        return Check(name=name, variant=variant, metric=f"speedup_vs_{other}", value=None, threshold=ratio, op=">=", passed=False,
                     message=f"{name}: latency of {variant} and {other} in one bench run is needed but was not measured")
    speedup = reference.p50_ms / measure.p50_ms
    passed = speedup >= ratio
    verdict = "meets" if passed else "is below"
    return Check(
        name=name, variant=variant, metric=f"speedup_vs_{other}", value=speedup, threshold=ratio, op=">=", passed=passed,
        message=(f"{name}: {variant} is {speedup:.2f}x as fast as {other} (p50 {measure.p50_ms:.3g} vs {reference.p50_ms:.3g} ms, "
                 f"same {measure.runtime} run), {verdict} the minimum {ratio:.2f}x"),
    )


# --- baseline -------------------------------------------------------------------------------------


def load_baseline(path: str | os.PathLike, config: GateConfig) -> dict[str, VariantMeasure]:
    """Variant measures from an earlier GateResult JSON (its ``variants``) or BenchResult JSON (its
    ``measurements`` on the config's runtime and batch size)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EdgekitError(f"--baseline {path} does not exist; pass the JSON report of an earlier `edgekit gate --json` or `edgekit bench` run") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgekitError(f"--baseline {path} is not a readable JSON report ({exc}); regenerate it") from exc
    if isinstance(data, dict) and "checks" in data and "variants" in data:
        from .gate import GateResult

        return {m.variant: m for m in GateResult.from_json(path).variants}
    if isinstance(data, dict) and isinstance(data.get("measurements"), list):
        return _from_bench(data, path, config)
    raise EdgekitError(f"--baseline {path} is neither a gate report (edgekit gate --json) nor a bench report (edgekit bench --json)")


def _from_bench(data: dict, path: Path, config: GateConfig) -> dict[str, VariantMeasure]:
    measures: dict[str, VariantMeasure] = {}
    for row in data["measurements"]:
        if not isinstance(row, dict) or row.get("runtime") != config.runtime or row.get("batch_size") != config.batch_size:
            continue
        if str(row.get("variant")) in measures:
            raise EdgekitError(f"--baseline {path} holds {row.get('variant')} of several models on {config.runtime}; "
                               "pass the bench report of the one run being gated")
        try:
            ci = row.get("p50_ci_ms")
            measures[str(row["variant"])] = VariantMeasure(
                variant=str(row["variant"]), artifact=row.get("artifact"), size_bytes=row.get("size_bytes"),
                accuracy=row.get("top1"), runtime=row["runtime"], batch_size=row["batch_size"],
                p50_ms=row.get("p50_ms"), p50_ci_ms=tuple(ci) if ci else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgekitError(f"--baseline {path} has a malformed measurement ({exc}); regenerate it") from exc
    if not measures:
        raise EdgekitError(f"--baseline {path} has no measurement on runtime {config.runtime} with batch size {config.batch_size}; "
                           "compare reports made with the same runtime and batch size")
    return measures


def _relative_half_width(measure: VariantMeasure) -> float:
    """Half the confidence interval of the median, relative to the median (0 when unknown)."""
    if measure.p50_ci_ms is None or not measure.p50_ms:
        return 0.0
    low, high = measure.p50_ci_ms
    return max(0.0, (high - low) / 2 / measure.p50_ms)


def compare_with_baseline(config: GateConfig, current: dict[str, VariantMeasure], baseline: dict[str, VariantMeasure]) -> list[Comparison]:
    """Every metric measured both now and in the baseline, with its move and its noise.

    Latency is compared as relative latency, p50(variant) / p50(anchor) measured in the same run, now
    vs then. The baseline usually comes from another machine (main's CI job on another runner, another
    day, other neighbours on the host): absolute milliseconds move by 20-50% between such runs with no
    change to the model, while the ratio of two variants timed interleaved in one run cancels the
    machine's speed and most of its load. The anchor itself therefore has no latency comparison.

    Noise of a relative latency: the relative half-widths of the four medians' confidence intervals
    (variant and anchor, now and then) added in quadrature, and never less than ``min_noise``; a move
    counts only when it is outside both. Accuracy and agreement are exact counts on the same images,
    so their resolution, one image, is their noise. Size is deterministic: any growth is real.
    """
    policy = config.baseline
    comparisons: list[Comparison] = []
    anchor_now, anchor_then = current.get(policy.anchor), baseline.get(policy.anchor)
    for variant, now in current.items():
        then = baseline.get(variant)
        if then is None:
            continue
        if (variant != policy.anchor and anchor_now and anchor_then and now.p50_ms and then.p50_ms
                and anchor_now.p50_ms and anchor_then.p50_ms):
            ratio_now, ratio_then = now.p50_ms / anchor_now.p50_ms, then.p50_ms / anchor_then.p50_ms
            change = ratio_now / ratio_then - 1
            measured = math.sqrt(sum(_relative_half_width(m) ** 2 for m in (now, anchor_now, then, anchor_then)))
            comparisons.append(_comparison(variant, "relative_latency", ratio_then, ratio_now, change, max(policy.min_noise, measured), worse=change > 0))
        for metric in ("accuracy", "agreement"):
            value_now, value_then = getattr(now, metric), getattr(then, metric)
            if value_now is None or value_then is None:
                continue
            images = now.n_images or then.n_images
            resolution = 1 / images if images else 0.0
            change = value_now - value_then
            comparisons.append(_comparison(variant, metric, value_then, value_now, change, resolution + 1e-12, worse=change < 0))
        if now.size_bytes and then.size_bytes:
            change = now.size_bytes / then.size_bytes - 1
            comparisons.append(_comparison(variant, "size_bytes", then.size_bytes, now.size_bytes, change, 0.0, worse=change > 0))
    return comparisons


def _comparison(variant, metric, baseline, current, change, noise, worse) -> Comparison:
    return Comparison(variant=variant, metric=metric, baseline=float(baseline), current=float(current), change=float(change),
                      noise=float(noise), worse=bool(worse), outside_noise=abs(change) > noise)


_BASELINE_LIMITS = {  # metric -> (policy field, how the limit reads)
    "relative_latency": ("max_slowdown", "latency relative to {anchor}"),
    "accuracy": ("max_accuracy_drop", "accuracy drop"),
    "agreement": ("max_agreement_drop", "agreement drop"),
    "size_bytes": ("max_size_growth", "size growth"),
}


def _baseline_checks(config: GateConfig, comparisons: list[Comparison], measures: dict[str, VariantMeasure]) -> list[Check]:
    """A check per compared metric that has a limit: it fails only for a move that is worse than the
    limit AND outside the noise."""
    policy = config.baseline
    checks = []
    for comparison in comparisons:
        field, label = _BASELINE_LIMITS[comparison.metric]
        limit = getattr(policy, field)
        if limit is None:
            continue
        label = label.format(anchor=policy.anchor)
        # Latency and size move relatively; accuracy and agreement are judged as absolute drops.
        worsening = comparison.change if comparison.metric in ("relative_latency", "size_bytes") else -comparison.change
        passed = not (worsening > limit and comparison.outside_noise)
        name = f"{comparison.variant}.baseline_{comparison.metric}"
        relative = comparison.metric in ("relative_latency", "size_bytes")
        fmt = (lambda v: f"{v + 0.0:+.1%}") if relative else (lambda v: f"{(v + 0.0) * 100:+.1f} pt")
        state = "regression" if not passed else comparison.verdict
        message = (f"{name}: {comparison.variant} {label} {fmt(worsening)} vs baseline "
                   f"({show_measure(comparison.metric, comparison.baseline)} -> {show_measure(comparison.metric, comparison.current)}; "
                   f"noise {fmt(comparison.noise).lstrip('+')}, limit {fmt(limit).lstrip('+')}): {state}")
        checks.append(Check(name=name, variant=comparison.variant, metric=f"baseline_{comparison.metric}", value=worsening,
                            threshold=limit, op="<=", passed=passed, message=message))
    # A variant with thresholds that the baseline lacks is reported, not failed: a new variant has no past.
    compared = {c.variant for c in comparisons}
    for variant in config.variants:
        if variant not in compared:
            checks.append(Check(name=f"{variant}.baseline", variant=variant, metric="baseline", value=None, threshold=None, op="<=",
                                passed=True, skipped=True, message=f"{variant}.baseline: not in the baseline report; nothing to compare"))
    return checks


def _pct(value: float) -> str:
    return f"{value:.2%}"


def _sci(value: float) -> str:
    return f"{value:.3g}"


def show_measure(metric: str, value: float) -> str:
    """A compared metric as people read it: latency ratios as 0.374x, sizes in MB, the rest in percent."""
    if metric == "relative_latency":
        return f"{value:.3f}x"
    if metric == "size_bytes":
        return f"{value / MB:.2f} MB"
    return f"{value:.2%}"
