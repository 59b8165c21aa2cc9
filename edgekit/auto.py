"""``edgekit export --quantize auto``: of the variants that hold their accuracy budget, the one that is really
faster on this machine, written as ``exports/model.auto.onnx`` with the choice in ``exports/auto.json``.

    choice = export_auto("runs/digits", batch_size=1)
    choice.chosen, choice.reason       # "int8", "int8: 1.42x faster than fp32 at batch 1 (...) at -0.3 pt accuracy"

It sits above bench in the layers: it exports the candidates (``edgekit.export``, parity and the int8 budget
included), times them interleaved in one ``edgekit.bench`` run, and decides with ``choose``, a pure function
of those measurements that the tests drive with injected numbers.

Rules, in order:
- a candidate outside its budget (failed parity) is never chosen;
- fp32 is the default answer; another variant replaces it only when its p50 latency at the asked batch size is
  lower than fp32's by more than the noise: the upper end of its median's 95% confidence interval is below the
  lower end of fp32's, and it is at least ``MIN_SPEEDUP`` faster;
- among those, the fastest wins.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from pydantic import BaseModel

from .benchmarking import bench
from .errors import ConfigError
from .exporting import ExportOptions, ExportResult, check_auto, export, resolve_options
from .files import atomic_path
from .parity_check import ParityThresholds
from .results import Result
from .runs import Run
from .variants import AUTO_CHOICE_FILE as CHOICE_FILE
from .variants import AUTO_FILE

MIN_SPEEDUP = 1.05  # a smaller win is not worth a lossy model


class Candidate(BaseModel):
    """One exported variant as auto sees it."""

    variant: str
    path: str
    within_budget: bool
    p50_ms: float | None = None  # None: could not be timed here
    p50_ci_ms: tuple[float, float] | None = None
    accuracy_drop: float | None = None
    top1_agreement: float | None = None
    note: str = ""  # why it was left out before timing, if it was
    contended: bool = False  # timed while other processes used the CPU (edgekit.bench's flag)


class AutoChoice(Result):
    """What auto chose and why, in one line (``reason``), with every candidate's figures."""

    chosen: str
    path: str
    reason: str
    batch_size: int
    candidates: list[Candidate]
    speedup_vs_fp32: float | None = None
    left_out: dict[str, str] = {}  # variant -> why it was not a candidate on this machine


def choose(candidates: list[Candidate], batch_size: int = 1, min_speedup: float = MIN_SPEEDUP) -> AutoChoice:
    """The fastest candidate within budget that is faster than fp32 beyond noise; fp32 otherwise."""
    fp32 = next((c for c in candidates if c.variant == "fp32"), None)
    if fp32 is None:
        raise ValueError("auto needs the fp32 variant among its candidates")
    if fp32.p50_ms is None:
        return AutoChoice(
            chosen="fp32",
            path=fp32.path,
            reason="fp32: the candidates could not be timed here",
            batch_size=batch_size,
            candidates=candidates,
        )
    faster = []
    for candidate in candidates:
        if candidate is fp32 or not candidate.within_budget or candidate.p50_ms is None:
            continue
        speedup = fp32.p50_ms / candidate.p50_ms
        beyond_noise = candidate.p50_ci_ms is None or fp32.p50_ci_ms is None or candidate.p50_ci_ms[1] < fp32.p50_ci_ms[0]
        if speedup >= min_speedup and beyond_noise:
            faster.append((candidate.p50_ms, candidate, speedup))
    if not faster:
        return AutoChoice(
            chosen="fp32",
            path=fp32.path,
            reason=_why_fp32(candidates, fp32, batch_size),
            batch_size=batch_size,
            candidates=candidates,
            speedup_vs_fp32=1.0,
        )
    _, best, speedup = min(faster, key=lambda item: item[0])
    return AutoChoice(
        chosen=best.variant,
        path=best.path,
        batch_size=batch_size,
        candidates=candidates,
        speedup_vs_fp32=round(speedup, 3),
        reason=f"{best.variant}: {speedup:.2f}x faster than fp32 at batch {batch_size} ({best.p50_ms:.2f} vs {fp32.p50_ms:.2f} ms p50) "
        f"at {_cost(best)}",
    )


def _cost(candidate: Candidate) -> str:
    if candidate.accuracy_drop is not None:
        return f"{-candidate.accuracy_drop * 100:+.1f} pt accuracy"
    if candidate.top1_agreement is not None:
        return f"{candidate.top1_agreement:.1%} top-1 agreement"
    return "unknown accuracy"


def _why_fp32(candidates: list[Candidate], fp32: Candidate, batch_size: int) -> str:
    others = [c for c in candidates if c is not fp32]
    if not others:
        return "fp32: no other candidate"
    in_budget = [c for c in others if c.within_budget]
    if not in_budget:
        return f"fp32: no compressed variant held the accuracy budget ({', '.join(c.variant for c in others)} did not)"
    timed = [c for c in in_budget if c.p50_ms is not None]
    if not timed:
        return "fp32: the variants within budget could not be timed here"
    best = min(timed, key=lambda c: c.p50_ms or 0.0)
    speedup = (fp32.p50_ms or 0.0) / (best.p50_ms or 1.0)
    if speedup < 1.0:
        why = "slower"
    elif speedup < MIN_SPEEDUP:
        why = f"below the {MIN_SPEEDUP}x worth a lossy model"
    else:
        why = "within the noise of the medians' 95% intervals"
    busy = "; timed while other processes used the CPU, re-run on a quiet machine" if any(c.contended for c in candidates) else ""
    return f"fp32: no variant within budget was faster here ({best.variant} {speedup:.2f}x at batch {batch_size}: {why}{busy})"


