"""Export a run's model to deployable variants, each checked for parity with the float32 PyTorch model.

    result = export("runs/flowers", ExportOptions(formats=("onnx",), quantize=("none", "int8")))
    result = export("runs/flowers", quantize="none,int8")     # the same: keywords are ExportOptions fields
    result.passed                    # False if any variant crossed its parity thresholds
    result.get("int8").path          # runs/flowers/exports/model.int8.onnx

Files (under <run>/exports/, each written atomically; names from ``Variant.file_name``):
    model.onnx, model.<variant>.onnx   ONNX fp32 and the others (fp16, int8, int8-dynamic, -uint8in, -b<N> twins)
    model.pt2                          torch.export program
    model[.int8].xml + .bin            OpenVINO IR (edgekit[openvino])
    model[.int8].pte + .pte.json       ExecuTorch program (edgekit[executorch])
    <variant>.parity.json              a ParityResult per variant
    <variant>.target-parity.json       with --target: the same, from the logits the target returned

Each format is a row in ``edgekit.formats`` whose exporter module makes its variants (``export_variant(job,
variant)``, see ``job.py``); this module only plans, sets up the job and collects the results.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ..errors import ConfigError, ExportError
from ..models import get_spec
from ..parity_check import LabelledImages, ParityChecker, ParityData, ParityThresholds, images_in, run_parity_images
from ..progress import Bar
from ..results import DataSource
from ..runs import Run
from ..targets import is_local
from ..targets.info import open_with_info
from ..variants import Variant
from .job import ExportJob, exporter_of
from .on_target import validate_on_target
from .options import EXPORT_DEFAULTS, ExportOptions
from .plan import QUANTIZATIONS, check_auto, chosen_formats, parse_choices, plan
from .results import ExportResult, Int8Facts, VariantResult


def export(
    run,
    options: ExportOptions | None = None,
    *,
    thresholds: ParityThresholds | None = None,
    progress: bool = False,
    target_options=None,
    **fields,
) -> ExportResult:
    """Export ``run`` (a Run or run directory) as ``options`` say (an ``ExportOptions``; keyword ``fields`` are
    the same options, validated the same way), checking each variant's parity.

    int8 calibrates on ``calib_size`` class-stratified images of the run's training data (or ``calib_data``) and is
    accuracy-aware: its thresholds are a budget (by default at most 1 point of accuracy drop where the parity images
    have labels, else at least 99% top-1 agreement with PyTorch fp32), and layers go back to float, the most
    sensitive first, until it holds. Parity runs on the run's validation images (or ``parity_data``; random inputs
    for a zoo model without it). ``thresholds`` override the model's defaults field by field. A variant that fails
    parity is kept, its report says failed, and ``result.passed`` is False.

    ``options.target`` (a device: "ssh://pi@raspberrypi.local"; ``target_options`` say how to reach it): every file
    that runs there is validated again there, from the logits it returns (``exporting/on_target.py``).
    """
    started = time.perf_counter()
    options = resolve_options(options, fields)
    run = run if isinstance(run, Run) else Run.load(run)
    variants = plan(options)
    results: list[VariantResult] = []
    device = None if is_local(options.target) else open_with_info(options.target, target_options)
    try:
        return _export(run, options, thresholds, variants, results, device, progress, started)
    finally:
        if device is not None:
            device[0].close()


def _export(run: Run, options: ExportOptions, thresholds, variants, results, device, progress: bool, started: float) -> ExportResult:
    with Bar(progress) as bar, tempfile.TemporaryDirectory(prefix="edgekit-export-") as workdir:
        job = _job(run, options, thresholds, Path(workdir), bar, needs_calibration=any(v.is_compressed for v in variants))
        run.exports_dir.mkdir(parents=True, exist_ok=True)  # a format's exporter writes into it, whichever comes first
        bar.begin(len(variants), "exporting")
        for variant in variants:
            bar.step(f"exporting {variant.name}")
            results.append(exporter_of(variant.format)(job, variant))
        where = validate_on_target(job, results, device[0], device[1], bar) if device is not None else None
    return ExportResult(
        run_dir=str(run.path),
        variants=results,
        passed=all(v.passed for v in results),
        parity_data=job.checker.data.source,
        seconds=round(time.perf_counter() - started, 3),
        target=where,
    )


def resolve_options(options: ExportOptions | None, fields: dict) -> ExportOptions:
    """``options`` with ``fields`` on top, validated as ``ExportOptions`` (a wrong name or value: one ConfigError)."""
    from ..config import validate

    if options is None:
        return validate(ExportOptions, fields, "export options") if fields else EXPORT_DEFAULTS
    return validate(ExportOptions, {**options.model_dump(exclude_unset=True), **fields}, "export options") if fields else options


def _job(run: Run, options: ExportOptions, thresholds, workdir: Path, bar: Bar, needs_calibration: bool) -> ExportJob:
    if options.calib_size < 1:
        raise ConfigError(f"--calib-size {options.calib_size} must be at least 1")
    model = run.build_model()
    images = run_parity_images(run.card, options.parity_data, options.max_parity_images)
    calibration = _calibration_images(run, options) if needs_calibration and _calibrates(options) else None
    return ExportJob(
        options=options,
        run=run,
        model=model,
        spec=get_spec(run.card.model),
        checker=ParityChecker(model, ParityData(run.card.preprocessing, images)),
        calibration=calibration,
        workdir=workdir,
        bar=bar,
        thresholds=thresholds,
    )


def _calibrates(options: ExportOptions) -> bool:
    return "int8" in options.quantize and any(f.name != "torch-export" for f in chosen_formats(options))


def _calibration_images(run: Run, options: ExportOptions) -> LabelledImages:
    """Class-stratified calibration images: ``calib_data`` if given, else the run's training images."""
    from ..data import run_images, stratified_sample

    if options.calib_data is not None:
        return images_in(options.calib_data, run.card.class_names, options.calib_size, seed=0)
    if run.card.data_dir is None:
        raise ExportError(
            "int8 needs calibration images and this run has no training data (a zoo model?); "
            "pass --calib-data DIR with a few hundred images like the ones the model will see"
        )
    folder = stratified_sample(run_images(run.card, "train"), options.calib_size, seed=0)
    return LabelledImages([p for p, _ in folder.samples], [label for _, label in folder.samples], DataSource.images(folder.root))


def variant_file_name(variant: str) -> str:
    """model.onnx for fp32, model.pt2 for torch-export, model.<variant>.onnx for the rest (see ``Variant.file_name``)."""
    return Variant.parse(variant).file_name


__all__ = [
    "ExportJob",
    "ExportOptions",
    "ExportResult",
    "Int8Facts",
    "QUANTIZATIONS",
    "VariantResult",
    "check_auto",
    "export",
    "parse_choices",
    "plan",
    "resolve_options",
    "variant_file_name",
]
