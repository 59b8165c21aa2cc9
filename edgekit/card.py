"""The deployment card: ``exports/deploy.json`` and ``exports/DEPLOY.md``, the one measured answer for the app
(written by ``--quantize auto``, see ``edgekit.auto``).

Which file, on which runtime, with which settings, measured how fast where, at what accuracy, and the lines that
load it so. Paths are relative to the exports folder, so the card stays true when the run directory is moved or
copied to a device. bench's summary and the gate read it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from . import files
from .errors import EdgekitError
from .results import Result

CARD_FILE = "deploy.json"
CARD_MARKDOWN = "DEPLOY.md"


class CandidateFigures(BaseModel):
    """One candidate as the card records it: the file (relative to exports/), its runtime and setting, its figures."""

    model_config = ConfigDict(extra="forbid")

    file: str
    variant: str
    format: str
    runtime: str
    setting: str  # "2 threads, spinning on"
    threads: int | None = None
    options: dict = Field(default_factory=dict)
    within_budget: bool
    note: str = ""
    extra: str | None = None  # the pip extra its runtime needs; None: the core install
    size_bytes: int = 0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p50_ci_ms: tuple[float, float] | None = None
    images_per_second: float | None = None
    calls: int = 0
    dropped_after: int | None = None  # dropped as clearly slower after this many cycles
    error: str = ""
    contended: bool = False
    accuracy_drop: float | None = None
    top1_agreement: float | None = None

    @property
    def eligible(self) -> bool:
        return self.within_budget and self.p50_ms is not None and not self.error

    @property
    def label(self) -> str:
        return f"{self.file} on {self.runtime}, {self.setting}"


class MeasuredOn(BaseModel):
    """Where figures were measured: this machine ("local") or a target, as every report records it (bench's ``target``,
    a parity report's, the card's ``measured_on``, each gate check's). Never a credential: ``target`` is the name as
    typed without a password, ``host`` is host[:port].

    It lives here, beside the card, because the card travels with an artifact and cannot import the targets' layer;
    ``edgekit.targets.info.TargetInfo.measured_on`` fills it from a target's facts. ``isa`` is an
    ``edgekit.hardware.IsaClass`` value ("arm64-dotprod", "x86-avx512-vnni")."""

    model_config = ConfigDict(extra="forbid")

    target: str = "local"  # "ssh://pi@raspberrypi.local", "local"
    transport: str = "local"
    host: str | None = None
    arch: str | None = None  # uname -m (cards of older edgekits did not record it)
    isa: str
    cpu: str | None = None
    cores: int | None = None
    os: str | None = None
    python: str | None = None
    runtimes: dict[str, str] = Field(default_factory=dict)  # what ran there: module -> version
    emulated: bool = False  # timing under emulation is not evidence of speed
    emulation: str | None = None  # why it looks emulated

    def heading(self) -> str:
        """ "measured on ssh://pi@raspberrypi.local (aarch64, arm64-dotprod, 4x Cortex-A76)" and, when emulated, a warning."""
        cpu = f", {self.cpu}" if self.cpu else ""
        arch = f"{self.arch}, " if self.arch else ""
        emulated = "; EMULATED: timings are not evidence of the device's speed" if self.emulated else ""
        return f"measured on {self.target} ({arch}{self.isa}{cpu}){emulated}"


class DeployCard(Result):
    """What to deploy and how, as auto measured it."""

    file: str  # relative to the exports folder
    companions: list[str] = Field(default_factory=list)  # files that travel with it (an IR's .bin, a .pte's side file)
    format: str
    variant: str
    runtime: str
    runtime_version: str = ""
    setting: str  # "2 threads, spinning on"
    threads: int | None = None
    options: dict = Field(default_factory=dict)  # the runtime options edgekit loaded it with
    app_settings: str  # the same, as the app sets them
    python: str  # the lines that load and run it with these settings (runnable as is from the exports folder)
    cpp: str  # the C++ API calls that do the same
    batch_size: int
    p50_ms: float
    p90_ms: float | None = None
    p50_ci_ms: tuple[float, float] | None = None
    images_per_second: float | None = None
    contended: bool = False
    measured_on: MeasuredOn
    accuracy_drop: float | None = None
    top1_agreement: float | None = None
    reference_accuracy: float | None = None
    variant_accuracy: float | None = None
    accuracy_images: int | None = None
    accuracy_data: str | None = None
    reason: str
    speedup_vs_onnx_fp32: float | None = None
    seconds: float = 0.0  # how long the timing took
    candidates: list[CandidateFigures] = Field(default_factory=list)
    left_out: dict[str, str] = Field(default_factory=dict)  # variant -> why it was not a candidate

    def path_in(self, exports: str | Path) -> Path:
        return Path(exports) / self.file

    def write(self, exports: str | Path) -> tuple[Path, Path]:
        """deploy.json and DEPLOY.md into ``exports`` (each written atomically)."""
        exports = Path(exports)
        json_path = exports / CARD_FILE
        self.to_json(json_path)
        return json_path, files.write_text(exports / CARD_MARKDOWN, markdown(self))


def read_card(exports: str | Path) -> DeployCard | None:
    """The card in an exports folder (or a run directory), None when auto never ran there."""
    folder = Path(exports)
    for candidate in (folder / CARD_FILE, folder / "exports" / CARD_FILE):
        if candidate.is_file():
            card = DeployCard.from_json(candidate)
            if Path(card.file).is_absolute() or ".." in Path(card.file).parts:
                raise EdgekitError(
                    f"{candidate} names {card.file}, outside its folder; make it again with `edgekit export --quantize auto`"
                )
            return card
    return None


def markdown(card: DeployCard) -> str:
    """DEPLOY.md: the answer, how it was measured, the code, and every candidate."""
    where = card.measured_on
    timing_note = " (emulated: these timings are not evidence of speed)" if where.emulated else ""
    lines = [
        f"# Deploy {card.file}",
        "",
        f"**{card.file}** on **{card.runtime}** ({card.runtime_version}), {card.setting}: {card.p50_ms:.2f} ms p50"
        + (f", {card.images_per_second:.1f} images/s" if card.images_per_second else "")
        + f" at batch {card.batch_size}, measured on {where.target} ({where.cpu or 'CPU'}, {where.isa}){timing_note}.",
        "",
        f"Why: {card.reason}.",
        "",
        f"Settings: `{card.app_settings}`",
        "",
        "## Python",
        "",
        "```python",
        card.python,
        "```",
        "",
        "## C++",
        "",
        "```cpp",
        card.cpp,
        "```",
        "",
        "## Candidates",
        "",
        "Each candidate ran alone in blocks that alternated with the others' (a pause between blocks), so every setting",
        "was measured as an app using only it sees it, and drift on the machine hit all alike.",
        "",
        "| file | runtime | setting | p50 ms (95% CI) | within budget | note |",
        "|---|---|---|---|---|---|",
    ]
    for c in card.candidates:
        ci = f" ({c.p50_ci_ms[0]:.2f}-{c.p50_ci_ms[1]:.2f})" if c.p50_ci_ms else ""
        p50 = f"{c.p50_ms:.2f}{ci}" if c.p50_ms is not None else "-"
        note = c.error or (f"dropped after {c.dropped_after} cycles (clearly slower)" if c.dropped_after else c.note)
        lines.append(f"| {c.file} | {c.runtime} | {c.setting} | {p50} | {'yes' if c.within_budget else 'no'} | {note} |")
    for variant, why in card.left_out.items():
        lines.append(f"| {variant} | - | - | - | - | not a candidate: {why} |")
    return "\n".join(lines) + "\n"
