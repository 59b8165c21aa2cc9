"""`edgekit bench`: latency, throughput, memory, size and accuracy of every variant on every runtime.

Variants are timed interleaved (round r runs A B C, round r+1 runs B C A, ...; ``edgekit.device.timing``), so slow
drift on a shared, noisy machine hits every variant alike and the ratios between them hold even when absolute times
wander. Ratios are therefore only ever computed between measurements of one BenchResult.

    artifacts.py   what to bench: run directories and model files, their variants, runtime pairing
    sessions.py    loading, warm-up and cold figures; the call a pass times
    passes.py      the interleaved pass, and each row alone under the settings an app would use
    accuracy.py    top-1 / top-5 on a labelled folder
    stats.py       medians, intervals, ratios, summary lines;  report.py: tables, markdown, plot
"""

from __future__ import annotations

import os
from typing import Sequence

from .. import runtimes as registry  # "runtimes" is also bench()'s parameter name
from ..card import read_card
from ..device import contention
from ..device.memory import PeakMemory, current_rss_mb
from ..errors import EdgekitError
from ..formats import known_suffixes
from ..progress import Bar
from ..targets import is_local
from .accuracy import accuracy, data_folder, end_to_end_images, label_indices
from .artifacts import Candidate, collect_candidates, common_run, pair_with_runtimes, variant_of
from .machine import machine_info, save_to_run, stamp
from .on_target import Measured, measure_for_bench
from .options import BENCH_DEFAULTS
from .passes import time_pass
from .results import BenchResult, BenchSettings, ContentionSummary, MachineInfo, Measurement
from .sessions import Entry, load_all
from .stats import add_ratios, contention_line, deploy_line, measurements_of, median_ci, row_order, summarize

DEFAULT_WARMUP = BENCH_DEFAULTS.warmup
DEFAULT_ITERATIONS = BENCH_DEFAULTS.iterations


