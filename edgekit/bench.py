"""`edgekit bench`: latency, throughput, memory, size and accuracy of every variant on every runtime.

Variants are timed interleaved (round r runs A B C, round r+1 runs B C A, ...), so slow drift on a shared,
noisy machine hits every variant alike and the ratios between them hold even when absolute times wander.
Ratios are therefore only ever computed between measurements of one BenchResult.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from . import runtimes as registry  # "runtimes" is also bench()'s parameter name
from .errors import DataError, EdgekitError
from .progress import Bar
from .results import Result

DEFAULT_WARMUP = 3
DEFAULT_ITERATIONS = 20
ACCURACY_BATCH = 32
EMBEDDED_SUFFIX = "-uint8in"  # export's name suffix for variants with the preprocessing inside (uint8 NHWC input)
_COMPRESSED_PREFIXES = ("int", "uint4", "fp16", "bf16", "fp8", "q")  # variants expected to beat their fp32 parent


class Measurement(BaseModel):
    """One variant on one runtime at one batch size. Ratios are this p50 over a reference p50 (>1 = slower)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str  # the model the variants belong to (run name or file stem): ratios compare within one model
    artifact: str
    variant: str  # fp32, fp16, int8, int8-dynamic... (from model.<variant>.onnx; model.onnx / model.pt are fp32)
    runtime: str
    batch_size: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    p50_ci_ms: tuple[float, float]  # 95% distribution-free confidence interval of the median
    images_per_second: float
    peak_rss_mb: float
    rss_delta_mb: float
    gpu_memory_mb: float | None = None
    size_bytes: int
    parameters: int | None = None
    top1: float | None = None
    top5: float | None = None
    accuracy_images: int | None = None
    ratio_to_fastest: float
    ratio_to_fp32: float | None = None
    fp32_baseline: str | None = None  # "fp32 on ort-cpu": which measurement ratio_to_fp32 divides by
    slower_than_fp32: bool | None = None  # a compressed variant that is not faster than its fp32 parent
    end_to_end: bool = False
    runtime_info: dict = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.variant} on {self.runtime}"


class BenchResult(Result):
    """Everything one `edgekit bench` measured, with the machine and settings it was measured under."""

    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    targets: list[str] = Field(default_factory=list)
    machine: dict
    settings: dict
    measurements: list[Measurement]
    skipped: dict[str, str] = Field(default_factory=dict)  # runtime (or "runtime: artifact") -> reason
    summary: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    def for_model(self, model: str, batch_size: int | None = None) -> list[Measurement]:
        return [m for m in self.measurements if m.model == model and (batch_size is None or m.batch_size == batch_size)]


@dataclass
class Candidate:
    """An artifact to bench, before a runtime is chosen for it."""

    model: str
    path: Path
    variant: str
    kind: str  # ".onnx", ".pt2" or "run"
    run_dir: Path | None = None


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
    pairs, skipped = _pair_with_runtimes(candidates, runtime_names, options)
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

    measurements = [m for entry in entries for m in _measurements(entry, batch_sizes, base_rss, end_to_end and e2e_images is not None)]
    measurements.sort(key=_row_order)
    warnings = _add_ratios(measurements)
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
        skipped=skipped, summary=_summary(measurements), warnings=warnings,
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


# ---- what to bench ---------------------------------------------------------------------------------------------


def variant_of(path: Path) -> str:
    """The variant a file name says: model.onnx / model.pt / model.pt2 -> fp32, model.int8.onnx -> int8.

    A file not named model.<variant>.<ext> is named by its graph: quantize nodes make it int8
    (int8-dynamic when activations are quantized at run time), float16 inputs or weights fp16.
    """
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    base, dot, rest = stem.partition(".")
    if dot:
        return rest
    if base == "model" or path.suffix != ".onnx":
        return "fp32"
    return _variant_from_graph(path)


def _variant_from_graph(path: Path) -> str:
    import onnx

    from .safety import check_onnx_file

    proto = check_onnx_file(path)
    ops = {node.op_type for node in proto.graph.node}
    if "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops or "ConvInteger" in ops:
        return "int8-dynamic"
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"}:
        return "int8"
    float16 = onnx.TensorProto.FLOAT16
    if any(t.data_type == float16 for t in proto.graph.initializer) or any(
        i.type.tensor_type.elem_type == float16 for i in proto.graph.input
    ):
        return "fp16"
    return "fp32"


