"""`edgekit gate`: one exit code for CI. Did accuracy, parity, size or speed cross a threshold?

The gate measures what its checks need, and nothing more:
- accuracy, agreement and logit differences come from parity (exported variant vs the PyTorch float32
  model) on the config's labelled images;
- latency comes from ONE bench run with every variant interleaved, and is only ever judged as a ratio
  between variants of that run (CI machines differ and are noisy, absolute milliseconds mean nothing);
- size comes from the file on disk.
Reports that are already there and still fresh (newer than the artifact, made on the same images or
with the same bench settings) are reused instead of recomputed.

Relative paths in a config file are resolved against ``root``, which is itself relative to the config
file's folder (default: the config file's folder), so a config means the same thing from any working
directory. The gate writes nothing but exports of missing variants into ``<run>/exports`` (only with
``export_missing``) and the report files the caller asks for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import ConfigError
from .results import Result

# The variants `edgekit export` writes; "-uint8in" ones take uint8 pixels (embedded preprocessing).
Variant = Literal[
    "fp32", "fp16", "int8", "int8-dynamic", "torch-export",
    "fp32-uint8in", "fp16-uint8in", "int8-uint8in", "int8-dynamic-uint8in",
]
# The --quantize value of `edgekit export` that produces each ONNX variant (torch-export is a format).
EXPORT_QUANTIZE = {"fp32": "none", "fp16": "fp16", "int8": "int8", "int8-dynamic": "int8-dynamic"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class VariantThresholds(_Strict):
    """Thresholds for one exported variant; a threshold left out is not checked."""

    min_accuracy: float | None = Field(None, ge=0, le=1, description="top-1 accuracy on the gate's images")
    max_accuracy_drop: float | None = Field(None, ge=-1, le=1, description="PyTorch fp32 accuracy minus this variant's")
    min_agreement: float | None = Field(None, ge=0, le=1, description="share of images with the same top-1 as PyTorch fp32")
    max_abs_diff: float | None = Field(None, ge=0, description="largest |logit difference| vs PyTorch fp32")
    max_rel_diff: float | None = Field(None, ge=0, description="largest logit difference relative to the logit spread")
    max_size_mb: float | None = Field(None, gt=0, description="file size in MB (10^6 bytes), external data included")
    min_speedup_vs: dict[Variant, float] = Field(
        default_factory=dict,
        description="{other variant: ratio}: p50(other) / p50(this) in the same bench run must be at least ratio "
        "(1.5 = 1.5x faster; 0.9 = at most ~11% slower)",
    )

    @model_validator(mode="after")
    def _positive_ratios(self):
        for other, ratio in self.min_speedup_vs.items():
            if not ratio > 0:
                raise ValueError(f"min_speedup_vs.{other} must be a ratio above 0 (e.g. 1.5), got {ratio}")
        return self

    @property
    def needs_reference(self) -> bool:
        """Whether a threshold compares with the PyTorch model (accuracy alone can come from bench)."""
        return any(v is not None for v in (self.max_accuracy_drop, self.min_agreement, self.max_abs_diff, self.max_rel_diff))


class BaselinePolicy(_Strict):
    """How a `--baseline` report is compared. Latency is compared as p50(variant) / p50(anchor) now vs then,
    never as milliseconds, because the baseline was usually measured on another (or a busier) machine."""

    anchor: Variant = Field("fp32", description="latency is normalised by this variant's p50 in the same run")
    max_slowdown: float | None = Field(0.10, ge=0, description="relative latency may grow by at most this fraction")
    max_accuracy_drop: float | None = Field(0.01, ge=0, description="accuracy may fall by at most this (absolute)")
    max_agreement_drop: float | None = Field(0.02, ge=0, description="top-1 agreement may fall by at most this")
    max_size_growth: float | None = Field(0.05, ge=0, description="file size may grow by at most this fraction")
    min_noise: float = Field(
        0.05, ge=0, description="a latency move counts only beyond this fraction AND beyond the medians' confidence intervals"
    )


class GateConfig(_Strict):
    """What to check and the thresholds. Loaded from YAML with `GateConfig.from_yaml(path)`."""

    root: Path | None = Field(None, description="folder relative paths are resolved against (itself relative to the config file)")
    run: Path | None = Field(None, description="run directory (the PyTorch reference model and its exports)")
    artifacts: dict[Variant, Path] = Field(default_factory=dict, description="explicit artifact files; default <run>/exports")
    data: Path | None = Field(None, description="labelled images <class>/<image>; default the run's validation images")
    max_images: int = Field(256, ge=1, description="at most this many images (a stratified sample) for accuracy and parity")
    runtime: str = Field("ort-cpu", description="bench runtime for the latency ratios")
    threads: int | None = Field(None, ge=1, description="threads for the bench runtime; default all cores")
    batch_size: int = Field(1, ge=1)
    warmup: int | None = Field(None, ge=0)
    iterations: int | None = Field(None, ge=1)
    export_missing: bool = Field(True, description="export variants whose artifact is missing (needs run)")
    reuse_reports: bool = Field(True, description="reuse parity/bench reports that are newer than the artifacts and match")
    variants: dict[Variant, VariantThresholds] = Field(min_length=1)
    baseline: BaselinePolicy = Field(default_factory=BaselinePolicy)

    _base_dir: Path | None = None  # the config file's folder; None -> the working directory
    _source: Path | None = None  # the config file, for the report

    @model_validator(mode="after")
    def _consistent(self):
        for name, thresholds in self.variants.items():
            if name in thresholds.min_speedup_vs:
                raise ValueError(f"variants.{name}.min_speedup_vs.{name}: a variant's speed relative to itself is always 1; name another variant")
        if self.run is None and not self.artifacts:
            raise ValueError("give `run` (a run directory) or `artifacts` (variant: file)")
        if self.run is None:
            needing = [name for name, t in self.variants.items() if t.needs_reference]
            if needing:
                raise ValueError(
                    f"variants.{needing[0]}: accuracy-drop/agreement/logit thresholds compare with the PyTorch model and need `run`"
                )
            if self.data is None:
                raise ValueError("data: needed when no `run` is given (labelled images <class>/<image>)")
        return self

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: dict | None = None) -> "GateConfig":
        """Load and validate a YAML config; relative paths then resolve against its ``root``."""
        from . import config as config_io

        path = Path(path)
        data = config_io.read_yaml(path)
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        loaded = config_io.validate(cls, data, str(path))
        loaded._base_dir = path.resolve().parent
        loaded._source = path
        return loaded

    def resolve(self, path: Path | None) -> Path | None:
        """``path`` made absolute against ``root`` (relative paths only)."""
        if path is None:
            return None
        path = Path(os.path.expanduser(path))
        if path.is_absolute():
            return path
        base = self._base_dir or Path.cwd()
        if self.root is not None:
            root = Path(os.path.expanduser(self.root))
            base = root if root.is_absolute() else base / root
        return Path(os.path.normpath(base / path))

    def measured_variants(self) -> list[str]:
        """Every variant the gate needs: those with thresholds, then their speedup references."""
        names = list(self.variants)
        for thresholds in self.variants.values():
            names += [other for other in thresholds.min_speedup_vs if other not in names]
        return names


class VariantMeasure(BaseModel):
    """What was measured for one variant: the values every check reads."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    artifact: str | None = None
    size_bytes: int | None = None
    n_images: int | None = None
    accuracy: float | None = None
    reference_accuracy: float | None = None
    accuracy_drop: float | None = None
    agreement: float | None = None
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    runtime: str | None = None
    batch_size: int | None = None
    p50_ms: float | None = None
    p50_ci_ms: tuple[float, float] | None = None


