"""CLI for `edgekit gate`: exit 0 when every check holds, 1 when one fails, 2 on a bad config."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from .output import console


@click.command("gate")
@click.option("--config", "config_path", required=True, type=click.Path(path_type=Path),
              help="Gate config (YAML): what to check and the thresholds; see configs/gate.yaml.")
@click.option("--baseline", type=click.Path(path_type=Path),
              help="JSON report of an earlier run (edgekit gate --json, or edgekit bench --json) to compare with.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the full gate report as JSON.")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path), help="Write JUnit XML (one test case per check).")
@click.option("--md", "markdown_path", type=click.Path(path_type=Path), help="Write a markdown summary (for a PR comment).")
@click.option("--threads", type=int, help="Override the config's bench threads.")
def gate_command(config_path, baseline, json_path, junit_path, markdown_path, threads):
    """Check accuracy, parity, size and relative speed of exported variants against thresholds.

    \b
    edgekit gate --config configs/gate.yaml
    edgekit gate --config configs/gate.yaml --junit gate.xml --md gate.md --json gate.json --baseline main-gate.json

    Exit status: 0 every check holds, 1 a check failed (each failure is named on one line),
    2 a user error (a malformed config names the key).
    """
    from ..gate import gate, load_config
    from ..gate_report import write_reports

    config = load_config(config_path, {"threads": threads})
    result = gate(config, baseline=baseline, progress=True)
    show_gate(result, anchor=config.baseline.anchor)
    for path in write_reports(result, json_path, junit_path, markdown_path):
        console.print(f"wrote {path}")
    if not result.passed:
        raise click.exceptions.Exit(1)


def show_gate(result, anchor: str = "fp32") -> None:
    """Print the checks (and baseline moves) as tables; failures one line each on stderr."""
    from ..gate_report import format_comparison, format_threshold, format_value

    table = Table("check", "measured", "threshold", "result", title="edgekit gate")
    for check in result.checks:
        state = "[yellow]skip[/yellow]" if check.skipped else ("[green]pass[/green]" if check.passed else "[bold red]FAIL[/bold red]")
        table.add_row(check.name, format_value(check, check.value), format_threshold(check), state)
    console.print(table)
    if result.comparisons:
        moves = Table("metric", "baseline", "now", "change", "noise", "verdict", title=f"vs baseline {result.baseline}")
        short = {"relative_latency": f"latency/{anchor}", "size_bytes": "size"}
        for c in result.comparisons:
            verdict = {"regression": "[bold red]regression[/bold red]", "improvement": "[green]improvement[/green]"}.get(c.verdict, c.verdict)
            moves.add_row(f"{c.variant} {short.get(c.metric, c.metric)}", *format_comparison(c), verdict)
        console.print(moves)
    if result.passed:
        console.print(f"[green]gate passed: {len(result.checks)} checks[/green]")
        return
    for message in result.failures:
        click.echo(f"FAIL {message}", err=True)
    click.echo(f"gate failed: {len(result.failures)} of {len(result.checks)} checks", err=True)


COMMANDS = [gate_command]
