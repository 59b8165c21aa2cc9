"""The ONNX format's variants: fp32, fp16, static int8 (held to the accuracy budget), int8-dynamic (MatMul/Gemm),
each also with uint8 input (preprocessing inside) and as a fixed-batch twin, and an optional .ort copy.

Every variant is made from one float32 ONNX export per input kind (``job.base_onnx``) and carries the edgekit
metadata in its metadata_props. Conversion itself lives in ``onnx_graph.py``, int8 in ``onnx_int8.py``, the mobile
twins and .ort files in ``mobile.py``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ExportError, first_line
from ..formats import Precision
from ..variants import Variant
from . import quantize as quantizers
from .mobile import add_ort_file, fixed_batch_twin, mobile_usability
from .onnx_graph import (  # noqa: F401  (the conversion API, re-exported: edgekit.exporting.onnx.export_onnx)
    CHECK_BATCH_SIZES,
    check_batch_sizes,
    export_onnx,
    export_proto,
    save_proto,
    set_metadata,
    update_metadata,
)
from .onnx_int8 import quantization_facts, quantize_static_int8, speed_vs_fp32
from .results import Int8Facts, VariantResult

if TYPE_CHECKING:
    from .job import ExportJob


def export_variant(job: "ExportJob", variant: Variant) -> VariantResult:
    """One ONNX variant with its parity: the format's entry point (see ``exporting/job.py``)."""
    import onnx

    if variant.fixed_batch is not None:
        return fixed_batch_twin(job, variant)
    base, base_seconds, opset = job.base_onnx(variant.input_kind)
    started = time.perf_counter()
    work, int8 = _quantized(job, base, variant)
    proto = onnx.load(str(work))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the {variant.name} ONNX graph is invalid: {first_line(exc, 300)}") from exc
    op_types = quantizers.DYNAMIC_OP_TYPES if variant.precision is Precision.INT8_DYNAMIC else ()
    metadata = job.metadata(variant, {"opset": opset, **quantization_facts(int8, op_types)})
    if int8 is not None:  # what the app must set, and the ISA class the accuracy was proven on
        metadata.runtime = {"ort_session_config": int8.session_config, "validated_isa": int8.isa.value}
    set_metadata(proto, metadata.to_props())
    path = save_proto(proto, job.path_of(variant))
    seconds = time.perf_counter() - started + (base_seconds if variant.precision is Precision.FP32 else 0.0)
    speed, warnings = None, list[str]()
    if int8 is not None and job.options.speed_check:  # after the clock: the export's time is the export's
        speed, warnings = speed_vs_fp32(job, base, path, variant, int8)
    result = job.finish(
        variant,
        path,
        seconds,
        # Dynamic quantization scales activations per batch, so one image's logits legitimately depend on its batch.
        consistency_tolerance=None if variant.precision is Precision.INT8_DYNAMIC else 1e-3,
        int8=int8,
        speed_vs_fp32=speed,
        warnings=warnings,
        facts={"opset": opset, "fp32_export_seconds": round(base_seconds, 3), **_op_facts(op_types)},
    )
    if job.options.fixed_batch is not None:  # the verdict of the file as it is, beside its fixed-batch twin's
        result.mobile = mobile_usability(path)
    if job.options.ort_format:
        add_ort_file(job, result, None)
    return result


def _quantized(job: "ExportJob", base: Path, variant: Variant) -> tuple[Path, Int8Facts | None]:
    """(the ONNX file of ``variant``'s precision in the work folder, its int8 facts where it is static int8)."""
    work = job.workdir / f"{variant.name}.onnx"
    if variant.precision is Precision.FP32:
        return base, None
    if variant.precision is Precision.FP16:
        quantizers.convert_fp16(base, work)
        return work, None
    if variant.precision is Precision.INT8_DYNAMIC:
        quantizers.quantize_dynamic_matmul(base, work)
        return work, None
    return work, quantize_static_int8(job, base, work, variant)


def _op_facts(op_types: tuple[str, ...]) -> dict:
    return {"quantized_op_types": list(op_types)} if op_types else {}
