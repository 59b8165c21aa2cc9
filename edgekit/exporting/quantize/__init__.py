"""Quantization of exported models, one module per kind of thing:

- ``ort.py``: ONNX Runtime's tooling wrapped: pre-processing, calibration (``Ranges``), its static QDQ quantizer,
  dynamic int8 of MatMul/Gemm, float16, and the CPU sessions that run candidates;
- ``qdq.py``: static int8 as edgekit makes it (``quantize_static``, ``quantize_with_ranges``): ORT's QDQ model,
  then graph edits that make layers kept in float really run in float;
- ``rounding.py``: GPTQ rounding and bias correction of the int8 weights, from calibration moments;
- ``fallback.py``: the accuracy-aware search loop every format shares (no runtime in it);
- ``ort_search.py``: that search for ONNX Runtime (``search_int8``, ``Ranking``);
- ``pt2e.py``: pt2e int8 with layers kept in float, and the search for ExecuTorch (imported where used: it needs
  torchao);
- ``nncf.py``: OpenVINO int8 with NNCF, and its accuracy-aware fallback (imported where used: it needs nncf).

The names below are the package's interface; callers import them from here.
"""

from .fallback import (
    MAX_SECONDS,
    MAX_STEPS,
    RANKING_IMAGES,
    FallbackStep,
    Int8Search,
    LayerSearch,
    Validation,
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
    load_model,
    ort_session,
    prepare,
    quantize_dynamic_matmul,
    run_onnx,
    sort_topologically,
)
from .ort_search import Ranking, search_int8
from .qdq import first_and_last_compute_nodes, quantize_static, quantize_with_ranges, release_float_layers
from .rounding import correct_biases, round_weights_gptq

__all__ = [
    "BatchReader",
    "CALIBRATION_METHODS",
    "DYNAMIC_OP_TYPES",
    "FallbackStep",
    "Int8Search",
    "LayerSearch",
    "MAX_SECONDS",
    "MAX_STEPS",
    "RANKING_IMAGES",
    "Ranges",
    "Ranking",
    "Validation",
    "calibrate",
    "convert_fp16",
    "correct_biases",
    "first_and_last_compute_nodes",
    "load_model",
    "ort_session",
    "prepare",
    "quantize_dynamic_matmul",
    "quantize_static",
    "quantize_with_ranges",
    "release_float_layers",
    "round_weights_gptq",
    "run_onnx",
    "search_int8",
    "search_layers",
    "sort_topologically",
    "with_margin",
]
