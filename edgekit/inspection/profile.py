"""Time per op, the same way for every runtime: each runtime's module (``profile_ort``, ``profile_openvino``,
``profile_executorch``) turns its own profiler's output into ``RanNode`` rows, and this module aggregates them per
op type, ranks the nodes, and raises the flags:

- *meant int8, ran float*: a layer the file quantizes (QDQ-wrapped, FakeQuantize on its input) whose kernel ran in
  float: it pays the dequantize and the float cost, the worst of both;
- *float layer in an int8 graph*: a layer kept in float between int8 ones, with the data movement the runtime put
  around it (ONNX Runtime wraps a float conv in NCHWc ``ReorderInput``/``ReorderOutput`` and the int8 ones in NHWC
  ``Transpose``), so its real price shows;
- *data movement*: a reorder, transpose, quantize/dequantize or cast costing more than ``share_threshold`` of the
  total, alone or all of one kind together.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .results import Flag, NodeTime, OpTypeTime, Profile

SHARE_THRESHOLD = 0.05  # data movement above 5% of an inference is worth a look
DATA_MOVEMENT = "data movement"
WARMUP = 10
RUNS = 50


@dataclass
class RanNode:
    """One node as the runtime ran it, before aggregation."""

    node: str
    op_type: str
    ms: float  # mean per inference
    ran_as: str  # int8, fp32, fp16, bf16, DATA_MOVEMENT or "unknown"
    kernel: str = ""
    layer: str | None = None  # the artifact's layer (ONNX node name / IR friendly name) it computes
    meant: str | None = None  # the precision the file asks of that layer
    inputs: list[str] = field(default_factory=list)  # edges to its neighbours (tensor names, or producer names)
    outputs: list[str] = field(default_factory=list)


@dataclass
class Measured:
    """What a runtime's profiler gave for the timed runs."""

    nodes: list[RanNode]
    run_ms: list[float]  # the profiler's time per inference, one per run
    unprofiled_ms: list[float]  # the same file without the profiler, timed as bench times it
    settings: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def summarize(
    runtime: str, source: str, measured: Measured, batch_size: int, warmup: int, share_threshold: float, layer_names: dict[str, str]
) -> Profile:
    """The Profile of one artifact on one runtime; ``layer_names`` maps artifact layers to the names the numerics use
    (PyTorch module paths)."""
    nodes = sorted(measured.nodes, key=lambda n: -n.ms)
    ops_ms = sum(n.ms for n in nodes) or 1e-12
    profiled_run = statistics.median(measured.run_ms) if measured.run_ms else ops_ms
    by_type: dict[str, list[RanNode]] = {}
    for node in nodes:
        by_type.setdefault(node.op_type, []).append(node)
    op_types = sorted(
        (
            OpTypeTime(op_type=t, ms=round(sum(n.ms for n in group), 4), share=sum(n.ms for n in group) / ops_ms, count=len(group))
            for t, group in by_type.items()
        ),
        key=lambda item: -item.ms,
    )
    rows = [
        NodeTime(
            node=n.node,
            op_type=n.op_type,
            ms=round(n.ms, 4),
            share=n.ms / ops_ms,
            ran_as=n.ran_as,
            kernel=n.kernel,
            layer=_named(n.layer, layer_names),
        )
        for n in nodes
    ]
    flags = _precision_flags(nodes, ops_ms, layer_names) + _data_movement_flags(nodes, by_type, ops_ms, share_threshold)
    return Profile(
        runtime=runtime,
        source=source,
        batch_size=batch_size,
        runs=len(measured.run_ms),
        warmup=warmup,
        total_ms=round(ops_ms, 4),
        profiled_run_ms=round(profiled_run, 4),
        unprofiled_p50_ms=round(statistics.median(measured.unprofiled_ms), 4) if measured.unprofiled_ms else None,
        op_types=op_types,
        nodes=rows,
        flags=flags,
        share_threshold=share_threshold,
        settings=measured.settings,
        notes=measured.notes,
    )


def _named(layer: str | None, layer_names: dict[str, str]) -> str | None:
    return layer_names.get(layer, layer) if layer is not None else None


