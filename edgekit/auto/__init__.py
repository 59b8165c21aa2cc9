"""``edgekit export --quantize auto``: one measured answer for the app. Of every exported file that holds its
accuracy budget, on its format's runtime, at every run-time setting worth trying there (threads, spinning,
precision hints), the fastest, measured fairly on this machine, written as a deployment card.

    result = export_auto("runs/digits", formats="onnx,openvino,executorch", batch_size=1)
    result.card.file, result.card.runtime, result.card.setting     # "model.int8.xml", "openvino", "2 threads, f32"
    result.card.python                                             # the lines that load it so

It sits above bench in the layers:
    rows.py     the candidates: files x runtimes x settings, and the parity of settings that change numerics
    search.py   timing them in alternating blocks within a time bound, dropping the clearly slower
    choice.py   the decision, a pure function of the figures (tie: fewer dependencies, then the smaller file)
and ``edgekit/card.py`` the card (exports/deploy.json and DEPLOY.md) that bench and the gate read.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import runtimes
from ..benchmarking.stats import median_ci
from ..card import CandidateFigures, DeployCard, MeasuredOn
from ..device import contention
from ..errors import ExportError
from ..exporting import ExportOptions, ExportResult, check_auto, export, resolve_options
from ..formats import get_format
from ..models import get_spec
from ..parity_check import ParityChecker, ParityData, ParityThresholds, run_parity_images
from ..progress import Bar
from ..results import Result
from ..runs import Run
from ..runtimes.tuning import Example, Machine, this_machine
from ..targets import is_local
from .choice import Decision, choose
from .on_target import device_rows, open_target, race_on_target
from .rows import Row, candidate_rows, lossy_thresholds, validate_lossy_settings
from .search import RowTiming, time_rows

CANDIDATES = ("none", "int8")  # fp32 and the accuracy-aware int8 are always candidates on the CPU
MATMUL_DOMINATES = 0.5  # int8-dynamic quantizes MatMul/Gemm only: a candidate when they do at least half the work
FP16_ON_CPU = "CPU runtimes compute float16 through casts, slower than fp32"


class AutoResult(Result):
    """The candidates' export (parity included) and the deployment card."""

    export: ExportResult
    card: DeployCard


def export_auto(
    run,
    options: ExportOptions | None = None,
    *,
    thresholds: ParityThresholds | None = None,
    progress: bool = False,
    candidates: Sequence[str] | None = None,
    machine: Machine | None = None,
    target_options=None,
    **fields,
) -> AutoResult:
    """Export the candidates of ``options.formats`` (fp32 and int8, each held to its budget), time every file that
    holds it on its runtime at every setting worth trying on ``machine`` (this one by default) for about
    ``options.auto_seconds``, and write the fastest, beyond noise, as ``exports/deploy.json`` + ``DEPLOY.md``.

    ``candidates`` (the ``--quantize`` names, "none" being fp32) default to :func:`default_candidates`.

    ``options.target`` (``target_options``: how to reach it): the files are validated there, the settings are the
    target's and the race runs there (``auto/on_target.py``); the card records where it was measured."""
    options = resolve_options(options, fields)
    check_auto(options)
    run = run if isinstance(run, Run) else Run.load(run)
    left_out: dict[str, str] = {}
    if candidates is None:
        candidates, left_out = default_candidates(run)
    # auto times every candidate itself, longer and fairer, so export's quick speed check is skipped
    exported = export(
        run,
        options.model_copy(update={"quantize": tuple(candidates), "speed_check": False}),
        thresholds=thresholds,
        progress=progress,
        target_options=target_options,
    )
    if not is_local(options.target):
        where = open_target(str(options.target), target_options)
        try:
            return _auto_on_target(run, options, thresholds, exported, where, left_out, progress)
        finally:
            where.close()
    machine = machine or this_machine()
    rows, skipped = candidate_rows(exported, machine, options.batch_size)
    left_out.update(skipped)
    started = time.perf_counter()
    with Bar(progress) as bar:
        if any(r.setting.changes_numerics for r in rows):
            _validate_lossy(run, options, thresholds, rows, bar)
        timings = time_rows(rows, options.batch_size, options.auto_seconds, contention.Monitor(), say=bar.describe)
    measured_on = MeasuredOn(cpu=_cpu_name(), isa=machine.isa.value, cores=machine.logical_cores)
    return _decide(run, options, exported, rows, timings, measured_on, left_out, started)