CANDIDATES = ("none", "int8")  # fp32 and the accuracy-aware int8 are always candidates on the CPU
MATMUL_DOMINATES = 0.5  # int8-dynamic quantizes MatMul/Gemm only: a candidate when they do at least half the work
FP16_ON_CPU = "ONNX Runtime's CPU provider computes float16 through casts, slower than fp32"


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
    """What auto exports on this CPU by default, and why the other variants are not candidates."""
    share = matmul_share(run)
    left_out = {"fp16": FP16_ON_CPU}
    if share >= MATMUL_DOMINATES:
        return (*CANDIDATES, "int8-dynamic"), left_out
    left_out["int8-dynamic"] = (
        f"MatMul/Gemm do {share:.1%} of this model's work (a candidate from {MATMUL_DOMINATES:.0%}); it quantizes nothing else"
    )
    return CANDIDATES, left_out


class AutoResult(Result):
    """The candidates' export (parity included) and the choice."""

    export: ExportResult
    choice: AutoChoice


def export_auto(
    run,
    options: ExportOptions | None = None,
    *,
    thresholds: ParityThresholds | None = None,
    progress: bool = False,
    threads: int | None = None,
    iterations: int = 30,
    candidates: Sequence[str] | None = None,
    **fields,
) -> AutoResult:
    """Export fp32 and int8 (within its accuracy budget), time them interleaved on this machine at the options'
    ``batch_size``, and write the fastest one that holds its budget and beats fp32 beyond noise as
    ``exports/model.auto.onnx``. ``options`` (or keyword ``fields``) are ``ExportOptions``; their ``quantize`` is
    ignored (auto picks the candidates) and the rules of auto hold (``exporting.check_auto``).

    ``candidates`` (the ``--quantize`` names, "none" being fp32) default to :func:`default_candidates`: fp16 is not a
    CPU candidate (ONNX Runtime's CPU provider computes float16 through casts, slower than fp32), and int8-dynamic
    only quantizes MatMul/Gemm, so it is one only where they do most of the work (not in a CNN, where they are the
    classifier alone). What was left out and why is recorded in the choice (``left_out``).
    """
    options = resolve_options(options, fields)
    check_auto(options)
    if options.batch_size < 1:
        raise ConfigError(f"--batch-size {options.batch_size} must be at least 1")
    run = run if isinstance(run, Run) else Run.load(run)
    left_out: dict[str, str] = {}
    if candidates is None:
        candidates, left_out = default_candidates(run)
    # auto times every candidate itself, longer and contention-aware, so export's quick speed check is skipped
    exported = export(
        run, options.model_copy(update={"quantize": tuple(candidates), "speed_check": False}), thresholds=thresholds, progress=progress
    )
    fp32 = exported.get("fp32")
    if fp32 is None or not fp32.passed:
        failures = "; ".join(fp32.failures) if fp32 is not None else "not exported"
        raise ConfigError(f"the fp32 ONNX export itself failed parity ({failures}); auto has nothing to choose from")
    choice = choose(_timed_candidates(exported, options.batch_size, threads, iterations, progress), options.batch_size)
    choice.left_out = left_out
    exports = run.exports_dir
    with atomic_path(exports / AUTO_FILE) as tmp:
        shutil.copyfile(choice.path, tmp)
    choice.path = str(exports / AUTO_FILE)
    choice.to_json(exports / CHOICE_FILE)
    return AutoResult(export=exported, choice=choice)


def _timed_candidates(exported: ExportResult, batch_size: int, threads, iterations: int, progress: bool) -> list[Candidate]:
    """Every exported variant as a candidate, timed interleaved in one bench run."""
    paths = [Path(v.path) for v in exported.variants]
    measured = bench(
        paths, runtimes=("ort-cpu",), batch_sizes=(batch_size,), threads=threads, iterations=iterations, progress=progress, save=False
    )
    timings = {Path(m.artifact).name: m for m in measured.measurements if m.batch_size == batch_size}
    found = []
    for variant in exported.variants:
        timing = timings.get(Path(variant.path).name)
        metrics = variant.parity.metrics
        found.append(
            Candidate(
                variant=variant.variant,
                path=variant.path,
                within_budget=variant.passed,
                p50_ms=getattr(timing, "p50_ms", None),
                p50_ci_ms=tuple(timing.p50_ci_ms) if timing is not None else None,
                accuracy_drop=metrics.accuracy_drop,
                top1_agreement=metrics.top1_agreement,
                note="" if variant.passed else "; ".join(variant.failures)[:300],
                contended=bool(getattr(timing, "contended", False)),
            )
        )
    return found
