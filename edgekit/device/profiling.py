"""Per-op profiles on the device, for `edgekit inspect --target`: ONNX Runtime's own profiler, taken as inspect takes
it on the host (warm-up, then profiled runs alternating with an unprofiled session timed as bench times it, spinning
off in both). The raw trace (``enable_profiling``) and the graph ORT really ran (``optimized_model_filepath``) go back
to the host as files, where ``inspection/profile_ort.py`` reads them with the same code as a local profile.

Standard library + numpy + onnxruntime, like the rest of the runner.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List

PROFILED_RUNTIMES = ("ort-cpu",)


def trace_name(artifact_id: str) -> str:
    return f"profile-{artifact_id}.json"


def graph_name(artifact_id: str) -> str:
    return f"optimized-{artifact_id}.onnx"


def profile(artifact: Dict[str, Any], batch, spec: Dict[str, Any], folder: str) -> Dict[str, Any]:
    """Profile one artifact on ``batch``; the trace and graph are written into ``folder`` under ``trace_name`` and
    ``graph_name``. Returns what the host needs beside them (the unprofiled times, the runs taken)."""
    if artifact["runtime"] not in PROFILED_RUNTIMES:
        return {"error": f"no per-op profile of {artifact['runtime']} on a target (ONNX Runtime only)"}
    from . import ort

    settings = {**(artifact.get("settings") or {}), "allow_spinning": False}
    threads = artifact.get("threads")
    where = (os.path.join(folder, f".profile-{artifact['id']}"), os.path.join(folder, graph_name(artifact["id"])))
    profiled = ort.open_session(artifact["path"], threads, settings, profile=where)  # a file the runner verified
    plain = ort.open_session(artifact["path"], threads, settings)
    feed = {profiled.get_inputs()[0].name: batch}
    warmup, runs = int(spec.get("warmup", 10)), int(spec.get("runs", 50))
    unprofiled = alternate(lambda: profiled.run(None, feed), lambda: plain.run(None, feed), warmup, runs)
    os.replace(profiled.end_profiling(), os.path.join(folder, trace_name(artifact["id"])))
    return {
        "trace": trace_name(artifact["id"]),
        "graph": graph_name(artifact["id"]),
        "unprofiled_ms": unprofiled,
        "warmup": warmup,
        "runs": runs,
    }


def alternate(profiled: Callable[[], object], plain: Callable[[], object], warmup: int, runs: int) -> List[float]:
    """Warm both up, then alternate one profiled and one timed plain run (so both see the same machine); the plain
    runs' milliseconds, timed with perf_counter around the call as bench does. The host's profiles (``inspection``)
    use this too."""
    for _ in range(warmup):
        profiled()
        plain()
    timed = []
    for _ in range(runs):
        profiled()
        started = time.perf_counter()
        plain()
        timed.append((time.perf_counter() - started) * 1000.0)
    return timed
