"""Per-op profiles on the device, for `edgekit inspect --target`, taken as inspect takes them on the host: warm-up,
then profiled runs alternating with an unprofiled session timed as bench times it. Each runtime's own profiler:

- ONNX Runtime: the raw trace (``enable_profiling``, spinning off) and the graph ORT really ran
  (``optimized_model_filepath``);
- OpenVINO: the CPU plugin's performance counters (``PERF_COUNT``: node, type, exec type, time) after every run, and
  the executable graph's producers and original layer names, as one JSON file (``counters``, also used on the host);
- ExecuTorch: the event tracer's ETDump (``enable_etdump``), a flatbuffer the host reads with devtools' Inspector.

The files go back to the host, where ``inspection/profile_*.py`` read them with the same code as a local profile.

Standard library + numpy + the artifact's runtime, like the rest of the runner.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List


def profile(artifact: Dict[str, Any], batch, spec: Dict[str, Any], folder: str) -> Dict[str, Any]:
    """Profile one artifact on ``batch``, writing its runtime's profile files into ``folder``. Returns their names
    (``files``: what each is, -> file name) and what the host needs beside them (the unprofiled times, the runs)."""
    runtime = artifact["runtime"]
    if runtime not in PROFILERS:
        return {"error": f"no per-op profile of {runtime} on a target ({', '.join(PROFILED_RUNTIMES)} only)"}
    warmup, runs = int(spec.get("warmup", 10)), int(spec.get("runs", 50))
    files, unprofiled = PROFILERS[runtime](artifact, batch, warmup, runs, folder)
    return {"files": files, "unprofiled_ms": unprofiled, "warmup": warmup, "runs": runs}


def _ort(artifact: Dict[str, Any], batch, warmup: int, runs: int, folder: str):
    from . import ort

    settings = {**(artifact.get("settings") or {}), "allow_spinning": False}
    threads, name = artifact.get("threads"), artifact["id"]
    files = {"trace": f"profile-{name}.json", "graph": f"optimized-{name}.onnx"}
    where = (os.path.join(folder, f".profile-{name}"), os.path.join(folder, files["graph"]))
    profiled = ort.open_session(artifact["path"], threads, settings, profile=where)  # a file the runner verified
    plain = ort.open_session(artifact["path"], threads, settings)
    feed = {profiled.get_inputs()[0].name: batch}
    unprofiled = alternate(lambda: profiled.run(None, feed), lambda: plain.run(None, feed), warmup, runs)
    os.replace(profiled.end_profiling(), os.path.join(folder, files["trace"]))
    return files, unprofiled


def _openvino(artifact: Dict[str, Any], batch, warmup: int, runs: int, folder: str):
    from . import openvino

    settings, threads = artifact.get("settings") or {}, artifact.get("threads")
    counted = openvino.compile_model(artifact["path"], threads, {**settings, "perf_count": True})
    request = counted.create_infer_request()
    profiled = openvino.batch_runner(counted, request)  # one request: the one whose counters are read
    plain = openvino.batch_runner(openvino.compile_model(artifact["path"], threads, settings))
    record = counters(lambda: profiled(batch), request.get_profiling_info, counted.get_runtime_model(), lambda: plain(batch), warmup, runs)
    files = {"counters": f"counters-{artifact['id']}.json"}
    with open(os.path.join(folder, files["counters"]), "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    return files, record.pop("unprofiled_ms")


def counters(
    profiled: Callable[[], object], read: Callable[[], list], runtime_model, plain: Callable[[], object], warmup: int, runs: int
) -> Dict[str, Any]:
    """OpenVINO's performance counters over ``runs`` profiled runs (after ``warmup``), as plain JSON: per executed
    node its type, exec type (the kernel: ``jit_avx512_I8``, ``gemm_acl_f32``...) and ms per run; the profiled runs'
    own ms; the unprofiled ms; and the executable graph (each node's producers and ``originalLayersNames``, which tie
    a fused node back to the IR's layers). The counters hold the last run only, so they are read after every run."""
    per_node: Dict[str, List[float]] = {}
    facts: Dict[str, List[str]] = {}
    run_ms: List[float] = []

    def profiled_run() -> None:
        started = time.perf_counter()
        profiled()
        run_ms.append((time.perf_counter() - started) * 1000.0)
        for info in read():
            if str(info.status).endswith(".EXECUTED"):
                per_node.setdefault(info.node_name, []).append(info.real_time.total_seconds() * 1000.0)
                facts[info.node_name] = [info.node_type, info.exec_type]

    unprofiled = alternate(profiled_run, plain, warmup, runs)
    graph = {}
    for op in runtime_model.get_ordered_ops():
        info = op.get_rt_info()
        original = str(info["originalLayersNames"].astype(str)) if "originalLayersNames" in info else ""
        graph[op.get_friendly_name()] = {
            "original": [name for name in original.split(",") if name],
            "inputs": [i.get_source_output().get_node().get_friendly_name() for i in op.inputs()],
        }
    nodes = {
        name: {"type": facts[name][0], "exec_type": facts[name][1], "ms": times[warmup:]}
        for name, times in per_node.items()
        if times[warmup:]
    }
    return {"nodes": nodes, "run_ms": run_ms[warmup:], "unprofiled_ms": unprofiled, "graph": graph}


def _executorch(artifact: Dict[str, Any], batch, warmup: int, runs: int, folder: str):
    from . import executorch

    threads, name = artifact.get("threads"), artifact["id"]
    program, _ = executorch.load_program(artifact["path"], threads, etdump=True)
    traced = program.load_method("forward")
    plain, _ = executorch.load_method(artifact["path"], threads)
    unprofiled = alternate(lambda: executorch.execute(traced, batch, None), lambda: executorch.execute(plain, batch, None), warmup, runs)
    files = {"etdump": f"etdump-{name}.etdp"}
    program.write_etdump_result_to_file(os.path.join(folder, files["etdump"]), os.path.join(folder, f".etdump-{name}.debug"))
    return files, unprofiled


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


PROFILERS = {"ort-cpu": _ort, "openvino": _openvino, "executorch": _executorch}  # runtime -> its profile on the device
PROFILED_RUNTIMES = tuple(PROFILERS)
