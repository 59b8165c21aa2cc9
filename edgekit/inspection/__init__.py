"""Inspection: where an exported variant loses accuracy and where it spends its time, layer by layer.

    result = inspect("runs/flowers", "int8", data="photos/val")
    result.numerics.first_diverging, result.numerics.worst          # layers vs the float32 PyTorch model
    result.profile.op_types, result.profile.flags                   # time per op from the runtime's profiler

Numerics per format: ``onnx_numerics`` (ORT; int8 with each layer's own error, ``onnx_own``), ``openvino_numerics``
(extra outputs on the ov.Model), ``executorch_numerics``. Profiles per runtime: ``profile_ort``,
``profile_openvino``, ``profile_executorch``, aggregated and flagged the same way in ``profile``. Reports for people
(terminal table, markdown, HTML with charts) in ``report``.
"""

from .inspector import inspect, inspect_model
from .results import ErrorStats, Flag, InspectResult, LayerNumerics, NodeTime, Numerics, OpTypeTime, Profile

__all__ = [
    "ErrorStats",
    "Flag",
    "InspectResult",
    "LayerNumerics",
    "NodeTime",
    "Numerics",
    "OpTypeTime",
    "Profile",
    "inspect",
    "inspect_model",
]