def _auto_on_target(run: Run, options: ExportOptions, thresholds, exported: ExportResult, where, left_out, progress) -> AutoResult:
    rows, skipped = candidate_rows(exported, where.machine, options.batch_size)
    left_out.update(skipped)
    rows = device_rows(rows, left_out)
    started = time.perf_counter()
    images = run_parity_images(run.card, options.parity_data, options.max_parity_images)
    checker = ParityChecker(run.build_model(), ParityData(run.card.preprocessing, images))
    budget = lossy_thresholds(get_spec(run.card.model), checker.data.labels is not None, thresholds)
    with Bar(progress) as bar:
        timings = race_on_target(where, rows, options.batch_size, options.auto_seconds, checker, budget, say=bar.describe)
    return _decide(run, options, exported, rows, timings, where.measured_on(timings), left_out, started)


def _decide(run: Run, options: ExportOptions, exported, rows, timings, measured_on: MeasuredOn, left_out, started) -> AutoResult:
    """The choice among the timed rows, written as the card."""
    figures = [_figures(row, timings, options.batch_size) for row in rows]
    decision = choose(figures, options.batch_size)
    if decision is None:
        where = "here" if measured_on.target == "local" else f"on {measured_on.target}"
        raise ExportError(f"no candidate held its budget and ran {where} ({_why_none(figures)}); see the export table above")
    library = next((t.library for t in timings if t.row is rows[decision.chosen]), "")
    card = _card(
        run, exported, rows[decision.chosen], figures, decision, measured_on, options.batch_size, left_out, time.perf_counter() - started
    )
    card.runtime_version = library
    card.write(run.exports_dir)
    return AutoResult(export=exported, card=card)


def _validate_lossy(run: Run, options: ExportOptions, thresholds, rows: list[Row], bar: Bar) -> None:
    """Parity, on the export's own images, of every setting that changes what the model computes."""
    images = run_parity_images(run.card, options.parity_data, options.max_parity_images)
    checker = ParityChecker(run.build_model(), ParityData(run.card.preprocessing, images))
    budget = lossy_thresholds(get_spec(run.card.model), checker.data.labels is not None, thresholds)
    validate_lossy_settings(rows, checker, budget, progress=bar.describe)


def _figures(row: Row, timings: list[RowTiming], batch_size: int) -> CandidateFigures:
    timed = next((t for t in timings if t.row is row), None)
    figures = CandidateFigures(
        file=row.path.name,
        variant=row.variant.name,
        format=row.variant.format.name,
        runtime=row.runtime,
        setting=row.setting.label,
        threads=row.setting.threads,
        options=dict(row.setting.options),
        within_budget=row.within_budget,
        note=row.note,
        extra=row.extra,
        size_bytes=row.size_bytes,
        accuracy_drop=row.metrics.accuracy_drop if row.metrics else None,
        top1_agreement=row.metrics.top1_agreement if row.metrics else None,
    )
    if timed is None:
        return figures
    figures.error, figures.dropped_after, figures.calls = timed.error, timed.dropped_after, len(timed.times)
    if timed.times:
        ms = np.asarray(timed.times) * 1000
        figures.p50_ms, figures.p90_ms = float(np.median(ms)), float(np.percentile(ms, 90))
        figures.p50_ci_ms = tuple(float(v) for v in median_ci(ms.tolist()))  # type: ignore[assignment]
        figures.images_per_second = batch_size / float(ms.mean() / 1000)
        figures.contended = any(c.contended for c in timed.chunks)
    return figures


