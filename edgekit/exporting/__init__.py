"""Export a run's model to deployable variants, each checked for parity with the float32 PyTorch model.

    result = export("runs/flowers", formats=("onnx",), quantize=("none", "int8"))
    result.passed                    # False if any variant crossed its parity thresholds
    result.variants[1].path          # runs/flowers/exports/model.int8.onnx

Files (under <run>/exports/, each written atomically):
    model.onnx                 fp32 ONNX (the plain name is the float32 model)
    model.<variant>.onnx       fp16, int8, int8-dynamic; with embedded preprocessing: fp32-uint8in, int8-uint8in, ...
    model.pt2                  torch.export program (variant "torch-export")
    <variant>.parity.json      a ParityResult per variant
"""

from __future__ import annotations

import datetime as _dt
import importlib
import os
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..data import load_batch, run_images, stratified_sample
from ..errors import ConfigError, ExportError, first_line
from ..hardware import int8_runtime_config, isa_class
from ..metadata import ModelMetadata
from ..models import get_spec
from ..parity_check import (
    FLOAT_INPUT,
    UINT8_INPUT,
    LabelledImages,
    ParityChecker,
    ParityData,
    ParityResult,
    ParityThresholds,
    compare_logits,
    images_in,
    judge,
    merge_thresholds,
    open_artifact,
    run_parity_images,
    thresholds_for,
)
from ..preprocessing import example_pixels
from ..progress import Bar
from ..results import Result
from ..runs import Run
from ..variants import Format, InputKind, Precision, Variant, format_extra, format_precisions
from ..version import __version__
from . import quantize as quantizers
from .embed import EmbeddedPreprocessing
from .mobile import check_mobile_options, mobile_variants
from .onnx import CHECK_BATCH_SIZES, check_batch_sizes, export_proto, save_proto, set_metadata
from .options import EXPORT_DEFAULTS
from .quantize import (
    CALIBRATION_METHODS,
    RANKING_IMAGES,
    Ranking,
    Validation,
    calibrate,
    first_and_last_compute_nodes,
    load_model,
    prepare,
    quantize_with_ranges,
    run_onnx,
    search_int8,
    with_margin,
)

# Every format is a Format in variants.py; ONNX is made here (_onnx), every other one by the module of its name in this
# package (torch_export.py, openvino.py, executorch.py), through its export_variant(exporter, quantization). So a
# new format is one Format entry (suffix, precisions, extra) plus one module, and nothing here changes.
FORMATS = tuple(f.value for f in Format)
CORE_FORMATS = tuple(f for f in FORMATS if format_extra(f) is None)  # what --format all means
QUANTIZATIONS = ("none", "fp16", "int8", "int8-dynamic")
_QUANTIZE_NAME = {"fp32": "none", "fp16": "fp16", "int8": "int8", "int8-dynamic": "int8-dynamic"}  # precision -> --quantize
# The --quantize choices each format makes (torch-export is always one float32 program).
FORMAT_QUANTIZATIONS = {f: tuple(_QUANTIZE_NAME[p] for p in format_precisions(f)) for f in FORMATS}
CALIBRATION_BATCH = 8
MAX_FALLBACK_STEPS = EXPORT_DEFAULTS.max_fallback_steps  # int8: layers returned to float, at most, before saying no int8 holds the budget
MAX_FALLBACK_SECONDS = EXPORT_DEFAULTS.max_fallback_seconds


class VariantResult(Result):
    """One exported file and its parity check."""

    variant: str  # "fp32", "fp16", "int8", "int8-dynamic", "torch-export", "<any of the ONNX ones>-uint8in"
    format: str  # "onnx" or "torch-export"
    path: str
    size_bytes: int
    seconds: float  # export + quantization wall time (parity not included; see parity.seconds)
    input_kind: str = FLOAT_INPUT
    batch_sizes_checked: list[int] = []
    parity: ParityResult
    passed: bool
    failures: list[str] = []  # parity failures, plus a batch-size check that failed
    details: dict = {}  # opset, calibration method and images, nodes kept in float...


