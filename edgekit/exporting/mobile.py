"""Mobile ONNX: fixed-shape twins (what NNAPI and CoreML want), ORT's own mobile-usability verdict, and .ort files.

ONNX Runtime's NNAPI and CoreML providers take a node only when every input shape is fixed: edgekit's dynamic-batch
ONNX runs 0 nodes on NNAPI as is, all of them once the batch is fixed. ``--fixed-batch N`` writes
``model.<variant>-b<N>.onnx`` beside each ONNX variant (same parity, run in chunks of N), with the verdict of
``onnxruntime.tools.check_onnx_model_mobile_usability`` (called as a library) in the variant's details.
``--ort-format`` converts each ONNX file to the ORT format (``onnxruntime.tools.convert_onnx_models_to_ort``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, ExportError, first_line
from ..files import atomic_path
from ..progress import quiet
from ..safety import onnx_session

MAX_FIXED_BATCH = 1024


def check_mobile_options(formats: Sequence[str], fixed_batch: int | None, ort_format: bool) -> None:
    """Before any work: each optional format's extra is installed (else a one-line error naming it), and a fixed
    batch and the ORT format apply to ONNX variants (a bad value is a one-line ConfigError)."""
    if "openvino" in formats:
        from .openvino import require_openvino

        require_openvino()
    if "executorch" in formats:
        from .executorch import require_executorch

        require_executorch()
    if fixed_batch is not None and not 1 <= int(fixed_batch) <= MAX_FIXED_BATCH:
        raise ConfigError(f"--fixed-batch {fixed_batch} must be between 1 and {MAX_FIXED_BATCH}")
    if (fixed_batch is not None or ort_format) and "onnx" not in formats:
        flag = "--fixed-batch" if fixed_batch is not None else "--ort-format"
        raise ConfigError(f"{flag} applies to ONNX variants; add --format onnx")


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
    from .onnx import save_proto

    return save_proto(proto, target)


def mobile_usability(path: Path) -> dict:
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
    verdict: dict = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-mobile-") as work, quiet():
        optimized = Path(work) / path.name
        optimize_model(path, optimized, use_external_initializers=True)
        model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
        for name, check in providers.items():
            info = check(model, True)  # True: a node with a dynamic input shape counts as unsupported, as on device
            verdict[name] = {
                "supported_nodes": int(info.num_supported_nodes),
                "nodes": int(info.num_nodes),
                "coverage": round(info.num_supported_nodes / info.num_nodes, 4) if info.num_nodes else 0.0,
                "partitions": int(info.num_partitions),
                "suitability": info.suitability().name,
                "unsupported_ops": sorted(str(op) for op in info.unsupported_ops)[:20],
                "nodes_with_dynamic_input": int(info.nodes_unsupported_due_to_dynamic_input),
            }
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


def mobile_variants(exporter, parent) -> list:
    """The fixed-batch twin of one exported ONNX variant (with its parity and mobile verdict), and .ort files
    for the parent and the twin when asked. Returns the new VariantResults (the parent's details are updated)."""
    from ..metadata import read_onnx_metadata
    from ..parity_check import open_artifact
    from ..variants import Variant
    from .onnx import update_metadata

    results: list = []
    parent_path = Path(parent.path)
    parent_variant = Variant.parse(parent.variant)
    if exporter.ort_format:
        _add_ort(exporter, parent, parent_path, None)
    batch = exporter.fixed_batch
    if batch is None:
        return results
    from dataclasses import replace

    variant = replace(parent_variant, fixed_batch=int(batch))
    exporter.bar.describe(f"exporting {variant.name}: fixing the batch at {batch}, ORT mobile check")
    started = time.perf_counter()
    path = exporter.run.exports_dir / variant.file_name
    fix_batch(parent_path, path, int(batch))
    metadata = read_onnx_metadata(path)
    metadata.source = {**metadata.source, "variant": variant.name, "fixed_batch": int(batch)}
    update_metadata(path, metadata)
    details = {k: v for k, v in parent.details.items() if k not in ("ort_file", "ort_bytes", "ort_max_abs_diff", "mobile")}
    details.update({"fixed_batch": int(batch), "fixed_from": parent_path.name, "mobile": mobile_usability(path)})
    parent.details["mobile"] = mobile_usability(parent_path)
    session = FixedBatchSession(open_artifact(path), int(batch))
    tolerance = None if parent_variant.precision.value == "int8-dynamic" else 1e-3
    result = exporter.finish(
        variant.name, "onnx", path, time.perf_counter() - started, parent.input_kind, details, tolerance, session=session
    )
    if exporter.ort_format:
        _add_ort(exporter, result, path, int(batch))
    results.append(result)
    return results


def _add_ort(exporter, result, onnx_path: Path, batch: int | None) -> None:
    ort_path = convert_to_ort(onnx_path)
    inputs = exporter.checker.data.inputs(result.input_kind)[:8]
    result.details["ort_file"] = ort_path.name
    result.details["ort_bytes"] = ort_path.stat().st_size
    result.details["ort_max_abs_diff"] = ort_agreement(onnx_path, ort_path, inputs, batch)
