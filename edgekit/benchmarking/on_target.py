"""`edgekit bench --target`: the same rows, measured on a device by the torch-free runner (``edgekit/device/runner.py``).

The host does everything that needs torch or edgekit's checks: it opens each artifact here (refusing a broken or
unsafe file before it travels), decides the settings each row runs with for the *target's* CPU (int8's ORT
precision option by the target's ISA class: ``hardware.ort_session_config_here``), preprocesses the images into a
bundle of inputs, and computes the PyTorch fp32 reference logits where it has the run. The device times the rows by
the protocol local bench uses (``edgekit.device.timing``, the contention monitor, cold and warm figures, peak RSS)
and returns the bundle's logits; accuracy and parity are computed here from them, with ``compare_logits``.

Rows measured on an emulated target carry a note, and the report says that their timings are not evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import runtimes as registry
from ..card import MeasuredOn
from ..device import contention
from ..errors import EdgekitError
from ..parity_check import ParityMetrics
from ..targets import Target, jobs
from ..targets.info import TargetInfo
from ..targets.setup import DEVICE_RUNTIMES
from .artifacts import Candidate, artifact_size
from .bundle import Row, build_bundle, score
from .results import MachineInfo, Measurement
from .sessions import Entry

EMULATED_NOTE = "measured on an emulated target: its timings are not evidence of any device's speed"
EMULATED_WARNING = "{target} is emulated ({why}): its latencies are not evidence of any device's speed; accuracy and parity are"


class TargetSession(registry.Session):
    """A session that ran on a target: the host's view of the artifact (labels, preprocessing, input) with the
    device's settings and library in ``info``. Nothing runs through it here."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise EdgekitError(f"{self.artifact} ran on a target; its figures are in the report")


def target_pairs(candidates: list[Candidate], runtime_names: list[str]) -> tuple[list[tuple[Candidate, str]], dict[str, str]]:
    """Each artifact with the runtimes that run it on a target ("auto": its format's); the rest, with the reason."""
    pairs, skipped = [], {}
    for candidate in candidates:
        for name in runtime_names:
            runtime = registry.auto_runtime(candidate.path) if name == "auto" else name
            if runtime not in DEVICE_RUNTIMES:
                if name == "auto" or runtime.startswith("torch"):
                    skipped[f"{runtime}: {candidate.path}"] = (
                        f"runs on this machine only (it needs torch); a target runs {', '.join(DEVICE_RUNTIMES)}"
                    )
                    continue
                raise EdgekitError(f"runtime {runtime} does not run on a target; use one of {', '.join(DEVICE_RUNTIMES)}")
            if candidate.kind not in registry.get_runtime(runtime).suffixes:
                continue
            pairs.append((candidate, runtime))
    return pairs, skipped


def prepare_rows(pairs, info: TargetInfo, threads, options: dict, skipped: dict) -> list[Row]:
    """Open each artifact here (the checks, the metadata) and decide its settings for the target's CPU."""
    jobs.require_runtimes(info, [name for _, name in pairs])
    rows = []
    for candidate, name in pairs:
        runtime = registry.get_runtime(name)
        fair = {k: v for k, v in options.items() if k in runtime.options}
        try:
            host = registry.load(candidate.path, name, threads, **fair)
        except EdgekitError as exc:
            skipped[f"{name}: {candidate.path}"] = str(exc)
            continue
        settings = jobs.settings_for_target(name, host, fair, info)
        rows.append(Row(candidate, name, host, settings, notes=[EMULATED_NOTE] if info.emulated else []))
    return rows


def entries_of(rows: list[Row], result: dict) -> tuple[list[tuple[Entry, Row]], dict[str, str]]:
    """The device's records as bench's Entries, each with its Row (the rows that failed there go to ``skipped``)."""
    pairs, skipped = [], {}
    for row, record in zip(rows, result["artifacts"]):
        if record.get("error"):
            skipped[f"{row.runtime}: {row.candidate.path}"] = f"failed on the target ({record['error']})"
            continue
        entry = Entry(
            row.candidate,
            row.runtime,
            _target_session(row, record.get("info") or {}),
            artifact_size(row.candidate),
            rss_delta_mb=float(record.get("rss_delta_mb") or 0.0),
            notes=[*row.notes, *record.get("notes", [])],
            cold=dict(record.get("cold") or {}),
        )
        entry.times, entry.chunks, entry.remeasured = _timings(record)
        row.record_id = record["id"]
        pairs.append((entry, row))
    return pairs, skipped


def _timings(record: dict):
    times = {int(k): [float(s) for s in v] for k, v in (record.get("times") or {}).items()}
    chunks = {int(k): [contention.Chunk(float(c[0]), float(c[1]), bool(c[2])) for c in v] for k, v in (record.get("chunks") or {}).items()}
    remeasured = {int(k): int(v) for k, v in (record.get("remeasured") or {}).items()}
    return times, chunks, remeasured


def _target_session(row: Row, device_info: dict) -> TargetSession:
    """The host's view of the artifact, with what the device reports it used."""
    info = {**row.host.info, **device_info, "ran_on": "target"}
    return TargetSession(
        row.host.artifact,
        input_kind=row.host.input_kind,
        input_shape=row.host.input_shape,
        fixed_batch=row.host.fixed_batch,
        labels=row.host.labels,
        preprocessing=row.host.preprocessing,
        info=info,
        parameters=row.host.parameters,
    )


# ---- the whole measurement ---------------------------------------------------------------------------------------


