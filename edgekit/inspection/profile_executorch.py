"""ExecuTorch's own profile of a .pte: the runtime's event tracer (``load_program(enable_etdump=True)``, in the
executorch 1.5 pip wheel) written as an ETDump and read with ``executorch.devtools.Inspector``. The XNNPACK delegate
logs one event per XNNPACK operator, named with its data types (``Convolution (NHWC, QS8) IGEMM #3``), which says
the precision it ran in: QS8/QU8/QC8/QD8 int8, F16, F32; X8/X32 ops (transposes, copies) move data.

The events carry no debug handle (an ETRecord would not tie them either), so ``tie_layers`` names them by order: a
delegated graph runs its operators in the program's order, so the i-th convolution event is the model's i-th conv
module in execution order (``module_order``: torch.export's ``nn_module_stack``), and the same for fully-connected
events and linear modules, only where the counts agree. What a layer was meant to run in comes from the program's
side file (``quantization.float_layers``, written by edgekit's export). Nor do the events carry edges: each is
taken to read the one before it, so the data movement around a float layer is the events next to it in execution
order (XNNPACK's ``Convert`` into and out of its float convolution).
"""

from __future__ import annotations

import re
import statistics
import tempfile
from pathlib import Path

import numpy as np

from ..device.profiling import alternate  # the device runner profiles the same way
from .profile import DATA_MOVEMENT, Measured, RanNode

CONTAINERS = ("Method::execute", "DELEGATE_CALL", "OPERATOR_CALL", "Method::init", "Program::load_method")
MOVING_OPS = ("Transpose", "Copy", "Convert", "Static Transpose", "Static Reshape", "Reshape", "Concatenate", "Slice")
_TYPES = re.compile(r"\(([^)]*)\)")
LAYOUTS = {"NC", "NHWC", "ND", "NCHW"}


def ran_as(event_name: str) -> str:
    """The precision of one XNNPACK operator from its name's data types; portable-kernel ops (no types in the name)
    count as fp32, and an XNNPACK compute op whose name gives only a layout (``Add (ND)``, ``Clamp (NC)``) as unknown."""
    op_type = event_name.split(" (")[0].split(" #")[0]
    types = _TYPES.search(event_name)
    tags = {t.strip() for t in types.group(1).split(",")} if types else set()
    if op_type in MOVING_OPS:
        return DATA_MOVEMENT
    if tags & {"QS8", "QU8", "QC8", "QD8", "QC8W", "QP8", "S8", "U8"}:
        return "int8"
    if "F16" in tags:
        return "fp16"
    if tags and tags <= LAYOUTS | {"X8", "X16", "X32"}:
        return DATA_MOVEMENT if tags & {"X8", "X16", "X32"} else "unknown"
    return "fp32"


SOURCE = "executorch ETDump (devtools Inspector)"
NOTE = "ExecuTorch's events carry no module paths: layers and meant-int8 flags are not shown (see tie_layers)"


def measure(artifact: Path, sample: np.ndarray, threads: int | None, warmup: int, runs: int) -> tuple[Measured, dict[str, str]]:
    """Profile ``artifact`` with ExecuTorch's event tracer (XNNPACK), alternating with an untraced session."""
    from .. import runtimes

    profiled = runtimes.load(artifact, "executorch", threads, etdump=True)
    plain = runtimes.load(artifact, "executorch", threads)
    unprofiled = alternate(lambda: profiled.run(sample), lambda: plain.run(sample), warmup, runs)
    settings = {k: str(v) for k, v in plain.info.items() if k in ("library", "threads", "delegate")}
    with tempfile.TemporaryDirectory(prefix="edgekit-inspect-et-") as workdir:
        dump = profiled.write_etdump(Path(workdir) / "run.etdp")  # type: ignore[attr-defined]
        return read_etdump(dump, warmup, unprofiled, settings), {}


def from_target(artifact: Path, folder: Path, done: dict, used: dict) -> tuple[Measured, dict[str, str]]:
    """The ETDump the device runner wrote (``device/profiling.py``), read as a local one is."""
    settings = {key: str(used[key]) for key in ("library", "threads") if key in used}
    return read_etdump(folder / done["files"]["etdump"], int(done["warmup"]), list(done["unprofiled_ms"]), settings), {}


def read_etdump(dump: Path, warmup: int, unprofiled: list[float], settings: dict[str, str]) -> Measured:
    """RanNode rows from an ETDump (a flatbuffer; devtools' Inspector parses it, nothing is unpickled): each XNNPACK
    operator's median time over the runs after ``warmup``, and the precision its name's data types say."""
    from executorch.devtools import Inspector

    from ..progress import quiet

    with quiet():
        inspector = Inspector(etdump_path=str(dump))
    run_ms: list[float] = []
    nodes: list[RanNode] = []
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            times = list(event.perf_data.raw)[warmup:] if event.perf_data is not None else []
            if not times:
                continue
            if event.name == "Method::execute":
                run_ms = times
            elif event.name not in CONTAINERS:
                op_type = event.name.split(" (")[0].split(" #")[0]
                nodes.append(
                    RanNode(node=event.name, op_type=op_type, ms=statistics.median(times), ran_as=ran_as(event.name), kernel=event.name)
                )
    for index, node in enumerate(nodes):  # no edges in an ETDump: each event reads the one before it in execution order
        node.inputs, node.outputs = ([f"event {index - 1}"] if index else []), [f"event {index}"]
    return Measured(nodes, run_ms, unprofiled, settings, [NOTE])


LAYER_EVENTS = {"conv": "Convolution", "linear": "Fully Connected"}  # module kind -> XNNPACK operator name


def module_order(model, example) -> list[tuple[str, str]]:
    """(module path, "conv" or "linear") of every conv/linear op of ``model`` in execution order (torch.export)."""
    import torch

    from ..exporting.quantize.pt2e import layer_name

    program = torch.export.export(model.eval(), (torch.from_numpy(np.ascontiguousarray(example[:1])),))
    found = []
    for node in program.graph.nodes:
        name = layer_name(node)
        if name is not None:
            found.append((name, "linear" if "linear" in str(node.target) else "conv"))
    return found


def tie_layers(measured: Measured, modules: list[tuple[str, str]], float_layers: list[str] | None, int8: bool) -> None:
    """Name ``measured``'s XNNPACK layer events after ``modules`` by order, and say what each was meant to run in
    (``float_layers`` from the side file; None: not known, so no "meant" is set for an int8 program)."""
    tied = 0
    for kind, event in LAYER_EVENTS.items():
        wanted = [name for name, found in modules if found == kind]
        events = [node for node in measured.nodes if node.op_type == event]
        if not wanted and not events:
            continue
        if len(wanted) != len(events):
            measured.notes.append(f"{len(events)} {event} events for {len(wanted)} {kind} modules: these events are not tied to modules")
            continue
        for node, name in zip(events, wanted):
            node.layer = name
            if not int8:
                node.meant = "fp32"
            elif float_layers is not None:
                node.meant = "fp32" if name in float_layers else "int8"
        tied += len(events)
    if tied:
        measured.notes = [note for note in measured.notes if note != NOTE]
        measured.notes.append(f"{tied} XNNPACK layer events tied to modules by their order (the events carry no debug handle)")