class ExportResult(Result):
    """Every variant exported from one run."""

    run_dir: str
    variants: list[VariantResult]
    passed: bool
    parity_data: str  # "images:<dir>" or "random"
    seconds: float = 0.0


def variant_file_name(variant: str) -> str:
    """model.onnx for fp32, model.pt2 for torch-export, model.<variant>.onnx for the rest (see ``Variant.file_name``)."""
    return Variant.parse(variant).file_name


def parity_file_name(variant: str) -> str:
    return Variant.parse(variant).parity_file_name


def onnx_variant(quantization: str, embedded: bool = False) -> str:
    precision = Precision.FP32 if quantization == "none" else Precision(quantization)
    return Variant(precision, InputKind.UINT8 if embedded else InputKind.FLOAT).name


def parse_choices(
    values: str | Iterable[str], allowed: Sequence[str], what: str, all_means: Sequence[str] | None = None
) -> tuple[str, ...]:
    """ "a,b" or ["a", "b"] -> ("a", "b"), each checked against ``allowed``; "all" -> ``all_means``."""
    items = values.split(",") if isinstance(values, str) else list(values)
    chosen: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item == "all" and all_means is not None:
            chosen += [a for a in all_means if a not in chosen]
            continue
        if item not in allowed:
            raise ConfigError(f"{what} {item!r} is not one of {', '.join([*allowed, 'all'] if all_means else allowed)}")
        if item not in chosen:
            chosen.append(item)
    if not chosen:
        raise ConfigError(f"no {what} given; choose from {', '.join(allowed)}")
    return tuple(chosen)