@dataclass
class TargetRun:
    """What a target measured, ready for bench's report."""

    info: TargetInfo
    pairs: list[tuple[Entry, Row]]
    parity: dict[int, ParityMetrics]  # id(entry) -> ParityMetrics against the run's PyTorch fp32 model
    base_rss_mb: float
    chunks: list[contention.Chunk]
    remeasured: int
    skipped: dict[str, str]
    versions: dict[str, str]  # what ran there: module -> version
    options: dict  # the runtime options of the interleaved timing


def measure(target: Target, candidates, runtime_names, counts, folder, user_options: dict, threshold: float, bar) -> TargetRun:
    """Everything bench measures, measured on ``target`` (see the module's notes). ``counts``: (batch sizes, warm-up
    runs, timed iterations, threads)."""
    from ..results import DataSource
    from ..targets.info import info_from_facts
    from . import _interleaving_defaults

    batch_sizes, warmup, iterations, threads = counts
    bar.begin(4, f"reading the facts of {target.name}")
    info = info_from_facts(target, target.facts())
    pairs, skipped = target_pairs(candidates, runtime_names)
    if not pairs:
        raise EdgekitError(f"nothing can run on {target.name} ({'; '.join(f'{k}: {v}' for k, v in skipped.items()) or 'no artifact'})")
    options = _interleaving_defaults(user_options, pairs)
    rows = prepare_rows(pairs, info, threads, options, skipped)
    if not rows:
        raise EdgekitError(f"nothing can run on {target.name} ({'; '.join(f'{k}: {v}' for k, v in skipped.items()) or 'no artifact'})")
    bar.step(f"preprocessing {len(folder) if folder is not None else 0} images and computing the PyTorch references")
    arrays = build_bundle(rows, folder) if folder is not None else {}
    entries = [
        jobs.artifact_entry(i, row.host, row.runtime, threads, row.settings, row.bundle_key if arrays else None)
        for i, row in enumerate(rows)
    ]
    job = jobs.new_job(entries, batch_sizes, warmup, iterations, timing=True, threshold=threshold, bundle=bool(arrays))
    bar.step(f"timing {len(rows)} rows on {target.name}" + (" (emulated: slow)" if info.emulated else ""))
    inputs = {key: value for key, value in arrays.items() if key.startswith("inputs_")}  # what the device needs
    result, logits = jobs.execute(target, info, job, [row.host for row in rows], inputs)
    measured, failed = entries_of(rows, result)
    skipped.update(failed)
    if not measured:
        raise EdgekitError(f"nothing could be benched on {target.name} ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    parity = score(measured, arrays, logits, DataSource.images(folder.root) if folder is not None else None)
    load = result.get("contention") or {}
    used = {DEVICE_RUNTIMES[row.runtime].module for _, row in measured} | {"numpy"}
    return TargetRun(
        info=info,
        pairs=measured,
        parity=parity,
        base_rss_mb=float(result.get("base_rss_mb") or 0.0),
        chunks=[contention.Chunk(float(c[0]), float(c[1]), bool(c[2])) for c in load.get("chunks", [])],
        remeasured=int(load.get("remeasured", 0)),
        skipped=skipped,
        versions={module: str(info.runtimes.get(module)) for module in sorted(used) if info.runtimes.get(module)},
        options=options,
    )


def machine_of(info: TargetInfo, versions: dict[str, str]) -> MachineInfo:
    """The target as bench's MachineInfo, so every caption and comparison of machines reads the target's."""
    return MachineInfo(
        cpu=info.cpu,
        architecture=info.arch,
        logical_cores=info.logical_cores,
        physical_cores=info.physical_cores,
        usable_cores=info.usable_cores,
        cpu_flags=list(info.cpu_features),
        memory_gb=info.memory_gb,
        os=" / ".join(part for part in (info.os, info.kernel) if part) or None,
        python=info.python,
        versions=dict(versions),
    )


@dataclass
class Measured:
    """bench's rows, measured here or on a target, with what the report says about where."""

    measurements: list[Measurement]
    monitor: contention.Monitor
    machine: MachineInfo
    options: dict  # the runtime options the rows were timed (interleaved) with
    target: MeasuredOn | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def measure_for_bench(target, target_options, candidates, runtime_names, counts, folder, user_options, threshold, progress) -> Measured:
    """``measure`` on ``target`` (a Target, or a --target text opened and closed here), as bench's rows: each with its
    parity against the run's PyTorch model, the target as the report's machine, and an emulated target said so."""
    from ..progress import Bar
    from ..targets import parse_target
    from .stats import measurements_of

    opened = parse_target(target, target_options)
    try:
        with Bar(progress) as bar:
            run = measure(opened, candidates, runtime_names, counts, folder, user_options, threshold, bar)
    finally:
        if opened is not target:
            opened.close()
    rows = [
        row.model_copy(update={"parity": run.parity.get(id(entry))})
        for entry, _ in run.pairs
        for row in measurements_of(entry, counts[0], run.base_rss_mb, False)
    ]
    monitor = contention.Monitor(threshold=threshold)  # holds the device's chunks, for the report's contention summary
    monitor.chunks, monitor.remeasured = run.chunks, run.remeasured
    where = run.info.measured_on(run.versions)
    warnings = [EMULATED_WARNING.format(target=where.target, why=where.emulation)] if where.emulated else []
    return Measured(rows, monitor, machine_of(run.info, run.versions), run.options, where, run.skipped, [where.heading()], warnings)
