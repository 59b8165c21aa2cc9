"""How the gate's numbers read, and its reports for CI systems.

Every metric is formatted here and nowhere else (check messages, the terminal table, JUnit, markdown): accuracies
in percent, logit differences to 3 significant digits, sizes in MB (10^6 bytes, the unit of every edgekit table:
edgekit.display), speed-ups and latency ratios as x-ratios, baseline moves in percent (relative) or points (absolute). JUnit XML has one test case per check; the markdown
summary is for a pull-request comment. Both files are written atomically."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from .. import files
from ..display import MB, format_size
from .results import Check, Comparison, GateResult

SUITE_NAME = "edgekit gate"

_PERCENT = {"accuracy", "accuracy_drop", "agreement"}
_RELATIVE_MOVES = {"relative_latency", "size_bytes"}  # baseline moves judged relatively; the rest in points


# --- values ---------------------------------------------------------------------------------------


def format_metric(metric: str, value: float | None) -> str:
    """A value of ``metric`` the way a person reads it (``-`` when it was not measured).

    ``metric`` is a check's metric (accuracy, size_mb, speedup_vs_fp32, baseline_accuracy...) or a
    comparison's (relative_latency, size_bytes, accuracy, agreement)."""
    if value is None:
        return "-"
    value = value + 0.0  # no "-0.0"
    if metric.startswith("baseline_"):
        return format_change(metric.removeprefix("baseline_"), value)
    if metric in _PERCENT:
        return f"{value:.2%}"
    if metric == "size_mb":
        return format_size(value * MB)
    if metric == "size_bytes":
        return format_size(value)
    if metric == "relative_latency":
        return f"{value:.3f}x"
    if metric.startswith("speedup_vs_"):
        return f"{value:.2f}x"
    return f"{value:.3g}"


def format_change(metric: str, value: float, signed: bool = True) -> str:
    """A move of ``metric`` vs the baseline: relative (+12.5%) for latency and size, percentage points otherwise."""
    value = value + 0.0
    sign = "+" if signed else ""
    if metric in _RELATIVE_MOVES:
        return f"{value:{sign}.1%}"
    return f"{value * 100:{sign}.1f} pt"


def format_ms(value: float) -> str:
    return f"{value:.3g}"


def format_share(share: float | None) -> str:
    """The CPU share other processes took while bench timed a row."""
    return f"{share:.0%}" if share is not None else "an unknown share"


def format_threshold(check: Check) -> str:
    if check.threshold is None:
        return "-"
    return f"{check.op} {format_metric(check.metric, check.threshold).lstrip('+')}"


def metric_label(metric: str, anchor: str = "fp32") -> str:
    """A comparison's metric in a narrow table column."""
    return {"relative_latency": f"latency/{anchor}", "size_bytes": "size"}.get(metric, metric)


def comparison_label(comparison: Comparison) -> str:
    """The variant a comparison is of, with the target both figures come from when one is named."""
    return f"{comparison.variant}@{comparison.target}" if comparison.target else comparison.variant


def where_lines(result: GateResult) -> list[str]:
    """One line per remote target: where it measured, and that an emulated one's latency checks were skipped."""
    lines = []
    for where in result.measured_on.values():
        emulated = "; its latency checks are skipped, its accuracy and parity judged" if where.emulated else ""
        lines.append(where.heading() + emulated)
    return lines


def format_comparison(comparison: Comparison) -> tuple[str, str, str, str]:
    """(baseline, now, change, noise) of a baseline comparison as text."""
    return (
        format_metric(comparison.metric, comparison.baseline),
        format_metric(comparison.metric, comparison.current),
        format_change(comparison.metric, comparison.change),
        format_change(comparison.metric, comparison.noise, signed=False),
    )


STATE_TEXT = {"pass": "pass", "fail": "FAIL", "not_measured": "not measured", "skipped": "skipped"}


def check_row(check: Check) -> tuple[str, str, str, str]:
    """(name, measured, threshold, state) of a check as text."""
    return check.name, format_metric(check.metric, check.value), format_threshold(check), STATE_TEXT[check.status]


def verdict_line(result: GateResult) -> str:
    """One line: passed / FAILED, with how many checks could not be measured."""
    failed = [c for c in result.checks if c.failed]
    unmeasured = len(result.not_measured)
    on = f" on {', '.join(result.targets)}" if result.targets else ""
    if failed:
        verdict = f"FAILED ({len(failed)} of {len(result.checks)} checks{on})"
    else:
        verdict = f"passed ({len(result.checks)} checks{on})"
    if unmeasured:
        strict = ", exit 3 under strict_contention" if result.strict_contention else ""
        verdict += f"; {unmeasured} latency check{'s' if unmeasured > 1 else ''} not measured: the CPU was contended{strict}"
    return verdict


