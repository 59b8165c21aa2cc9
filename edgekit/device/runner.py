"""The device runner: times model files and computes their logits on a target, by the protocol bench uses locally.

    python runner.pyz JOB.json        # (the host runs it; runner.pyz is this package, zipped)

It reads a job the host wrote (``job.json``, format below) in a job folder, checks every artifact's SHA-256 before
loading it, opens each on its runtime with exactly the settings the host decided for this target's CPU (threads,
session config such as ORT's int8 precision option), and:

- measures each one's cold figures alone (load time, first inference, peak RSS through loading and the first run,
  ``memory.PeakMemory``) and warms it up at every batch size;
- times them all interleaved at each batch size (``timing.interleaved``) under the contention monitor;
- or, for ``--quantize auto`` (``"race": {"seconds": S, "batch_size": B}``), races them in alternating blocks at
  batch B for about S seconds, dropping the clearly slower (``timing.race``, the loop auto uses on the host);
- or, for `edgekit inspect --target` (``"profile": {"warmup": W, "runs": R}``), profiles each one with its runtime's
  own profiler at batch 1 and leaves the raw profile in the job folder for the host to read (``profiling``);
- runs the job's bundle of preprocessed inputs (``bundle.npz``, loaded with ``allow_pickle=False``) through each,
  for logits the host compares with its PyTorch references (the comparison itself happens on the host, so parity
  has one implementation).

It writes ``result.json`` and ``logits.npz`` into the job folder, each to a temporary name renamed into place, and
exits 0. A problem it can explain (a changed file, a missing runtime, a full disk) is its last stderr line, a JSON
object ``{"error": kind, "message": ...}``, with exit status 3.

Standard library + numpy + the artifact's runtime; Python >= 3.9.

Job (``job_version`` 1)::

    {"job_version": 1, "batch_sizes": [1, 8], "warmup": 3, "iterations": 20, "timing": true,
     "contention_threshold": 0.25, "bundle": "bundle.npz" or null, "race": null or {"seconds": 20, "batch_size": 1} (optionally block_rounds, min_cycles, max_cycles),
     "artifacts": [{"id": "a0", "path": ".../model.int8.onnx", "files": {"model.int8.onnx": "<sha256>"},
                    "runtime": "ort-cpu", "threads": 2, "settings": {...},
                    "input": {"kind": "float32-nchw", "shape": [3, 224, 224]}, "fixed_batch": null,
                    "bundle_input": "float32-nchw" or null}]}
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List, Optional

JOB_VERSION = 1
FAILED = 3
LOGITS_BATCH = 16
RUNTIME_MODULES = {"ort-cpu": "onnxruntime", "openvino": "openvino", "executorch": "executorch", "litert": "ai_edge_litert", "ncnn": "ncnn"}


class JobError(Exception):
    """A problem the host turns into one line: ``kind`` says which, the message says what and the fix."""

    def __init__(self, kind: str, message: str, **details: Any):
        super().__init__(message)
        self.kind = kind
        self.details = details


# ---- files ------------------------------------------------------------------------------------------------------


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(artifact: Dict[str, Any]) -> None:
    """Every file of an artifact has the SHA-256 the host computed: nothing else is ever loaded."""
    folder = os.path.dirname(artifact["path"])
    for name, expected in artifact["files"].items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path) or sha256_of(path) != expected:
            raise JobError("changed-file", f"{path} is not the file the host sent (SHA-256 differs); run the command again to resend it")


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(temporary path)``, then rename into ``path``: a reader never sees a half file."""
    temporary = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{os.getpid()}.tmp"
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        if os.path.exists(temporary):
            os.unlink(temporary)
        if exc.errno == 28:  # ENOSPC
            raise JobError("disk-full", f"no space left on the device while writing {path}; free space there (df -h)") from exc
        raise


def load_bundle(path: Optional[str]) -> Dict[str, Any]:
    """The job's preprocessed inputs: plain arrays only, never pickled objects."""
    if not path:
        return {}
    import numpy as np

    with np.load(path, allow_pickle=False) as bundle:
        return {key: bundle[key] for key in bundle.files}


# ---- sessions ---------------------------------------------------------------------------------------------------


