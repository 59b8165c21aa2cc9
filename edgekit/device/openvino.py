"""Compile a model on OpenVINO with explicit settings: threads, performance hint, inference precision, streams.

The precision is always set: OpenVINO's own default on CPUs with bf16 (AMX, and AVX512_BF16 on AMD Zen 4) is bf16,
not the f32 edgekit validated, and an IR's rt_info cannot carry the hint (compile_model ignores it).
"""

from __future__ import annotations

from typing import Any

INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


def compile_config(threads: int | None = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The compile_model config for ``threads`` and ``settings`` (performance_hint, inference_precision, num_streams;
    perf_count: the per-node counters with the kernel that ran, as ``benchmark_app -pc`` prints them)."""
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
    if settings.get("perf_count"):
        config["PERF_COUNT"] = True
    return config


def compile_model(model, threads: int | None = None, settings: dict[str, Any] | None = None, device: str = "CPU"):
    """``openvino.Core().compile_model`` of an ``openvino.Model`` (or a path) with ``compile_config``'s config."""
    import openvino as ov

    return ov.Core().compile_model(model, device, compile_config(threads, settings))


def batch_runner(compiled, request=None):
    """batch -> float32 logits on ``compiled``, the way its performance hint means it to be used.

    Under LATENCY OpenVINO runs one stream, and one synchronous request uses all of it. Under THROUGHPUT it runs
    several streams with a share of the threads each, and a single request keeps only one of them busy (a batch of 8
    ran at one thread's speed with 2 streams on 2 cores). So where the compiled model asks for more than one request
    in flight (OPTIMAL_NUMBER_OF_INFER_REQUESTS) and its batch dimension is dynamic, the batch is split into that many
    slices, run at once (one request per stream, as benchmark_app keeps them) and joined in order; the app code edgekit
    writes for such a setting does the same. Given ``request``, every batch runs on that one request, unsplit (a
    profiled session reads that request's counters)."""
    import numpy as np

    output = compiled.output(0)
    requests = 1 if request is not None else int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    if requests <= 1 or not compiled.input(0).get_partial_shape()[0].is_dynamic:
        request = compiled.create_infer_request() if request is None else request
        return lambda batch: np.asarray(request.infer({0: np.ascontiguousarray(batch)})[output], dtype=np.float32)

    # Plain requests waited on from the calling thread: an AsyncInferQueue with a Python callback aborted the process
    # ("Resource deadlock avoided") midway through auto's timing; this way no Python runs on OpenVINO's threads.
    pool = [compiled.create_infer_request() for _ in range(requests)]

    def run(batch):
        slices = np.array_split(batch, min(requests, len(batch)))
        busy = pool[: len(slices)]
        for request, part in zip(busy, slices):
            request.start_async({0: np.ascontiguousarray(part)})
        for request in busy:
            request.wait()
        return np.concatenate([np.array(request.get_tensor(output).data, dtype=np.float32) for request in busy])

    run.requests = requests  # type: ignore[attr-defined]
    return run


def version() -> str:
    import openvino as ov

    return ov.__version__
