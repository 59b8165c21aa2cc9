"""`edgekit export`'s options: its flags, its ``--config`` YAML keys and ``export()``'s keyword defaults all come
from ``ExportOptions``, so each default and help text is written once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..parity_check import ParityOptions
from .quantize import MAX_SECONDS, MAX_STEPS


def split_csv(value):
    """'a, b' -> ('a', 'b'): a flag's comma-separated text or a YAML list give the same tuple."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


Names = Annotated[tuple[str, ...], BeforeValidator(split_csv)]


def _threshold(name: str):
    """The same limit, default and help as `edgekit parity`'s (they override the model's per-variant thresholds)."""
    field = ParityOptions.model_fields[name]
    return Field(field.default, description=field.description)


class ExportOptions(BaseModel):
    """Every `edgekit export` option except what to export (RUN_DIR or --model) and how to print it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    formats: Names = Field(
        ("onnx",),
        json_schema_extra={"flag": "--format"},
        description="onnx, torch-export, openvino (extra: edgekit[openvino]), executorch (extra: edgekit[executorch]), "
        "comma-separated; all = onnx,torch-export.",
    )
    quantize: Names = Field(
        ("none",),
        description="Variants, comma-separated: none (fp32), fp16, int8 (static, calibrated, held to the accuracy budget), "
        "int8-dynamic (MatMul/Gemm only), all; or auto: export fp32 and int8 of every --format, time each file within "
        "budget on its runtime at every setting worth trying here, and write the fastest as exports/deploy.json (+ DEPLOY.md).",
    )
    batch_size: int = Field(1, ge=1, description="With --quantize auto: the batch size the app runs, for timing.")
    auto_seconds: float = Field(
        60.0,
        gt=0,
        description="With --quantize auto: about how long to time the candidates (every file within budget x runtime x "
        "setting); the clearly slower ones are dropped on the way.",
    )
    accuracy_aware: bool = Field(
        True,
        json_schema_extra={"flag": "--no-fallback"},
        description="int8: do not return sensitive layers to float when the accuracy budget is broken (just report it).",
    )
    max_fallback_steps: int = Field(MAX_STEPS, ge=0, description="int8: at most this many layers go back to float.")
    max_fallback_seconds: float = Field(MAX_SECONDS, ge=0, description="int8: time bound of the accuracy-aware search.")
    speed_check: bool = Field(
        True,
        json_schema_extra={"flag": "--no-speed-check"},
        description="ONNX int8: do not time it against fp32 on this CPU (a few seconds) nor warn when it is slower.",
    )
    opset: int | None = Field(None, description="ONNX opset version [default: the exporter's].")
    calib_data: Path | None = Field(None, description="int8 calibration images (folder) [default: the run's training images].")
    calib_size: int = Field(300, description="How many calibration images (class-stratified).")
    calib_method: Literal["minmax", "entropy", "percentile"] = Field(
        "percentile",
        description="How int8 activation ranges are chosen from the calibration images (percentile: minmax without the "
        "outermost 0.001% of values; measured at least as good as minmax on every model and seed tried).",
    )
    parity_data: Path | None = Field(None, description="Images for the parity check [default: the run's validation images].")
    max_parity_images: int = Field(256, description="Parity uses at most this many images (class-stratified).")
    embed_preprocessing: bool = Field(
        False, description="Also export a twin of each ONNX variant that takes uint8 NHWC pixels and normalizes inside the graph."
    )
    fixed_batch: int | None = Field(
        None,
        description="Also write a fixed-shape twin of each ONNX variant with this batch (model.<variant>-b<N>.onnx, "
        "for NNAPI/CoreML), with ORT's mobile-usability verdict in its report.",
    )
    ort_format: bool = Field(False, description="Also write an .ort file (ORT Mobile) beside each ONNX variant.")
    target: str | None = Field(
        None,
        description="The device the app runs on (ssh://[user@]host[:port] or an ssh_config alias; `edgekit target setup` "
        "first): every file is validated again there, and --quantize auto times its candidates there [default: this machine].",
    )
    max_rel_diff: float | None = _threshold("max_rel_diff")
    min_agreement: float | None = _threshold("min_agreement")
    max_accuracy_drop: float | None = _threshold("max_accuracy_drop")


EXPORT_DEFAULTS = ExportOptions()
