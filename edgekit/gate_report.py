"""The gate's reports for CI systems: JUnit XML (one test case per check) and a markdown summary
for a pull-request comment. Both are written atomically."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from . import files
from .gate import Check, GateResult
from .gate_checks import show_measure

SUITE_NAME = "edgekit gate"


def format_value(check: Check, value: float | None) -> str:
    """A value the way a person reads this metric: percent, points, MB, x-ratio or 3 significant digits."""
    if value is None:
        return "-"
    value = value + 0.0  # no "-0.0"
    metric = check.metric
    if metric in ("baseline_relative_latency", "baseline_size_bytes"):
        return f"{value:+.1%}"
    if metric in ("baseline_accuracy", "baseline_agreement"):
        return f"{value * 100:+.1f} pt"
    if metric in ("accuracy", "accuracy_drop", "agreement"):
        return f"{value:.2%}"
    if metric == "size_mb":
        return f"{value:.2f} MB"
    if metric.startswith("speedup_vs_"):
        return f"{value:.2f}x"
    return f"{value:.3g}"


def format_threshold(check: Check) -> str:
    if check.threshold is None:
        return "-"
    shown = format_value(check, check.threshold).lstrip("+")
    return f"{check.op} {shown}"


def format_comparison(comparison) -> tuple[str, str, str, str]:
    """(baseline, now, change, noise) of a baseline comparison as text."""
    return (show_measure(comparison.metric, comparison.baseline), show_measure(comparison.metric, comparison.current),
            _change(comparison.metric, comparison.change), _change(comparison.metric, comparison.noise, signed=False))


def junit_xml(result: GateResult) -> str:
    """A JUnit XML document: one <testsuite>, one <testcase> per check (classname = variant), a
    <failure> for each failed check and <skipped> for checks that could not be measured here."""
    failures = sum(1 for c in result.checks if not c.passed)
    skipped = sum(1 for c in result.checks if c.skipped)
    suite = ET.Element("testsuite", {
        "name": SUITE_NAME, "tests": str(len(result.checks)), "failures": str(failures),
        "errors": "0", "skipped": str(skipped),
    })
    properties = ET.SubElement(suite, "properties")
    for key, value in (("run", result.run_dir), ("data", result.data), ("runtime", result.runtime),
                       ("threads", result.threads), ("baseline", result.baseline)):
        if value is not None:
            ET.SubElement(properties, "property", {"name": key, "value": str(value)})
    for check in result.checks:
        case = ET.SubElement(suite, "testcase", {"classname": f"edgekit.gate.{check.variant}", "name": check.name, "time": "0"})
        if check.skipped:
            ET.SubElement(case, "skipped", {"message": check.message})
        elif not check.passed:
            failure = ET.SubElement(case, "failure", {"message": check.message, "type": "threshold"})
            failure.text = (f"measured {format_value(check, check.value)}, threshold {format_threshold(check)}\n{check.message}")
        else:
            ET.SubElement(case, "system-out").text = check.message
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(result: GateResult) -> str:
    """A summary for a PR comment: verdict, failures, the checks table and the baseline moves."""
    failed = [c for c in result.checks if not c.passed]
    verdict = "passed" if result.passed else f"FAILED ({len(failed)} of {len(result.checks)} checks)"
    icon = ":white_check_mark:" if result.passed else ":x:"
    lines = [f"## {icon} edgekit gate {verdict}", ""]
    context = [f"runtime `{result.runtime}`"]
    if result.threads:
        context.append(f"{result.threads} threads")
    if result.data:
        context.append(f"data `{result.data}`")
    lines += ["Latency is judged only as ratios between variants timed in the same run; " + ", ".join(context) + ".", ""]
    if failed:
        lines += ["**Failures**", ""] + [f"- {_cell(c.message)}" for c in failed] + [""]
    lines += ["| check | measured | threshold | result |", "|---|---|---|---|"]
    for check in result.checks:
        state = "skipped" if check.skipped else ("pass" if check.passed else "**FAIL**")
        lines.append(f"| `{check.name}` | {format_value(check, check.value)} | {_cell(format_threshold(check))} | {state} |")
    if result.comparisons:
        lines += ["", f"**Compared with the baseline** `{result.baseline}`", "",
                  "| variant | metric | baseline | now | change | noise | verdict |", "|---|---|---|---|---|---|---|"]
        for comparison in result.comparisons:
            cells = " | ".join(format_comparison(comparison))
            lines.append(f"| {comparison.variant} | {comparison.metric} | {cells} | {comparison.verdict} |")
    return "\n".join(lines) + "\n"


def _change(metric: str, value: float, signed: bool = True) -> str:
    # relative changes for latency and size, absolute percentage points for accuracy and agreement
    value = value + 0.0
    if metric in ("relative_latency", "size_bytes"):
        return f"{value:+.1%}" if signed else f"{value:.1%}"
    return f"{value * 100:+.1f} pt" if signed else f"{value * 100:.1f} pt"


def write_reports(result: GateResult, json_path: str | os.PathLike | None = None, junit_path: str | os.PathLike | None = None,
                  markdown_path: str | os.PathLike | None = None) -> list[Path]:
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
