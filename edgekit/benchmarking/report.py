"""Bench reports for people: a rich table for the terminal, markdown for a PR comment, a Pareto plot (PNG)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..display import megabytes
from ..errors import EdgekitError

WARNING_MARK = "⚠"
PLOT_INSTALL_HINT = "pip install 'edgekit[plot]'"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _vs_fp32(m) -> str:
    if m.ratio_to_fp32 is None:
        return "-"
    text = f"{m.ratio_to_fp32:.2f}x"
    return f"{text} {WARNING_MARK} not faster" if m.slower_than_fp32 else text


CONTENDED_MARK = "⚑"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _fair(m) -> str:
    return f"{m.p50_ms:.2f} ({m.p50_ci_ms[0]:.2f}-{m.p50_ci_ms[1]:.2f})"


def _settings(m) -> str:
    return (
        ", ".join(
            f"{k}={v}"
            for k, v in m.fair_settings.items()
            if k in ("intra_op_threads", "threads", "allow_spinning", "inference_precision_hint", "performance_hint")
        )
        or "-"
    )


def _others(m) -> str:
    share = f"{m.contention_share:.0%}"
    return f"{CONTENDED_MARK} {share} contended" if m.contended else share


def _cold(m) -> str:
    return f"{_ms(m.load_ms)}/{_ms(m.first_inference_ms)}"


def _rss(m) -> str:
    after = [v for v in (m.peak_rss_after_load_mb, m.peak_rss_after_first_inference_mb) if v is not None]
    return "/".join(f"{v:.0f}" for v in [*after, m.peak_rss_mb])


def _rows(result) -> list[list[str]]:
    rows = []
    for m in result.measurements:
        rows.append(
            [
                m.model,
                m.variant,
                m.runtime,
                str(m.batch_size),
                _fair(m),
                _settings(m),
                f"{m.p90_ms:.2f}",
                f"{m.p99_ms:.2f}",
                f"{m.images_per_second:.1f}",
                f"{m.ratio_to_fastest:.2f}x",
                _vs_fp32(m),
                _percent(m.top1),
                _percent(m.top5),
                _ms(m.load_ms),
                _ms(m.first_inference_ms),
                f"{megabytes(m.size_bytes):.2f}",
                _rss(m),
                f"+{m.rss_delta_mb:.0f}",
                _others(m),
                "-" if m.gpu_memory_mb is None else f"{m.gpu_memory_mb:.0f}",
                _parity(m),
            ]
        )
    return rows


def _parity(m) -> str:
    """Top-1 agreement and max |logit difference| against the run's float32 PyTorch model, where bench measured them."""
    if m.parity is None:
        return "-"
    return f"{m.parity.top1_agreement:.0%}/{m.parity.max_abs_diff:.2g}"


_HEADERS = [
    "model",
    "variant",
    "runtime",
    "batch",
    "p50 ms (95% CI)",
    "settings",
    "p90 ms",
    "p99 ms",
    "img/s",
    "vs fastest",
    "vs fp32",
    "top-1",
    "top-5",
    "load ms",
    "1st inference ms",
    "size MB",
    "peak RSS MB load/1st/all",
    "model RSS MB",
    "others' CPU",
    "GPU MB",
    "vs torch fp32: top-1 agreement/max abs diff",
]


_TERMINAL_HEADERS = [
    "model",
    "variant",
    "runtime",
    "batch",
    "p50 ms (CI)",
    "p90/p99 ms",
    "img/s",
    "×fastest",
    "×fp32",
    "top-1",
    "top-5",
    "load/1st ms",
    "size MB",
    "RSS MB load/1st/all",
    "others' CPU",
    "GPU MB",
    "vs torch: agree/max|Δ|",
]


def table(result):
    """A compact rich Table of every measurement; compressed variants slower than fp32 are marked in red, rows timed
     while other processes used the CPU (contended) in yellow with a flag.

     Columns with nothing to show (model when there is one, accuracy without --data, GPU on the CPU, the fair p50 when
    ) are left out.
    """
    from rich.table import Table

    measurements = result.measurements
    keep = [
        len({m.model for m in measurements}) > 1,
        True,
        True,
        True,
        True,
        True,
        True,
        True,
        any(m.ratio_to_fp32 is not None for m in measurements),
        any(m.top1 is not None for m in measurements),
        any(m.top5 is not None for m in measurements),
        True,
        True,
        True,
        True,
        any(m.gpu_memory_mb is not None for m in measurements),
        any(m.parity is not None for m in measurements),
    ]
    title = "edgekit bench" if result.target is None else f"edgekit bench on {result.target.target}"
    out = Table(*[h for h, k in zip(_TERMINAL_HEADERS, keep) if k], title=title, caption=_caption(result))
    for m in measurements:
        cells = [
            m.model,
            m.variant,
            m.runtime,
            str(m.batch_size),
            _fair(m),
            f"{m.p90_ms:.2f}/{m.p99_ms:.2f}",
            f"{m.images_per_second:.1f}",
            f"{m.ratio_to_fastest:.2f}",
            _vs_fp32(m),
            _percent(m.top1),
            _percent(m.top5),
            _cold(m),
            f"{megabytes(m.size_bytes):.2f}",
            _rss(m),
            f"{CONTENDED_MARK} {m.contention_share:.0%}" if m.contended else f"{m.contention_share:.0%}",
            "-" if m.gpu_memory_mb is None else f"{m.gpu_memory_mb:.0f}",
            _parity(m),
        ]
        style = "red" if m.slower_than_fp32 else "yellow" if m.contended else None
        out.add_row(*[c for c, k in zip(cells, keep) if k], style=style)  # printed literally (edgekit.display)
    return out


