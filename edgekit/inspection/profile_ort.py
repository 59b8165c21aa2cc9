"""ONNX Runtime's own profile of an ONNX file: ``SessionOptions.enable_profiling`` (a JSON trace with every node's
duration per run) and ``optimized_model_filepath`` (the graph ORT really ran, after its fusions and layout changes),
read together.

What a node ran as comes from the optimized graph: ``QLinearConv``/``QLinearMatMul``/``ConvInteger``/... are int8
kernels; ``Conv``/``FusedConv``/an NCHWc ``Conv`` reading float tensors are float ones. The optimized graph keeps the
file's node names for most nodes (``node_Conv_302`` or ``node_Conv_302_token_6``) and names NCHWc convolutions after
their output (``getitem_6_nchwc``), which ties each kernel back to the file's layer.
"""

from __future__ import annotations

import bisect
import json
import re
import statistics
import tempfile
from pathlib import Path

import numpy as np

from ..device.profiling import alternate  # the device runner profiles the same way
from ..errors import ModelError
from ..safety import check_onnx_file
from .onnx_layers import INTEGER_OPS, LAYER_OPS, Graph, layer_precision, module_of
from .profile import DATA_MOVEMENT, Measured, RanNode

ORT_DATA_MOVEMENT = ("ReorderInput", "ReorderOutput", "Transpose", "QuantizeLinear", "DequantizeLinear", "Cast", "DynamicQuantizeLinear")
INT8_KERNELS = INTEGER_OPS + (
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "QLinearConcat",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearSoftmax",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
)
_TOKEN = re.compile(r"(_token_\d+)+$")
SOURCE = "onnxruntime enable_profiling"


def measure(artifact: Path, sample: np.ndarray, threads: int | None, warmup: int, runs: int) -> tuple[Measured, dict[str, str]]:
    """Profile ``artifact`` on ONNX Runtime's CPU provider with edgekit's runtime settings (the file's session config
    for this CPU); returns the measurement and the artifact's layer -> PyTorch module names."""
    import onnx

    from .. import runtimes

    with tempfile.TemporaryDirectory(prefix="edgekit-inspect-ort-") as workdir:
        # Spinning off in both, as bench's interleaved timing has it: the two sessions take turns, and one's idle
        # threads spinning on 2 cores made the other's runs 10x slower (30.7 vs 2.2 ms on a ResNet-18 at 48 px).
        profiled = runtimes.load(artifact, "ort-cpu", threads, profile_dir=workdir, allow_spinning=False)
        plain = runtimes.load(artifact, "ort-cpu", threads, allow_spinning=False)
        unprofiled = alternate(lambda: profiled.run(sample), lambda: plain.run(sample), warmup, runs)
        trace = json.loads(profiled.end_profiling().read_text(encoding="utf-8"))  # type: ignore[attr-defined]
        optimized = onnx.load(str(Path(workdir) / "optimized.onnx"))  # written by ORT itself from the checked file
    settings = {
        k: str(v) for k, v in plain.info.items() if k in ("library", "intra_op_threads", "session_config", "graph_optimization_level")
    }
    return read_profile(artifact, trace, optimized, runs, unprofiled, settings)


def from_target(artifact: Path, folder: Path, done: dict, used: dict) -> tuple[Measured, dict[str, str]]:
    """The trace and graph the device runner wrote (``device/profiling.py``), read as a local profile is. The graph
    came from the device, so it is parsed as any untrusted ONNX file is: without external data."""
    trace = json.loads((folder / done["files"]["trace"]).read_text(encoding="utf-8"))  # plain JSON, nothing unpickled
    optimized = check_onnx_file(folder / done["files"]["graph"])
    settings = {k: str(v) for k, v in used.items() if k in ("library", "intra_op_threads", "session_config")}
    return read_profile(artifact, trace, optimized, int(done["runs"]), list(done["unprofiled_ms"]), settings)