def bench(
    artifacts: Sequence[str | os.PathLike] | str | os.PathLike,
    runtimes: Sequence[str] | str = BENCH_DEFAULTS.runtimes,
    batch_sizes: Sequence[int] = BENCH_DEFAULTS.batch_sizes,
    threads: int | None = BENCH_DEFAULTS.threads,
    data: str | os.PathLike | None = BENCH_DEFAULTS.data,
    warmup: int = DEFAULT_WARMUP,
    iterations: int = DEFAULT_ITERATIONS,
    end_to_end: bool = BENCH_DEFAULTS.end_to_end,
    progress: bool = False,
    options: dict | None = None,
    max_images: int | None = BENCH_DEFAULTS.max_images,
    save: bool = BENCH_DEFAULTS.save,
    contention_probe: contention.Probe | None = None,
    contention_threshold: float = contention.CONTENDED_SHARE,
    target=BENCH_DEFAULTS.target,
    target_options=None,
) -> BenchResult:
    """Benchmark every artifact of ``artifacts`` on every runtime in ``runtimes`` that can load it.

    ``artifacts``: run directories (their model.pt and every exported model file) and/or model files.
    ``runtimes``: registered names (each gets every artifact it can load), or "auto" (each artifact on its format's
    runtime only, a run's model.pt on torch). An unavailable runtime, or an artifact whose runtime's extra is
    missing, is recorded in ``skipped`` with the reason.
    ``data``: a labelled image folder (<class>/<image>) for top-1/top-5 accuracy (``max_images`` caps it).
    ``options``: runtime options (e.g. graph_optimization_level, allow_spinning, provider_options, device); each
    is passed to the runtimes that accept it, and an option no chosen runtime accepts is an error.
    ``save``: when every artifact belongs to one run directory, write <run>/bench/<stamp>.json and .md
    (``result.saved`` lists them).
    ``contention_probe``: measures other processes' CPU use per timed chunk (default: the kernel's counters, see
    edgekit.device.contention); a chunk where they used ``contention_threshold`` of the machine or more is measured
    again (bounded), else its rows are flagged ``contended``.
    ``target``: where the rows are measured: "local" (this machine), "ssh://pi@raspberrypi.local", or a Target
    (``edgekit.targets``; ``target_options`` say how to reach it). There the device times them by this protocol and
    returns the bundled images' logits; accuracy and parity against the run's PyTorch model are computed here
    (``on_target``), and ``result.target`` names it.
    """
    _check_counts(batch_sizes, warmup, iterations, threads, contention_threshold)
    given = [artifacts] if isinstance(artifacts, (str, os.PathLike)) else list(artifacts)
    if not given:
        raise EdgekitError(f"nothing to bench; pass a run directory or model files ({known_suffixes()})")
    candidates = collect_candidates(given)
    user_options = dict(options or {})
    runtime_names = [n.strip() for n in runtimes.split(",")] if isinstance(runtimes, str) else list(runtimes)
    folder = data_folder(data, max_images) if data is not None else None
    counts = (batch_sizes, warmup, iterations, threads)
    if is_local(target):
        measured = _measure_here(
            candidates, runtime_names, user_options, counts, folder, end_to_end, contention_probe, contention_threshold, progress
        )
    elif end_to_end:
        raise EdgekitError("--end-to-end is not measured on a target (the images would travel undecoded); leave it out with --target")
    else:
        measured = measure_for_bench(
            target, target_options, candidates, runtime_names, counts, folder, user_options, contention_threshold, progress
        )
    measurements, options = measured.measurements, measured.options
    measurements.sort(key=row_order)
    warnings = add_ratios(measurements, measured.target.target if measured.target is not None else None) + measured.warnings
    load = _contention_summary(measured.monitor, measurements, contention_threshold)
    result = BenchResult(
        artifacts=[str(a) for a in given],
        machine=measured.machine,
        target=measured.target,
        settings=_settings(
            runtime_names, batch_sizes, threads, warmup, iterations, end_to_end, data, max_images, options, contention_threshold
        ),
        measurements=measurements,
        contention=load,
        skipped=measured.skipped,
        summary=summarize(measurements) + measured.summary + [contention_line(load, len(measurements))],
        warnings=warnings,
    )
    run = common_run(given)
    card = read_card(run / "exports") if run is not None else None
    if card is not None:
        result.summary.insert(len(result.summary) - 1, deploy_line(card))
    if save and run is not None:
        result._saved = list(save_to_run(result, run))
    return result


def _measure_here(candidates, runtime_names, user_options, counts, folder, end_to_end, probe, threshold, progress) -> Measured:
    """Every row on this machine: loaded, timed interleaved at each batch size, then its accuracy on ``folder``."""
    batch_sizes, warmup, iterations, threads = counts
    pairs, skipped = pair_with_runtimes(candidates, runtime_names, user_options)
    if not pairs:
        raise EdgekitError(f"nothing could be benched ({_reasons(skipped) or 'no runtime can load these files'})")
    options = _interleaving_defaults(user_options, pairs)
    e2e_images = end_to_end_images(folder, candidates) if end_to_end else None
    monitor = contention.Monitor(probe=probe or contention.probe, threshold=threshold)
    with Bar(progress) as bar:
        base_rss = current_rss_mb()
        entries = load_all(pairs, threads, options, batch_sizes, warmup, skipped, bar)
        if not entries:
            raise EdgekitError(f"nothing could be benched ({_reasons(skipped)})")
        for entry in entries if folder is not None else []:  # before the long timing phase, not after it
            label_indices(entry.session, folder)
        for batch_size in batch_sizes:
            time_pass(entries, batch_size, iterations, e2e_images, bar, monitor)
        _accuracy_pass(entries, folder, bar)
    measurements = [m for entry in entries for m in measurements_of(entry, batch_sizes, base_rss, end_to_end and e2e_images is not None)]
    return Measured(measurements, monitor, machine_info(), options, skipped=skipped)


