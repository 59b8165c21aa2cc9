"""OpenVINO's own profile of an IR (or an .onnx read directly): the CPU plugin's performance counters
(``PERF_COUNT``, ``InferRequest.get_profiling_info()``: node, type, exec type such as ``brgconv_avx512_amx_I8`` or
``jit_avx512_f32``, real time), what ``benchmark_app -pc`` prints, read after every profiled run (the counters hold
the last run only) and taken as medians. The executable graph (``get_runtime_model()``) gives each node's
producers, and its ``originalLayersNames`` tie a fused node back to the IR's layers.

The precision a node ran in is its exec type's suffix (``I8``/``u8``/``i8``: int8; ``bf16``; ``f16``; ``f32``).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from ..device.profiling import alternate  # the device runner profiles the same way
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


def measure_openvino(artifact: Path, sample: np.ndarray, threads: int | None, warmup: int, runs: int) -> tuple[Measured, dict[str, str]]:
    """Profile ``artifact`` on OpenVINO's CPU plugin with edgekit's runtime settings (float32 unless asked, LATENCY)."""
    from .. import runtimes

    profiled = runtimes.load(artifact, "openvino", threads, perf_count=True)
    plain = runtimes.load(artifact, "openvino", threads)
    per_node: dict[str, list[float]] = {}
    facts: dict[str, tuple[str, str]] = {}
    run_ms: list[float] = []

    def profiled_run() -> None:
        started = time.perf_counter()
        profiled.run(sample)
        run_ms.append((time.perf_counter() - started) * 1000.0)
        for info in profiled.profiling_info()[0]:  # type: ignore[attr-defined]
            if str(info.status).endswith(".EXECUTED"):
                per_node.setdefault(info.node_name, []).append(info.real_time.total_seconds() * 1000.0)
                facts[info.node_name] = (info.node_type, info.exec_type)

    unprofiled = alternate(profiled_run, lambda: plain.run(sample), warmup, runs)
    run_ms, kept = run_ms[warmup:], {name: times[warmup:] for name, times in per_node.items()}
    precisions = _meant(artifact)
    graph = _executable_graph(profiled.profiling_info()[1], set(precisions))  # type: ignore[attr-defined]
    nodes = []
    for name, times in kept.items():
        if not times:
            continue
        node_type, exec_type = facts[name]
        layer, inputs = graph.get(name, (None, []))
        nodes.append(
            RanNode(
                node=name,
                op_type=node_type,
                ms=statistics.median(times),
                ran_as=ran_as(node_type, exec_type),
                kernel=exec_type,
                layer=layer if node_type not in OV_DATA_MOVEMENT else None,
                meant=precisions.get(layer) if layer else None,
                inputs=inputs,
                outputs=[name],
            )
        )
    settings = {k: str(v) for k, v in plain.info.items() if k in ("library", "threads", "inference_precision_hint", "performance_hint")}
    return Measured(nodes, run_ms, unprofiled, settings), {}


def _executable_graph(runtime_model, layers: set[str]) -> dict[str, tuple[str | None, list[str]]]:
    """Executable node name -> (the IR layer it computes: the first of its original layers that is one of
    ``layers``, and the names of the nodes feeding it)."""
    from .openvino_numerics import onnx_node_name

    graph = {}
    for op in runtime_model.get_ordered_ops():
        info = op.get_rt_info()
        original = str(info["originalLayersNames"].astype(str)) if "originalLayersNames" in info else ""
        names = [onnx_node_name(n) for n in original.split(",") if n]
        producers = [i.get_source_output().get_node().get_friendly_name() for i in op.inputs()]
        own = onnx_node_name(op.get_friendly_name())
        layer = next((n for n in names if n in layers), own if own in layers else None)
        graph[op.get_friendly_name()] = (layer, producers)
    return graph


def _meant(artifact: Path) -> dict[str, str]:
    from ..formats import format_of
    from ..runtimes.openvino import read_ir
    from .openvino_numerics import ir_layer_precisions

    if format_of(artifact).name != "openvino":  # an .onnx read by OpenVINO: no FakeQuantize says what is meant
        return {}
    model, _ = read_ir(artifact)
    return ir_layer_precisions(model)
