"""`edgekit bench`: latency, throughput, memory, size and accuracy of every variant on every runtime.

Variants are timed interleaved (round r runs A B C, round r+1 runs B C A, ...), so slow drift on a shared,
noisy machine hits every variant alike and the ratios between them hold even when absolute times wander.
Ratios are therefore only ever computed between measurements of one BenchResult.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import runtimes as registry  # "runtimes" is also bench()'s parameter name
from ..errors import DataError, EdgekitError, first_line
from ..formats import known_suffixes
from ..hardware import isa_mismatch_note
from ..progress import Bar
from . import contention
from .deployment import deployment_options
from .machine import (
    PeakMemory,
    current_rss_mb,
    gpu_used_mb,
    machine_info,
    save_to_run,
    stamp,
)
from .options import BENCH_DEFAULTS
from .results import BenchResult, BenchSettings, ContentionSummary, Deployment, MachineInfo, Measurement
from .stats import add_ratios, contention_line, measurements_of, median_ci, row_order, summarize
from .targets import (
    Candidate,
    artifact_size,
    collect_candidates,
    common_run,
    pair_with_runtimes,
    variant_of,
)

DEFAULT_WARMUP = BENCH_DEFAULTS.warmup
DEFAULT_ITERATIONS = BENCH_DEFAULTS.iterations
ACCURACY_BATCH = 32


@dataclass
class _Entry:
    candidate: Candidate
    runtime: str
    session: registry.Session
    size_bytes: int
    rss_delta_mb: float = 0.0
    gpu_memory_mb: float | None = None
    times: dict[int, list[float]] = field(default_factory=dict)  # fair (interleaved) seconds per batch size
    chunks: dict[int, list[contention.Chunk]] = field(default_factory=dict)  # the probe's view of those timings
    remeasured: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    top1: float | None = None
    top5: float | None = None
    accuracy_images: int | None = None
    cold: dict = field(default_factory=dict)  # load_ms, first_inference_ms, first_inference_batch_size, rss deltas
    deployment: "_DeploymentTiming | None" = None


@dataclass
class _DeploymentTiming:
    """A session timed alone under the settings an app would use."""

    info: dict
    times: dict[int, list[float]] = field(default_factory=dict)
    chunks: dict[int, list[contention.Chunk]] = field(default_factory=dict)
    remeasured: dict[int, int] = field(default_factory=dict)


def bench(
    targets: Sequence[str | os.PathLike] | str | os.PathLike,
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
) -> BenchResult:
    """Benchmark every artifact of ``targets`` on every runtime in ``runtimes`` that can load it.

    ``targets``: run directories (their model.pt and exports/*.onnx, *.pt2, *.xml, *.pte) and/or such files.
    ``runtimes``: registered names (each gets every artifact it can load), or "auto" (each artifact on its natural
    runtime only: .onnx -> ort-cpu, .xml -> openvino, .pte -> executorch, .pt2 -> torch-export, run -> torch).
    An unavailable runtime, or an artifact whose runtime's extra is missing, is recorded in ``skipped`` with the reason.
    ``data``: a labelled image folder (<class>/<image>) for top-1/top-5 accuracy (``max_images`` caps it).
    ``options``: runtime options (e.g. graph_optimization_level, allow_spinning, provider_options, device); each
    is passed to the runtimes that accept it, and an option no chosen runtime accepts is an error.
    ``save``: when every target belongs to one run directory, write <run>/bench/<stamp>.json and .md
    (``result.saved`` lists them).
    ``contention_probe``: measures other processes' CPU use per timed chunk (default: the kernel's counters, see
    edgekit.benchmarking.contention); a chunk where they used ``contention_threshold`` of the machine or more is measured
    again (bounded), else its rows are flagged ``contended``.
    """
    _check_counts(batch_sizes, warmup, iterations, threads)
    if not 0 < contention_threshold <= 1:
        raise EdgekitError(f"contention threshold {contention_threshold} must be a share of the CPU in (0, 1], e.g. 0.25")
    target_list = [targets] if isinstance(targets, (str, os.PathLike)) else list(targets)
    if not target_list:
        raise EdgekitError(f"nothing to bench; pass a run directory or model files ({known_suffixes()})")
    candidates = collect_candidates(target_list)
    options = dict(options or {})
    user_options = dict(options)
    runtime_names = [n.strip() for n in runtimes.split(",")] if isinstance(runtimes, str) else list(runtimes)
    pairs, skipped = pair_with_runtimes(candidates, runtime_names, options)
    if not pairs:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items()) or "no runtime can load these files"
        raise EdgekitError(f"nothing could be benched ({reasons})")
    options = _interleaving_defaults(options, pairs)
    folder = _data_folder(data, max_images) if data is not None else None
    e2e_images = _end_to_end_images(folder, candidates) if end_to_end else None

    monitor = contention.Monitor(probe=contention_probe or contention.probe, threshold=contention_threshold)
    with Bar(progress) as bar:
        base_rss = current_rss_mb()
        entries = _load_all(pairs, threads, options, batch_sizes, warmup, skipped, bar)
        if not entries:
            reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items())
            raise EdgekitError(f"nothing could be benched ({reasons})")
        if folder is not None:
            for entry in entries:  # before the long timing phase, not after it
                _label_indices(entry.session, folder)
        for batch_size in batch_sizes:
            _time_interleaved(entries, batch_size, iterations, e2e_images, bar, monitor)
        took_turns = len(entries) > 1
        for entry in entries:  # each alone, after the interleaved pass, so no other session's threads compete
            _time_deployment(entry, threads, options, user_options, batch_sizes, warmup, iterations, e2e_images, bar, monitor, took_turns)
        if folder is not None:
            bar.begin(len(entries), "accuracy")
            prepared: dict = {}  # decoded batches shared by the variants with the same preprocessing
            for entry in entries:
                bar.describe(f"accuracy of {entry.candidate.path.name} on {entry.runtime}")
                _accuracy(entry, folder, prepared)
                bar.advance()

    measurements = [m for entry in entries for m in measurements_of(entry, batch_sizes, base_rss, end_to_end and e2e_images is not None)]
    measurements.sort(key=row_order)
    warnings = add_ratios(measurements)
    settings = BenchSettings(
        runtimes=runtime_names,
        batch_sizes=list(batch_sizes),
        threads=threads,
        warmup=warmup,
        iterations=iterations,
        end_to_end=end_to_end,
        data=str(data) if data is not None else None,
        max_images=max_images,
        options={k: v for k, v in options.items()},  # allow_spinning False here may be the interleaving default
        timing="interleaved rounds in rotating order, in chunks of at least "
        f"{contention.CHUNK_SECONDS:g} s; time.perf_counter around run() and synchronize()"
        + ("; end to end: decode + preprocess + run" if end_to_end else "; runtime call only"),
        memory="peak_rss_mb = process RSS before any model was loaded + the peak RSS increase (VmHWM, or psutil "
        "sampling) while that variant loaded and ran its warm-up at every batch size; peak_rss_after_load_mb and "
        "peak_rss_after_first_inference_mb the same through loading, and through loading and the first run",
        ratios="p50 / reference p50 of the interleaved (fair) timings within this result; >1 means slower",
        contention="per timed chunk: CPU time of all processes (kernel counters) minus this process's, over wall time "
        "x cores; a chunk at or above the threshold (minus the counters' resolution) is measured again up to "
        f"{contention.MAX_RETRIES_PER_CHUNK} times ({contention.MAX_RETRIES_PER_PASS} per pass), else its rows are contended",
        contention_threshold=contention_threshold,
        deployment="after the interleaved pass every row is also timed alone (ORT with spinning on, or --allow-spinning's "
        "choice, and the same threads; the others with the same settings); a row benched alone already is",
    )
    contended_rows = sum(m.contended for m in measurements)
    summary_of_load = ContentionSummary(
        mean_share=contention.share_of(monitor.chunks),
        max_share=max((c.share for c in monitor.chunks), default=0.0),
        chunks=len(monitor.chunks),
        contended_chunks=sum(c.contended for c in monitor.chunks),
        remeasured_chunks=monitor.remeasured,
        contended_rows=contended_rows,
        threshold=contention_threshold,
    )
    result = BenchResult(
        targets=[str(t) for t in target_list],
        machine=machine_info(),
        settings=settings,
        measurements=measurements,
        contention=summary_of_load,
        skipped=skipped,
        summary=summarize(measurements) + [contention_line(summary_of_load, len(measurements))],
        warnings=warnings,
    )
    run_dir = common_run(target_list) if save else None
    if run_dir is not None:
        result._saved = list(save_to_run(result, run_dir))
    return result


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


def _check_counts(batch_sizes, warmup, iterations, threads) -> None:
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise EdgekitError(f"--batch-sizes {','.join(map(str, batch_sizes))} must be positive integers, e.g. 1,8,32")
    if warmup < 0:
        raise EdgekitError(f"--warmup {warmup} must be 0 or more")
    if iterations < 1:
        raise EdgekitError(f"--iterations {iterations} must be at least 1")
    if threads is not None and threads < 1:
        raise EdgekitError(f"--threads {threads} must be at least 1")


# ---- loading, timing, accuracy ---------------------------------------------------------------------------------


def _load_all(pairs, threads, options, batch_sizes, warmup, skipped, bar) -> list[_Entry]:
    """Load each session and warm it at every batch size, measuring the memory that adds (one at a time)."""
    entries = []
    bar.begin(len(pairs), "loading and warming up")
    for candidate, name in pairs:
        bar.describe(f"loading and warming up {candidate.path.name} on {name}")
        bar.advance()
        runtime = registry.get_runtime(name)
        session_options = {k: v for k, v in options.items() if k in runtime.options}
        gpu_before = gpu_used_mb()
        try:
            with PeakMemory() as memory:
                started = time.perf_counter()
                session = registry.load(candidate.path, name, threads, **session_options)
                load_ms = (time.perf_counter() - started) * 1000
                cold = {"load_ms": load_ms, "load_rss_delta_mb": memory.checkpoint()}
                cold.update(_first_inference(session, batch_sizes))
                cold["first_rss_delta_mb"] = memory.checkpoint()
                notes = _warm_up(session, batch_sizes, warmup)
        except EdgekitError as exc:
            skipped[f"{name}: {candidate.path}"] = str(exc)
            continue
        except Exception as exc:  # a runtime that loads a model but fails to run it: report it, bench the others
            skipped[f"{name}: {candidate.path}"] = f"failed to run ({type(exc).__name__}: {first_line(exc)})"
            continue
        entry = _Entry(candidate, name, session, artifact_size(candidate), rss_delta_mb=memory.delta_mb, notes=notes, cold=cold)
        if session.device != "cpu" and gpu_before is not None:
            # device-wide memory in use after warm-up (runtimes keep their arenas, so it is the serving peak)
            entry.gpu_memory_mb = max(0.0, (gpu_used_mb() or 0.0) - gpu_before)
        if session.labels is None or session.preprocessing is None:
            entry.notes.append("no edgekit metadata (labels, preprocessing): input shape taken from the graph, no accuracy")
        mismatch = isa_mismatch_note(session.info.get("validated_isa"))
        if mismatch:
            entry.notes.append(mismatch)
        entries.append(entry)
    return entries


def _first_inference(session: registry.Session, batch_sizes) -> dict:
    """The cold first run after loading (allocations, kernel selection, lazy init), at the first batch size it takes."""
    batch_size = next((b for b in batch_sizes if session.fixed_batch in (None, b)), session.fixed_batch or batch_sizes[0])
    example = session.example_batch(batch_size)
    started = time.perf_counter()
    session.run(example)
    session.synchronize()
    return {"first_inference_ms": (time.perf_counter() - started) * 1000, "first_inference_batch_size": batch_size}


def _warm_up(session: registry.Session, batch_sizes, warmup: int) -> list[str]:
    notes = []
    for batch_size in batch_sizes:
        if session.fixed_batch is not None and session.fixed_batch != batch_size:
            notes.append(f"model has a fixed batch of {session.fixed_batch}; batch {batch_size} not measured")
            continue
        example = session.example_batch(batch_size)
        for _ in range(max(1, warmup)):  # at least once: the first call allocates, and memory is measured here
            session.run(example)
        session.synchronize()
    return notes


def _time_interleaved(entries: list[_Entry], batch_size: int, iterations: int, e2e_images, bar, monitor) -> None:
    """Time every session at ``batch_size``: one untimed round, then ``iterations`` rounds, each in a rotated order.

    Rounds are grouped in chunks of at least contention.CHUNK_SECONDS; the monitor measures the neighbours' CPU
    use during each chunk and has a contended chunk (or one that widens the interval) measured again, bounded.
    """
    active = [e for e in entries if e.session.fixed_batch in (None, batch_size)]
    if not active:
        return
    calls = {id(e): _timed_call(e, batch_size, e2e_images) for e in active}
    bar.begin(iterations, f"timing batch {batch_size} ({len(active)} variants interleaved)")
    started = time.perf_counter()
    for entry in active:
        calls[id(entry)]()
    per_chunk = _rounds_per_chunk(time.perf_counter() - started, iterations)
    for entry in active:
        entry.times[batch_size], entry.chunks[batch_size], entry.remeasured[batch_size] = [], [], 0
    budget = [monitor.retries_per_pass]
    done = 0
    while done < iterations:
        rounds = range(done, min(iterations, done + per_chunk))

        def run_chunk(rounds=rounds):
            times: dict[int, list[float]] = {id(e): [] for e in active}
            for round_index in rounds:
                shift = round_index % len(active)
                for entry in active[shift:] + active[:shift]:
                    call = calls[id(entry)]
                    start = time.perf_counter()
                    call()
                    times[id(entry)].append(time.perf_counter() - start)
            return times

        def widens(times) -> bool:
            return any(_widens(entry.times[batch_size], times[id(entry)]) for entry in active)

        times, chunk, retries = monitor.measure(run_chunk, widens, budget)
        for entry in active:
            entry.times[batch_size].extend(times[id(entry)])
            entry.chunks[batch_size].append(chunk)
            entry.remeasured[batch_size] += retries
        for _ in rounds:
            bar.advance()
        done += len(rounds)


def _rounds_per_chunk(round_seconds: float, iterations: int) -> int:
    return max(1, min(iterations, math.ceil(contention.CHUNK_SECONDS / max(round_seconds, 1e-6))))


def _widens(kept: list[float], chunk: list[float]) -> bool:
    """Whether a chunk's median sits far above the samples kept so far (it would widen the median's interval)."""
    if len(kept) < 3 or not chunk:
        return False
    return float(np.median(chunk)) > contention.WIDENING * float(np.median(kept))


def _time_deployment(
    entry: _Entry, threads, options, user_options, batch_sizes, warmup, iterations, e2e_images, bar, monitor, took_turns: bool
) -> None:
    """Time ``entry`` alone under the settings an app would use: a new session where they differ from the fair ones
    (ORT's spinning), else the same session. Every row's deployed figure is then an alone one, so runtimes compete on
    equal terms (interleaving costs each its caches); a row benched alone with the same settings already has one."""
    runtime = registry.get_runtime(entry.runtime)
    fair = {k: v for k, v in options.items() if k in runtime.options}
    wanted = deployment_options(runtime, fair, user_options)
    if wanted is None and not took_turns:
        return
    bar.describe(f"timing {entry.candidate.path.name} on {entry.runtime} alone, deployment settings")
    session = entry.session
    if wanted is not None:
        try:
            session = registry.load(entry.candidate.path, entry.runtime, threads, **wanted)
            _warm_up(session, batch_sizes, warmup)
        except Exception as exc:  # the fair figures stand; say why the deployment ones are missing
            entry.notes.append(f"deployment settings {wanted} not measured ({type(exc).__name__}: {first_line(exc)})")
            return
    timing = _DeploymentTiming(info=dict(session.info))
    alone = _Entry(entry.candidate, entry.runtime, session, entry.size_bytes, notes=[])
    for batch_size in batch_sizes:
        if session.fixed_batch in (None, batch_size):
            _time_interleaved([alone], batch_size, iterations, e2e_images, bar, monitor)
            timing.times[batch_size] = alone.times[batch_size]
            timing.chunks[batch_size] = alone.chunks[batch_size]
            timing.remeasured[batch_size] = alone.remeasured[batch_size]
    entry.deployment = timing  # the session, and its spinning threads, end when this function returns


def _timed_call(entry: _Entry, batch_size: int, e2e_images):
    session = entry.session
    if e2e_images is None or session.preprocessing is None:
        if e2e_images is not None:
            entry.notes.append("no preprocessing recorded: end-to-end not possible, timed the runtime call only")
        example = session.example_batch(batch_size)

        def call():
            session.run(example)
            session.synchronize()

        return call
    prepare = _image_preparer(session)
    position = [0]

    def call_end_to_end():
        start = position[0]
        paths = [e2e_images[(start + i) % len(e2e_images)] for i in range(batch_size)]
        position[0] = (start + batch_size) % len(e2e_images)
        session.run(prepare(paths))
        session.synchronize()

    return call_end_to_end


def _image_preparer(session: registry.Session):
    """paths -> the batch this session takes: decode, then resize/crop (uint8 NHWC) or the full transform (NCHW)."""
    from ..data import load_batch

    return lambda paths: load_batch(paths, session.preprocessing, session.input_kind)


def _label_indices(session: registry.Session, folder) -> list[int] | None:
    """For each class of ``folder``, its index among the model's labels (matched by name); None without labels."""
    if session.labels is None or session.preprocessing is None:
        return None
    index_of = {name: i for i, name in enumerate(session.labels)}
    missing = [name for name in folder.classes if name not in index_of]
    if missing:
        raise DataError(
            f"{folder.root} has class folders the model {session.artifact.name} does not know: {missing[:5]}; its labels "
            f"are {session.labels[:10]}{'...' if len(session.labels) > 10 else ''}. Pass a folder with the model's classes"
        )
    return [index_of[name] for name in folder.classes]


_CACHE_LIMIT_BYTES = 256 * 2**20  # keep decoded images for the next variant only while they stay this small


def _accuracy(entry: _Entry, folder, prepared: dict | None = None) -> None:
    """Top-1 / top-5 of the session on the labelled folder, with the session's own labels and preprocessing."""
    session = entry.session
    class_to_label = _label_indices(session, folder)
    if class_to_label is None or session.preprocessing is None or session.labels is None:
        return  # _label_indices only maps folders for sessions that carry labels and preprocessing
    step = session.fixed_batch or ACCURACY_BATCH
    key = (session.preprocessing.model_dump_json(), session.input_kind, step)
    cached = prepared.get(key) if prepared is not None else None
    keep, kept_bytes = [], 0
    prepare = _image_preparer(session)
    top1 = top5 = 0
    k = min(5, len(session.labels))
    for number, start in enumerate(range(0, len(folder.samples), step)):
        chunk = folder.samples[start : start + step]
        batch = cached[number] if cached is not None else prepare([p for p, _ in chunk])
        if cached is None and prepared is not None and kept_bytes + batch.nbytes <= _CACHE_LIMIT_BYTES:
            keep.append(batch)
            kept_bytes += batch.nbytes
        if session.fixed_batch is not None and len(chunk) < step:  # pad the last chunk for a fixed-batch model
            batch = np.concatenate([batch, np.repeat(batch[-1:], step - len(chunk), axis=0)])
        logits = session.run(batch)[: len(chunk)]
        truth = np.array([class_to_label[label] for _, label in chunk])
        ranked = np.argsort(-logits, axis=1)[:, :k]
        top1 += int((ranked[:, 0] == truth).sum())
        top5 += int((ranked == truth[:, None]).any(axis=1).sum())
    if cached is None and prepared is not None and len(keep) == -(-len(folder.samples) // step):
        prepared[key] = keep
    entry.top1, entry.top5, entry.accuracy_images = top1 / len(folder), top5 / len(folder), len(folder)


def _data_folder(data, max_images):
    from ..data import scan_folder, stratified_sample

    folder = scan_folder(data, verify=False)
    if max_images is not None:
        folder = stratified_sample(folder, max_images, seed=0)
    return folder


def _end_to_end_images(folder, candidates) -> list[Path]:
    """Image files to decode in end-to-end timing: --data, else the first run's validation images."""
    if folder is not None:
        return [p for p, _ in folder.samples]
    from ..data import run_images
    from ..runs import Run

    for candidate in candidates:
        if candidate.run_dir is not None:
            try:
                return [p for p, _ in run_images(Run.load(candidate.run_dir).card, "val").samples]
            except DataError:
                continue
    raise EdgekitError("--end-to-end needs image files to decode; pass --data DIR (a folder of <class>/<image> files)")


__all__ = [
    "BenchResult",
    "BenchSettings",
    "Candidate",
    "Deployment",
    "MachineInfo",
    "Measurement",
    "PeakMemory",
    "bench",
    "collect_candidates",
    "common_run",
    "machine_info",
    "median_ci",
    "save_to_run",
    "stamp",
    "variant_of",
]