class Opened:
    """One artifact loaded on its runtime: ``run(batch) -> float32 logits`` and what was used."""

    def __init__(self, run: Callable, info: Dict[str, Any]):
        self.run = run
        self.info = info


def open_artifact(artifact: Dict[str, Any], settings: Dict[str, Any]) -> Opened:
    """Load an artifact on its runtime with ``settings`` (the host decided them for this CPU)."""
    runtime = artifact["runtime"]
    require(runtime)
    threads = artifact.get("threads")
    if runtime == "ort-cpu":
        return _open_ort(artifact["path"], threads, settings)
    if runtime == "openvino":
        return _open_openvino(artifact["path"], threads, settings)
    if runtime == "litert":
        return _open_litert(artifact["path"], threads)
    if runtime == "ncnn":
        return _open_ncnn(artifact["path"], threads, settings)
    return _open_executorch(artifact["path"], threads)


def require(runtime: str) -> None:
    """Import a runtime's module, or say which is missing (the host names the setup command)."""
    module = RUNTIME_MODULES.get(runtime)
    if module is None:
        raise JobError("unknown-runtime", f"runtime {runtime} does not run on a target")
    try:
        __import__(module)
    except ImportError as exc:
        raise JobError("missing-runtime", f"{module} is not installed in edgekit's venv ({exc})", runtime=runtime, module=module) from exc


def _open_ort(path: str, threads: Optional[int], settings: Dict[str, Any]) -> Opened:
    import numpy as np
    import onnxruntime

    from . import ort

    # onnxruntime's telemetry is an opt-out (ORT_DISABLE_TELEMETRY, set by this package's __init__ before the import);
    # older releases only have the runtime switch
    getattr(onnxruntime, "disable_telemetry_events", lambda: None)()
    session = ort.open_session(path, threads, settings)
    name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
    dtype = {"tensor(float16)": np.float16, "tensor(uint8)": np.uint8}.get(session.get_inputs()[0].type, np.float32)

    def run(batch):
        (logits,) = session.run([output], {name: np.ascontiguousarray(batch, dtype=dtype)})
        return np.asarray(logits, dtype=np.float32)

    info = {"library": f"onnxruntime {ort.version()}", "providers": session.get_providers()}
    info["intra_op_threads"] = threads if threads is not None else "default (physical cores)"
    info.update({key: settings[key] for key in sorted(settings)})
    return Opened(run, info)


def _open_openvino(path: str, threads: Optional[int], settings: Dict[str, Any]) -> Opened:
    from . import openvino

    compiled = openvino.compile_model(path, threads, settings)
    run = openvino.batch_runner(compiled)  # one request, or the batch split over THROUGHPUT's streams
    info = {"library": f"openvino {openvino.version()}", "config": openvino.compile_config(threads, settings)}
    return Opened(run, info)


def _open_litert(path: str, threads: Optional[int]) -> Opened:
    from .litert import LiteRtModel, version

    used = threads or os.cpu_count() or 1
    model = LiteRtModel(path, used)
    return Opened(model.run, {"library": f"ai-edge-litert {version()}", "threads": used, "delegate": "XNNPACK (default)"})


def _open_ncnn(path: str, threads: Optional[int], settings: Dict[str, Any]) -> Opened:
    from .ncnn import NcnnModel, version, weights_beside

    used = threads or os.cpu_count() or 1
    fp16 = bool(settings.get("fp16"))
    model = NcnnModel(path, weights_beside(path), threads=used, fp16=fp16)
    info = {"library": f"ncnn {version()}", "threads": used, "vulkan": "off", "fp16_storage_and_arithmetic": "on" if fp16 else "off"}
    return Opened(model.run, info)


def _open_executorch(path: str, threads: Optional[int]) -> Opened:
    from . import executorch

    method, used = executorch.load_method(path, threads)
    if method is None:
        raise JobError("bad-artifact", f"{path} has no forward method")
    return Opened(lambda batch: executorch.execute(method, batch, None), {"library": f"executorch {executorch.version()}", "threads": used})


def example_batch(artifact: Dict[str, Any], batch_size: int):
    """A random batch of the artifact's input (values do not change the work done)."""
    import numpy as np

    shape = tuple(int(d) for d in artifact["input"]["shape"])
    generator = np.random.default_rng(0)
    if artifact["input"]["kind"] == "uint8-nhwc":
        return generator.integers(0, 256, size=(batch_size, *shape), dtype=np.uint8)
    return generator.standard_normal(size=(batch_size, *shape)).astype(np.float32)


