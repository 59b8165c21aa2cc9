"""The bench report: one Measurement per variant, runtime and batch size, in one BenchResult."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from ..card import MeasuredOn
from ..parity_check import ParityMetrics
from ..results import Result


class _ReadsLikeADict(BaseModel):
    """Typed, and still readable as the dict it used to be (``.get``, ``[key]``), for code that reads old reports."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    def get(self, key: str, default=None):
        return getattr(self, key, default) if key in type(self).model_fields else default

    def __getitem__(self, key: str):
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self):
        return type(self).model_fields.keys()

    def items(self):
        return self.model_dump().items()

    def __len__(self) -> int:
        return len(type(self).model_fields)


class MachineInfo(_ReadsLikeADict):
    """The machine a bench ran on: what decides int8/fp16 speed (CPU flags), cores, memory, GPU, library versions."""

    cpu: str | None = None
    architecture: str | None = None
    logical_cores: int | None = None
    physical_cores: int | None = None
    usable_cores: int | None = None
    cpu_flags: list[str] = Field(default_factory=list)
    memory_gb: float | None = None
    os: str | None = None
    python: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    gpu: str | None = None
    gpu_memory_gb: float | None = None
    cuda: str | None = None
    onnxruntime_providers: list[str] | None = None


class BenchSettings(_ReadsLikeADict):
    """What a bench was asked to do and how it measured (the texts explain the method in the report itself)."""

    runtimes: list[str] = Field(default_factory=list)
    batch_sizes: list[int] = Field(default_factory=list)
    threads: int | None = None
    warmup: int | None = None
    iterations: int | None = None
    end_to_end: bool = False
    data: str | None = None
    max_images: int | None = None
    options: dict = Field(default_factory=dict)  # as used in the interleaved (fair) pass
    timing: str = ""
    memory: str = ""
    ratios: str = ""
    contention: str = ""
    contention_threshold: float | None = None


# every Mapping check (pydantic's dict fields among them) accepts these, so a report's machine can go where a dict went
Mapping.register(MachineInfo)
Mapping.register(BenchSettings)


class Measurement(BaseModel):
    """One variant on one runtime at one batch size. Ratios are this p50 over a reference p50 (>1 = slower).

    p50_ms .. p99_ms are interleaved (fair) figures. ``contended``: other processes used at least the threshold share of the CPU
    while this row was timed (after re-measuring), so its latencies are not evidence.
    """

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
    contended: bool = False  # timed while other processes used the CPU
    contention_share: float = 0.0  # other processes' share of the machine's CPU while this row was timed, 0..1
    remeasured_chunks: int = 0  # contended chunks of this row's timing that were thrown away and measured again
    load_ms: float | None = None  # cold: creating the session / loading the program
    first_inference_ms: float | None = None  # cold: the first run after loading, at first_inference_batch_size
    first_inference_batch_size: int | None = None
    peak_rss_after_load_mb: float | None = None  # process peak RSS through loading (RSS before any model + the rise)
    peak_rss_after_first_inference_mb: float | None = None  # ... through loading and the first inference
    fair_settings: dict = Field(default_factory=dict)  # the settings of the interleaved timing (p50_ms...)
    runtime_info: dict = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    # Against the run's float32 PyTorch model on the --data images, where bench computed it (bench --target does, from
    # the logits the target returned for the bundled images).
    parity: ParityMetrics | None = None

    @property
    def label(self) -> str:
        return f"{self.variant} on {self.runtime}"


class ContentionSummary(BaseModel):
    """How quiet the machine was while bench timed: the neighbours' CPU share over every kept chunk."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    mean_share: float
    max_share: float
    chunks: int
    contended_chunks: int
    remeasured_chunks: int
    contended_rows: int
    threshold: float


class BenchResult(Result):
    """Everything one `edgekit bench` measured, with the machine and settings it was measured under."""

    SCHEMA_VERSION = 2  # 2: "artifacts" (schema 1 called them "targets"), no per-row "deployment": both still load

    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    artifacts: list[str] = Field(default_factory=list)
    machine: MachineInfo
    settings: BenchSettings
    measurements: list[Measurement]
    contention: ContentionSummary | None = None
    target: MeasuredOn | None = None  # where the rows were measured when not on this machine (``machine`` is then its)
    skipped: dict[str, str] = Field(default_factory=dict)  # runtime (or "runtime: artifact") -> reason
    summary: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    _saved: list = PrivateAttr(default_factory=list)  # report files bench() wrote into the run (not part of the JSON)

    @model_validator(mode="before")
    @classmethod
    def _schema_1(cls, data):
        if not isinstance(data, dict) or data.get("schema_version", 1) != 1:
            return data
        data = dict(data)
        if "targets" in data and "artifacts" not in data:
            data["artifacts"] = data.pop("targets")
        # schema 1 also timed every row alone under "deployment" settings; those figures could not rank runtimes
        data["measurements"] = [
            {k: v for k, v in m.items() if k != "deployment"} if isinstance(m, dict) else m for m in data.get("measurements", [])
        ]
        if isinstance(data.get("settings"), dict):
            data["settings"] = {k: v for k, v in data["settings"].items() if k != "deployment"}
        return data

    @property
    def saved(self) -> list:
        """The <run>/bench/<stamp>.json and .md bench() wrote, if it saved into a run."""
        return list(self._saved)

    def for_model(self, model: str, batch_size: int | None = None) -> list[Measurement]:
        return [m for m in self.measurements if m.model == model and (batch_size is None or m.batch_size == batch_size)]
