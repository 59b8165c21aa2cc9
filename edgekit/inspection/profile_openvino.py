"""OpenVINO's own profile of an IR (or an .onnx read directly): the CPU plugin's performance counters
(``PERF_COUNT``, ``InferRequest.get_profiling_info()``: node, type, exec type such as ``brgconv_avx512_amx_I8`` or
``jit_avx512_f32``, real time), what ``benchmark_app -pc`` prints, read after every profiled run (the counters hold
the last run only) and taken as medians. The executable graph (``get_runtime_model()``) gives each node's
producers, and its ``originalLayersNames`` tie a fused node back to the IR's layers. The counting itself is the
device runner's (``device/profiling.counters``), so a profile taken on a target reads the same.

The precision a node ran in is its exec type's suffix (``I8``/``u8``/``i8``: int8; ``bf16``; ``f16``; ``f32``).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from ..device.profiling import counters  # the device runner profiles the same way
from .profile import DATA_MOVEMENT, Measured, RanNode

OV_DATA_MOVEMENT = ("Reorder", "Transpose", "FakeQuantize", "Convert", "Reshape")


def ran_as(node_type: str, exec_type: str) -> str:
    if node_type in OV_DATA_MOVEMENT:
        return DATA_MOVEMENT
    lowered = exec_type.lower()
    for marker, precision in (("i8", "int8"), ("u8", "int8"), ("bf16", "bf16"), ("f16", "fp16"), ("f32", "fp32")):
        if lowered.endswith(marker) or f"_{marker}" in lowered:
            return precision
    return "fp32"


SOURCE = "openvino PERF_COUNT (get_profiling_info)"


def measure(artifact: Path, sample: np.ndarray, threads: int | None, warmup: int, runs: int) -> tuple[Measured, dict[str, str]]:
    """Profile ``artifact`` on OpenVINO's CPU plugin with edgekit's runtime settings (float32 unless asked, LATENCY)."""
    from .. import runtimes

    profiled = runtimes.load(artifact, "openvino", threads, perf_count=True)
    plain = runtimes.load(artifact, "openvino", threads)
    request, runtime_model = profiled.request, profiled.compiled.get_runtime_model()  # type: ignore[attr-defined]
    record = counters(lambda: profiled.run(sample), request.get_profiling_info, runtime_model, lambda: plain.run(sample), warmup, runs)
    settings = {k: str(v) for k, v in plain.info.items() if k in ("library", "threads", "inference_precision_hint", "performance_hint")}
    return read_counters(artifact, record, record["unprofiled_ms"], settings), {}


def from_target(artifact: Path, folder: Path, done: dict, used: dict) -> tuple[Measured, dict[str, str]]:
    """The counters the device runner took (``device/profiling.py``), read as a local profile is."""
    record = json.loads((folder / done["files"]["counters"]).read_text(encoding="utf-8"))  # plain JSON, nothing unpickled
    config = {key.lower(): value for key, value in (used.get("config") or {}).items()}  # the compile config the device used
    settings = {"library": str(used.get("library", "openvino")), "threads": str(config.get("inference_num_threads", "default"))}
    settings.update({key: str(config[key]) for key in ("inference_precision_hint", "performance_hint") if key in config})
    return read_counters(artifact, record, list(done["unprofiled_ms"]), settings), {}


def read_counters(artifact: Path, record: dict, unprofiled: list[float], settings: dict[str, str]) -> Measured:
    """RanNode rows from ``counters``' record (made here or on a target): each executed node's median time, the
    precision its exec type says it ran in, and the IR layer it computes."""
    precisions = _meant(artifact)
    graph = _layers(record["graph"], set(precisions))
    nodes = []
    for name, ran in record["nodes"].items():
        node_type, exec_type = str(ran["type"]), str(ran["exec_type"])
        layer, inputs = graph.get(name, (None, []))
        nodes.append(
            RanNode(
                node=name,
                op_type=node_type,
                ms=statistics.median(float(ms) for ms in ran["ms"]),
                ran_as=ran_as(node_type, exec_type),
                kernel=exec_type,
                layer=layer if node_type not in OV_DATA_MOVEMENT else None,
                meant=precisions.get(layer) if layer else None,
                inputs=inputs,
                outputs=[name],
            )
        )
    return Measured(nodes, [float(ms) for ms in record["run_ms"]], unprofiled, settings)


def _layers(graph: dict, layers: set[str]) -> dict[str, tuple[str | None, list[str]]]:
    """Executable node name -> (the IR layer it computes: the first of its original layers that is one of
    ``layers``, and the names of the nodes feeding it)."""
    from .openvino_numerics import onnx_node_name

    found = {}
    for name, node in graph.items():
        names = [onnx_node_name(n) for n in node["original"]]
        own = onnx_node_name(name)
        found[name] = (next((n for n in names if n in layers), own if own in layers else None), list(node["inputs"]))
    return found


def _meant(artifact: Path) -> dict[str, str]:
    from ..formats import format_of
    from ..runtimes.openvino import read_ir
    from .openvino_numerics import ir_layer_precisions

    if format_of(artifact).name != "openvino":  # an .onnx read by OpenVINO: no FakeQuantize says what is meant
        return {}
    model, _ = read_ir(artifact)
    return ir_layer_precisions(model)