def takes(artifact: Dict[str, Any], batch_size: int) -> bool:
    return artifact.get("fixed_batch") in (None, batch_size)


# ---- measuring --------------------------------------------------------------------------------------------------


def load_one(artifact: Dict[str, Any], job: Dict[str, Any]):
    """(Opened or None, its record): cold figures measured alone, then warm-up at every batch size it takes."""
    from .memory import PeakMemory

    record: Dict[str, Any] = {"id": artifact["id"], "cold": {}, "times": {}, "chunks": {}, "remeasured": {}, "notes": [], "error": None}
    timed = job.get("timing", True)  # False: logits only (parity), and every run is slow on an emulated board
    sizes = [b for b in job["batch_sizes"] if takes(artifact, b)] if timed else []
    try:
        with PeakMemory() as memory:
            started = time.perf_counter()
            opened = open_artifact(artifact, artifact.get("settings") or {})
            record["cold"]["load_ms"] = (time.perf_counter() - started) * 1000
            record["cold"]["load_rss_delta_mb"] = memory.checkpoint()
            first = sizes[0] if sizes else artifact.get("fixed_batch")
            if timed and first:
                started = time.perf_counter()
                opened.run(example_batch(artifact, first))
                record["cold"].update({"first_inference_ms": (time.perf_counter() - started) * 1000, "first_inference_batch_size": first})
                record["cold"]["first_rss_delta_mb"] = memory.checkpoint()
            for batch_size in sizes:
                batch = example_batch(artifact, batch_size)
                for _ in range(max(1, int(job["warmup"]))):
                    opened.run(batch)
    except JobError as error:
        if error.kind in ("missing-runtime", "changed-file"):
            raise
        record["error"] = str(error)
        return None, record
    except Exception as exc:  # a file its runtime refuses: reported for this artifact, the others still run
        record["error"] = f"{type(exc).__name__}: {_first_line(exc)}"
        return None, record
    record["rss_delta_mb"] = memory.delta_mb
    record["info"] = opened.info
    for batch_size in job["batch_sizes"]:
        if not takes(artifact, batch_size):
            record["notes"].append(f"model has a fixed batch of {artifact['fixed_batch']}; batch {batch_size} not measured")
    return opened, record


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _chunks(chunks) -> List[List[Any]]:
    return [[chunk.seconds, chunk.share, chunk.contended] for chunk in chunks]


def time_interleaved(loaded: List, job: Dict[str, Any], monitor) -> None:
    """Every loaded artifact that takes a batch size, interleaved at it (``timing.interleaved``)."""
    from . import timing

    for batch_size in job["batch_sizes"]:
        active = [(artifact, opened, record) for artifact, opened, record in loaded if takes(artifact, batch_size)]
        calls = [_call(opened, example_batch(artifact, batch_size)) for artifact, opened, _ in active]
        for (_, _, record), timed in zip(active, timing.interleaved(calls, int(job["iterations"]), monitor)):
            key = str(batch_size)
            record["times"][key], record["chunks"][key], record["remeasured"][key] = timed.times, _chunks(timed.chunks), timed.remeasured


def race_blocks(loaded: List, race: Dict[str, Any], monitor) -> None:
    """auto's race at one batch size: each record gets its times, block medians by cycle and when it was dropped."""
    from . import timing

    batch_size = int(race["batch_size"])
    active = [(artifact, opened, record) for artifact, opened, record in loaded if takes(artifact, batch_size)]
    calls = [_call(opened, example_batch(artifact, batch_size)) for artifact, opened, _ in active]
    raced_calls = timing.race(
        calls,
        float(race["seconds"]),
        monitor,
        block_rounds=int(race.get("block_rounds") or timing.BLOCK_ROUNDS),
        min_cycles=int(race.get("min_cycles") or timing.RACE_MIN_CYCLES),
        max_cycles=int(race.get("max_cycles") or timing.RACE_MAX_CYCLES),
    )
    for (_, _, record), raced in zip(active, raced_calls):
        key = str(batch_size)
        record["times"][key], record["chunks"][key], record["remeasured"][key] = raced.times, _chunks(raced.chunks), raced.remeasured
        record["blocks"] = {str(cycle): median for cycle, median in raced.blocks.items()}
        record["dropped_after"] = raced.dropped_after


