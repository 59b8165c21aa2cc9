"""Mobile ONNX: fixed-shape twins (what NNAPI and CoreML want), ORT's own mobile-usability verdict, and .ort files.

ONNX Runtime's NNAPI and CoreML providers take a node only when every input shape is fixed: edgekit's dynamic-batch
ONNX runs 0 nodes on NNAPI as is, all of them once the batch is fixed. ``--fixed-batch N`` writes
``model.<variant>-b<N>.onnx`` beside each ONNX variant (same parity, run in chunks of N), with the verdict of
``onnxruntime.tools.check_onnx_model_mobile_usability`` (called as a library) in the variant's result (``mobile``).
``--ort-format`` converts each ONNX file to the ORT format (``onnxruntime.tools.convert_onnx_models_to_ort``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, ExportError, first_line
from ..files import atomic_path
from ..formats import Precision
from ..metadata import read_onnx_metadata
from ..parity_check import open_artifact
from ..progress import quiet
from ..safety import onnx_session
from ..variants import Variant
from .onnx_graph import save_proto, update_metadata
from .results import OrtFile, ProviderUsability, VariantResult

if TYPE_CHECKING:
    from .job import ExportJob

MAX_FIXED_BATCH = 1024


def check_fixed_batch(fixed_batch: int | None) -> None:
    """A fixed batch out of range is a one-line ConfigError, before any work."""
    if fixed_batch is not None and not 1 <= int(fixed_batch) <= MAX_FIXED_BATCH:
        raise ConfigError(f"--fixed-batch {fixed_batch} must be between 1 and {MAX_FIXED_BATCH}")


class FixedBatchSession:
    """Runs any batch through a model that accepts exactly ``batch`` images: in chunks, the last one padded by
    repeating its final image (the padding's logits are dropped)."""

    def __init__(self, session, batch: int):
        self._session = session
        self.batch = batch
        self.input_kind = session.input_kind

    def run(self, inputs: np.ndarray) -> np.ndarray:
        chunks = []
        for start in range(0, len(inputs), self.batch):
            chunk = inputs[start : start + self.batch]
            real = len(chunk)
            if real < self.batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - real, axis=0)])
            chunks.append(self._session.run(chunk)[:real])
        return np.concatenate(chunks)


def fix_batch(source: Path, target: Path, batch: int) -> Path:
    """Copy an edgekit ONNX file with its symbolic batch dimension set to ``batch`` everywhere (inputs, outputs,
    value infos), written atomically; metadata is kept, with the variant name updated by the caller."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    proto = onnx.load(str(source))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if not dims or not dims[0].dim_param:
        raise ExportError(f"{source} has no symbolic batch dimension to fix")
    make_dim_param_fixed(proto.graph, dims[0].dim_param, batch)
    fix_output_shapes(proto)
    onnx.checker.check_model(proto, full_check=True)
    return save_proto(proto, target)


def mobile_usability(path: Path) -> dict[str, ProviderUsability]:
    """ORT's mobile-usability verdict for an ONNX file: per provider (NNAPI, CoreML MLProgram, CoreML NeuralNetwork)
    the nodes it would take with the shapes as they are, the partitions, and the checker's suitability
    (YES / MAYBE / NO). The model is first optimized at the BASIC level, as the checker itself does."""
    from onnxruntime.tools.mobile_helpers import usability_checker as checker
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    providers = {
        "nnapi": checker.check_nnapi_partitions,
        "coreml_mlprogram": lambda m, fixed: checker.check_coreml_partitions(m, fixed, "coreml_supported_mlprogram_ops.md"),
        "coreml_neuralnetwork": lambda m, fixed: checker.check_coreml_partitions(m, fixed, "coreml_supported_neuralnetwork_ops.md"),
    }
    verdict: dict[str, ProviderUsability] = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-mobile-") as work, quiet():
        optimized = Path(work) / path.name
        optimize_model(path, optimized, use_external_initializers=True)
        model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
        for name, check in providers.items():
            info = check(model, True)  # True: a node with a dynamic input shape counts as unsupported, as on device
            verdict[name] = ProviderUsability(
                supported_nodes=int(info.num_supported_nodes),
                nodes=int(info.num_nodes),
                coverage=round(info.num_supported_nodes / info.num_nodes, 4) if info.num_nodes else 0.0,
                partitions=int(info.num_partitions),
                suitability=info.suitability().name,
                unsupported_ops=sorted(str(op) for op in info.unsupported_ops)[:20],
                nodes_with_dynamic_input=int(info.nodes_unsupported_due_to_dynamic_input),
            )
    return verdict


def convert_to_ort(path: Path) -> Path:
    """``<file>.ort`` beside an .onnx file, through ``onnxruntime.tools.convert_onnx_models_to_ort`` (fixed
    optimization style), written atomically; the converter's other outputs (operator config) are dropped."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    target = path.with_suffix(".ort")
    with tempfile.TemporaryDirectory(prefix="edgekit-ort-") as work:
        source = Path(work) / "in" / path.name
        source.parent.mkdir()
        shutil.copyfile(path, source)
        out = Path(work) / "out"
        try:
            with quiet():
                convert_onnx_models_to_ort(source, output_dir=out, optimization_styles=[OptimizationStyle.Fixed])
        except Exception as exc:  # the converter raises plain exceptions from ORT
            raise ExportError(f"converting {path.name} to the ORT format failed: {first_line(exc, 300)}") from exc
        produced = sorted(out.glob("*.ort"))
        if not produced:
            raise ExportError(f"converting {path.name} to the ORT format produced no .ort file")
        with atomic_path(target) as tmp:
            shutil.copyfile(produced[0], tmp)
    return target


