"""What edgekit knows of a target (`edgekit target info`): its facts, read there, with the ISA class decided here by
the same rule as for this machine (``edgekit.hardware.isa_class``), so every CPU-dependent choice follows the target."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..card import MeasuredOn
from ..errors import TargetError
from ..hardware import IsaClass, flags_in_cpuinfo, isa_class
from ..results import Result
from . import Target, TargetOptions, parse_target

# The CPU features that decide int8/fp16 speed and numerics, in the order a reader scans them.
NOTABLE_FEATURES = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimdhp",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
)
GIB = 2**30


class ThermalReading(BaseModel):
    model_config = ConfigDict(extra="forbid")

    zone: str
    type: str | None = None
    celsius: float


class FrequencyReading(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: int
    current_mhz: float | None = None
    max_mhz: float | None = None
    governor: str | None = None


class TargetInfo(Result):
    """A target's facts: where it is (never a credential), what CPU and ISA class, what it runs."""

    target: str  # as typed, without secrets: "ssh://pi@raspberrypi.local", "local"
    transport: str
    host: str | None = None  # host[:port]; None for local
    url: str | None = None  # ``target`` with its cache folder when that is not the default: what a command names
    arch: str  # uname -m
    isa: IsaClass
    cpu: str | None = None
    cpu_features: list[str] = Field(default_factory=list)  # the NOTABLE_FEATURES it has
    fp16: bool = False  # ARM half-precision arithmetic (asimdhp) or x86 AVX512-FP16
    board: str | None = None
    logical_cores: int | None = None
    usable_cores: int | None = None
    physical_cores: int | None = None
    memory_gb: float | None = None
    memory_available_gb: float | None = None
    os: str | None = None
    kernel: str | None = None
    libc: str | None = None  # "glibc 2.36"
    python: str
    python_executable: str | None = None
    runtimes: dict[str, str | None] = Field(default_factory=dict)  # module -> version (None: not there)
    cache_dir: str
    cache_free_gb: float | None = None
    venv: bool = False  # the cache folder holds edgekit's venv (made by `edgekit target setup`)
    emulated: bool = False
    emulation: str | None = None  # why it looks emulated: its timings are not evidence of the device's speed
    thermal: list[ThermalReading] = Field(default_factory=list)
    frequencies: list[FrequencyReading] = Field(default_factory=list)

    @property
    def glibc(self) -> tuple[int, int] | None:
        """(major, minor) of the device's glibc, which decides the manylinux wheels it takes."""
        if not self.libc or not self.libc.startswith("glibc "):
            return None
        major, _, minor = self.libc.split()[1].partition(".")
        return (int(major), int(minor.split(".")[0])) if major.isdigit() and minor.split(".")[0].isdigit() else None

    def measured_on(self, runtimes: dict[str, str] | None = None) -> MeasuredOn:
        """What a report records of this target; ``runtimes``: the versions that ran (default: every one there)."""
        present = {module: version for module, version in self.runtimes.items() if version}
        return MeasuredOn(
            target=self.target,
            transport=self.transport,
            host=self.host,
            arch=self.arch,
            isa=self.isa.value,
            cpu=self.cpu,
            cores=self.logical_cores,
            os=self.os,
            python=self.python,
            runtimes=runtimes if runtimes is not None else present,
            emulated=self.emulated,
            emulation=self.emulation,
        )

    def summary(self) -> str:
        """One line: "ssh://pi@raspberrypi.local: aarch64 arm64-dotprod, 4x Cortex-A76, 4 cores, 7.8 GiB (emulated)"."""
        cores = f", {self.logical_cores} cores" if self.logical_cores else ""
        memory = f", {self.memory_gb} GiB" if self.memory_gb else ""
        emulated = " (emulated: timings are not evidence)" if self.emulated else ""
        return f"{self.target}: {self.arch} {self.isa.value}, {self.cpu or 'unknown CPU'}{cores}{memory}{emulated}"


def _gib(value) -> float | None:
    return round(value / GIB, 1) if isinstance(value, (int, float)) else None


def info_from_facts(target: Target, facts: dict) -> TargetInfo:
    """A TargetInfo from what ``edgekit/device/facts.py`` printed on ``target``."""
    try:
        machine = str(facts["machine"])
        cpuinfo = str(facts.get("cpuinfo") or "")
        flags = flags_in_cpuinfo(cpuinfo)
        system = facts.get("os") or {}
        libc = facts.get("libc") or {}
        cache = facts.get("cache") or {}
        memory = facts.get("memory") or {}
        python = facts.get("python") or {}
        emulated = facts.get("emulated") or None
        cpu = facts.get("cpu_model")
        return TargetInfo(
            target=target.name,
            transport=target.address.transport,
            host=target.address.display_host or None,
            url=target.address.url,
            arch=machine,
            isa=isa_class(flags, machine),
            # Under user-mode emulation cpuinfo describes the emulator's host, not the CPU the code runs on.
            cpu=f"{cpu} (the emulator's host)" if emulated and cpu else cpu,
            cpu_features=[] if emulated else [f for f in NOTABLE_FEATURES if f in flags],
            fp16=bool({"asimdhp", "avx512_fp16"} & flags) and not emulated,
            board=facts.get("board"),
            logical_cores=facts.get("logical_cores"),
            usable_cores=facts.get("usable_cores"),
            physical_cores=facts.get("physical_cores"),
            memory_gb=_gib(memory.get("total")),
            memory_available_gb=_gib(memory.get("available")),
            os=system.get("PRETTY_NAME") or facts.get("system"),
            kernel=facts.get("kernel"),
            libc=" ".join(str(v) for v in (libc.get("name"), libc.get("version")) if v) or None,
            python=str(python.get("version") or "unknown"),
            python_executable=python.get("executable"),
            runtimes=dict(facts.get("packages") or {}),
            cache_dir=str(cache.get("path") or target.cache_dir),
            cache_free_gb=_gib(cache.get("free_bytes")),
            venv=bool(python.get("in_venv")),
            emulated=bool(emulated),
            emulation=emulated,
            thermal=facts.get("thermal") or [],
            frequencies=facts.get("frequencies") or [],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TargetError(
            f"{target.name} reported facts edgekit cannot read ({type(exc).__name__}: {exc}); is its edgekit the same version?"
        ) from exc


def library_versions(used: dict) -> dict[str, str]:
    """{library: version} from what the device runner reported it ran with ("onnxruntime 1.32.0"); {} if unknown."""
    words = str(used.get("library", "")).split()
    return {words[0]: words[1]} if len(words) == 2 else {}


def open_with_info(target, options: TargetOptions | None = None) -> tuple[Target, TargetInfo]:
    """``target`` connected and its facts read, for a command that uses it for a while (the caller closes it); an
    unreachable or unreadable device fails here, in one line, before any work is done for it."""
    opened = parse_target(target, options)
    try:
        return opened, info_from_facts(opened, opened.facts())
    except BaseException:
        opened.close()
        raise


def target_info(target: str | Target | None = None, options: TargetOptions | None = None) -> TargetInfo:
    """What edgekit knows of ``target`` (a Target, or a ``--target`` text; default: this machine)."""
    if target is not None and not isinstance(target, str):
        return info_from_facts(target, target.facts())
    with parse_target(target, options) as opened:
        return info_from_facts(opened, opened.facts())
