"""Quantization: ORT's static/dynamic int8 and fp16 of ONNX models (``ort.py``), the accuracy-aware int8 search
shared by ONNX Runtime and ExecuTorch (``fallback.py``), pt2e int8 with layers kept in float for ExecuTorch
(``pt2e.py``, imported where used: it needs torchao) and the choice among variants for ``--quantize auto``
(``auto.py``)."""

from .fallback import (
    MAX_SECONDS,
    MAX_STEPS,
    RANKING_IMAGES,
    FallbackStep,
    Int8Search,
    LayerSearch,
    Ranking,
    Validation,
    ort_session,
    run_onnx,
    search_int8,
    search_layers,
    with_margin,
)
from .ort import (
    CALIBRATION_METHODS,
    DYNAMIC_OP_TYPES,
    BatchReader,
    Ranges,
    calibrate,
    convert_fp16,
    first_and_last_compute_nodes,
    load_model,
    prepare,
    quantize_dynamic_matmul,
    quantize_static,
    quantize_with_ranges,
    sort_topologically,
)

__all__ = [
    "MAX_SECONDS",
    "MAX_STEPS",
    "RANKING_IMAGES",
    "FallbackStep",
    "Int8Search",
    "LayerSearch",
    "Ranking",
    "Validation",
    "ort_session",
    "run_onnx",
    "search_int8",
    "search_layers",
    "with_margin",
    "load_model",
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