class Check(BaseModel):
    """One threshold against one measured value: a test case in the JUnit report."""

    model_config = ConfigDict(extra="forbid")

    name: str  # "<variant>.<metric>", unique in a report
    variant: str
    metric: str
    value: float | None
    threshold: float | None
    op: Literal[">=", "<="]
    passed: bool
    skipped: bool = False  # not measurable here (e.g. a baseline check without --baseline); never a failure
    message: str


class Comparison(BaseModel):
    """One metric now vs the baseline report, with the noise that decides whether the move is real."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    metric: str  # relative_latency (p50 / anchor p50), accuracy, agreement, size_bytes
    baseline: float
    current: float
    change: float  # relative for relative_latency and size_bytes, absolute for accuracy and agreement
    noise: float  # a move of at most this size is not distinguishable from noise
    worse: bool  # the move goes in the bad direction
    outside_noise: bool

    @property
    def verdict(self) -> str:
        if not self.outside_noise:
            return "within noise"
        return "regression" if self.worse else "improvement"


class GateResult(Result):
    """The gate's verdict with every measured value, check and baseline comparison."""

    config: str | None = None
    run_dir: str | None = None
    data: str | None = None
    runtime: str
    threads: int | None = None
    batch_size: int = 1
    variants: list[VariantMeasure]
    checks: list[Check]
    comparisons: list[Comparison] = Field(default_factory=list)
    baseline: str | None = None
    reports: list[str] = Field(default_factory=list)  # parity/bench reports reused or produced, and exports made
    machine: dict | None = None
    passed: bool
    failures: list[str]  # one line per failed check

    def measure(self, variant: str) -> VariantMeasure | None:
        return next((m for m in self.variants if m.variant == variant), None)


def gate(config: GateConfig | str | os.PathLike, baseline: str | os.PathLike | None = None, progress: bool = False) -> GateResult:
    """Measure what ``config``'s checks need, evaluate every threshold, compare with ``baseline``
    (a GateResult or BenchResult JSON from an earlier run) and return the verdict.

    ``config`` is a GateConfig or the path of a YAML gate config."""
    if not isinstance(config, GateConfig):
        config = load_config(config)
    from .gate_checks import compare_with_baseline, evaluate, load_baseline
    from .gate_measure import measure_variants

    baseline_measures = load_baseline(baseline, config) if baseline is not None else None
    measures, reports, machine = measure_variants(config, need_anchor=baseline is not None, progress=progress)
    comparisons = compare_with_baseline(config, measures, baseline_measures) if baseline_measures is not None else []
    checks = evaluate(config, measures, comparisons, baseline_given=baseline is not None)
    failures = [check.message for check in checks if not check.passed]
    return GateResult(
        config=str(config._source) if config._source else None,
        run_dir=str(config.resolve(config.run)) if config.run else None,
        data=str(config.resolve(config.data)) if config.data else None,
        runtime=config.runtime,
        threads=config.threads,
        batch_size=config.batch_size,
        variants=list(measures.values()),
        checks=checks,
        comparisons=comparisons,
        baseline=str(baseline) if baseline is not None else None,
        reports=reports,
        machine=machine,
        passed=not failures,
        failures=failures,
    )


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> GateConfig:
    """A GateConfig from YAML (``overrides``: flags given on the command line, None values ignored);
    a missing or malformed file is a ConfigError naming it."""
    if not Path(path).is_file():
        raise ConfigError(f"gate config {path} does not exist; see configs/gate.yaml for an example")
    return GateConfig.from_yaml(path, overrides)


__all__ = ["BaselinePolicy", "Check", "Comparison", "GateConfig", "GateResult", "VariantMeasure", "VariantThresholds", "gate", "load_config"]
