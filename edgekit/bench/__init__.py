"""`edgekit bench`: latency, throughput, memory, size and accuracy of every variant on every runtime.

Variants are timed interleaved (round r runs A B C, round r+1 runs B C A, ...), so slow drift on a shared,
noisy machine hits every variant alike and the ratios between them hold even when absolute times wander.
Ratios are therefore only ever computed between measurements of one BenchResult.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import runtimes as registry  # "runtimes" is also bench()'s parameter name
from ..errors import DataError, EdgekitError
from ..progress import Bar
from .machine import (
    PeakMemory,
    current_rss_mb,
    gpu_used_mb,
    machine_info,
    save_to_run,
    stamp,
)
from .results import BenchResult, Measurement
from .stats import add_ratios, measurements_of, median_ci, row_order, summarize
from .targets import (
    Candidate,
    artifact_size,
    collect_candidates,
    common_run,
    pair_with_runtimes,
    variant_of,
)

DEFAULT_WARMUP = 3
DEFAULT_ITERATIONS = 20
ACCURACY_BATCH = 32



@dataclass
class _Entry:
    candidate: Candidate
    runtime: str
    session: registry.Session
    size_bytes: int
    rss_delta_mb: float = 0.0
    gpu_memory_mb: float | None = None
    times: dict[int, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    top1: float | None = None
    top5: float | None = None
    accuracy_images: int | None = None


def bench(
    targets: Sequence[str | os.PathLike] | str | os.PathLike,
    runtimes: Sequence[str] | str = ("auto",),
    batch_sizes: Sequence[int] = (1,),
    threads: int | None = None,
    data: str | os.PathLike | None = None,
    warmup: int = DEFAULT_WARMUP,
    iterations: int = DEFAULT_ITERATIONS,
    end_to_end: bool = False,
    progress: bool = False,
    options: dict | None = None,
    max_images: int | None = None,
) -> BenchResult:
    """Benchmark every artifact of ``targets`` on every runtime in ``runtimes`` that can load it.

    ``targets``: run directories (their model.pt, exports/*.onnx and exports/*.pt2) and/or .onnx/.pt2 files.
    ``runtimes``: registered names, or "auto" (each artifact on its natural runtime: .onnx -> ort-cpu,
    .pt2 -> torch-export, run -> torch). An unavailable runtime is recorded in ``skipped`` with its reason.
    ``data``: a labelled image folder (<class>/<image>) for top-1/top-5 accuracy (``max_images`` caps it).
    ``options``: runtime options (e.g. graph_optimization_level, allow_spinning, provider_options, device); each
    is passed to the runtimes that accept it, and an option no chosen runtime accepts is an error.
    """
    _check_counts(batch_sizes, warmup, iterations, threads)
    target_list = [targets] if isinstance(targets, (str, os.PathLike)) else list(targets)
    if not target_list:
        raise EdgekitError("nothing to bench; pass a run directory or .onnx/.pt2 files")
    candidates = collect_candidates(target_list)
    options = dict(options or {})
    runtime_names = [n.strip() for n in runtimes.split(",")] if isinstance(runtimes, str) else list(runtimes)
    pairs, skipped = pair_with_runtimes(candidates, runtime_names, options)
    if not pairs:
        reasons = "; ".join(f"{name}: {why}" for name, why in skipped.items()) or "no runtime can load these files"
        raise EdgekitError(f"nothing could be benched ({reasons})")
    options = _interleaving_defaults(options, pairs)
    folder = _data_folder(data, max_images) if data is not None else None
    e2e_images = _end_to_end_images(folder, candidates) if end_to_end else None

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
            _time_interleaved(entries, batch_size, iterations, e2e_images, bar)
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
    settings = {
        "runtimes": runtime_names,
        "batch_sizes": list(batch_sizes),
        "threads": threads,
        "warmup": warmup,
        "iterations": iterations,
        "end_to_end": end_to_end,
        "data": str(data) if data is not None else None,
        "max_images": max_images,
        "options": {k: v for k, v in options.items()},  # allow_spinning False here may be the interleaving default
        "timing": "interleaved rounds in rotating order; time.perf_counter around run() and synchronize()"
        + ("; end to end: decode + preprocess + run" if end_to_end else "; runtime call only"),
        "memory": "peak_rss_mb = process RSS before any model was loaded + the peak RSS increase (VmHWM, or psutil "
        "sampling) while that variant loaded and ran its warm-up at every batch size",
        "ratios": "p50 / reference p50 within this result; >1 means slower",
    }
    return BenchResult(
        targets=[str(t) for t in target_list], machine=machine_info(), settings=settings, measurements=measurements,
        skipped=skipped, summary=summarize(measurements), warnings=warnings,
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
                session = registry.load(candidate.path, name, threads, **session_options)
                notes = _warm_up(session, batch_sizes, warmup)
        except EdgekitError as exc:
            skipped[f"{name}: {candidate.path}"] = str(exc)
            continue
        except Exception as exc:  # a runtime that loads a model but fails to run it: report it, bench the others
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            skipped[f"{name}: {candidate.path}"] = f"failed to run ({type(exc).__name__}: {first})"
            continue
        entry = _Entry(candidate, name, session, artifact_size(candidate), rss_delta_mb=memory.delta_mb, notes=notes)
        if session.device != "cpu" and gpu_before is not None:
            # device-wide memory in use after warm-up (runtimes keep their arenas, so it is the serving peak)
            entry.gpu_memory_mb = max(0.0, (gpu_used_mb() or 0.0) - gpu_before)
        if session.labels is None or session.preprocessing is None:
            entry.notes.append("no edgekit metadata (labels, preprocessing): input shape taken from the graph, no accuracy")
        entries.append(entry)
    return entries


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


def _time_interleaved(entries: list[_Entry], batch_size: int, iterations: int, e2e_images, bar) -> None:
    """Time every session at ``batch_size``: one untimed round, then ``iterations`` rounds, each in a rotated order."""
    active = [e for e in entries if e.session.fixed_batch in (None, batch_size)]
    if not active:
        return
    calls = {id(e): _timed_call(e, batch_size, e2e_images) for e in active}
    bar.begin(iterations, f"timing batch {batch_size} ({len(active)} variants interleaved)")
    for entry in active:
        calls[id(entry)]()
    for entry in active:
        entry.times[batch_size] = []
    for round_index in range(iterations):
        shift = round_index % len(active)
        for entry in active[shift:] + active[:shift]:
            call = calls[id(entry)]
            start = time.perf_counter()
            call()
            entry.times[batch_size].append(time.perf_counter() - start)
        bar.advance()


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
    if class_to_label is None:
        return
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
    "BenchResult", "Candidate", "Measurement", "PeakMemory", "bench", "collect_candidates", "common_run",
    "machine_info", "median_ci", "save_to_run", "stamp", "variant_of",
]
