"""What the gate checks: ``GateConfig`` (loaded from YAML), per-variant thresholds and the baseline policy.

Relative paths in a config file are resolved against ``root``, which is itself relative to the config
file's folder (default: the config file's folder), so a config means the same thing from any working
directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .. import config as config_io
from ..errors import ConfigError, EdgekitError, TargetError
from ..targets import TargetOptions, parse_address
from ..variants import AUTO, Variant


def _variant_name(name: str) -> str:
    """A variant name as `edgekit export` writes it; pydantic reports a ValueError under the config key."""
    if name == AUTO:
        return AUTO  # whatever `edgekit export --quantize auto` chose: exports/model.auto.onnx
    try:
        return Variant.parse(name).name
    except EdgekitError as exc:
        raise ValueError(str(exc)) from None


VariantName = Annotated[str, AfterValidator(_variant_name)]


def _target_name(key: str, text: str) -> str:
    """The name of a target as `--target` takes it (local, ssh://..., an ssh_config alias); a ValueError naming
    ``key`` otherwise. Checked on the whole model, not the field: a field's error would quote the value, and a
    target may carry a password that must never be repeated."""
    try:
        return parse_address(text).name
    except TargetError as exc:
        raise ValueError(f"{key}: {str(exc).removeprefix('--target ')}") from None


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
    min_speedup_vs: dict[VariantName, float] = Field(
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

    @property
    def needs_accuracy(self) -> bool:
        return self.min_accuracy is not None or self.max_accuracy_drop is not None


class BaselinePolicy(_Strict):
    """How a `--baseline` report is compared. Latency is compared as p50(variant) / p50(anchor) now vs then,
    never as milliseconds, because the baseline was usually measured on another (or a busier) machine."""

    anchor: VariantName = Field("fp32", description="latency is normalised by this variant's p50 in the same run")
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
    artifacts: dict[VariantName, Path] = Field(default_factory=dict, description="explicit artifact files; default <run>/exports")
    data: Path | None = Field(None, description="labelled images <class>/<image>; default the run's validation images")
    max_images: int = Field(256, ge=1, description="at most this many images (a stratified sample) for accuracy and parity")
    runtime: str = Field("ort-cpu", description="bench runtime for the latency ratios")
    threads: int | None = Field(None, ge=1, description="threads for the bench runtime; default all cores")
    batch_size: int = Field(1, ge=1)
    warmup: int | None = Field(None, ge=0)
    iterations: int | None = Field(None, ge=1)
    export_missing: bool = Field(True, description="export variants whose artifact is missing (needs run)")
    reuse_reports: bool = Field(True, description="reuse parity/bench reports that are newer than the artifacts and match")
    strict_contention: bool = Field(
        False, description="exit 3 when a latency check was not measured because other processes used the CPU (default: exit 0)"
    )
    target: str | None = Field(None, description="where to measure: local, ssh://[user@]host[:port][/cache/dir] or an ssh_config alias")
    targets: list[str] | None = Field(None, min_length=1, description="several devices: every check is made on each")
    ssh_config: Path | None = Field(None, description="OpenSSH config file for the targets (ssh -F); default ~/.ssh/config")
    accept_new_host_key: bool = Field(
        False, description="accept and remember the key of a device known_hosts lacks (a changed key is refused)"
    )
    variants: dict[VariantName, VariantThresholds] = Field(min_length=1)
    baseline: BaselinePolicy = Field(default_factory=BaselinePolicy)

    _base_dir: Path | None = None  # the config file's folder; None -> the working directory
    _source: Path | None = None  # the config file, for the report

    @model_validator(mode="after")
    def _one_way_to_name_targets(self):
        if self.target is not None and self.targets is not None:
            raise ValueError("give `target:` (one device) or `targets:` (a list), not both")
        if self.target is not None:
            _target_name("target", self.target)
        names = [_target_name(f"targets.{i}", text) for i, text in enumerate(self.targets or [])]
        twice = next((name for name in names if names.count(name) > 1), None)
        if twice is not None:
            # checks are named by the target's name, so one device twice would give two checks one name
            raise ValueError(f"targets: {twice} is listed twice; gate each device once")
        return self

    @model_validator(mode="after")
    def _consistent(self):
        for name, thresholds in self.variants.items():
            if name in thresholds.min_speedup_vs:
                raise ValueError(
                    f"variants.{name}.min_speedup_vs.{name}: a variant's speed relative to itself is always 1; name another variant"
                )
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
    def from_yaml(cls, path: str | os.PathLike, overrides: dict | None = None) -> GateConfig:
        """Load and validate a YAML config; relative paths then resolve against its ``root``."""
        path = Path(path)
        data = config_io.read_yaml(path)
        if (overrides or {}).get("targets"):
            data.pop("target", None)  # --target replaces the config's devices, whichever key named them
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        loaded = config_io.validate(cls, data, str(path))
        loaded._base_dir = path.resolve().parent
        loaded._source = path
        return loaded

    @property
    def source(self) -> Path | None:
        """The YAML file this config came from (None when built in code)."""
        return self._source

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

    def measured_variants(self, need_anchor: bool = False) -> list[str]:
        """Every variant the gate needs: those with thresholds, then their speedup references, then (with
        ``need_anchor``, for a baseline comparison) the baseline's latency anchor."""
        names = list(self.variants)
        for thresholds in self.variants.values():
            names += [other for other in thresholds.min_speedup_vs if other not in names]
        if need_anchor and self.baseline.anchor not in names:
            names.append(self.baseline.anchor)
        return names

    @property
    def target_names(self) -> list[str | None]:
        """The targets to measure on, as given; [None] when the config names none (this machine, as before targets,
        and its checks carry no target)."""
        if self.targets is not None:
            return list(self.targets)
        return [self.target] if self.target is not None else [None]

    def target_options(self) -> TargetOptions:
        """How to reach the targets (``ssh_config`` resolved like every path of the config)."""
        return TargetOptions(ssh_config=self.resolve(self.ssh_config), accept_new_host_key=self.accept_new_host_key)

    @property
    def needs_latency(self) -> bool:
        return any(t.min_speedup_vs for t in self.variants.values())


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> GateConfig:
    """A GateConfig from YAML (``overrides``: flags given on the command line, None values ignored);
    a missing or malformed file is a ConfigError naming it."""
    if not Path(path).is_file():
        raise ConfigError(f"gate config {path} does not exist; see configs/gate.yaml for an example")
    return GateConfig.from_yaml(path, overrides)