def _why_none(figures: list[CandidateFigures]) -> str:
    reasons = {c.error or c.note or "not timed" for c in figures}
    return "; ".join(sorted(reasons))[:300]


def _card(
    run: Run, exported, row: Row, figures, decision: Decision, measured_on: MeasuredOn, batch_size: int, left_out, seconds
) -> DeployCard:
    chosen = figures[decision.chosen]
    runtime = runtimes.get_runtime(row.runtime)
    result = next(v for v in exported.variants if Path(v.path) == row.path)
    session_config = result.int8.session_config if result.int8 is not None and row.runtime.startswith("ort") else {}
    code = runtime.app_code(row.path.name, row.setting, _example(run, batch_size), session_config)  # type: ignore[attr-defined]
    metrics = row.metrics
    fmt = get_format(row.variant.format)
    return DeployCard(
        file=row.path.name,
        companions=[p.name for p in fmt.files(row.path)[1:]],
        format=fmt.name,
        variant=row.variant.name,
        runtime=row.runtime,
        setting=row.setting.label,
        threads=row.setting.threads,
        options=dict(row.setting.options),
        app_settings=code.settings,
        python=code.python,
        cpp=code.cpp,
        batch_size=batch_size,
        p50_ms=float(chosen.p50_ms or 0.0),
        p90_ms=chosen.p90_ms,
        p50_ci_ms=chosen.p50_ci_ms,
        images_per_second=chosen.images_per_second,
        contended=chosen.contended,
        measured_on=measured_on,
        accuracy_drop=metrics.accuracy_drop if metrics else None,
        top1_agreement=metrics.top1_agreement if metrics else None,
        reference_accuracy=metrics.reference_accuracy if metrics else None,
        variant_accuracy=metrics.variant_accuracy if metrics else None,
        accuracy_images=metrics.n_images if metrics else None,
        accuracy_data=str(metrics.data_source) if metrics else None,
        reason=decision.reason,
        speedup_vs_onnx_fp32=decision.speedup_vs_onnx_fp32,
        seconds=round(seconds, 1),
        candidates=figures,
        left_out=left_out,
    )


def _example(run: Run, batch_size: int) -> Example:
    pre = run.card.preprocessing
    comment = f"preprocessed: resize {pre.resize}, center crop {pre.crop}, RGB, (x/255 - mean) / std, NCHW"
    return Example((batch_size, 3, pre.crop, pre.crop), "float32", comment)


def _cpu_name() -> str | None:
    from ..benchmarking.machine import machine_info

    return machine_info().cpu


def matmul_share(run: Run) -> float:
    """The share of the model's floating-point work done in matrix multiplications (linear layers, attention),
    counted by torch's FlopCounterMode on one image at the run's input size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = run.build_model().eval()
    crop = run.card.preprocessing.crop
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, crop, crop))
    by_op = {str(op): flops for op, flops in counter.get_flop_counts().get("Global", {}).items()}
    total = sum(by_op.values())
    matmuls = sum(flops for op, flops in by_op.items() if any(name in op for name in ("mm", "matmul", "linear")))
    return matmuls / total if total else 0.0


def default_candidates(run: Run) -> tuple[tuple[str, ...], dict[str, str]]:
    """What auto exports on the CPU by default, and why the other variants are not candidates."""
    share = matmul_share(run)
    left_out = {"fp16": FP16_ON_CPU}
    if share >= MATMUL_DOMINATES:
        return (*CANDIDATES, "int8-dynamic"), left_out
    left_out["int8-dynamic"] = (
        f"MatMul/Gemm do {share:.1%} of this model's work (a candidate from {MATMUL_DOMINATES:.0%}); it quantizes nothing else"
    )
    return CANDIDATES, left_out


__all__ = ["AutoResult", "CandidateFigures", "DeployCard", "choose", "default_candidates", "export_auto", "matmul_share"]
