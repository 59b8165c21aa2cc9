"""The inspection report as one static HTML page: the findings, two charts (SQNR along the network's depth per
variant; time per op type per runtime) drawn with matplotlib as bench's Pareto plot is and embedded as PNG data, and
the tables. No script, no external resource: the page opens from a CI artifact store as it is."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

from ..errors import EdgekitError
from .report import LAYER_COLUMNS, NODE_COLUMNS, OP_COLUMNS, InspectReport, layer_row, node_rows, op_rows, verdict_lines

CHART_SIZE = (9.0, 4.2)  # inches at CHART_DPI: 1080 x 504 pixels
CHART_DPI = 120
SQNR_CAP_DB = 100.0  # float32 layers sit at 100-140 dB; drawn at the cap so the int8 ones keep the axis
OTHER_AFTER = 8  # op types per bar beyond which the rest is drawn as "other"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise EdgekitError("the HTML report's charts need matplotlib; pip install 'edgekit[plot]'") from None
    matplotlib.use("Agg")  # no display needed; must be set before pyplot is imported
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=CHART_DPI)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def sqnr_chart(report: InspectReport) -> str | None:
    """Base64 PNG: accumulated (and own) SQNR per layer along the depth, one line per variant; None without numerics."""
    with_numerics = [r for r in report.results if r.numerics is not None and r.numerics.layers]
    if not with_numerics:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=CHART_SIZE)
    clipped = False
    for result in with_numerics:
        numerics = result.numerics
        assert numerics is not None
        depth = [layer.index for layer in numerics.layers]
        values = [min(layer.accumulated.sqnr_db, SQNR_CAP_DB) for layer in numerics.layers]
        clipped = clipped or any(layer.accumulated.sqnr_db > SQNR_CAP_DB for layer in numerics.layers)
        (line,) = axes.plot(depth, values, "-o", markersize=3, label=f"{result.variant} accumulated")
        own = [(layer.index, min(layer.own.sqnr_db, SQNR_CAP_DB)) for layer in numerics.layers if layer.own is not None]
        if own:
            axes.plot(*zip(*own), ":x", markersize=4, color=line.get_color(), label=f"{result.variant} own")
        axes.axhline(numerics.threshold_db, color=line.get_color(), linewidth=0.8, linestyle="--")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylim(top=SQNR_CAP_DB + 5)
    axes.set_xlabel("layer (depth order)")
    axes.set_ylabel("SQNR vs float32 PyTorch, dB")
    capped = f"; above {SQNR_CAP_DB:.0f} dB drawn at {SQNR_CAP_DB:.0f}" if clipped else ""
    axes.set_title(f"SQNR along the network's depth (dashed: each variant's divergence threshold{capped})", fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    encoded = _png(figure)
    plt.close(figure)
    return encoded


def time_chart(report: InspectReport) -> str | None:
    """Base64 PNG: ms per inference per op type, one stacked bar per (variant, runtime); None without profiles."""
    profiled = [r for r in report.results if r.profile is not None and r.profile.op_types]
    if not profiled:
        return None
    plt = _pyplot()
    totals: dict[str, float] = {}
    for result in profiled:
        for op in result.profile.op_types:  # type: ignore[union-attr]
            totals[op.op_type] = totals.get(op.op_type, 0.0) + op.ms
    kept = sorted(totals, key=lambda t: -totals[t])[:OTHER_AFTER]
    figure, axes = plt.subplots(figsize=(CHART_SIZE[0], min(CHART_SIZE[1], 1.8 + 0.6 * len(profiled))))
    labels = [f"{r.variant} on {r.runtime}" for r in profiled]
    left = [0.0] * len(profiled)
    for op_type in kept + ["other"]:
        widths = []
        for result in profiled:
            ops = result.profile.op_types  # type: ignore[union-attr]
            widths.append(sum(o.ms for o in ops if (o.op_type == op_type) or (op_type == "other" and o.op_type not in kept)))
        axes.barh(labels, widths, left=left, label=op_type)
        left = [a + b for a, b in zip(left, widths)]
    axes.set_xlabel("ms per inference (batch 1), the runtime's own profiler")
    axes.set_title("time per op type per runtime", fontsize=10)
    axes.legend(fontsize=7, ncol=3, loc="lower right")
    axes.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    encoded = _png(figure)
    plt.close(figure)
    return encoded


def _table(columns: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _chart(encoded: str | None, name: str, alt: str) -> str:
    if encoded is None:
        return f"<p>No {html.escape(alt)} (nothing measured).</p>"
    return f'<img id="{name}" class="chart" alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


STYLE = (
    "body{font-family:sans-serif;margin:24px;max-width:1200px;color:#222}"
    "img.chart{max-width:100%;height:auto;display:block;margin:12px 0}"
    "table{border-collapse:collapse;font-size:12px;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
)


def page(report: InspectReport) -> str:
    """The HTML text of the report."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>edgekit inspect</title><style>{STYLE}</style></head><body>"]
    parts.append("<h1>edgekit inspect</h1>")
    parts.append(_chart(sqnr_chart(report), "sqnr-chart", "SQNR along the network's depth"))
    parts.append(_chart(time_chart(report), "time-chart", "time per op type per runtime"))
    for result in report.results:
        parts.append(
            f"<h2>{html.escape(result.variant)} on {html.escape(result.runtime)}: <code>{html.escape(result.artifact)}</code></h2>"
        )
        parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in verdict_lines(result)) + "</ul>")
        if result.numerics is not None:
            parts.append(_table(LAYER_COLUMNS, [layer_row(layer, result.numerics) for layer in result.numerics.layers]))
        if result.profile is not None:
            parts.append(_table(OP_COLUMNS, op_rows(result.profile)) + _table(NODE_COLUMNS, node_rows(result.profile)))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(report: InspectReport, path: str | os.PathLike) -> Path:
    """Write the page atomically."""
    from .. import files

    files.write_text(path, page(report))
    return Path(path)
