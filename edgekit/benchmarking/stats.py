"""Statistics and ratios: confidence intervals of medians, ratios to the fastest and to the fp32 parent, verdicts."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import runtimes as registry  # "runtimes" is also bench()'s parameter name
from ..device import contention
from ..formats import Precision, all_formats
from ..variants import Variant
from .artifacts import as_variant
from .results import ContentionSummary, Measurement

if TYPE_CHECKING:
    from .sessions import Entry


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


def _figures(seconds: list[float], batch_size: int) -> dict:
    ms = np.asarray(seconds) * 1000.0
    low, high = median_ci(ms.tolist())
    return {
        "iterations": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "p50_ci_ms": (float(low), float(high)),
        "images_per_second": batch_size / float(ms.mean() / 1000.0),
    }


def measurements_of(entry: Entry, batch_sizes, base_rss: float, end_to_end: bool) -> list[Measurement]:
    rows = []
    session = entry.session
    fair_settings = settings_of(_jsonable(session.info))
    cold = entry.cold
    for batch_size in batch_sizes:
        seconds = entry.times.get(batch_size)
        if not seconds:
            continue
        figures = _figures(seconds, batch_size)
        chunks = list(entry.chunks.get(batch_size, []))
        remeasured = entry.remeasured.get(batch_size, 0)
        rows.append(
            Measurement(
                model=entry.candidate.model,
                artifact=str(entry.candidate.path),
                variant=entry.candidate.variant,
                runtime=entry.runtime,
                batch_size=batch_size,
                **figures,
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
                contended=any(c.contended for c in chunks),
                contention_share=contention.share_of(chunks),
                remeasured_chunks=remeasured,
                load_ms=cold.get("load_ms"),
                first_inference_ms=cold.get("first_inference_ms"),
                first_inference_batch_size=cold.get("first_inference_batch_size"),
                peak_rss_after_load_mb=base_rss + cold["load_rss_delta_mb"] if "load_rss_delta_mb" in cold else None,
                peak_rss_after_first_inference_mb=(base_rss + cold["first_rss_delta_mb"] if "first_rss_delta_mb" in cold else None),
                fair_settings=fair_settings,
                runtime_info=_jsonable(session.info),
                notes=list(dict.fromkeys(entry.notes)),
            )
        )
    return rows


def row_order(m: Measurement):
    # per model and batch size, format by format (the registry's order): fp32 first, then the
    # other variants by name; each runtime in registry order
    names = registry.registered_names()
    formats = all_formats()
    variant = as_variant(m.variant)
    return (
        m.model,
        m.batch_size,
        formats.index(variant.format) if variant is not None else len(formats),
        not is_fp32(m.variant),
        m.variant,
        names.index(m.runtime) if m.runtime in names else len(names),
    )


def is_compressed(variant: str) -> bool:
    """Whether a variant exists to be faster or smaller than fp32 (int8, fp16...), so being slower is a problem."""
    parsed = as_variant(variant)
    return parsed is not None and parsed.is_compressed


def is_fp32(variant: str) -> bool:
    """Whether a row's variant is a float32 one, in any format (fp32, openvino-fp32, torch-export, a run's model)."""
    parsed = as_variant(variant)
    return parsed is not None and parsed.precision is Precision.FP32


def add_ratios(measurements: list[Measurement], target: str | None = None) -> list[str]:
    """Fill ratio_to_fastest / ratio_to_fp32 within each (model, batch size); return warnings for compressed
    variants that are not faster than their fp32 parent on the same runtime (measured on ``target``, None: here)."""
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
                        f"{', within noise' if overlap else ''}{accuracy}); ship {baseline.variant} on {m.runtime} instead; "
                        f"where its time goes: {inspect_command(m.artifact, m.variant, target)}"
                    )
                    m.notes.append(f"not faster than {baseline.label} ({m.ratio_to_fp32:.2f}x)")
    return warnings


def inspect_command(artifact: str, variant: str, target: str | None = None) -> str:
    """The `edgekit inspect` command for a measured file: its run and variant name when it lies in a run's exports/,
    and ``--target`` where it was measured on one (the profile is taken where the file was slow)."""
    from pathlib import Path

    path = Path(artifact)
    parsed = as_variant(variant)
    where = f" --target {target}" if target else ""
    if path.parent.name == "exports" and parsed is not None and parsed.file_name == path.name:
        return f"edgekit inspect {path.parent.parent} {parsed.name} --data DIR{where}"
    return f"edgekit inspect RUN {artifact} --data DIR{where}"


def fp32_parent_variant(variant: str) -> str:
    """The float32 variant a variant was made from, as ``Variant.fp32_parent`` says: int8-uint8in -> fp32-uint8in,
    openvino-int8 -> openvino-fp32, "auto (int8)" -> fp32; "fp32" for a name no variant has."""
    parsed = as_variant(variant)
    return parsed.fp32_parent.name if parsed is not None else "fp32"


def _fp32_parent(m: Measurement, group: list[Measurement]) -> Measurement | None:
    """The measurement ``m``'s ratio_to_fp32 divides by, within the same format and runtime first: its fp32 parent on
    the same runtime, else its format's plain fp32 there, else ONNX fp32 there; else its fp32 parent on any runtime,
    else the fastest plain fp32 anywhere, else the fastest float32 row of any format (so a bare int8 file is still
    compared with something)."""
    parsed = as_variant(m.variant)
    wanted = [fp32_parent_variant(m.variant)]
    if parsed is not None:
        wanted.append(Variant(format=parsed.format).name)  # int8-uint8in -> fp32, openvino-int8 -> openvino-fp32
    wanted.append("fp32")
    for name in dict.fromkeys(wanted):
        for b in group:
            if b.variant == name and b.runtime == m.runtime:
                return b
    for candidates in (
        [b for b in group if b.variant == wanted[0]],
        [b for b in group if b.variant == "fp32"],
        [b for b in group if is_fp32(b.variant)],
    ):
        if candidates:
            return min(candidates, key=lambda b: b.p50_ms)
    return None


def summarize(measurements: list[Measurement]) -> list[str]:
    """Per model and batch size: the fastest variant/runtime in this run's interleaved timing and its accuracy,
    against fp32. Contended rows are named: their latencies are not evidence. Which settings an app should use is
    not bench's to say: ``--quantize auto`` compares settings fairly and writes the answer (see ``deploy_line``)."""
    lines = []
    keys = list(dict.fromkeys((m.model, m.batch_size) for m in measurements))
    for model, batch_size in keys:
        group = [m for m in measurements if m.model == model and m.batch_size == batch_size]
        fastest = min(group, key=lambda m: m.p50_ms)
        line = (
            f"{model}, batch {batch_size}: fastest is {fastest.label}, {fastest.p50_ms:.2f} ms p50 ({fastest.images_per_second:.0f} img/s)"
        )
        if fastest.top1 is not None:
            line += f" at top-1 {fastest.top1:.1%}"
        fp32 = [m for m in group if is_fp32(m.variant)]
        if fp32 and not is_fp32(fastest.variant):
            best_fp32 = min(fp32, key=lambda m: m.p50_ms)
            line += f"; fastest fp32 is {best_fp32.label}, {best_fp32.p50_ms:.2f} ms"
            if best_fp32.top1 is not None:
                line += f" at top-1 {best_fp32.top1:.1%}"
            if fastest.p50_ci_ms[1] >= best_fp32.p50_ci_ms[0]:
                line += " (the two are within noise of each other: their medians' confidence intervals overlap)"
        line += _within_a_point(group, fp32, fastest)
        contended = [m.label for m in group if m.contended]
        if contended:
            line += f"; CONTENDED (other processes busy while timing, not evidence): {', '.join(contended)}"
        lines.append(line)
    return lines