# --- JUnit XML ------------------------------------------------------------------------------------


def junit_xml(result: GateResult) -> str:
    """A JUnit XML document: one <testsuite>, one <testcase> per check (classname = variant), a <failure> for
    each failed check and <skipped message=...> for checks that were not measured or had nothing to compare."""
    failures = sum(1 for c in result.checks if c.failed)
    skipped = sum(1 for c in result.checks if c.status in ("skipped", "not_measured"))
    suite = ET.Element(
        "testsuite",
        {
            "name": SUITE_NAME,
            "tests": str(len(result.checks)),
            "failures": str(failures),
            "errors": "0",
            "skipped": str(skipped),
        },
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in (
        ("run", result.run_dir),
        ("data", result.data),
        ("runtime", result.runtime),
        ("threads", result.threads),
        ("baseline", result.baseline),
        ("targets", ", ".join(result.targets) or None),
    ):
        if value is not None:
            ET.SubElement(properties, "property", {"name": key, "value": str(value)})
    for check in result.checks:
        case = ET.SubElement(suite, "testcase", {"classname": f"edgekit.gating.{check.variant}", "name": check.name, "time": "0"})
        if check.status in ("skipped", "not_measured"):
            ET.SubElement(case, "skipped", {"message": check.message, "type": check.status})
        elif check.failed:
            failure = ET.SubElement(case, "failure", {"message": check.message, "type": "threshold"})
            failure.text = f"measured {format_metric(check.metric, check.value)}, threshold {format_threshold(check)}\n{check.message}"
        else:
            ET.SubElement(case, "system-out").text = check.message
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


# --- markdown -------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


_MARKDOWN_STATE = {"pass": "pass", "fail": "**FAIL**", "not_measured": "not measured (contended)", "skipped": "skipped"}


def markdown(result: GateResult) -> str:
    """A summary for a PR comment: verdict, failures, unmeasured checks, the checks table and the baseline moves."""
    failed = [c for c in result.checks if c.failed]
    icon = ":x:" if failed else (":warning:" if result.not_measured else ":white_check_mark:")
    lines = [f"## {icon} edgekit gate {verdict_line(result)}", ""]
    context = [f"runtime `{result.runtime}`"]
    if result.threads:
        context.append(f"{result.threads} threads")
    if result.data:
        context.append(f"data `{result.data}`")
    if result.targets:
        context.append("on " + ", ".join(f"`{target}`" for target in result.targets))
    lines += ["Latency is judged only as ratios between variants timed in the same run; " + ", ".join(context) + ".", ""]
    lines += [f"- {_cell(line)}" for line in where_lines(result)] + ([""] if result.measured_on else [])
    if failed:
        lines += ["**Failures**", ""] + [f"- {_cell(c.message)}" for c in failed] + [""]
    if result.not_measured:
        lines += ["**Not measured** (other processes used the CPU while these were timed; neither a pass nor a failure)", ""]
        lines += [f"- {_cell(c.message)}" for c in result.not_measured] + [""]
    lines += ["| check | measured | threshold | result |", "|---|---|---|---|"]
    for check in result.checks:
        name, measured, threshold, _ = check_row(check)
        lines.append(f"| `{name}` | {measured} | {_cell(threshold)} | {_MARKDOWN_STATE[check.status]} |")
    if result.comparisons:
        lines += [
            "",
            f"**Compared with the baseline** `{result.baseline}`",
            "",
            "| variant | metric | baseline | now | change | noise | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for comparison in result.comparisons:
            cells = " | ".join(format_comparison(comparison))
            lines.append(f"| {_cell(comparison_label(comparison))} | {comparison.metric} | {cells} | {comparison.verdict} |")
    return "\n".join(lines) + "\n"


def write_reports(
    result: GateResult,
    json_path: str | os.PathLike | None = None,
    junit_path: str | os.PathLike | None = None,
    markdown_path: str | os.PathLike | None = None,
) -> list[Path]:
    """Write the requested reports, each atomically; returns the paths written."""
    written = []
    if json_path is not None:
        result.to_json(json_path)
        written.append(Path(json_path))
    if junit_path is not None:
        written.append(files.write_text(junit_path, junit_xml(result)))
    if markdown_path is not None:
        written.append(files.write_text(markdown_path, markdown(result)))
    return written
