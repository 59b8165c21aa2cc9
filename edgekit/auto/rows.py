"""auto's candidates: every exported file that holds its budget, on its format's runtime, at every setting that
runtime says is worth measuring here (``Runtime.settings_to_try``).

A setting that changes what the model computes (OpenVINO's bf16 precision hint) is a lossy candidate of its own: it
is checked for parity with the same budget as int8 before it may be chosen, because an app that uses it gets those
numerics, not the ones the file was validated with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import runtimes
from ..exporting import ExportResult, VariantResult
from ..formats import get_format
from ..parity_check import ParityChecker, ParityMetrics, ParityThresholds, merge_thresholds, thresholds_for
from ..runtimes.tuning import Machine, Setting
from ..variants import Variant

# Formats auto does not deploy: a torch.export program runs on PyTorch itself, which an edge app does not ship.
NOT_DEPLOYED = {"torch-export": "a torch.export program runs on PyTorch, not an edge runtime"}


@dataclass
class Row:
    """One candidate: a file on a runtime with one setting, and whether it holds its budget."""

    variant: Variant
    path: Path
    runtime: str
    setting: Setting
    within_budget: bool
    metrics: ParityMetrics | None = None  # the parity the budget was judged on (the file's, or this setting's own)
    note: str = ""  # why it is out of budget, or what was checked for it
    size_bytes: int = 0
    extra: str | None = None  # the pip extra its runtime needs (None: the core install)
    key: int = field(default=0, compare=False)

    @property
    def label(self) -> str:
        return f"{self.path.name} on {self.runtime}, {self.setting.label}"


def candidate_rows(exported: ExportResult, machine: Machine, batch_size: int) -> tuple[list[Row], dict[str, str]]:
    """(every row to time, what was left out and why)."""
    rows: list[Row] = []
    left_out: dict[str, str] = {}
    for result in exported.variants:
        variant = result.as_variant
        if variant.format.name in NOT_DEPLOYED:
            left_out[variant.name] = NOT_DEPLOYED[variant.format.name]
            continue
        if variant.input_kind.value != "float32-nchw" or variant.fixed_batch is not None:
            continue  # twins are other models for the app; auto compares float-input, dynamic-batch files
        fmt = get_format(variant.format)
        runtime = runtimes.get_runtime(fmt.runtime)
        ok, why = runtime.available()
        if not ok:
            left_out[variant.name] = why
            continue
        settings = _settings(runtime, machine, batch_size)
        for setting in settings:
            rows.append(_row(result, variant, fmt.runtime, setting, fmt.extra))
    for index, row in enumerate(rows):
        row.key = index
    return rows, left_out


def _settings(runtime, machine: Machine, batch_size: int) -> list[Setting]:
    try_settings = getattr(runtime, "settings_to_try", None)
    return try_settings(machine, batch_size) if try_settings is not None else [Setting()]


def _row(result: VariantResult, variant: Variant, runtime: str, setting: Setting, extra: str | None) -> Row:
    note = "" if result.passed else "; ".join(result.failures)[:300]
    parity = result.target_parity or result.parity  # with --target, the figures the target gave
    return Row(variant, Path(result.path), runtime, setting, result.passed, parity.metrics, note, result.size_bytes, extra)


def lossy_thresholds(spec, has_labels: bool, overrides: ParityThresholds | None) -> ParityThresholds:
    """The budget a numerics-changing setting is held to: int8's (at most 1 point of accuracy, or 99% agreement)."""
    return merge_thresholds(thresholds_for(spec, "int8", has_labels=has_labels), overrides)


def validate_lossy_settings(rows: list[Row], checker: ParityChecker, thresholds: ParityThresholds, progress=None) -> None:
    """Check, on the export's parity images, every row whose setting changes the numerics; its verdict replaces the
    file's. A file already out of budget stays out."""
    for row in rows:
        if not row.setting.changes_numerics or not row.within_budget:
            continue
        if progress is not None:
            progress(f"checking {row.label}: it changes the numerics")
        session = runtimes.load(row.path, row.runtime, row.setting.threads, **row.setting.options)
        report = checker.check(row.path, row.variant.name, thresholds, session=session)
        row.metrics, row.within_budget = report.metrics, report.passed
        row.note = f"{row.setting.label}: " + ("; ".join(report.failures) if report.failures else "its own parity holds the budget")