def collect_candidates(targets: Sequence[str | os.PathLike]) -> list[Candidate]:
    """Expand run directories into their artifacts; name each artifact's model and variant. Duplicates dropped."""
    from .runs import CARD_NAME, MODEL_NAME

    found: list[Candidate] = []
    seen: set[Path] = set()

    def add(candidate: Candidate) -> None:
        key = candidate.path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(candidate)

    for target in targets:
        path = Path(target)
        if not path.exists():
            raise EdgekitError(f"{path} does not exist; pass a run directory or .onnx/.pt2 files")
        if path.is_dir():
            if not (path / CARD_NAME).is_file():
                raise EdgekitError(f"{path} is not an edgekit run directory (no {CARD_NAME}); pass the run folder or model files")
            if (path / MODEL_NAME).is_file():
                add(Candidate(path.name, path / MODEL_NAME, "fp32", "run", path))
            exports = path / "exports"
            for artifact in sorted(exports.glob("*.onnx")) + sorted(exports.glob("*.pt2")) if exports.is_dir() else []:
                add(Candidate(path.name, artifact, variant_of(artifact), artifact.suffix, path))
            continue
        kind = registry.artifact_kind(path)
        run_dir = _run_of(path)
        if kind == "run":
            if run_dir is None:
                raise EdgekitError(f"{path} has no run card ({CARD_NAME}) beside it; pass its run directory instead")
            add(Candidate(run_dir.name, path, "fp32", "run", run_dir))
            continue
        model = run_dir.name if run_dir is not None else _model_name_of_file(path)
        add(Candidate(model, path, variant_of(path), kind, run_dir))
    return found


def common_run(targets: Sequence[str | os.PathLike]) -> Path | None:
    """The one run directory all ``targets`` belong to (the run itself or files in it), else None."""
    from .runs import CARD_NAME

    runs = set()
    for target in targets:
        path = Path(target)
        run_dir = path if path.is_dir() and (path / CARD_NAME).is_file() else _run_of(path)
        if run_dir is None:
            return None
        runs.add(run_dir.resolve())
    return next(iter(runs)) if len(runs) == 1 else None


def _run_of(path: Path) -> Path | None:
    """The run directory a file belongs to (runs/x/model.pt or runs/x/exports/y.onnx), if any."""
    from .runs import CARD_NAME

    for folder in (path.parent, path.parent.parent):
        if (folder / CARD_NAME).is_file() and (folder == path.parent or path.parent.name == "exports"):
            return folder
    return None


def _model_name_of_file(path: Path) -> str:
    base = path.name.split(".")[0]
    # model.int8.onnx and model.onnx in one folder are one model: name it after the folder
    return path.parent.resolve().name if base == "model" else base


def _pair_with_runtimes(candidates, names, options) -> tuple[list[tuple[Candidate, str]], dict[str, str]]:
    """(artifact, runtime) pairs to bench, and runtimes skipped with the reason."""
    skipped: dict[str, str] = {}
    if not names:
        raise EdgekitError("--runtime is empty; pass e.g. --runtime ort-cpu or --runtime auto")
    chosen = []
    for name in names:
        if name == "auto":
            chosen.extend(registry.auto_runtime(c.path) for c in candidates)
        else:
            registry.get_runtime(name)  # unknown name -> EdgekitError listing the registered ones
            chosen.append(name)
    chosen = list(dict.fromkeys(chosen))
    accepted = {option for name in chosen for option in registry.get_runtime(name).options}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise EdgekitError(
            f"option {unknown[0]!r} is not used by any chosen runtime ({', '.join(chosen)}); options they take: "
            f"{', '.join(sorted(accepted)) or 'none'}"
        )
    pairs = []
    for name in chosen:
        runtime = registry.get_runtime(name)
        matching = [c for c in candidates if c.kind in runtime.suffixes]
        if not matching:
            kinds = ", ".join("a run directory" if s == "run" else s for s in runtime.suffixes)
            hint = "; create one with `edgekit export`" if any(c.kind == "run" for c in candidates) else ""
            skipped[name] = f"no artifact it can load among the targets (it loads {kinds}){hint}"
            continue
        ok, reason = runtime.available()
        if not ok:
            skipped[name] = reason
            continue
        pairs.extend((candidate, name) for candidate in matching)
    return pairs, skipped