def _call(opened: Opened, batch) -> Callable[[], object]:
    return lambda: opened.run(batch)


def bundle_logits(loaded: List, bundle: Dict[str, Any]) -> Dict[str, Any]:
    """Each artifact's logits for its bundled inputs, in batches it takes."""
    import numpy as np

    logits = {}
    for artifact, opened, _ in loaded:
        key = artifact.get("bundle_input")
        if not key:
            continue
        inputs = bundle[key]
        step = artifact.get("fixed_batch") or LOGITS_BATCH
        parts = []
        for start in range(0, len(inputs), step):
            batch = inputs[start : start + step]
            if artifact.get("fixed_batch") and len(batch) < step:  # a fixed-batch model gets a full batch, padded
                padded = np.concatenate([batch, np.repeat(batch[-1:], step - len(batch), axis=0)])
                parts.append(opened.run(padded)[: len(batch)])
            else:
                parts.append(opened.run(batch))
        logits[f"logits_{artifact['id']}"] = np.concatenate(parts).astype(np.float32)
    return logits


def run_job(job: Dict[str, Any], folder: str) -> Dict[str, Any]:
    """Everything a job asks for; returns the result (the logits are written beside it)."""
    import numpy as np

    from . import contention
    from .memory import current_rss_mb

    if job.get("job_version") != JOB_VERSION:
        raise JobError(
            "version", f"job version {job.get('job_version')} is not {JOB_VERSION}; the host and runner differ, run the command again"
        )
    started = time.perf_counter()
    for artifact in job["artifacts"]:
        verify(artifact)
    bundle = load_bundle(os.path.join(folder, job["bundle"]) if job.get("bundle") else None)
    for runtime in sorted({artifact["runtime"] for artifact in job["artifacts"]}):
        require(runtime)  # before anything is timed, and so the memory baseline includes the runtime's libraries
    base_rss = current_rss_mb()
    monitor = contention.Monitor(threshold=float(job.get("contention_threshold", contention.CONTENDED_SHARE)))
    loaded, records = [], []
    for artifact in job["artifacts"]:
        opened, record = load_one(artifact, job)
        records.append(record)
        if opened is not None:
            loaded.append((artifact, opened, record))
    if job.get("race"):
        race_blocks(loaded, job["race"], monitor)
    elif job.get("timing", True):
        time_interleaved(loaded, job, monitor)
    if job.get("profile"):
        from . import profiling

        for artifact, _, record in loaded:
            record["profile"] = profiling.profile(
                artifact, example_batch(artifact, artifact.get("fixed_batch") or 1), job["profile"], folder
            )
    logits = bundle_logits(loaded, bundle)
    write_atomically(os.path.join(folder, "logits.npz"), lambda path: _save_npz(path, logits))
    return {
        "job_version": JOB_VERSION,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "base_rss_mb": base_rss,
        "artifacts": records,
        "contention": {"chunks": _chunks(monitor.chunks), "remeasured": monitor.remeasured, "threshold": monitor.threshold},
        "seconds": time.perf_counter() - started,
    }


def _save_npz(path: str, arrays: Dict[str, Any]) -> None:
    import numpy as np

    with open(path, "wb") as handle:  # a file object: np.savez would append ".npz" to a temporary name
        np.savez(handle, **arrays)


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python runner.pyz JOB.json\n")
        sys.exit(2)
    folder = os.path.dirname(os.path.abspath(argv[0]))
    try:
        with open(argv[0], encoding="utf-8") as handle:
            job = json.load(handle)
        result = run_job(job, folder)
        text = json.dumps(result)
        write_atomically(os.path.join(folder, "result.json"), lambda path: _write_text(path, text))
    except JobError as error:
        sys.stderr.write("\n" + json.dumps({"error": error.kind, "message": str(error), **error.details}) + "\n")
        sys.exit(FAILED)
    except OSError as exc:
        kind = "disk-full" if exc.errno == 28 else "os-error"
        sys.stderr.write("\n" + json.dumps({"error": kind, "message": f"{type(exc).__name__}: {exc}"}) + "\n")
        sys.exit(FAILED)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
