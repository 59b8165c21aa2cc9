"""Compile a model on OpenVINO with explicit settings: threads, performance hint, inference precision, streams.

The precision is always set: OpenVINO's own default on CPUs with bf16 (AMX, and AVX512_BF16 on AMD Zen 4) is bf16,
not the f32 edgekit validated, and an IR's rt_info cannot carry the hint (compile_model ignores it).
"""

from __future__ import annotations

from typing import Any

INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


def compile_config(threads: int | None = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The compile_model config for ``threads`` and ``settings`` (performance_hint, inference_precision, num_streams)."""
    settings = settings or {}
    precision = str(settings.get("inference_precision", "f32"))
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"inference precision {precision!r} is not one of {', '.join(INFERENCE_PRECISIONS)}")
    hint = str(settings.get("performance_hint", "LATENCY")).upper()
    if hint not in PERFORMANCE_HINTS:
        raise ValueError(f"performance hint {hint!r} is not one of {', '.join(PERFORMANCE_HINTS)}")
    config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": precision}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if settings.get("num_streams") is not None:
        config["NUM_STREAMS"] = str(settings["num_streams"])
    return config


def compile_model(model, threads: int | None = None, settings: dict[str, Any] | None = None, device: str = "CPU"):
    """``openvino.Core().compile_model`` of an ``openvino.Model`` (or a path) with ``compile_config``'s config."""
    import openvino as ov

    return ov.Core().compile_model(model, device, compile_config(threads, settings))


def version() -> str:
    import openvino as ov

    return ov.__version__
