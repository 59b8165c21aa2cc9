"""PyTorch -> ncnn (model.ncnn.param + model.ncnn.bin) with pnnx, fp32 and fp16 weights, with a side file
``<file>.ncnn.param.json`` carrying the labels, preprocessing and both files' digests (layout and checks in
``edgekit.runtimes.ncnn``).

pnnx traces the model with TorchScript (``torch.jit.trace``, deprecated in torch 2.14 but still there: this path
depends on it) and its bundled binary converts the trace. edgekit runs that binary itself rather than through
``pnnx.export``/``pnnx.convert``, which ignore its exit code and stderr: it runs in a private work folder (pnnx
writes eight files beside its input: the trace, .pnnx.param/.bin, .pnnx.onnx, two Python files), every path it gets
is absolute, its exit code and both output files are checked, and a .param in which it left torch ops it could not
map ("ignore torch.gt", then "torch.gt" written as a layer type; pnnx still exits 0 and ncnn fails at load) is
refused. pnnx stores fp16 weights by default: fp32 passes ``fp16=0``.

ncnn has no int8 route from pip: its calibration and int8 tools (ncnn2table, ncnn2int8) are C++ programs no wheel
ships, so ncnn is fp32 and fp16 storage only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..device.ncnn import blob_io, foreign_layers, param_layers
from ..errors import ExportError, first_line
from ..files import atomic_path, sha256_file, write_json
from ..formats import Precision, get_format, ncnn_weights
from ..metadata import ModelMetadata
from ..progress import quiet
from ..runtimes.ncnn import SIDE_FILE_VERSION, side_file_path
from ..variants import Variant
from .results import VariantResult

if TYPE_CHECKING:
    from .job import ExportJob

INSTALL_HINT = get_format("ncnn").install_hint
PNNX_TIMEOUT = 900  # seconds; Lite0 at 224 px converts in 4-6 s


def require() -> None:
    """pnnx (the converter) and ncnn (the runtime), or a one-line error naming the extra."""
    try:
        import pnnx

        from ..device.ncnn import import_ncnn

        import_ncnn()
    except ImportError as exc:
        raise ExportError(f"the ncnn format needs the ncnn extra: {INSTALL_HINT}") from exc
    if not Path(pnnx.EXEC_PATH).is_file():
        raise ExportError(f"the pnnx wheel has no converter binary at {pnnx.EXEC_PATH}; reinstall it: {INSTALL_HINT}")


def export_variant(job: "ExportJob", variant: Variant) -> VariantResult:
    """One ncnn variant ("ncnn-fp32" or "ncnn-fp16") with its parity: the format's entry point."""
    require()
    started = time.perf_counter()
    fp16 = variant.precision is Precision.FP16
    work = job.workdir / f"pnnx-{variant.name}"
    job.describe(variant, "tracing (TorchScript) and converting with pnnx")
    param, weights, io = convert(job.model, job.example()[:1], work, fp16)
    path = job.path_of(variant)
    save_pair(param, weights, path, job.metadata(variant), io, fp16)
    facts = {
        "converter": f"pnnx {_version('pnnx')}",
        "weights": "float16 in the .ncnn.bin, fp16 storage and arithmetic at run time" if fp16 else "float32",
        "blobs": f"{io[0]} -> {io[1]}",
        "batch": "one image per extractor (the runtime loops over a batch)",
        "side_file": side_file_path(path).name,
    }
    return job.finish(variant, path, time.perf_counter() - started, facts=facts)


def convert(model, example, work: Path, fp16: bool) -> tuple[Path, Path, tuple[str, str]]:
    """(.ncnn.param, .ncnn.bin, (input blob, output blob)) for ``model`` traced on ``example`` (batch 1), made in
    ``work``; an ExportError when pnnx fails or leaves ops ncnn cannot run."""
    import pnnx
    import torch

    work = work.resolve()  # pnnx runs with cwd=work: every path it gets is absolute
    work.mkdir(parents=True, exist_ok=True)
    trace, param, weights = work / "model.pt", work / "out.param", work / "out.bin"
    try:
        with torch.no_grad(), quiet():
            torch.jit.trace(model.eval(), example.contiguous(), check_trace=False).save(str(trace))
    except Exception as exc:
        raise ExportError(f"TorchScript could not trace {type(model).__name__} for pnnx: {first_line(exc, 300)}") from exc
    shape = ",".join(str(int(d)) for d in example.shape)
    side = {"pnnxparam": "model.pnnx.param", "pnnxbin": "model.pnnx.bin", "pnnxpy": "model_pnnx.py", "pnnxonnx": "model.pnnx.onnx"}
    command = [pnnx.EXEC_PATH, str(trace), f"inputshape=[{shape}]f32", "device=cpu", "optlevel=2"]
    command += [f"{key}={work / name}" for key, name in side.items()]
    command += [f"ncnnparam={param}", f"ncnnbin={weights}", f"ncnnpy={work / 'model_ncnn.py'}", f"fp16={1 if fp16 else 0}"]
    try:
        done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=PNNX_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise ExportError(f"pnnx did not finish converting within {PNNX_TIMEOUT} s") from exc
    output = done.stdout + done.stderr
    if done.returncode != 0 or not param.is_file() or not weights.is_file():
        last = next((line for line in reversed(output.strip().splitlines()) if line.strip()), "no output")
        raise ExportError(f"pnnx failed to convert {type(model).__name__} (exit {done.returncode}): {last[:300]}")
    return param, weights, _checked_io(param, output)


def _checked_io(param: Path, output: str) -> tuple[str, str]:
    try:
        layers = param_layers(param.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ExportError(f"pnnx wrote a .param ncnn cannot read ({exc})") from exc
    foreign = foreign_layers(layers) or sorted(set(re.findall(r"^ignore (\S+)", output, flags=re.M)))
    if foreign:
        raise ExportError(f"pnnx left ops ncnn cannot run: {', '.join(foreign[:8])}; this model has no ncnn export")
    inputs, outputs = blob_io(layers)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportError(f"pnnx wrote a model with {len(inputs)} inputs and {len(outputs)} outputs; expected one of each")
    return inputs[0], outputs[0]


def save_pair(param: Path, weights: Path, path: Path, metadata: ModelMetadata, io: tuple[str, str], fp16: bool) -> Path:
    """Put the pair in place as ``path`` (+ its .ncnn.bin) and then its side file, so a killed process never leaves
    files that look whole and disagree: the old side file and .param go first, the .bin is moved in, the .param
    last, then the side file that vouches for both."""
    target_weights = ncnn_weights(path)
    side = side_file_path(path)
    digests = {"param_sha256": sha256_file(param), "bin_sha256": sha256_file(weights)}
    side.unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    for source, target in ((weights, target_weights), (param, path)):
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)  # the work folder may be on another file system
    model = {**digests, "input": io[0], "output": io[1], "weights": "fp16" if fp16 else "fp32"}
    write_json(side, {"edgekit_side_file": SIDE_FILE_VERSION, "model": model, "metadata": metadata.to_props()})
    return path


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)