def export(
    run,
    formats: str | Sequence[str] = EXPORT_DEFAULTS.formats,
    quantize: str | Sequence[str] = EXPORT_DEFAULTS.quantize,
    *,
    opset: int | None = EXPORT_DEFAULTS.opset,
    calib_data: str | os.PathLike | None = EXPORT_DEFAULTS.calib_data,
    calib_size: int = EXPORT_DEFAULTS.calib_size,
    calib_method: str = EXPORT_DEFAULTS.calib_method,
    parity_data: str | os.PathLike | None = EXPORT_DEFAULTS.parity_data,
    thresholds: ParityThresholds | None = None,
    embed_preprocessing: bool = EXPORT_DEFAULTS.embed_preprocessing,
    max_parity_images: int = EXPORT_DEFAULTS.max_parity_images,
    progress: bool = False,
    fixed_batch: int | None = EXPORT_DEFAULTS.fixed_batch,
    ort_format: bool = EXPORT_DEFAULTS.ort_format,
    accuracy_aware: bool = EXPORT_DEFAULTS.accuracy_aware,
    max_fallback_steps: int = MAX_FALLBACK_STEPS,
    max_fallback_seconds: float = MAX_FALLBACK_SECONDS,
    speed_check: bool = EXPORT_DEFAULTS.speed_check,
) -> ExportResult:
    """Export ``run`` (a Run or run directory) to ``formats`` ("onnx", "torch-export", "all") with every
    ``quantize`` choice for ONNX ("none", "fp16", "int8", "int8-dynamic"), and check each variant's parity.

    int8 calibrates on ``calib_size`` class-stratified images of the run's training data (or ``calib_data``).
    Parity runs on the run's validation images (or ``parity_data``; random inputs for a zoo model without
    it). ``thresholds`` override the model's defaults field by field. ``embed_preprocessing`` adds a
    uint8-NHWC-input twin of every ONNX variant. ``fixed_batch`` N adds a fixed-shape twin of every ONNX
    variant (``<variant>-b<N>``, what NNAPI/CoreML want) with ORT's mobile-usability verdict in its details;
    ``ort_format`` also writes an .ort file (ORT Mobile) beside each ONNX file. "openvino" and "executorch"
    need their extras (``pip install 'edgekit[openvino]'``, ``'edgekit[executorch]'``) and are exported only
    when named; "all" means onnx and torch-export. A variant that fails parity is kept, its report says failed, and
    ``result.passed`` is False.

    int8 is accuracy-aware: its thresholds are a budget (by default at most 1 point of accuracy drop where the
    parity images have labels, else at least 99% top-1 agreement with PyTorch fp32), and layers go back to float,
    the most sensitive first, until the budget holds (``accuracy_aware=False`` skips the search; the steps and
    seconds are bounded by ``max_fallback_steps``/``max_fallback_seconds``). It is also hardware-aware: the model
    records the ORT session options its CPU class needs (U8U8 kernels on x86 without VNNI) and the ISA class it
    was validated on, and every edgekit runtime applies them. ``speed_check`` times the ONNX int8 file against fp32
    here for a few seconds (``details["speed_vs_fp32"]``) and warns when it is clearly slower.
    """

    started = time.perf_counter()
    run = run if isinstance(run, Run) else Run.load(run)

    # "all" is the core formats: the edge targets need their extras, and ExecuTorch int8 takes minutes, so they are
    # asked for by name.
    formats = parse_choices(formats, FORMATS, "format", all_means=CORE_FORMATS)
    quantize = parse_choices(quantize, QUANTIZATIONS, "quantization", all_means=QUANTIZATIONS)
    for choice in quantize:
        if choice != "none" and not any(choice in FORMAT_QUANTIZATIONS[f] for f in formats):
            makers = [f for f in FORMATS if choice in FORMAT_QUANTIZATIONS[f]]
            raise ConfigError(f"--quantize {choice} applies to {', '.join(makers)} only; add --format {makers[0]} (or all)")
    check_mobile_options(formats, fixed_batch, ort_format)
    if calib_size < 1:
        raise ConfigError(f"--calib-size {calib_size} must be at least 1")

    if calib_method not in CALIBRATION_METHODS:
        raise ConfigError(f"--calib-method {calib_method!r} is not one of {', '.join(CALIBRATION_METHODS)}")

    card = run.card
    spec = get_spec(card.model)
    model = run.build_model()
    calibration = _calibration_images(run, calib_data, calib_size) if "int8" in quantize and set(formats) - {"torch-export"} else None
    checker = ParityChecker(model, ParityData(card.preprocessing, run_parity_images(card, parity_data, max_parity_images)))
    exporter = _Exporter(run, model, spec, checker, opset, calibration, calib_method, thresholds)

    steps: list[tuple[str, str, bool]] = []  # (format, quantization, embedded)
    if "onnx" in formats:
        steps += [("onnx", q, False) for q in quantize]
        if embed_preprocessing:
            steps += [("onnx", q, True) for q in quantize]
    for f in formats:
        if f != "onnx":  # a float-only format (torch-export) makes its one program whatever --quantize asks
            made = FORMAT_QUANTIZATIONS[f]
            steps += [(f, q, False) for q in (quantize if len(made) > 1 else made) if q in made]
    exporter.fixed_batch, exporter.ort_format, exporter.speed_check = fixed_batch, ort_format, speed_check
    exporter.accuracy_aware, exporter.max_fallback_steps, exporter.max_fallback_seconds = (
        accuracy_aware,
        max_fallback_steps,
        max_fallback_seconds,
    )

    variants = []
    with Bar(progress) as bar, tempfile.TemporaryDirectory(prefix="edgekit-export-") as workdir:
        exporter.workdir = Path(workdir)
        bar.begin(len(steps), "exporting")
        exporter.bar = bar
        for format_name, quantization, embedded in steps:
            name = "torch-export" if format_name == "torch-export" else onnx_variant(quantization, embedded)
            if format_name in ("openvino", "executorch"):
                name = Variant.parse(f"{format_name}-{'fp32' if quantization == 'none' else quantization}").name
            bar.step(f"exporting {name}")
            variants.append(exporter.variant(format_name, quantization, embedded))
            if format_name == "onnx" and (fixed_batch or ort_format):
                variants += mobile_variants(exporter, variants[-1])
    return ExportResult(
        run_dir=str(run.path),
        variants=variants,
        passed=all(v.passed for v in variants),
        parity_data=checker.data.source,
        seconds=round(time.perf_counter() - started, 3),
    )


