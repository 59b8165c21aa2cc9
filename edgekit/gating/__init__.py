"""`edgekit gate`: one exit code for CI. Did accuracy, parity, size or speed cross a threshold?

The gate measures what its checks need, and nothing more:
- accuracy, agreement and logit differences come from parity (exported variant vs the PyTorch float32
  model) on the config's labelled images;
- latency comes from ONE bench run with every variant interleaved, and is only ever judged as a ratio
  between variants of that run (CI machines differ and are noisy, absolute milliseconds mean nothing); a
  row bench timed while other processes used the CPU makes its latency checks "not measured";
- size comes from the file on disk.
Reports that are already there and still fresh (newer than the artifact, made on the same images or
with the same bench settings) are reused instead of recomputed.

The gate writes nothing but exports of missing variants into ``<run>/exports`` (only with
``export_missing``) and the report files the caller asks for.

Modules, each importing only those above it in this list: ``config`` (GateConfig), ``results`` (what was
found), ``report`` (every number as text; JUnit and markdown), ``checks`` (thresholds -> Checks),
``baseline`` (an earlier report, compared), ``measure`` (parity, bench, sizes), and ``gate()`` here.
"""

from __future__ import annotations

import os

from .baseline import compare_with_baseline, load_baseline_by_target, where_key
from .checks import evaluate
from .config import BaselinePolicy, GateConfig, VariantThresholds, load_config
from .measure import Measured, measure_variants
from .results import EXIT_FAILED, EXIT_NOT_MEASURED, EXIT_PASSED, Check, Comparison, GateResult, VariantMeasure


def gate(config: GateConfig | str | os.PathLike, baseline: str | os.PathLike | None = None, progress: bool = False) -> GateResult:
    """Measure what ``config``'s checks need, evaluate every threshold, compare with ``baseline``
    (a GateResult or BenchResult JSON from an earlier run) and return the verdict.

    ``config`` is a GateConfig or the path of a YAML gate config."""
    if not isinstance(config, GateConfig):
        config = load_config(config)
    baselines = load_baseline_by_target(baseline, config) if baseline is not None else None
    measured = measure_variants(config, need_anchor=baseline is not None, progress=progress)
    comparisons: list[Comparison] = []
    checks: list[Check] = []
    for on_target in measured:
        found, target_checks = _judged(config, on_target, baselines)
        comparisons += found
        checks += target_checks
    failures = [check.message for check in checks if check.failed]
    return GateResult(
        config=str(config.source) if config.source else None,
        run_dir=str(config.resolve(config.run)) if config.run else None,
        data=str(config.resolve(config.data)) if config.data else None,
        runtime=config.runtime,
        threads=config.threads,
        batch_size=config.batch_size,
        variants=[measure for on_target in measured for measure in on_target.measures.values()],
        checks=checks,
        comparisons=comparisons,
        baseline=str(baseline) if baseline is not None else None,
        reports=[report for on_target in measured for report in on_target.reports],
        machine=next((m.machine for m in measured if m.machine is not None), None),
        targets=[m.target for m in measured if m.target is not None],
        measured_on={m.target: m.measured_on for m in measured if m.target is not None and m.measured_on is not None},
        strict_contention=config.strict_contention,
        passed=not failures,
        failures=failures,
    )


def _judged(
    config: GateConfig, measured: Measured, baselines: dict[str, dict[str, VariantMeasure]] | None
) -> tuple[list[Comparison], list[Check]]:
    """The baseline comparisons and the checks of what one target measured: a baseline compares like with like,
    so only with the baseline's figures from the same target."""
    then = baselines.get(where_key(measured.target), {}) if baselines is not None else {}
    found = compare_with_baseline(config, measured.measures, then) if then else []
    comparisons = [comparison.model_copy(update={"target": measured.target}) for comparison in found]
    where = measured.measured_on
    emulation = (where.emulation or "emulated") if where is not None and where.emulated else None
    checks = evaluate(
        config,
        measured.measures,
        comparisons,
        baseline_given=baselines is not None,
        target=measured.target,
        emulation=emulation,
        baseline_on_target=bool(then),
    )
    return comparisons, checks


__all__ = [
    "EXIT_FAILED",
    "EXIT_NOT_MEASURED",
    "EXIT_PASSED",
    "BaselinePolicy",
    "Check",
    "Comparison",
    "GateConfig",
    "GateResult",
    "VariantMeasure",
    "VariantThresholds",
    "gate",
    "load_config",
]
