"""The bench report: one Measurement per variant, runtime and batch size, in one BenchResult."""

from __future__ import annotations

import datetime as _dt

from pydantic import BaseModel, ConfigDict, Field

from ..results import Result


class Measurement(BaseModel):
    """One variant on one runtime at one batch size. Ratios are this p50 over a reference p50 (>1 = slower)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str  # the model the variants belong to (run name or file stem): ratios compare within one model
    artifact: str
    variant: str  # fp32, fp16, int8, int8-dynamic... (from model.<variant>.onnx; model.onnx / model.pt are fp32)
    runtime: str
    batch_size: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    p50_ci_ms: tuple[float, float]  # 95% distribution-free confidence interval of the median
    images_per_second: float
    peak_rss_mb: float
    rss_delta_mb: float
    gpu_memory_mb: float | None = None
    size_bytes: int
    parameters: int | None = None
    top1: float | None = None
    top5: float | None = None
    accuracy_images: int | None = None
    ratio_to_fastest: float
    ratio_to_fp32: float | None = None
    fp32_baseline: str | None = None  # "fp32 on ort-cpu": which measurement ratio_to_fp32 divides by
    slower_than_fp32: bool | None = None  # a compressed variant that is not faster than its fp32 parent
    end_to_end: bool = False
    runtime_info: dict = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.variant} on {self.runtime}"


class BenchResult(Result):
    """Everything one `edgekit bench` measured, with the machine and settings it was measured under."""

    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    targets: list[str] = Field(default_factory=list)
    machine: dict
    settings: dict
    measurements: list[Measurement]
    skipped: dict[str, str] = Field(default_factory=dict)  # runtime (or "runtime: artifact") -> reason
    summary: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    def for_model(self, model: str, batch_size: int | None = None) -> list[Measurement]:
        return [m for m in self.measurements if m.model == model and (batch_size is None or m.batch_size == batch_size)]
