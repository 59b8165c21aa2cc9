"""Quantization of exported ONNX models: ORT's static/dynamic int8 and fp16 (``ort.py``), the accuracy-aware
int8 search (``fallback.py``) and the choice among variants for ``--quantize auto`` (``auto.py``)."""

from .ort import (
    CALIBRATION_METHODS,
    DYNAMIC_OP_TYPES,
    BatchReader,
    Ranges,
    calibrate,
    convert_fp16,
    first_and_last_compute_nodes,
    prepare,
    quantize_dynamic_matmul,
    quantize_static,
    quantize_with_ranges,
    sort_topologically,
)

__all__ = [
    "BatchReader",
    "CALIBRATION_METHODS",
    "DYNAMIC_OP_TYPES",
    "Ranges",
    "calibrate",
    "convert_fp16",
    "first_and_last_compute_nodes",
    "prepare",
    "quantize_dynamic_matmul",
    "quantize_static",
    "quantize_with_ranges",
    "sort_topologically",
]
