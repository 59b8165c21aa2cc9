"""ONNX static int8 as export makes it: calibrated, hardware-aware, held to the accuracy budget, and timed against
fp32 on this CPU.

Hardware-aware: the file records the ORT session options its CPU class needs to compute what was validated (U8U8
kernels on x86 without VNNI) and the ISA class it was validated on; every edgekit runtime applies them
(``hardware.ort_session_config_here``). Accuracy-aware: with real parity images, layers go back to float, the most
sensitive first, until the budget holds (``quantize.search_int8``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..data import load_batch
from ..hardware import int8_runtime_config, isa_class
from ..metadata import InputKind
from ..parity_check import compare_logits, judge
from ..variants import Variant
from . import speed_check
from .quantize import (
    RANKING_IMAGES,
    Ranking,
    Validation,
    calibrate,
    first_and_last_compute_nodes,
    load_model,
    ort_session,
    prepare,
    quantize_with_ranges,
    run_onnx,
    search_int8,
    with_margin,
)
from .results import Int8Facts
from .speed_check import PairedTiming

if TYPE_CHECKING:
    from .job import ExportJob

ACTIVATIONS = "uint8 asymmetric, per tensor"
WEIGHTS = "int8 symmetric, per channel, GPTQ rounding (each Conv's output error on the calibration images, not each weight's)"
BIAS_CORRECTION = "each int8 Conv's bias absorbs its rounded weights' mean shift (calibration images)"


def quantize_static_int8(job: "ExportJob", base: Path, work: Path, variant: Variant) -> Int8Facts:
    """Static int8 of the float32 ``base`` into ``work``; returns how it was made and proven."""
    import onnxruntime

    kind = variant.input_kind
    isa = isa_class()
    prepared = prepare(base, job.workdir / f"prepared-{kind.value}.onnx")
    ranges = calibrate(prepared, job.calibration_batches(kind), job.options.calib_method, job.workdir)
    start = first_and_last_compute_nodes(load_model(prepared))
    facts = Int8Facts(
        quantizer=f"onnxruntime {onnxruntime.__version__} quantize_static (QDQ)",
        calibration_method=ranges.method,
        calibration_images=ranges.images,
        calibration_data=job.calibration.source if job.calibration is not None else None,
        activations=ACTIVATIONS,
        weights=WEIGHTS,
        bias_correction=BIAS_CORRECTION,
        isa=isa,
        session_config=int8_runtime_config(isa),
    )
    why = job.search_skipped()
    if why:
        quantize_with_ranges(prepared, work, ranges, start, metadata_from=base)
        facts.kept_float, facts.search_skipped = start, why
        return facts
    search = search_int8(
        prepared,
        work,
        ranges,
        start,
        _validation(job, variant, facts.session_config),
        _ranking(job, base, kind, facts.session_config),
        job.limits(variant),
        isa,
        max_steps=job.options.max_fallback_steps,
        max_seconds=job.options.max_fallback_seconds,
        metadata_from=base,
        progress=lambda message: job.describe(variant, f"int8: {message}"),
    )
    facts.kept_float, facts.search = search.kept_float, search
    return facts


def _validation(job: "ExportJob", variant: Variant, session_config: dict[str, str]) -> Validation:
    """How the search judges a candidate: on the job's parity images, with the budget one standard error inside."""
    data, kind, budget = job.checker.data, variant.input_kind, job.limits(variant)

    def evaluate(path: Path):
        logits = run_onnx(path, data.inputs(kind), session_config)
        return compare_logits(job.checker.reference_logits(kind), logits, data.labels, data.source)

    return Validation(evaluate, lambda metrics: not judge(with_margin(metrics), budget)[0])


def _ranking(job: "ExportJob", base: Path, kind: InputKind, session_config: dict[str, str]) -> Ranking:
    """Layers are ranked on calibration images (never the validation ones, so the budget is not overfit)."""
    paths = job.calibration.paths[:RANKING_IMAGES] if job.calibration is not None else []
    inputs = load_batch(paths, job.run.card.preprocessing, kind)
    return Ranking(inputs, run_onnx(base, inputs, {}), session_config)


def quantization_facts(int8: Int8Facts | None, op_types: tuple[str, ...] = ()) -> dict:
    """The quantization facts worth carrying inside the model file (kept small: strings and numbers)."""
    if int8 is None:
        return {"quantization": {"quantized_op_types": list(op_types)}} if op_types else {}
    carried = {
        "calibration_method": int8.calibration_method,
        "calibration_images": int8.calibration_images,
        "activations": int8.activations,
        "weights": int8.weights,
        "bias_correction": int8.bias_correction,
        "kept_float": int8.kept_float,
    }
    return {"quantization": {k: v for k, v in carried.items() if v is not None}}


def speed_vs_fp32(job: "ExportJob", base: Path, path: Path, variant: Variant, int8: Int8Facts) -> tuple[PairedTiming, list[str]]:
    """Time the int8 file against fp32 here (alternating pairs, batch 1, a few seconds), with a warning when int8 is
    clearly slower: on CPUs without VNNI, and with many layers kept in float, it can be."""
    image = job.checker.data.inputs(variant.input_kind)[:1]
    fp32, quantized = ort_session(base, {}), ort_session(path, int8.session_config)
    name = fp32.get_inputs()[0].name
    job.describe(variant, "int8: timing it against fp32 on this CPU")
    timing = speed_check.compare(lambda: fp32.run(None, {name: image}), lambda: quantized.run(None, {name: image}))
    if not timing.clearly_slower:
        return timing, []
    search = int8.search
    floats = f" with {len(search.kept_float)} of {search.quantized_nodes} layers in float" if search is not None else ""
    return timing, [
        f"ran {timing.speedup:.2f}x as fast as fp32 on this CPU{floats} (batch 1 median, {timing.candidate_ms:.2f} vs "
        f"{timing.reference_ms:.2f} ms, slower in {timing.candidate_slower_pairs} of {timing.pairs} alternating pairs): "
        "fp32 (model.onnx) is the faster file here; --quantize auto picks by measurement"
    ]