def ort_agreement(onnx_path: Path, ort_path: Path, inputs: np.ndarray, batch: int | None) -> float:
    """Max |logit difference| between an .ort file and the .onnx it came from on ``inputs`` (ORT loads both)."""
    import onnxruntime as ort

    def run(path: Path) -> np.ndarray:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = onnx_session(path, options)
        name = session.get_inputs()[0].name
        chunk = batch or len(inputs)
        usable = inputs[: (len(inputs) // chunk) * chunk] if len(inputs) >= chunk else np.repeat(inputs[:1], chunk, axis=0)
        return np.concatenate([session.run(None, {name: usable[i : i + chunk]})[0] for i in range(0, len(usable), chunk)])

    return float(np.abs(run(onnx_path) - run(ort_path)).max())


def fixed_batch_twin(job: "ExportJob", variant: Variant) -> VariantResult:
    """The fixed-batch twin of an ONNX variant exported earlier in the same job, with its parity and ORT's mobile
    verdict (and its .ort copy when asked)."""
    parent = job.done.get(variant.dynamic_parent)
    if parent is None:
        raise ExportError(f"{variant.name} is made from {variant.dynamic_parent.name}, which this export has not written")
    batch = int(variant.fixed_batch or 1)
    job.describe(variant, f"fixing the batch at {batch}, ORT mobile check")
    started = time.perf_counter()
    path = job.path_of(variant)
    fix_batch(Path(parent.path), path, batch)
    metadata = read_onnx_metadata(path)
    metadata.source = {**metadata.source, "variant": variant.name, "fixed_batch": batch}
    update_metadata(path, metadata)
    result = job.finish(
        variant,
        path,
        time.perf_counter() - started,
        consistency_tolerance=None if variant.precision is Precision.INT8_DYNAMIC else 1e-3,
        session=FixedBatchSession(open_artifact(path), batch),
        int8=parent.int8,
        fixed_from=parent.file_name,
        mobile=mobile_usability(path),
        facts=dict(parent.facts),
    )
    if job.options.ort_format:
        add_ort_file(job, result, batch)
    return result


def add_ort_file(job: "ExportJob", result: VariantResult, batch: int | None) -> None:
    """Write the .ort copy of a result's ONNX file and record how far its logits are from the .onnx's."""
    onnx_path = Path(result.path)
    ort_path = convert_to_ort(onnx_path)
    inputs = job.checker.data.inputs(result.input_kind)[:8]
    result.ort_file = OrtFile(
        file=ort_path.name, bytes=ort_path.stat().st_size, max_abs_diff=ort_agreement(onnx_path, ort_path, inputs, batch)
    )