def _artifact_size(candidate: Candidate) -> int:
    """Bytes on disk, including an ONNX model's external data files."""
    path = candidate.path
    size = path.stat().st_size
    if candidate.kind == ".onnx":
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
        locations = set()
        for tensor in proto.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                locations.update(e.value for e in tensor.external_data if e.key == "location")
        size += sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file())
    return size


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
        entry = _Entry(candidate, name, session, _artifact_size(candidate), rss_delta_mb=memory.delta_mb, notes=notes)
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
    from .data import load_image

    if session.input_kind == "uint8-nhwc":
        geometry = session.preprocessing.geometry_transform()
        return lambda paths: np.stack([geometry(load_image(p)) for p in paths])
    transform = session.preprocessing.transform()
    return lambda paths: np.stack([transform(load_image(p)).numpy() for p in paths])


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
    from .data import scan_folder, stratified_sample

    folder = scan_folder(data, verify=False)
    if max_images is not None:
        folder = stratified_sample(folder, max_images, seed=0)
    return folder


def _end_to_end_images(folder, candidates) -> list[Path]:
    """Image files to decode in end-to-end timing: --data, else the first run's validation images."""
    if folder is not None:
        return [p for p, _ in folder.samples]
    from .data import run_images
    from .runs import Run

    for candidate in candidates:
        if candidate.run_dir is not None:
            try:
                return [p for p, _ in run_images(Run.load(candidate.run_dir).card, "val").samples]
            except DataError:
                continue
    raise EdgekitError("--end-to-end needs image files to decode; pass --data DIR (a folder of <class>/<image> files)")


# ---- statistics and ratios -------------------------------------------------------------------------------------