def read_profile(artifact: Path, trace: list[dict], optimized, runs: int, unprofiled: list[float], settings: dict[str, str]):
    """(Measured, layer -> module names) from ORT's trace and the graph it ran, made here or on a target (the device
    runner returns both files: ``device/profiling.py``)."""
    import onnx

    check_onnx_file(artifact)
    file_graph = Graph(onnx.load(str(artifact)))
    run_ms, node_ms, input_types = _parse_trace(trace, runs)
    nodes = [
        _ran_node(node, node_ms[node.name], input_types.get(node.name, ""), file_graph)
        for node in optimized.graph.node
        if node.name in node_ms
    ]
    names = {n.name: module_of(file_graph, n) or n.name for n in file_graph.model.graph.node if n.op_type in LAYER_OPS}  # type: ignore[attr-defined]
    notes = [] if nodes else ["the trace had no node events; this onnxruntime build may not profile nodes"]
    return Measured(nodes, run_ms, unprofiled, settings, notes), names


def _parse_trace(trace: list[dict], runs: int) -> tuple[list[float], dict[str, float], dict[str, str]]:
    """(ms per profiled run, node name -> its median ms per run, node name -> its first input's element type) over
    the last ``runs`` model_run events (the warm-up runs before them are left out). Medians, not means: on a shared
    machine one descheduled thread can add tens of ms to one node of one run."""
    windows = [
        (e["ts"], e["ts"] + e["dur"], e["dur"] / 1000.0) for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"
    ]
    windows = windows[-runs:] if runs else windows
    if not windows:
        raise ModelError("onnxruntime's profile has no model_run event; the profiler did not record the runs")
    starts = [w[0] for w in windows]
    per_run: dict[str, list[float]] = {}
    types: dict[str, str] = {}
    for event in trace:
        name, ts = event.get("name", ""), event.get("ts", 0)
        if event.get("cat") != "Node" or not name.endswith("_kernel_time") or ts < starts[0]:
            continue
        run = bisect.bisect_right(starts, ts) - 1
        if ts > windows[run][1]:
            continue  # between runs
        node = name.removesuffix("_kernel_time")
        per_run.setdefault(node, [0.0] * len(windows))[run] += event.get("dur", 0) / 1000.0
        shapes = event.get("args", {}).get("input_type_shape") or [{}]
        types.setdefault(node, next(iter(shapes[0]), "") if isinstance(shapes[0], dict) else "")
    medians = {node: statistics.median(times) for node, times in per_run.items()}
    return [w[2] for w in windows], medians, types


def _ran_node(node, ms: float, input_type: str, file_graph: Graph) -> RanNode:
    ran_as = _ran_as(node, input_type)
    layer = _file_layer(node, file_graph) if ran_as != DATA_MOVEMENT else None
    meant = layer_precision(file_graph, layer, "") if layer is not None else None
    return RanNode(
        node=node.name,
        op_type=node.op_type,
        ms=ms,
        ran_as=ran_as,
        kernel=f"{node.domain + ':' if node.domain else ''}{node.op_type}",
        layer=layer,
        meant=meant,
        inputs=[i for i in node.input if i],
        outputs=list(node.output),
    )


def _ran_as(node, input_type: str) -> str:
    """int8 for an integer kernel, else the element type the node really read (the profile records it)."""
    if node.op_type in ORT_DATA_MOVEMENT:
        return DATA_MOVEMENT
    if node.op_type in INT8_KERNELS or input_type in ("uint8", "int8"):
        return "int8"
    return {"float16": "fp16", "double": "fp64", "bfloat16": "bf16"}.get(input_type, "fp32")


def _file_layer(node, file_graph: Graph) -> str | None:
    """The file's layer (a Conv/Gemm/MatMul node name) this optimized-graph node computes, if any."""
    candidates = [node.name, _TOKEN.sub("", node.name)]
    if node.name.endswith("_nchwc"):
        producer = file_graph.producers.get(node.name.removesuffix("_nchwc"))
        candidates.append(producer.name if producer is not None else "")
    candidates += list(node.output)
    for output in node.output:
        producer = file_graph.producers.get(output)
        candidates.append(producer.name if producer is not None else "")
    for name in candidates:
        found = file_graph.nodes.get(name)
        if found is not None and found.op_type in LAYER_OPS + INTEGER_OPS:
            return found.name
    return None
