"""An earlier report as the baseline: read it (a gate or a bench JSON report) and compare every metric measured
both now and then, with the noise that decides whether a move is real."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import EdgekitError
from ..targets import LOCAL
from .config import GateConfig
from .results import Comparison, GateResult, VariantMeasure


def where_key(target: str | None) -> str:
    """The target figures were measured on, as baselines are matched: "local" for this machine (None)."""
    return target or LOCAL


def load_baseline(path: str | os.PathLike, config: GateConfig, target: str | None = None) -> dict[str, VariantMeasure]:
    """Variant measures from an earlier GateResult JSON (its ``variants``) or BenchResult JSON (its
    ``measurements`` on the config's runtime and batch size) measured on ``target`` (None: this machine)."""
    return load_baseline_by_target(path, config).get(where_key(target), {})


def load_baseline_by_target(path: str | os.PathLike, config: GateConfig) -> dict[str, dict[str, VariantMeasure]]:
    """``load_baseline`` for every target the report measured on: {target ("local" for this machine): measures}."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EdgekitError(
            f"--baseline {path} does not exist; pass the JSON report of an earlier `edgekit gate --json` or `edgekit bench` run"
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgekitError(f"--baseline {path} is not a readable JSON report ({exc}); regenerate it") from exc
    if isinstance(data, dict) and "checks" in data and "variants" in data:
        grouped: dict[str, dict[str, VariantMeasure]] = {}
        for measure in GateResult.from_json(path).variants:
            grouped.setdefault(where_key(measure.target), {})[measure.variant] = measure
        return grouped
    if isinstance(data, dict) and isinstance(data.get("measurements"), list):
        measured_on = data.get("target")
        target = measured_on.get("target") if isinstance(measured_on, dict) else None
        return {where_key(target): _from_bench(data, path, config)}
    raise EdgekitError(f"--baseline {path} is neither a gate report (edgekit gate --json) nor a bench report (edgekit bench --json)")


def _from_bench(data: dict, path: Path, config: GateConfig) -> dict[str, VariantMeasure]:
    measures: dict[str, VariantMeasure] = {}
    for row in data["measurements"]:
        if not isinstance(row, dict) or row.get("runtime") != config.runtime or row.get("batch_size") != config.batch_size:
            continue
        if str(row.get("variant")) in measures:
            raise EdgekitError(
                f"--baseline {path} holds {row.get('variant')} of several models on {config.runtime}; "
                "pass the bench report of the one run being gated"
            )
        try:
            ci = row.get("p50_ci_ms")
            measures[str(row["variant"])] = VariantMeasure(
                variant=str(row["variant"]),
                artifact=row.get("artifact"),
                size_bytes=row.get("size_bytes"),
                accuracy=row.get("top1"),
                runtime=row["runtime"],
                batch_size=row["batch_size"],
                p50_ms=row.get("p50_ms"),
                p50_ci_ms=tuple(ci) if ci else None,
                contended=bool(row.get("contended", False)),
                contention_share=row.get("contention_share"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgekitError(f"--baseline {path} has a malformed measurement ({exc}); regenerate it") from exc
    if not measures:
        raise EdgekitError(
            f"--baseline {path} has no measurement on runtime {config.runtime} with batch size {config.batch_size}; "
            "compare reports made with the same runtime and batch size"
        )
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
    machine's speed and most of its load. The anchor itself therefore has no latency comparison. When any of
    the four medians was taken under CPU contention the comparison is marked ``contended``.

    Noise of a relative latency: the relative half-widths of the four medians' confidence intervals
    (variant and anchor, now and then) added in quadrature, and never less than ``min_noise``; a move
    counts only when it is outside both. Accuracy and agreement are exact counts on the same images,
    so their resolution, one image, is their noise. Size is deterministic: any growth is real.
    """
    anchor = config.baseline.anchor
    anchor_now, anchor_then = current.get(anchor), baseline.get(anchor)
    comparisons: list[Comparison] = []
    for variant, now in current.items():
        then = baseline.get(variant)
        if then is None:
            continue
        if variant != anchor and anchor_now is not None and anchor_then is not None:
            comparisons += _latency(config, now, then, anchor_now, anchor_then)
        comparisons += _accuracies(now, then)
        if now.size_bytes and then.size_bytes:
            change = now.size_bytes / then.size_bytes - 1
            comparisons.append(_comparison(variant, "size_bytes", then.size_bytes, now.size_bytes, change, 0.0, worse=change > 0))
    return comparisons


def _latency(
    config: GateConfig, now: VariantMeasure, then: VariantMeasure, anchor_now: VariantMeasure, anchor_then: VariantMeasure
) -> list[Comparison]:
    if not (now.p50_ms and then.p50_ms and anchor_now.p50_ms and anchor_then.p50_ms):
        return []
    four = (now, anchor_now, then, anchor_then)
    ratio_now, ratio_then = now.p50_ms / anchor_now.p50_ms, then.p50_ms / anchor_then.p50_ms
    change = ratio_now / ratio_then - 1
    measured = math.sqrt(sum(_relative_half_width(m) ** 2 for m in four))
    comparison = _comparison(
        now.variant, "relative_latency", ratio_then, ratio_now, change, max(config.baseline.min_noise, measured), worse=change > 0
    )
    return [comparison.model_copy(update={"contended": any(m.contended for m in four)})]


def _accuracies(now: VariantMeasure, then: VariantMeasure) -> list[Comparison]:
    comparisons = []
    for metric in ("accuracy", "agreement"):
        value_now, value_then = getattr(now, metric), getattr(then, metric)
        if value_now is None or value_then is None:
            continue
        images = now.n_images or then.n_images
        resolution = 1 / images if images else 0.0
        change = value_now - value_then
        comparisons.append(_comparison(now.variant, metric, value_then, value_now, change, resolution + 1e-12, worse=change < 0))
    return comparisons


def _comparison(variant: str, metric: str, baseline: float, current: float, change: float, noise: float, worse: bool) -> Comparison:
    return Comparison(
        variant=variant,
        metric=metric,
        baseline=float(baseline),
        current=float(current),
        change=float(change),
        noise=float(noise),
        worse=bool(worse),
        outside_noise=abs(change) > noise,
    )