def _within_a_point(group: list[Measurement], fp32: list[Measurement], fastest: Measurement) -> str:
    """The usual shipping choice: the fastest variant that keeps accuracy within a point of fp32 ("" if it is the fastest)."""
    scored = [m for m in group if m.top1 is not None]
    if not scored or not fp32 or fp32[0].top1 is None:
        return ""
    reference = max(m.top1 for m in fp32 if m.top1 is not None)
    close = [m for m in scored if m.top1 is not None and m.top1 >= reference - 0.01]
    pick = min(close, key=lambda m: m.p50_ms)
    return (
        "" if pick is fastest else f"; fastest within 1 point of fp32 accuracy: {pick.label}, {pick.p50_ms:.2f} ms at top-1 {pick.top1:.1%}"
    )


def deploy_line(card) -> str:
    """bench's line for a run whose exports carry a deployment card: what to deploy, as auto measured it."""
    where = card.measured_on
    return (
        f"deploy (exports/deploy.json): {card.file} on {card.runtime}, {card.setting} ({card.app_settings}): "
        f"{card.p50_ms:.2f} ms p50 at batch {card.batch_size}, measured by --quantize auto on {where.target} ({where.isa})"
    )


def contention_line(load: ContentionSummary, rows: int) -> str:
    """One line on how quiet the machine was while bench timed."""
    shares = f"other processes used {load.mean_share:.0%} of the CPU on average, {load.max_share:.0%} at most in one chunk"
    retried = f", {load.remeasured_chunks} chunk(s) measured again" if load.remeasured_chunks else ""
    if load.contended_rows == 0:
        return f"machine: quiet enough while timing ({shares}{retried}); no row contended (threshold {load.threshold:.0%})"
    return (
        f"machine: BUSY while timing ({shares}{retried}); {load.contended_rows} of {rows} rows contended "
        f"(threshold {load.threshold:.0%}): their latencies are not evidence, re-run on a quiet machine"
    )


_NOT_SETTINGS = ("library", "providers", "input_type", "mode")  # facts about the session, not choices an app makes


def settings_of(info: dict) -> dict:
    """The choices a session was made with (threads, spinning, hints, session config), from its ``info``."""
    return {key: value for key, value in info.items() if key not in _NOT_SETTINGS}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
