"""Bench reports for people: a rich table for the terminal, markdown for a PR comment, a Pareto plot (PNG)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .errors import EdgekitError

WARNING_MARK = "⚠"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _vs_fp32(m) -> str:
    if m.ratio_to_fp32 is None:
        return "-"
    text = f"{m.ratio_to_fp32:.2f}x"
    return f"{text} {WARNING_MARK} not faster" if m.slower_than_fp32 else text


def _rows(result) -> list[list[str]]:
    rows = []
    for m in result.measurements:
        rows.append([
            m.model, m.variant, m.runtime, str(m.batch_size),
            f"{m.p50_ms:.2f} ({m.p50_ci_ms[0]:.2f}-{m.p50_ci_ms[1]:.2f})", f"{m.p90_ms:.2f}", f"{m.p99_ms:.2f}",
            f"{m.images_per_second:.1f}", f"{m.ratio_to_fastest:.2f}x", _vs_fp32(m), _percent(m.top1), _percent(m.top5),
            f"{m.size_bytes / 2**20:.2f}", f"{m.peak_rss_mb:.0f} (+{m.rss_delta_mb:.0f})",
            "-" if m.gpu_memory_mb is None else f"{m.gpu_memory_mb:.0f}",
        ])
    return rows


_HEADERS = ["model", "variant", "runtime", "batch", "p50 ms (95% CI)", "p90 ms", "p99 ms", "img/s", "vs fastest",
            "vs fp32", "top-1", "top-5", "size MB", "peak RSS MB (+model)", "GPU MB"]


_TERMINAL_HEADERS = ["model", "variant", "runtime", "batch", "p50 ms (95% CI)", "p90/p99 ms", "img/s", "×fastest", "×fp32",
                     "top-1", "top-5", "MB", "RSS MB", "GPU MB"]


def table(result):
    """A compact rich Table of every measurement; compressed variants slower than fp32 are marked in red.

    Columns with nothing to show (model when there is one, accuracy without --data, GPU on the CPU) are left out.
    """
    from rich.markup import escape
    from rich.table import Table

    measurements = result.measurements
    keep = [
        len({m.model for m in measurements}) > 1, True, True, True, True, True, True, True,
        any(m.ratio_to_fp32 is not None for m in measurements),
        any(m.top1 is not None for m in measurements), any(m.top5 is not None for m in measurements),
        True, True, any(m.gpu_memory_mb is not None for m in measurements),
    ]
    out = Table(*[h for h, k in zip(_TERMINAL_HEADERS, keep) if k], title="edgekit bench", caption=escape(_caption(result)))
    for m in measurements:
        cells = [
            m.model, m.variant, m.runtime, str(m.batch_size), f"{m.p50_ms:.2f} ({m.p50_ci_ms[0]:.2f}-{m.p50_ci_ms[1]:.2f})",
            f"{m.p90_ms:.2f}/{m.p99_ms:.2f}", f"{m.images_per_second:.1f}", f"{m.ratio_to_fastest:.2f}", _vs_fp32(m),
            _percent(m.top1), _percent(m.top5), f"{m.size_bytes / 2**20:.1f}", f"{m.peak_rss_mb:.0f}",
            "-" if m.gpu_memory_mb is None else f"{m.gpu_memory_mb:.0f}",
        ]
        out.add_row(*[escape(c) for c, k in zip(cells, keep) if k], style="red" if m.slower_than_fp32 else None)
    return out


def _caption(result) -> str:
    machine = result.machine
    threads = result.settings.get("threads") or "default"
    return (f"{machine.get('cpu')} ({machine.get('usable_cores')} cores usable), threads {threads}, "
            f"{result.settings.get('iterations')} interleaved iterations; ratios: p50 / reference p50, >1 slower")


def markdown(result) -> str:
    """A markdown report for a PR comment: machine line, warnings first, the table, the per-model summary."""
    machine = result.machine
    lines = ["## edgekit bench", ""]
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items())
    lines.append(
        f"{machine.get('cpu')} ({machine.get('usable_cores')} usable cores; flags: {' '.join(machine.get('cpu_flags', [])) or 'n/a'}){gpu}. "
        f"Threads {result.settings.get('threads') or 'default'}, {result.settings.get('warmup')} warm-up + "
        f"{result.settings.get('iterations')} timed iterations, variants interleaved. {versions}."
    )
    lines.append("")
    for warning in result.warnings:
        lines.append(f"> {WARNING_MARK} **{warning}**")
        lines.append(">")
    if result.warnings:
        lines[-1] = ""
    show_gpu = any(m.gpu_memory_mb is not None for m in result.measurements)
    headers = _HEADERS if show_gpu else _HEADERS[:-1]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "---|" * len(headers))
    for row in _rows(result):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row[: len(headers)]) + " |")
    lines.append("")
    if result.summary:
        lines += [f"- {line}" for line in result.summary]
        lines.append("")
    for runtime, reason in result.skipped.items():
        lines.append(f"- skipped {runtime}: {reason}")
    notes = sorted({f"{m.variant} on {m.runtime}: {note}" for m in result.measurements for note in m.notes
                    if not note.startswith("not faster than")})  # those are the warnings at the top already
    lines += [f"- note: {note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower latency x, higher accuracy y), by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], float("-inf")
    for index in order:
        if points[index][1] > best_y:
            front.append(index)
            best_y = points[index][1]
    return front


def pareto_plot(result, path: str | os.PathLike, batch_size: int | None = None) -> Path:
    """A PNG scatter of p50 latency vs top-1 accuracy, one point per model/variant/runtime, the Pareto front drawn.

    Uses the smallest batch size measured unless ``batch_size`` is given. Needs accuracy (bench with --data).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must be set before pyplot is imported
    import matplotlib.pyplot as plt

    from . import files

    sizes = sorted({m.batch_size for m in result.measurements})
    if not sizes:
        raise EdgekitError("the bench result has no measurements to plot")
    chosen = batch_size if batch_size is not None else sizes[0]
    points = [m for m in result.measurements if m.batch_size == chosen and m.top1 is not None]
    if not points:
        raise EdgekitError("--plot needs accuracy: bench with --data DIR (a labelled image folder) so each variant has a top-1")
    xy = [(m.p50_ms, m.top1 * 100) for m in points]
    front = pareto_front(xy)
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    several_models = len({m.model for m in points}) > 1
    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    offsets = [(6, 6), (6, -12), (6, 16), (6, -22)]  # stagger labels of neighbouring points so they stay legible
    by_latency = sorted(range(len(points)), key=lambda i: xy[i][0])
    for rank, index in enumerate(by_latency):
        m = points[index]
        on_front = index in front
        style = ("tab:red", "x") if m.slower_than_fp32 else (("tab:blue", "o") if on_front else ("tab:gray", "x"))
        axes.scatter(*xy[index], s=60 if on_front else 40, color=style[0], marker=style[1], zorder=3)
        label = f"{m.model}: {m.variant} / {m.runtime}" if several_models else f"{m.variant} / {m.runtime}"
        axes.annotate(label, xy[index], textcoords="offset points", xytext=offsets[rank % len(offsets)], fontsize=7)
    front_xy = [xy[i] for i in front]
    axes.plot([p[0] for p in front_xy], [p[1] for p in front_xy], "--o", color="tab:blue", label="Pareto front", zorder=2)
    axes.scatter([], [], color="tab:gray", marker="x", label="dominated")
    if any(m.slower_than_fp32 for m in points):
        axes.scatter([], [], color="tab:red", marker="x", label="not faster than its fp32 parent")
    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))  # 1-2-3-5 ticks: readable in ms
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel(f"p50 latency, ms (batch {chosen}, log scale)")
    axes.set_ylabel("top-1 accuracy, %")
    axes.set_title(f"latency vs accuracy ({result.machine.get('cpu', '')[:50]})", fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    axes.margins(x=0.15, y=0.15)
    figure.tight_layout()
    path = Path(path)
    with files.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path
