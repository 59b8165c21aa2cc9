"""Bench's sessions: each artifact loaded on its runtime, warmed up at every batch size, with its cold figures
(load, first inference, peak RSS) measured one at a time; and the call a timing pass makes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .. import runtimes as registry  # "runtimes" is also bench()'s parameter name
from ..device import contention
from ..device.memory import PeakMemory
from ..errors import EdgekitError, first_line
from ..hardware import isa_mismatch_note
from .artifacts import Candidate, artifact_size
from .machine import gpu_used_mb


@dataclass
class Entry:
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


def load_all(pairs, threads, options, batch_sizes, warmup, skipped, bar) -> list[Entry]:
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
                cold.update(first_inference(session, batch_sizes))
                cold["first_rss_delta_mb"] = memory.checkpoint()
                notes = warm_up(session, batch_sizes, warmup)
        except EdgekitError as exc:
            skipped[f"{name}: {candidate.path}"] = str(exc)
            continue
        except Exception as exc:  # a runtime that loads a model but fails to run it: report it, bench the others
            skipped[f"{name}: {candidate.path}"] = f"failed to run ({type(exc).__name__}: {first_line(exc)})"
            continue
        entry = Entry(
            candidate, name, session, artifact_size(candidate), rss_delta_mb=memory.delta_mb, notes=[*session.notes, *notes], cold=cold
        )
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


def first_inference(session: registry.Session, batch_sizes) -> dict:
    """The cold first run after loading (allocations, kernel selection, lazy init), at the first batch size it takes."""
    batch_size = next((b for b in batch_sizes if session.fixed_batch in (None, b)), session.fixed_batch or batch_sizes[0])
    example = session.example_batch(batch_size)
    started = time.perf_counter()
    session.run(example)
    session.synchronize()
    return {"first_inference_ms": (time.perf_counter() - started) * 1000, "first_inference_batch_size": batch_size}


def warm_up(session: registry.Session, batch_sizes, warmup: int) -> list[str]:
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


def timed_call(entry: Entry, batch_size: int, e2e_images):
    session = entry.session
    if e2e_images is None or session.preprocessing is None:
        if e2e_images is not None:
            entry.notes.append("no preprocessing recorded: end-to-end not possible, timed the runtime call only")
        example = session.example_batch(batch_size)

        def call():
            session.run(example)
            session.synchronize()

        return call
    prepare = image_preparer(session)
    position = [0]

    def call_end_to_end():
        start = position[0]
        paths = [e2e_images[(start + i) % len(e2e_images)] for i in range(batch_size)]
        position[0] = (start + batch_size) % len(e2e_images)
        session.run(prepare(paths))
        session.synchronize()

    return call_end_to_end


def image_preparer(session: registry.Session):
    """paths -> the batch this session takes: decode, then resize/crop (uint8 NHWC) or the full transform (NCHW)."""
    from ..data import load_batch

    return lambda paths: load_batch(paths, session.preprocessing, session.input_kind)
