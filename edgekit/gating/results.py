"""What the gate found: measured values per variant, one Check per threshold, baseline comparisons, and the
verdict (``GateResult``) with its exit code."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from ..card import MeasuredOn
from ..results import Result

CheckStatus = Literal["pass", "fail", "not_measured", "skipped"]

# The exit codes of `edgekit gate` (2, a user error, comes from the CLI's error mapping).
EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_NOT_MEASURED = 3  # only with strict_contention: a latency check could not be measured on a quiet machine


class VariantMeasure(BaseModel):
    """What was measured for one variant: the values every check reads."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    target: str | None = None  # the target it was measured on ("ssh://pi@board", "local"); None: this machine, no target named
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
    contended: bool = False  # bench saw other processes using the CPU while timing this row: its latency is not evidence
    contention_share: float | None = None  # the share of the CPU other processes used meanwhile (0..1), as bench measured it


class Check(BaseModel):
    """One threshold against one measured value: a test case in the JUnit report.

    ``status``: pass, fail, not_measured (a latency check whose bench rows were taken while other processes
    used the CPU: neither evidence of a pass nor of a failure) or skipped (nothing to compare, e.g. a variant the
    baseline report lacks). ``passed`` and ``skipped`` are kept in the JSON for readers of older reports."""

    model_config = ConfigDict(extra="forbid")

    name: str  # "<variant>.<metric>", or "<variant>.<metric>@<target>" on a named target: unique in a report
    variant: str
    target: str | None = None  # the target its figures were measured on; None: this machine (reports before targets)
    metric: str
    value: float | None
    threshold: float | None
    op: Literal[">=", "<="]
    status: CheckStatus
    message: str

    @model_validator(mode="before")
    @classmethod
    def _status_from_older_reports(cls, data: Any) -> Any:
        # Reports before `status` carried passed/skipped; newer ones carry all three (two computed).
        if isinstance(data, dict) and ("passed" in data or "skipped" in data):
            data = dict(data)
            passed, skipped = data.pop("passed", None), data.pop("skipped", False)
            data.setdefault("status", "skipped" if skipped else ("pass" if passed else "fail"))
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passed(self) -> bool:
        """Not a failure and not unmeasured (a skipped check never fails)."""
        return self.status in ("pass", "skipped")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def skipped(self) -> bool:
        return self.status == "skipped"

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    @property
    def not_measured(self) -> bool:
        return self.status == "not_measured"


class Comparison(BaseModel):
    """One metric now vs the baseline report, with the noise that decides whether the move is real."""

    model_config = ConfigDict(extra="forbid")

    variant: str
    target: str | None = None  # measured on this target, now and in the baseline; None: this machine
    metric: str  # relative_latency (p50 / anchor p50), accuracy, agreement, size_bytes
    baseline: float
    current: float
    change: float  # relative for relative_latency and size_bytes, absolute for accuracy and agreement
    noise: float  # a move of at most this size is not distinguishable from noise
    worse: bool  # the move goes in the bad direction
    outside_noise: bool
    contended: bool = False  # a latency taken under CPU contention (now or then): the move is not evidence

    @property
    def verdict(self) -> str:
        if self.contended:
            return "not measured (contended)"
        if not self.outside_noise:
            return "within noise"
        return "regression" if self.worse else "improvement"


class GateResult(Result):
    """The gate's verdict with every measured value, check and baseline comparison.

    ``passed``: no check failed. Exit code (``exit_code``): 0 when every measured check holds, 1 when one
    fails, 3 when none fails but a latency check was not measured (contended) and ``strict_contention`` is set."""

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
    targets: list[str] = Field(default_factory=list)  # the targets gated, in config order (empty: this machine, none named)
    measured_on: dict[str, MeasuredOn] = Field(default_factory=dict)  # target -> where it measured (the remote ones)
    strict_contention: bool = False
    passed: bool
    failures: list[str]  # one line per failed check

    def measure(self, variant: str, target: str | None = None) -> VariantMeasure | None:
        """The variant's figures (on ``target``; default the first target that measured it)."""
        return next((m for m in self.variants if m.variant == variant and target in (None, m.target)), None)

    @property
    def not_measured(self) -> list[Check]:
        return [check for check in self.checks if check.not_measured]

    @property
    def exit_code(self) -> int:
        if not self.passed:
            return EXIT_FAILED
        if self.not_measured and self.strict_contention:
            return EXIT_NOT_MEASURED
        return EXIT_PASSED