def _caption(result) -> str:
    machine = result.machine
    threads = result.settings.get("threads") or "default"
    where = f"{result.target.heading()}. " if result.target is not None else ""
    return where + (
        f"{machine.get('cpu')} ({machine.get('usable_cores')} cores usable), threads {threads}, "
        f"{result.settings.get('iterations')} iterations, every row interleaved (ORT spinning off), ratios >1 slower. "
        f"{CONTENDED_MARK}: other processes used the CPU while timing (contended), not evidence"
    )


def markdown(result) -> str:
    """A markdown report for a PR comment: machine line, warnings first, the table, the per-model summary."""
    machine = result.machine
    lines = ["## edgekit bench" + (f" on {result.target.target}" if result.target is not None else ""), ""]
    if result.target is not None:
        ran = ", ".join(f"{module} {version}" for module, version in result.target.runtimes.items())
        lines += [f"**{result.target.heading()}.** {result.target.os or ''}, Python {result.target.python}; {ran}.", ""]
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items())
    lines.append(
        f"{machine.get('cpu')} ({machine.get('usable_cores')} usable cores; flags: {' '.join(machine.get('cpu_flags', [])) or 'n/a'}){gpu}. "
        f"Threads {result.settings.get('threads') or 'default'}, {result.settings.get('warmup')} warm-up + "
        f"{result.settings.get('iterations')} timed iterations, variants interleaved. {versions}."
    )
    lines.append("")
    lines.append(
        "Rows are timed interleaved (ORT's idle-thread spinning off, so one session's threads do not tax the next), which "
        "is what the ratios compare; which settings an app should use is `edgekit export --quantize auto`'s measured answer "
        "(exports/deploy.json). Load and first inference are cold costs an app pays at "
        f"every start. {CONTENDED_MARK} *contended*: other processes used at least "
        f"{(result.settings.get('contention_threshold') or 0.25):.0%} of the CPU while that row was timed, even after "
        "re-measuring: its latencies are not evidence."
    )
    lines.append("")
    for warning in result.warnings:
        lines.append(f"> {WARNING_MARK} **{warning}**")
        lines.append(">")
    if result.warnings:
        lines[-1] = ""
    show = [True] * (len(_HEADERS) - 2) + [any(m.gpu_memory_mb is not None for m in result.measurements)]
    show.append(any(m.parity is not None for m in result.measurements))
    headers = [h for h, k in zip(_HEADERS, show) if k]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "---|" * len(headers))
    for row in _rows(result):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell, k in zip(row, show) if k) + " |")
    lines.append("")
    if result.summary:
        lines += [f"- {line}" for line in result.summary]
        lines.append("")
    for runtime, reason in result.skipped.items():
        lines.append(f"- skipped {runtime}: {reason}")
    notes = sorted(
        {f"{m.variant} on {m.runtime}: {note}" for m in result.measurements for note in m.notes if not note.startswith("not faster than")}
    )  # those are the warnings at the top already
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


def require_matplotlib():
    """matplotlib, or a one-line error naming the extra that installs it (``bench --plot`` asks before timing)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise EdgekitError(f"the latency vs accuracy plot needs matplotlib, which is not installed: {PLOT_INSTALL_HINT}") from exc
    return matplotlib


def pareto_plot(result, path: str | os.PathLike, batch_size: int | None = None) -> Path:
    """A PNG scatter of p50 latency vs top-1 accuracy, one point per model/variant/runtime, the Pareto front drawn.

    Uses the smallest batch size measured unless ``batch_size`` is given. Needs accuracy (bench with --data).
    """
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")  # no display needed; must be set before pyplot is imported
    import matplotlib.pyplot as plt

    from .. import files

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
    axes.set_title(f"latency vs accuracy ({(result.machine.get('cpu') or '')[:50]})", fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    axes.margins(x=0.15, y=0.15)
    figure.tight_layout()
    path = Path(path)
    with files.atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path