def _reasons(skipped: dict[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in skipped.items())


def _accuracy_pass(entries: list[Entry], folder, bar) -> None:
    if folder is None:
        return
    bar.begin(len(entries), "accuracy")
    prepared: dict = {}  # decoded batches shared by the variants with the same preprocessing
    for entry in entries:
        bar.describe(f"accuracy of {entry.candidate.path.name} on {entry.runtime}")
        accuracy(entry, folder, prepared)
        bar.advance()


def _contention_summary(monitor: contention.Monitor, measurements: list[Measurement], threshold: float) -> ContentionSummary:
    return ContentionSummary(
        mean_share=contention.share_of(monitor.chunks),
        max_share=max((c.share for c in monitor.chunks), default=0.0),
        chunks=len(monitor.chunks),
        contended_chunks=sum(c.contended for c in monitor.chunks),
        remeasured_chunks=monitor.remeasured,
        contended_rows=sum(m.contended for m in measurements),
        threshold=threshold,
    )


def _settings(runtime_names, batch_sizes, threads, warmup, iterations, end_to_end, data, max_images, options, threshold) -> BenchSettings:
    """What was asked and how it was measured, in words, so a report explains its own method."""
    return BenchSettings(
        runtimes=runtime_names,
        batch_sizes=list(batch_sizes),
        threads=threads,
        warmup=warmup,
        iterations=iterations,
        end_to_end=end_to_end,
        data=str(data) if data is not None else None,
        max_images=max_images,
        options=dict(options),  # allow_spinning False here may be the interleaving default
        timing="interleaved rounds in rotating order, in chunks of at least "
        f"{contention.CHUNK_SECONDS:g} s; time.perf_counter around run() and synchronize()"
        + ("; end to end: decode + preprocess + run" if end_to_end else "; runtime call only"),
        memory="peak_rss_mb = process RSS before any model was loaded + the peak RSS increase (VmHWM, or RSS "
        "sampling) while that variant loaded and ran its warm-up at every batch size; peak_rss_after_load_mb and "
        "peak_rss_after_first_inference_mb the same through loading, and through loading and the first run",
        ratios="p50 / reference p50 of the interleaved (fair) timings within this result; >1 means slower",
        contention="per timed chunk: CPU time of all processes (kernel counters) minus this process's, over wall time "
        "x cores; a chunk at or above the threshold (minus the counters' resolution) is measured again up to "
        f"{contention.MAX_RETRIES_PER_CHUNK} times ({contention.MAX_RETRIES_PER_PASS} per pass), else its rows are contended",
        contention_threshold=threshold,
    )


def _interleaving_defaults(options: dict, pairs) -> dict:
    """ORT idle-thread spinning off when several sessions take turns, unless the caller chose.

    After a run, ORT's worker threads spin for a while waiting for the next one; interleaved, they spin on the
    cores the next session needs. Measured on 2 cores (MobileNetV3-S, three ORT sessions interleaved): fp32
    p50 22.5 ms with spinning, 1.9 ms without, and 1.7 ms benched alone.
    """
    sessions_on_ort = sum(1 for _, name in pairs if "allow_spinning" in registry.get_runtime(name).options)
    if len(pairs) > 1 and sessions_on_ort and "allow_spinning" not in options:
        return {**options, "allow_spinning": False}
    return options


def _check_counts(batch_sizes, warmup, iterations, threads, contention_threshold) -> None:
    if not 0 < contention_threshold <= 1:
        raise EdgekitError(f"contention threshold {contention_threshold} must be a share of the CPU in (0, 1], e.g. 0.25")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise EdgekitError(f"--batch-sizes {','.join(map(str, batch_sizes))} must be positive integers, e.g. 1,8,32")
    if warmup < 0:
        raise EdgekitError(f"--warmup {warmup} must be 0 or more")
    if iterations < 1:
        raise EdgekitError(f"--iterations {iterations} must be at least 1")
    if threads is not None and threads < 1:
        raise EdgekitError(f"--threads {threads} must be at least 1")


__all__ = [
    "BenchResult",
    "BenchSettings",
    "Candidate",
    "MachineInfo",
    "Measurement",
    "PeakMemory",
    "bench",
    "collect_candidates",
    "common_run",
    "contention",
    "machine_info",
    "median_ci",
    "save_to_run",
    "stamp",
    "variant_of",
]
