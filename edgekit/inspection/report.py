"""Inspection reports for people: rich tables for the terminal and markdown for a PR comment (the HTML page with its
charts is ``html.py``). The tables are printed by edgekit's consoles, which print text literally (no markup), so node
and layer names from a model file need no escaping."""

from __future__ import annotations

from pydantic import Field

from ..results import Result
from .results import InspectResult, LayerNumerics, Numerics, Profile

TOP_NODES = 10
TOP_OP_TYPES = 10


class InspectReport(Result):
    """Several inspections side by side (one per artifact or runtime), as `edgekit inspect --json` writes them."""

    results: list[InspectResult] = Field(default_factory=list)


def _db(value: float) -> str:
    return f"{value:.1f}"


def verdict_lines(result: InspectResult) -> list[str]:
    """The findings in a few plain sentences (the same in every report)."""
    lines = []
    numerics = result.numerics
    if numerics is not None:
        layers = {layer.layer: layer for layer in numerics.layers}
        if not layers:
            lines.append("no per-layer numerics for this artifact (see the notes)")
        elif numerics.first_diverging is not None:
            first = layers[numerics.first_diverging]
            lines.append(
                f"first diverging layer: {first.layer} ({first.op_type}, {first.precision}) at {_db(first.accumulated.sqnr_db)} dB, "
                f"under the {numerics.threshold_db:g} dB threshold"
            )
        else:
            lines.append(f"no layer falls under the {numerics.threshold_db:g} dB threshold")
        if layers:
            lines.append(
                "worst layers (accumulated): " + ", ".join(f"{name} {_db(layers[name].accumulated.sqnr_db)} dB" for name in numerics.worst)
            )
        if numerics.search_first:
            lines.append("the accuracy search would return to float first: " + ", ".join(numerics.search_first))
        if numerics.worst_own:
            own = [(name, layers[name].own) for name in numerics.worst_own]
            lines.append("worst layers on their own: " + ", ".join(f"{name} {_db(stats.sqnr_db)} dB" for name, stats in own if stats))
        if numerics.worst_own_channel:
            own = [(name, layers[name].own) for name in numerics.worst_own_channel]
            lines.append(
                "worst on their own, every channel weighing the same: "
                + ", ".join(f"{name} {_db(stats.channel_sqnr_db)} dB" for name, stats in own if stats and stats.channel_sqnr_db is not None)
            )
        lines.append(f"logits vs PyTorch: {_db(numerics.logits.sqnr_db)} dB, cosine {numerics.logits.cosine:.4f}")
    profile = result.profile
    if profile is not None:
        plain = f", {profile.unprofiled_p50_ms:.3f} ms p50 unprofiled" if profile.unprofiled_p50_ms else ""
        ratio = f" ({profile.total_ms / profile.unprofiled_p50_ms:.2f}x the unprofiled p50)" if profile.unprofiled_p50_ms else ""
        lines.append(
            f"{profile.runtime}: {profile.profiled_run_ms:.3f} ms per inference as profiled{plain}; ops add up to {profile.total_ms:.3f} ms{ratio}"
        )
        lines += [f"flag ({flag.kind}): {flag.message}" for flag in profile.flags]
    return lines + [f"note: {note}" for note in result.notes + (numerics.notes if numerics else []) + (profile.notes if profile else [])]


def layer_row(layer: LayerNumerics, numerics: Numerics, how: bool = True) -> list[str]:
    own = layer.own
    return [
        str(layer.index),
        layer.layer,
        layer.op_type,
        layer.precision,
        _db(layer.accumulated.sqnr_db),
        _db(own.sqnr_db) if own else "-",
        _db(own.channel_sqnr_db) if own and own.channel_sqnr_db is not None else "-",
        f"{layer.accumulated.cosine:.4f}",
        f"{layer.accumulated.max_abs_diff:.3g}",
        f"{layer.search_error:.4f}" if layer.search_error is not None else "-",
        f"{layer.reference} ({layer.matched_by})" if how else layer.reference,
    ]


LAYER_COLUMNS = [
    "#",
    "layer",
    "op",
    "precision",
    "SQNR dB",
    "own dB",
    "own ch. dB",
    "cosine",
    "max abs diff",
    "search error",
    "reference (how matched)",
]
TERMINAL_LAYER_COLUMNS = LAYER_COLUMNS[:-1] + ["reference"]  # how each was matched: in --md, --json and --html
OP_COLUMNS = ["op type", "ms", "share", "nodes"]
NODE_COLUMNS = ["node", "op", "ran as", "layer", "ms", "share"]


def op_rows(profile: Profile) -> list[list[str]]:
    return [[o.op_type, f"{o.ms:.3f}", f"{o.share:.1%}", str(o.count)] for o in profile.op_types[:TOP_OP_TYPES]]


def node_rows(profile: Profile) -> list[list[str]]:
    return [[n.node, n.op_type, n.ran_as, n.layer or "-", f"{n.ms:.3f}", f"{n.share:.1%}"] for n in profile.nodes[:TOP_NODES]]


def rich_tables(result: InspectResult) -> list:
    """The rich renderables for the terminal: the layer table, the op-type and top-node tables."""
    from rich.table import Table

    tables = []
    numerics = result.numerics
    if numerics is not None and numerics.layers:
        table = Table(*TERMINAL_LAYER_COLUMNS, title=f"{result.artifact} ({result.variant}) vs float32 PyTorch on {numerics.images} images")
        for layer in numerics.layers:
            style = "red" if layer.accumulated.sqnr_db < numerics.threshold_db else None
            table.add_row(*layer_row(layer, numerics, how=False), style=style)
        tables.append(table)
    profile = result.profile
    if profile is not None:
        ops = Table(*OP_COLUMNS, title=f"{result.variant} on {profile.runtime}: time per op type ({profile.source})")
        for row in op_rows(profile):
            ops.add_row(*row)
        nodes = Table(*NODE_COLUMNS, title=f"the {TOP_NODES} slowest nodes as {profile.runtime} ran them")
        for row in node_rows(profile):
            nodes.add_row(*row)
        tables += [ops, nodes]
    return tables


def _md_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(cell(c) for c in row) + " |" for row in rows
    ]


def markdown(report: InspectReport) -> str:
    """The whole report as markdown: per artifact its findings, the layer table and the profile tables."""
    lines = ["# edgekit inspect", ""]
    for result in report.results:
        lines += [f"## {result.variant}: `{result.artifact}` on {result.runtime}", ""]
        lines += [f"- {line}" for line in verdict_lines(result)] + [""]
        if result.numerics is not None and result.numerics.layers:
            numerics = result.numerics
            lines += [
                f"Layers vs float32 PyTorch on {numerics.images} images ({numerics.data_source}); threshold: {numerics.threshold_reason}.",
                "",
            ]
            lines += _md_table(LAYER_COLUMNS, [layer_row(layer, numerics) for layer in numerics.layers]) + [""]
        if result.profile is not None:
            lines += [f"Time per op type ({result.profile.source}, batch {result.profile.batch_size}, {result.profile.runs} runs):", ""]
            lines += _md_table(OP_COLUMNS, op_rows(result.profile)) + [""]
            lines += _md_table(NODE_COLUMNS, node_rows(result.profile)) + [""]
    return "\n".join(lines).rstrip() + "\n"