class _Exporter:
    """Builds each variant from one float32 ONNX export per input kind (made once, in the work dir)."""

    def __init__(self, run, model, spec, checker: ParityChecker, opset, calibration, calib_method, thresholds):
        self.run = run
        self.model = model
        self.spec = spec
        self.checker = checker
        self.opset = opset
        self.calibration = calibration
        self.calib_method = calib_method
        self.thresholds = thresholds
        self.workdir: Path = Path(".")
        self.bar = Bar(False)  # export() hands its own, so slow formats can say what they are doing
        self.fixed_batch: int | None = None
        self.ort_format = False
        self.accuracy_aware = True
        self.max_fallback_steps = MAX_FALLBACK_STEPS
        self.max_fallback_seconds = MAX_FALLBACK_SECONDS
        self.speed_check = True
        self._base: dict[str, tuple[Path, float, int]] = {}  # input kind -> (fp32 onnx, seconds, opset)

    # ----------------------------------------------------------------- building blocks

    def module_for(self, kind: str):
        if kind == UINT8_INPUT:
            return EmbeddedPreprocessing(self.model, self.run.card.preprocessing).eval()
        return self.model

    def example(self, kind: str):
        import torch

        crop = self.run.card.preprocessing.crop
        if kind == UINT8_INPUT:
            return example_pixels(self.run.card.preprocessing)
        return torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))

    def metadata(self, variant: str, kind: str, format_name: str, extra: dict | None = None) -> ModelMetadata:
        card = self.run.card
        source = {
            "model": card.model,
            "weights": card.weights,
            "run": str(self.run.path),
            "variant": variant,
            "format": format_name,
            "edgekit": __version__,
            "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        return ModelMetadata(list(card.class_names), card.preprocessing, source, kind)

    def base_onnx(self, kind: str) -> tuple[Path, float, int]:
        """The float32 ONNX export for an input kind, made once."""
        if kind not in self._base:
            started = time.perf_counter()
            proto = export_proto(self.module_for(kind), self.example(kind), self.opset)
            opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
            path = save_proto(proto, self.workdir / f"base-{kind}.onnx")
            self._base[kind] = (path, time.perf_counter() - started, opset)
        return self._base[kind]

    def calibration_batches(self, kind: str) -> Iterator[np.ndarray]:

        paths = self.calibration.paths
        for start in range(0, len(paths), CALIBRATION_BATCH):
            yield load_batch(paths[start : start + CALIBRATION_BATCH], self.run.card.preprocessing, kind)

    # ----------------------------------------------------------------- one variant

    def variant(self, format_name: str, quantization: str, embedded: bool) -> VariantResult:
        if format_name == "onnx":
            return self._onnx(quantization, embedded)
        module = importlib.import_module(f".{format_name.replace('-', '_')}", __package__)  # see FORMATS
        return module.export_variant(self, quantization)

    def _onnx(self, quantization: str, embedded: bool) -> VariantResult:
        import onnx

        kind = UINT8_INPUT if embedded else FLOAT_INPUT
        variant = onnx_variant(quantization, embedded)
        base, base_seconds, opset = self.base_onnx(kind)
        started = time.perf_counter()
        details: dict = {"opset": opset, "fp32_export_seconds": round(base_seconds, 3)}
        work = self.workdir / f"{variant}.onnx"
        if quantization == "none":
            work = base
        elif quantization == "fp16":
            quantizers.convert_fp16(base, work)
        elif quantization == "int8":
            int8_details, runtime = self._int8(base, work, kind, variant)
            details.update(int8_details)
        elif quantization == "int8-dynamic":
            quantizers.quantize_dynamic_matmul(base, work)
            details.update({"quantized_op_types": list(quantizers.DYNAMIC_OP_TYPES)})
        proto = onnx.load(str(work))
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"the {variant} ONNX graph is invalid: {first_line(exc, 300)}") from exc
        metadata = self.metadata(variant, kind, "onnx", {"opset": opset, **_quantization_source(details)})
        if quantization == "int8":
            metadata.runtime = runtime  # what the app must set, and the ISA class the accuracy was proven on
        set_metadata(proto, metadata.to_props())
        path = self.run.exports_dir / variant_file_name(variant)
        save_proto(proto, path)
        seconds = time.perf_counter() - started + (base_seconds if quantization == "none" else 0.0)
        if quantization == "int8" and self.speed_check:  # after the clock: the export's time is the export's
            self._speed_vs_fp32(base, path, kind, runtime["ort_session_config"], details)
        # Dynamic quantization scales activations per batch, so one image's logits legitimately depend on its batch.
        tolerance = None if quantization == "int8-dynamic" else 1e-3
        return self.finish(variant, "onnx", path, seconds, kind, details, tolerance)

    def _speed_vs_fp32(self, base: Path, path: Path, kind: str, session_config: dict[str, str], details: dict) -> None:
        """Time the int8 file against fp32 here (alternating pairs, batch 1, a few seconds) into ``details``, with a
        warning when int8 is clearly slower: on CPUs without VNNI, and with many layers kept in float, it can be."""
        from .quantize import ort_session
        from .speed_check import compare

        image = self.checker.data.inputs(kind)[:1]
        fp32, int8 = ort_session(base, {}), ort_session(path, session_config)
        name = fp32.get_inputs()[0].name
        self.bar.describe("int8: timing it against fp32 on this CPU")
        timing = compare(lambda: fp32.run(None, {name: image}), lambda: int8.run(None, {name: image}))
        details["speed_vs_fp32"] = timing.model_dump()
        if timing.clearly_slower:
            search = details.get("search") or {}
            floats = f" with {len(search['kept_float'])} of {search['quantized_nodes']} layers in float" if search else ""
            details.setdefault("warnings", []).append(
                f"ran {timing.speedup:.2f}x as fast as fp32 on this CPU{floats} (batch 1 median, {timing.candidate_ms:.2f} vs "
                f"{timing.reference_ms:.2f} ms, slower in {timing.candidate_slower_pairs} of {timing.pairs} alternating pairs): "
                "fp32 (model.onnx) is the faster file here; --quantize auto picks by measurement"
            )

    def search_skipped(self) -> str:
        """Why no int8 format runs its accuracy-aware search here ("" when it does)."""
        if not self.accuracy_aware:
            return "accuracy-aware search off"
        if self.checker.data.images is None:
            return "no images to validate on (random inputs)"
        return ""

    def limits(self, variant: str) -> ParityThresholds:
        """The thresholds (for int8: the accuracy budget) ``variant`` is held to on this exporter's parity images."""
        has_labels = self.checker.data.labels is not None
        return merge_thresholds(thresholds_for(self.spec, variant, has_labels=has_labels), self.thresholds)

    def _int8(self, base: Path, work: Path, kind: str, variant: str) -> tuple[dict, dict]:
        """Static int8 of ``base`` into ``work``, hardware-aware and, with real parity images, accuracy-aware:
        layers go back to float until the budget holds (see quantize/fallback.py). Returns (details, runtime)."""

        isa = isa_class()
        session_config = int8_runtime_config(isa)
        prepared = prepare(base, self.workdir / f"prepared-{kind}.onnx")
        ranges = calibrate(prepared, self.calibration_batches(kind), self.calib_method, self.workdir)
        start = first_and_last_compute_nodes(load_model(prepared))
        details: dict = {
            "calibration_method": ranges.method,
            "calibration_images": ranges.images,
            "calibration_data": self.calibration.source,
            "activations": "uint8 asymmetric, per tensor",
            "weights": "int8 symmetric, per channel, GPTQ rounding (each Conv's output error on the calibration images, not each weight's)",
            "bias_correction": "each int8 Conv's bias absorbs its rounded weights' mean shift (calibration images)",
            "isa": isa,
            "ort_session_config": session_config,
        }
        runtime = {"ort_session_config": session_config, "validated_isa": isa}
        why = self.search_skipped()
        if why:
            quantize_with_ranges(prepared, work, ranges, start, metadata_from=base)
            details.update({"kept_float": start, "search": None, "search_skipped": why})
            return details, runtime
        budget = self.limits(variant)
        data = self.checker.data

        def evaluate(path: Path):
            logits = run_onnx(path, data.inputs(kind), session_config)
            return compare_logits(self.checker.reference_logits(kind), logits, data.labels, data.source)

        ranking_inputs = load_batch(self.calibration.paths[:RANKING_IMAGES], self.run.card.preprocessing, kind)
        ranking = Ranking(ranking_inputs, run_onnx(base, ranking_inputs, {}), session_config)
        search = search_int8(
            prepared,
            work,
            ranges,
            start,
            Validation(evaluate, lambda metrics: not judge(with_margin(metrics), budget)[0]),
            ranking,
            budget,
            isa,
            max_steps=self.max_fallback_steps,
            max_seconds=self.max_fallback_seconds,
            metadata_from=base,
            progress=lambda message: self.bar.describe(f"int8: {message}") if self.bar is not None else None,
        )
        details.update({"kept_float": search.kept_float, "search": search.model_dump(mode="json")})
        return details, runtime

    def finish(
        self,
        variant: str,
        format_name: str,
        path: Path,
        seconds: float,
        kind: str,
        details: dict,
        consistency_tolerance: float | None,
        session=None,
    ) -> VariantResult:
        """Prove a written variant (batch sizes, then parity against fp32) and make its result: every format
        module's last step."""
        failures: list[str] = []
        session = session if session is not None else open_artifact(path)
        crop = self.run.card.preprocessing.crop
        shape = (crop, crop, 3) if kind == UINT8_INPUT else (3, crop, crop)
        try:
            check_batch_sizes(
                session.run, shape, np.uint8 if kind == UINT8_INPUT else np.float32, self.run.card.num_classes, consistency_tolerance
            )
        except ExportError as exc:
            failures.append(f"batch sizes: {exc}")
        limits = self.limits(variant)
        parity_result = self.checker.check(path, variant, limits, session=session)
        parity_result.to_json(self.run.exports_dir / parity_file_name(variant))
        failures += parity_result.failures
        return VariantResult(
            variant=variant,
            format=format_name,
            path=str(path),
            size_bytes=path.stat().st_size,
            seconds=round(seconds, 3),
            input_kind=kind,
            batch_sizes_checked=list(CHECK_BATCH_SIZES),
            parity=parity_result,
            passed=not failures,
            failures=failures,
            details=details,
        )


def _quantization_source(details: dict) -> dict:
    """The quantization facts worth carrying inside the model file (kept small: strings and numbers)."""
    keys = ("calibration_method", "calibration_images", "activations", "weights", "bias_correction", "kept_float", "quantized_op_types")
    return {"quantization": {k: details[k] for k in keys if k in details}} if any(k in details for k in keys) else {}


def _calibration_images(run, calib_data, calib_size: int):
    """Class-stratified calibration images: ``calib_data`` if given, else the run's training images."""

    if calib_data is not None:
        return images_in(calib_data, run.card.class_names, calib_size, seed=0)
    if run.card.data_dir is None:
        raise ExportError(
            "int8 needs calibration images and this run has no training data (a zoo model?); "
            "pass --calib-data DIR with a few hundred images like the ones the model will see"
        )
    folder = stratified_sample(run_images(run.card, "train"), calib_size, seed=0)
    return LabelledImages([p for p, _ in folder.samples], [label for _, label in folder.samples], f"images:{folder.root}")


__all__ = ["ExportResult", "VariantResult", "export", "variant_file_name", "parity_file_name"]
