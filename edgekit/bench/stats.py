"""Statistics and ratios: confidence intervals of medians, ratios to the fastest and to the fp32 parent, verdicts."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import runtimes as registry  # "runtimes" is also bench()'s parameter name
from .results import Measurement

if TYPE_CHECKING:  # only for the annotation: bench/__init__ imports this module
    from . import _Entry
from .targets import EMBEDDED_SUFFIX

_COMPRESSED_PREFIXES = ("int", "uint4", "fp16", "bf16", "fp8", "q")  # variants expected to beat their fp32 parent


# ---- statistics and ratios -------------------------------------------------------------------------------------


def median_ci(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median: order statistics around n/2 (binomial, normal approx.).

    With fewer than 6 samples no interval reaches 95%, so it is (min, max).
    """
    ordered = sorted(samples)
    n = len(ordered)
    if n < 6:
        return ordered[0], ordered[-1]
    z = {0.9: 1.645, 0.95: 1.96, 0.99: 2.576}.get(confidence, 1.96)
    half_width = z * math.sqrt(n) / 2
    lower = max(0, int(math.floor(n / 2 - half_width)) - 1)
    upper = min(n - 1, int(math.ceil(n / 2 + half_width)))
    return ordered[lower], ordered[upper]


def measurements_of(entry: _Entry, batch_sizes, base_rss: float, end_to_end: bool) -> list[Measurement]:
    rows = []
    for batch_size in batch_sizes:
        seconds = entry.times.get(batch_size)
        if not seconds:
            continue
        ms = np.asarray(seconds) * 1000.0
        low, high = median_ci(ms.tolist())
        session = entry.session
        rows.append(
            Measurement(
                model=entry.candidate.model,
                artifact=str(entry.candidate.path),
                variant=entry.candidate.variant,
                runtime=entry.runtime,
                batch_size=batch_size,
                iterations=len(ms),
                p50_ms=float(np.percentile(ms, 50)),
                p90_ms=float(np.percentile(ms, 90)),
                p99_ms=float(np.percentile(ms, 99)),
                mean_ms=float(ms.mean()),
                p50_ci_ms=(float(low), float(high)),
                images_per_second=batch_size / float(ms.mean() / 1000.0),
                peak_rss_mb=base_rss + entry.rss_delta_mb,
                rss_delta_mb=entry.rss_delta_mb,
                gpu_memory_mb=entry.gpu_memory_mb,
                size_bytes=entry.size_bytes,
                parameters=session.parameters,
                top1=entry.top1,
                top5=entry.top5,
                accuracy_images=entry.accuracy_images,
                ratio_to_fastest=1.0,  # filled in by add_ratios, which sees every measurement
                end_to_end=end_to_end and session.preprocessing is not None,
                runtime_info=_jsonable(session.info),
                notes=list(dict.fromkeys(entry.notes)),
            )
        )
    return rows


def row_order(m: Measurement):
    # per model and batch size: fp32 first, then the other variants by name, each runtime in registry order
    names = registry.registered_names()
    return (m.model, m.batch_size, m.variant != "fp32", m.variant, names.index(m.runtime) if m.runtime in names else len(names))


def is_compressed(variant: str) -> bool:
    """Whether a variant exists to be faster or smaller than fp32 (int8, fp16...), so being slower is a problem."""
    return variant.lower().startswith(_COMPRESSED_PREFIXES)


