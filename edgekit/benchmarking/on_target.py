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
from ..device import contention
from ..errors import EdgekitError
from ..targets import Target, jobs
from ..targets.info import TargetInfo
from ..targets.setup import DEVICE_RUNTIMES
from .artifacts import Candidate, artifact_size
from .deployment import deployment_options
from .sessions import DeploymentTiming, Entry

EMULATED_NOTE = "measured on an emulated target: its timings are not evidence of any device's speed"
EMULATED_WARNING = "{target} is emulated ({why}): its latencies are not evidence of any device's speed; accuracy and parity are"


class TargetSession(registry.Session):
    """A session that ran on a target: the host's view of the artifact (labels, preprocessing, input) with the
    device's settings and library in ``info``. Nothing runs through it here."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise EdgekitError(f"{self.artifact} ran on a target; its figures are in the report")


@dataclass
class Row:
    """One artifact on one runtime, prepared here for a target."""

    candidate: Candidate
    runtime: str
    host: registry.Session  # opened here: the checks, the metadata, the input it takes
    settings: dict  # the settings it is timed with interleaved (and its logits computed with)
    deployment: dict | None  # None: not timed alone; {"settings": None}: alone with the same session
    bundle_key: str | None = None  # its inputs in the bundle
    truth: np.ndarray | None = None  # each bundled image's class as an index into the model's labels
    reference_key: str | None = None  # the PyTorch fp32 logits for its inputs
    notes: list[str] = field(default_factory=list)
    record_id: str = ""  # its artifact's id in the job


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


def prepare_rows(pairs, info: TargetInfo, threads, options: dict, user_options: dict, skipped: dict) -> list[Row]:
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
        wanted = deployment_options(runtime, fair, user_options)
        deployment = None
        if not info.emulated and (wanted is not None or len(pairs) > 1):  # as local bench: alone when rows took turns
            deployment = {"settings": jobs.settings_for_target(name, host, wanted, info) if wanted is not None else None}
        rows.append(Row(candidate, name, host, settings, deployment, notes=[EMULATED_NOTE] if info.emulated else []))
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
        if record.get("deployment"):
            timing = DeploymentTiming(info=dict(_target_session(row, record["deployment"].get("info") or {}).info))
            timing.times, timing.chunks, timing.remeasured = _timings(record["deployment"])
            entry.deployment = timing
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


# ---- the bundle: inputs, labels, references --------------------------------------------------------------------


def build_bundle(rows: list[Row], folder) -> dict[str, np.ndarray]:
    """The bundle's arrays: ``folder``'s images preprocessed once per (preprocessing, input kind), each row's labels
    (class indices into its model's labels) and, where the row belongs to a run, the run's PyTorch fp32 logits for
    the very pixels the row gets (``ParityChecker``, as `edgekit parity` computes them). Sets each row's keys."""
    from ..parity_check import LabelledImages, ParityChecker, ParityData
    from ..results import DataSource
    from .accuracy import label_indices

    images = LabelledImages([p for p, _ in folder.samples], None, DataSource.images(folder.root))
    arrays: dict[str, np.ndarray] = {}
    data_sets: dict[str, ParityData] = {}
    checkers: dict[tuple, ParityChecker] = {}
    for row in rows:
        session = row.host
        if session.preprocessing is None:
            row.notes.append("no preprocessing recorded: no accuracy or parity on the target")
            continue
        recipe = session.preprocessing.model_dump_json()
        data = data_sets.setdefault(recipe, ParityData(session.preprocessing, images))
        row.bundle_key = "inputs_" + _short_hash(recipe + session.input_kind.value)
        if row.bundle_key not in arrays:
            arrays[row.bundle_key] = data.inputs(session.input_kind)
        class_to_label = label_indices(session, folder)
        if class_to_label is not None:
            row.truth = np.array([class_to_label[label] for _, label in folder.samples])
            arrays["labels_" + _short_hash(",".join(session.labels or []))] = row.truth
        if row.candidate.run_dir is not None:
            key = (str(row.candidate.run_dir), recipe)
            if key not in checkers:
                from ..runs import Run

                checkers[key] = ParityChecker(Run.load(row.candidate.run_dir).build_model(), data)
            row.reference_key = "reference_" + _short_hash(f"{key}{session.input_kind.value}")
            if row.reference_key not in arrays:
                arrays[row.reference_key] = checkers[key].reference_logits(session.input_kind)
    return arrays


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


def score(pairs: list[tuple[Entry, Row]], arrays: dict[str, np.ndarray], logits: dict[str, np.ndarray], source) -> dict[int, object]:
    """Top-1/top-5 from the bundled labels into each Entry, and parity against the bundled references from the
    target's logits (``compare_logits``, as `edgekit parity`): {id(entry): ParityMetrics}."""
    from ..parity_check import compare_logits

    parity: dict[int, object] = {}
    for entry, row in pairs:
        found = logits.get(f"logits_{row.record_id}")
        if found is None:
            continue
        if row.truth is not None and len(row.truth) == len(found):
            k = min(5, found.shape[1])
            ranked = np.argsort(-found, axis=1)[:, :k]
            entry.top1 = float((ranked[:, 0] == row.truth).mean())
            entry.top5 = float((ranked == row.truth[:, None]).any(axis=1).mean())
            entry.accuracy_images = len(row.truth)
        if row.reference_key is not None:
            parity[id(entry)] = compare_logits(arrays[row.reference_key], found, row.truth, source)
    return parity


# ---- the whole measurement ---------------------------------------------------------------------------------------


@dataclass
class TargetRun:
    """What a target measured, ready for bench's report."""

    info: TargetInfo
    pairs: list[tuple[Entry, Row]]
    parity: dict[int, object]  # id(entry) -> ParityMetrics against the run's PyTorch fp32 model
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
    rows = prepare_rows(pairs, info, threads, options, user_options, skipped)
    if not rows:
        raise EdgekitError(f"nothing can run on {target.name} ({'; '.join(f'{k}: {v}' for k, v in skipped.items()) or 'no artifact'})")
    bar.step(f"preprocessing {len(folder) if folder is not None else 0} images and computing the PyTorch references")
    arrays = build_bundle(rows, folder) if folder is not None else {}
    entries = [
        jobs.artifact_entry(i, row.host, row.runtime, threads, row.settings, row.deployment, row.bundle_key if arrays else None)
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


def machine_of(info: TargetInfo, versions: dict[str, str]):
    """The target as bench's MachineInfo, so every caption and comparison of machines reads the target's."""
    from .results import MachineInfo

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