def _precision_flags(nodes: list[RanNode], ops_ms: float, layer_names: dict[str, str]) -> list[Flag]:
    flags = []
    quantized_graph = any(n.meant == "int8" for n in nodes)
    for node in nodes:
        if node.ran_as == DATA_MOVEMENT or node.meant is None:
            continue
        name = _named(node.layer, layer_names)
        if node.meant == "int8" and node.ran_as != "int8":
            flags.append(
                Flag(
                    kind="meant int8, ran float",
                    node=node.node,
                    layer=name,
                    ms=round(node.ms, 4),
                    share=node.ms / ops_ms,
                    message=f"{name} is quantized in the file but ran as {node.op_type} ({node.ran_as}): it dequantizes its int8 "
                    "input and weights and computes in float",
                )
            )
        elif quantized_graph and node.meant.startswith("fp") and node.ran_as.startswith(("fp", "bf")):
            around, ends = neighbours(node, nodes)
            if not any(other.ran_as == "int8" for other in ends):
                continue  # no int8 kernel next to it (a float head, or a float net with an int8 classifier)
            cost = sum(n.ms for n in around)
            listed = ", ".join(f"{n.op_type} {n.ms:.3f} ms" for n in around) or "none"
            flags.append(
                Flag(
                    kind="float layer in an int8 graph",
                    node=node.node,
                    layer=name,
                    ms=round(node.ms + cost, 4),
                    share=(node.ms + cost) / ops_ms,
                    message=f"{name} ran as {node.op_type} ({node.ran_as}) in an int8 graph; data movement around it: {listed} "
                    f"({cost:.3f} ms, {cost / ops_ms:.1%} of the ops' time)",
                )
            )
    return flags


def neighbours(node: RanNode, nodes: list[RanNode]) -> tuple[list[RanNode], list[RanNode]]:
    """(the data-movement nodes that feed ``node`` or read its output, following chains of them: a DequantizeLinear
    behind a ReorderInput behind a Transpose...; the compute nodes at the far ends of those chains)."""
    producers = {out: n for n in nodes for out in n.outputs}
    consumers: dict[str, list[RanNode]] = {}
    for candidate in nodes:
        for name in candidate.inputs:
            consumers.setdefault(name, []).append(candidate)
    moving: list[RanNode] = []
    ends: list[RanNode] = []
    frontier = [("in", name) for name in node.inputs] + [("out", name) for name in node.outputs]
    while frontier:
        direction, name = frontier.pop()
        linked = [producers[name]] if direction == "in" and name in producers else consumers.get(name, []) if direction == "out" else []
        for other in linked:
            if other.ran_as == DATA_MOVEMENT and other not in moving:
                moving.append(other)
                frontier += [(direction, n) for n in (other.inputs if direction == "in" else other.outputs)]
            elif other.ran_as != DATA_MOVEMENT and other is not node and other not in ends:
                ends.append(other)
    return moving, ends


def _data_movement_flags(nodes: list[RanNode], by_type: dict[str, list[RanNode]], ops_ms: float, share_threshold: float) -> list[Flag]:
    flags = []
    for node in nodes:
        if node.ran_as == DATA_MOVEMENT and node.ms / ops_ms > share_threshold:
            flags.append(
                Flag(
                    kind="data movement",
                    node=node.node,
                    layer=None,
                    ms=round(node.ms, 4),
                    share=node.ms / ops_ms,
                    message=f"{node.op_type} {node.node} takes {node.ms / ops_ms:.1%} of the ops' time (over {share_threshold:.0%})",
                )
            )
    for op_type, group in by_type.items():
        spent = sum(n.ms for n in group)
        if group[0].ran_as == DATA_MOVEMENT and len(group) > 1 and spent / ops_ms > share_threshold:
            flags.append(
                Flag(
                    kind="data movement",
                    node=f"{len(group)} x {op_type}",
                    ms=round(spent, 4),
                    share=spent / ops_ms,
                    message=f"{len(group)} {op_type} nodes together take {spent / ops_ms:.1%} of the ops' time (over {share_threshold:.0%})",
                )
            )
    return flags