def add_ratios(measurements: list[Measurement]) -> list[str]:
    """Fill ratio_to_fastest / ratio_to_fp32 within each (model, batch size); return warnings for compressed
    variants that are not faster than their fp32 parent on the same runtime."""
    warnings = []
    groups: dict[tuple[str, int], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.model, m.batch_size), []).append(m)
    for (model, batch_size), group in groups.items():
        fastest = min(m.p50_ms for m in group)
        for m in group:
            m.ratio_to_fastest = m.p50_ms / fastest
            baseline = _fp32_parent(m, group)
            if baseline is None:
                continue
            m.ratio_to_fp32 = m.p50_ms / baseline.p50_ms
            m.fp32_baseline = baseline.label
            if is_compressed(m.variant) and baseline.runtime == m.runtime:
                m.slower_than_fp32 = m.ratio_to_fp32 >= 1.0
                if m.slower_than_fp32:
                    overlap = m.p50_ci_ms[0] <= baseline.p50_ci_ms[1]
                    accuracy = ""
                    if m.top1 is not None and baseline.top1 is not None:
                        accuracy = f", top-1 {m.top1:.1%} vs {baseline.top1:.1%}"
                    warnings.append(
                        f"{model}, batch {batch_size}: {m.variant} on {m.runtime} is NOT faster than its fp32 parent {baseline.variant} "
                        f"({m.p50_ms:.2f} ms vs {m.p50_ms / m.ratio_to_fp32:.2f} ms, {m.ratio_to_fp32:.2f}x"
                        f"{', within noise' if overlap else ''}{accuracy}); ship {baseline.variant} on {m.runtime} instead"
                    )
                    m.notes.append(f"not faster than {baseline.label} ({m.ratio_to_fp32:.2f}x)")
    return warnings


def fp32_parent_variant(variant: str) -> str:
    """The float32 variant a variant was made from: int8-uint8in -> fp32-uint8in (same input kind), else fp32."""
    suffix = EMBEDDED_SUFFIX if variant.endswith(EMBEDDED_SUFFIX) else ""
    return "fp32" + suffix


def _fp32_parent(m: Measurement, group: list[Measurement]) -> Measurement | None:
    """The measurement ``m``'s ratio_to_fp32 divides by: its fp32 parent on the same runtime, else plain fp32 on the
    same runtime, else the fastest fp32 on any runtime (so a bare int8 file is still compared with something)."""
    for wanted in (fp32_parent_variant(m.variant), "fp32"):
        for b in group:
            if b.variant == wanted and b.runtime == m.runtime:
                return b
    fp32 = [b for b in group if b.variant == "fp32"]
    return min(fp32, key=lambda b: b.p50_ms) if fp32 else None


def summarize(measurements: list[Measurement]) -> list[str]:
    """Per model and batch size: the fastest variant/runtime with its accuracy, against fp32."""
    lines = []
    keys = list(dict.fromkeys((m.model, m.batch_size) for m in measurements))
    for model, batch_size in keys:
        group = [m for m in measurements if m.model == model and m.batch_size == batch_size]
        fastest = min(group, key=lambda m: m.p50_ms)
        line = f"{model}, batch {batch_size}: fastest is {fastest.label}, {fastest.p50_ms:.2f} ms p50 ({fastest.images_per_second:.0f} img/s)"
        if fastest.top1 is not None:
            line += f" at top-1 {fastest.top1:.1%}"
        fp32 = [m for m in group if m.variant == "fp32"]
        if fp32 and fastest.variant != "fp32":
            best_fp32 = min(fp32, key=lambda m: m.p50_ms)
            line += f"; fastest fp32 is {best_fp32.label}, {best_fp32.p50_ms:.2f} ms"
            if best_fp32.top1 is not None:
                line += f" at top-1 {best_fp32.top1:.1%}"
            if fastest.p50_ci_ms[1] >= best_fp32.p50_ci_ms[0]:
                line += " (the two are within noise of each other: their medians' confidence intervals overlap)"
        scored = [m for m in group if m.top1 is not None]
        if scored and fp32 and fp32[0].top1 is not None:
            # the usual shipping choice: the fastest variant that keeps accuracy within a point of fp32
            reference = max(m.top1 for m in fp32 if m.top1 is not None)
            close = [m for m in scored if m.top1 >= reference - 0.01]
            pick = min(close, key=lambda m: m.p50_ms)
            if pick is not fastest:
                line += f"; fastest within 1 point of fp32 accuracy: {pick.label}, {pick.p50_ms:.2f} ms at top-1 {pick.top1:.1%}"
        lines.append(line)
    return lines


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