def median_ci(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median: order statistics around n/2 (binomial, normal approx.).

    With fewer than 6 samples no interval reaches 95%, so it is (min, max).
    """
    ordered = sorted(samples)
    n = len(ordered)
    if n < 6:
        return ordered[0], ordered[-1]
    z = {0.9: 1.645, 0.95: 1.96, 0.99: 2.576}.get(confidence, 1.96)
    half_width = z * math.sqrt(n) / 2
    lower = max(0, int(math.floor(n / 2 - half_width)) - 1)
    upper = min(n - 1, int(math.ceil(n / 2 + half_width)))
    return ordered[lower], ordered[upper]


def _measurements(entry: _Entry, batch_sizes, base_rss: float, end_to_end: bool) -> list[Measurement]:
    rows = []
    for batch_size in batch_sizes:
        seconds = entry.times.get(batch_size)
        if not seconds:
            continue
        ms = np.asarray(seconds) * 1000.0
        low, high = median_ci(ms.tolist())
        session = entry.session
        rows.append(
            Measurement(
                model=entry.candidate.model,
                artifact=str(entry.candidate.path),
                variant=entry.candidate.variant,
                runtime=entry.runtime,
                batch_size=batch_size,
                iterations=len(ms),
                p50_ms=float(np.percentile(ms, 50)),
                p90_ms=float(np.percentile(ms, 90)),
                p99_ms=float(np.percentile(ms, 99)),
                mean_ms=float(ms.mean()),
                p50_ci_ms=(float(low), float(high)),
                images_per_second=batch_size / float(ms.mean() / 1000.0),
                peak_rss_mb=base_rss + entry.rss_delta_mb,
                rss_delta_mb=entry.rss_delta_mb,
                gpu_memory_mb=entry.gpu_memory_mb,
                size_bytes=entry.size_bytes,
                parameters=session.parameters,
                top1=entry.top1,
                top5=entry.top5,
                accuracy_images=entry.accuracy_images,
                ratio_to_fastest=1.0,  # filled in by _add_ratios, which sees every measurement
                end_to_end=end_to_end and session.preprocessing is not None,
                runtime_info=_jsonable(session.info),
                notes=list(dict.fromkeys(entry.notes)),
            )
        )
    return rows


def _row_order(m: Measurement):
    # per model and batch size: fp32 first, then the other variants by name, each runtime in registry order
    names = registry.registered_names()
    return (m.model, m.batch_size, m.variant != "fp32", m.variant, names.index(m.runtime) if m.runtime in names else len(names))


def is_compressed(variant: str) -> bool:
    """Whether a variant exists to be faster or smaller than fp32 (int8, fp16...), so being slower is a problem."""
    return variant.lower().startswith(_COMPRESSED_PREFIXES)


def _add_ratios(measurements: list[Measurement]) -> list[str]:
    """Fill ratio_to_fastest / ratio_to_fp32 within each (model, batch size); return warnings for compressed
    variants that are not faster than their fp32 parent on the same runtime."""
    warnings = []
    groups: dict[tuple[str, int], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.model, m.batch_size), []).append(m)
    for (model, batch_size), group in groups.items():
        fastest = min(m.p50_ms for m in group)
        for m in group:
            m.ratio_to_fastest = m.p50_ms / fastest
            baseline = _fp32_parent(m, group)
            if baseline is None:
                continue
            m.ratio_to_fp32 = m.p50_ms / baseline.p50_ms
            m.fp32_baseline = baseline.label
            if is_compressed(m.variant) and baseline.runtime == m.runtime:
                m.slower_than_fp32 = m.ratio_to_fp32 >= 1.0
                if m.slower_than_fp32:
                    overlap = m.p50_ci_ms[0] <= baseline.p50_ci_ms[1]
                    accuracy = ""
                    if m.top1 is not None and baseline.top1 is not None:
                        accuracy = f", top-1 {m.top1:.1%} vs {baseline.top1:.1%}"
                    warnings.append(
                        f"{model}, batch {batch_size}: {m.variant} on {m.runtime} is NOT faster than its fp32 parent {baseline.variant} "
                        f"({m.p50_ms:.2f} ms vs {m.p50_ms / m.ratio_to_fp32:.2f} ms, {m.ratio_to_fp32:.2f}x"
                        f"{', within noise' if overlap else ''}{accuracy}); ship {baseline.variant} on {m.runtime} instead"
                    )
                    m.notes.append(f"not faster than {baseline.label} ({m.ratio_to_fp32:.2f}x)")
    return warnings


def fp32_parent_variant(variant: str) -> str:
    """The float32 variant a variant was made from: int8-uint8in -> fp32-uint8in (same input kind), else fp32."""
    suffix = EMBEDDED_SUFFIX if variant.endswith(EMBEDDED_SUFFIX) else ""
    return "fp32" + suffix


def _fp32_parent(m: Measurement, group: list[Measurement]) -> Measurement | None:
    """The measurement ``m``'s ratio_to_fp32 divides by: its fp32 parent on the same runtime, else plain fp32 on the
    same runtime, else the fastest fp32 on any runtime (so a bare int8 file is still compared with something)."""
    for wanted in (fp32_parent_variant(m.variant), "fp32"):
        for b in group:
            if b.variant == wanted and b.runtime == m.runtime:
                return b
    fp32 = [b for b in group if b.variant == "fp32"]
    return min(fp32, key=lambda b: b.p50_ms) if fp32 else None


def _summary(measurements: list[Measurement]) -> list[str]:
    """Per model and batch size: the fastest variant/runtime with its accuracy, against fp32."""
    lines = []
    keys = list(dict.fromkeys((m.model, m.batch_size) for m in measurements))
    for model, batch_size in keys:
        group = [m for m in measurements if m.model == model and m.batch_size == batch_size]
        fastest = min(group, key=lambda m: m.p50_ms)
        line = f"{model}, batch {batch_size}: fastest is {fastest.label}, {fastest.p50_ms:.2f} ms p50 ({fastest.images_per_second:.0f} img/s)"
        if fastest.top1 is not None:
            line += f" at top-1 {fastest.top1:.1%}"
        fp32 = [m for m in group if m.variant == "fp32"]
        if fp32 and fastest.variant != "fp32":
            best_fp32 = min(fp32, key=lambda m: m.p50_ms)
            line += f"; fastest fp32 is {best_fp32.label}, {best_fp32.p50_ms:.2f} ms"
            if best_fp32.top1 is not None:
                line += f" at top-1 {best_fp32.top1:.1%}"
            if fastest.p50_ci_ms[1] >= best_fp32.p50_ci_ms[0]:
                line += " (the two are within noise of each other: their medians' confidence intervals overlap)"
        scored = [m for m in group if m.top1 is not None]
        if scored and fp32 and fp32[0].top1 is not None:
            # the usual shipping choice: the fastest variant that keeps accuracy within a point of fp32
            reference = max(m.top1 for m in fp32 if m.top1 is not None)
            close = [m for m in scored if m.top1 >= reference - 0.01]
            pick = min(close, key=lambda m: m.p50_ms)
            if pick is not fastest:
                line += f"; fastest within 1 point of fp32 accuracy: {pick.label}, {pick.p50_ms:.2f} ms at top-1 {pick.top1:.1%}"
        lines.append(line)
    return lines


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# ---- machine, saving ---------------------------------------------------------------------------------------

_INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
                      "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "i8mm", "bf16")


def machine_info() -> dict:
    """CPU model, cores, the SIMD flags that decide int8/fp16 speed, memory, GPU and library versions."""
    import platform

    import psutil

    cpu_model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "CPU part") and cpu_model in ("", platform.machine(), platform.processor()):
                    cpu_model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    info = {
        "cpu": cpu_model,
        "architecture": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_flags": [flag for flag in _INTERESTING_FLAGS if flag in flags],
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": _versions(),
        "gpu": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return info


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for package in ("edgekit", "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def stamp() -> str:
    """A UTC timestamp for report file names, sortable and free of characters awkward in paths."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def save_to_run(result: BenchResult, run_dir: str | os.PathLike, when: str | None = None) -> tuple[Path, Path]:
    """Write <run>/bench/<stamp>.json and <stamp>.md (atomically); a second bench in the same second gets -2, -3..."""
    from . import files
    from .report import markdown

    folder = Path(run_dir) / "bench"
    base = when or stamp()
    name, counter = base, 1
    while (folder / f"{name}.json").exists():
        counter += 1
        name = f"{base}-{counter}"
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    result.to_json(json_path)
    files.write_text(md_path, markdown(result))
    return json_path, md_path


# ---- memory ----------------------------------------------------------------------------------------------------


class PeakMemory:
    """The peak resident memory of this process inside a ``with`` block, as an increase over its start.

    Linux: the kernel's high-water mark (VmHWM), reset on entry through /proc/self/clear_refs, so the peak is
    exact and costs nothing. resource.getrusage's ru_maxrss cannot be used for this: it is a lifetime maximum
    that never comes down, so after one big model every smaller one would report the same peak. Elsewhere (or
    where clear_refs is not writable) a background thread samples RSS with psutil every 2 ms, which can miss
    spikes shorter than that.
    """

    _INTERVAL_S = 0.002

    def __enter__(self):
        self.start_mb = current_rss_mb()
        self.peak_mb = self.start_mb
        self._exact = _reset_high_water_mark()
        if not self._exact:
            import threading

            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, current_rss_mb())
            self._stop.wait(self._INTERVAL_S)

    def __exit__(self, *exc):
        if self._exact:
            self.peak_mb = max(self.start_mb, _high_water_mark_mb() or 0.0)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, current_rss_mb())
        return False

    @property
    def delta_mb(self) -> float:
        return max(0.0, self.peak_mb - self.start_mb)


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")  # 5 = reset the peak RSS to the current RSS (Linux 4.0+)
        return _high_water_mark_mb() is not None
    except OSError:
        return False


def _high_water_mark_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def gpu_used_mb() -> float | None:
    """Memory in use on CUDA device 0, device-wide (so it counts onnxruntime's allocations too); None without CUDA."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20
    except (ImportError, RuntimeError):
        return None
