"""ExecuTorch's own profile of a .pte: the runtime's event tracer (``load_program(enable_etdump=True)``, in the
executorch 1.5 pip wheel) written as an ETDump and read with ``executorch.devtools.Inspector``. The XNNPACK delegate
logs one event per XNNPACK operator, named with its data types (``Convolution (NHWC, QS8) IGEMM #3``), which says
the precision it ran in: QS8/QU8/QC8/QD8 int8, F16, F32; X8/X32 ops (transposes, copies) move data.

Without an ETRecord (edgekit's export writes none) the events are not tied back to module paths, so a node's
``layer`` stays empty and no "meant int8" flag can be raised for a .pte; the time per op type and the data-movement
flags are complete.
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


def ran_as(event_name: str) -> str:
    """The precision of one XNNPACK operator from its name's data types; portable-kernel ops count as fp32."""
    op_type = event_name.split(" (")[0].split(" #")[0]
    types = _TYPES.search(event_name)
    tags = {t.strip() for t in types.group(1).split(",")} if types else set()
    if op_type in MOVING_OPS or (tags and tags <= {"NC", "NHWC", "ND", "NCHW", "X8", "X16", "X32"}):
        return DATA_MOVEMENT
    if tags & {"QS8", "QU8", "QC8", "QD8", "QC8W", "QP8"}:
        return "int8"
    if "F16" in tags:
        return "fp16"
    return "fp32"


SOURCE = "executorch ETDump (devtools Inspector)"
NOTE = "ExecuTorch events are not tied to module paths (edgekit's export writes no ETRecord): layers and meant-int8 flags are not shown"


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
    return Measured(nodes, run_ms, unprofiled, settings, [NOTE])
