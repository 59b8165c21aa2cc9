"""CLI for `edgekit gate`: exit 0 when every measured check holds, 1 when one fails, 2 on a bad config, 3 (only
with --strict-contention) when a latency check could not be measured because the CPU was contended."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ..gating import GateResult, gate, load_config
from ..gating.report import check_row, comparison_label, format_comparison, metric_label, verdict_line, where_lines, write_reports
from .output import console, styled
from .target import TARGET_HELP, connection_options

_STATE_STYLE = {"pass": "green", "fail": "bold red", "not_measured": "yellow", "skipped": "yellow"}
_VERDICT_STYLE = {"regression": "bold red", "improvement": "green"}


@click.command("gate")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Gate config (YAML): what to check and the thresholds; see configs/gate.yaml.",
)
@click.option(
    "--baseline",
    type=click.Path(path_type=Path),
    help="JSON report of an earlier run (edgekit gate --json, or edgekit bench --json) to compare with.",
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the full gate report as JSON.")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path), help="Write JUnit XML (one test case per check).")
@click.option("--md", "markdown_path", type=click.Path(path_type=Path), help="Write a markdown summary (for a PR comment).")
@click.option("--threads", type=int, help="Override the config's bench threads.")
@click.option(
    "--target",
    "targets",
    multiple=True,
    help=f"Measure there instead of the config's target(s); repeat for several. {TARGET_HELP}",
)
@connection_options
@click.option(
    "--strict-contention/--no-strict-contention",
    "strict_contention",
    default=None,
    help="Exit 3 when a latency check was not measured because other processes used the CPU "
    "[default: the config's strict_contention, false: such checks are reported, exit 0].",
)
def gate_command(
    config_path, baseline, json_path, junit_path, markdown_path, threads, targets, ssh_config, accept_new_host_key, strict_contention
):
    """Check accuracy, parity, size and relative speed of exported variants against thresholds.

    \b
    edgekit gate --config configs/gate.yaml
    edgekit gate --config configs/gate.yaml --junit gate.xml --md gate.md --json gate.json --baseline main-gate.json
    edgekit gate --config configs/gate.yaml --target ssh://pi@raspberrypi.local    # parity and latency on the Pi

    \b
    Exit status:
      0  every measured check holds (latency checks timed under CPU contention are
         reported as "not measured", never as pass or fail)
      1  a check failed (each failure is named on one line)
      2  a user error (a malformed config names the key)
      3  with --strict-contention: nothing failed, but a latency check was not measured
    """
    overrides = {
        "threads": threads,
        "strict_contention": strict_contention,
        "targets": list(targets) or None,
        # a path typed on the command line is relative to the working directory, not to the config's root
        "ssh_config": str(ssh_config.resolve()) if ssh_config is not None else None,
        "accept_new_host_key": accept_new_host_key or None,
    }
    config = load_config(config_path, overrides)
    result = gate(config, baseline=baseline, progress=True)
    show_gate(result, anchor=config.baseline.anchor)
    for path in write_reports(result, json_path, junit_path, markdown_path):
        console.print(f"wrote {path}")
    if result.exit_code:
        raise click.exceptions.Exit(result.exit_code)


def show_gate(result: GateResult, anchor: str = "fp32") -> None:
    """Print the checks (and baseline moves) as tables; failures and unmeasured checks one line each on stderr."""
    for line in where_lines(result):
        console.print(line, style="yellow" if "EMULATED" in line else None)
    table = Table("check", "measured", "threshold", "result", title="edgekit gate")
    for check in result.checks:
        name, measured, threshold, state = check_row(check)
        table.add_row(name, measured, threshold, styled((state, _STATE_STYLE[check.status])))
    console.print(table)
    if result.comparisons:
        moves = Table("metric", "baseline", "now", "change", "noise", "verdict", title=f"vs baseline {result.baseline}")
        for c in result.comparisons:
            style = _VERDICT_STYLE.get(c.verdict, "yellow" if c.contended else "")
            verdict = styled((c.verdict, style))
            moves.add_row(f"{comparison_label(c)} {metric_label(c.metric, anchor)}", *format_comparison(c), verdict)
        console.print(moves)
    for check in result.not_measured:
        click.echo(f"NOT MEASURED {check.message}", err=True)
    if result.passed:
        console.print(f"gate {verdict_line(result)}", style="yellow" if result.not_measured else "green")
        return
    for message in result.failures:
        click.echo(f"FAIL {message}", err=True)
    click.echo(f"gate {verdict_line(result)}", err=True)


COMMANDS = [gate_command]
