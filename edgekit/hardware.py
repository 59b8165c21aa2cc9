"""Which CPU runs the model, and what int8 needs on it.

int8 numerics differ between CPUs, not only speed. On x86 without VNNI, ONNX Runtime's u8s8 kernels multiply
with vpmaddubsw, which adds pairs of u8*s8 products into int16 and saturates; on real weights that cost 7 accuracy
points (AMD EPYC Zen 2, Lite0 on digits). ORT's own fix is its session option ``session.x64quantprecision=1``
(U8U8 kernels, no saturation); OpenVINO/NNCF's is ``OverflowFix`` (7-bit weights). VNNI (vpdpbusd) accumulates
in int32 and ARM's dot-product instructions do too, so those need nothing.

Every x86 int8 path that does not saturate is exact integer arithmetic (VNNI and AMX accumulate u8*s8 in int32;
U8U8 widens to 16 bits before multiplying), so an int8 file computes the same logits on any x86 CPU provided the
precision option follows the CPU that runs it, not the one that exported it: U8U8 where u8s8 saturates, nothing
where VNNI is there (U8U8 computes the same on a VNNI CPU, only slower: 15.0 vs 6.2 ms p50, the demo's Lite0 at
batch 1 on x86-amx). Measured: max logit difference 0 between U8U8 and AMX natively, and between an emulated Zen 2 with
U8U8 and the native AMX run (benchmarks/bench_isa_emulated.py).

The ISA class is read from /proc/cpuinfo (flags on x86, Features on ARM); every decision takes the flags as an
argument so tests can simulate any CPU.
"""

from __future__ import annotations

import platform
from enum import Enum
from functools import lru_cache
from pathlib import Path

from .errors import ModelError

# The ORT session config entries edgekit may record in a model and apply when it runs one. An allow-list: the
# metadata comes from files of other hands, and a session option is not something a file may set at will.
ORT_PRECISION_KEY = "session.x64quantprecision"
ALLOWED_ORT_SESSION_CONFIG = {ORT_PRECISION_KEY: ("0", "1")}


class IsaClass(str, Enum):
    """The int8-relevant class of a CPU: which dot-product instructions its int8 kernels can use.

    ARM: i8mm (SMMLA, Armv8.6 / Neoverse N2, V1, Cortex-A510+) > dotprod (SDOT, Armv8.2 / Cortex-A55, A76, A78,
    Neoverse N1) > plain NEON (Cortex-A53, A72: widening multiplies)."""

    X86_AMX = "x86-amx"
    X86_AVX512_VNNI = "x86-avx512-vnni"
    X86_AVX_VNNI = "x86-avx-vnni"
    X86_AVX512 = "x86-avx512"
    X86_AVX2 = "x86-avx2"
    X86 = "x86"
    ARM64_I8MM = "arm64-i8mm"
    ARM64_DOTPROD = "arm64-dotprod"
    ARM64 = "arm64"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value

    @property
    def is_arm(self) -> bool:
        return self.value.startswith("arm64")


ISA_CLASSES = tuple(c.value for c in IsaClass)
_SATURATING = (IsaClass.X86_AVX512, IsaClass.X86_AVX2, IsaClass.X86)  # u8s8 int8 dot products through int16 intermediates


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This machine's CPU feature flags (x86 ``flags`` or ARM ``Features`` in /proc/cpuinfo); empty if unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    return flags_in_cpuinfo(text)


def flags_in_cpuinfo(text: str) -> frozenset[str]:
    """The feature flags of a /proc/cpuinfo text (the first ``flags`` or ``Features`` line), so a target's cpuinfo
    read over ssh is classified by the same rule as this machine's."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def isa_class(flags: frozenset[str] | set[str] | None = None, machine: str | None = None) -> IsaClass:
    """The int8-relevant class of a CPU (see ``IsaClass``). ``flags``/``machine`` default to this machine's.

    ``machine`` (``uname -m``) decides the architecture first: under user-mode emulation /proc/cpuinfo shows the
    host's CPU, so x86 flags on an aarch64 machine say nothing about the ARM core (its class is then plain arm64)."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    machine = (machine or platform.machine()).lower()
    arm_machine = machine in ("aarch64", "arm64") or machine.startswith("armv8")
    if arm_machine or (not machine.startswith(("x86", "i686", "amd64")) and "asimd" in flags):
        if "i8mm" in flags:
            return IsaClass.ARM64_I8MM
        return IsaClass.ARM64_DOTPROD if "asimddp" in flags else IsaClass.ARM64
    if machine in ("x86_64", "amd64", "i686", "x86") or "sse2" in flags:
        return _x86_class(flags)
    return IsaClass.UNKNOWN


def _x86_class(flags: frozenset[str]) -> IsaClass:
    if "amx_int8" in flags:
        return IsaClass.X86_AMX
    if "avx512_vnni" in flags:
        return IsaClass.X86_AVX512_VNNI
    if "avx_vnni" in flags:
        return IsaClass.X86_AVX_VNNI
    if "avx512bw" in flags or "avx512f" in flags:
        return IsaClass.X86_AVX512
    if "avx2" in flags:
        return IsaClass.X86_AVX2
    return IsaClass.X86


def int8_saturates(isa: "IsaClass | str") -> bool:
    """Whether ORT's default u8s8 int8 kernels can saturate on this ISA class (x86 without VNNI)."""
    return isa in {c.value for c in _SATURATING}


def int8_runtime_config(isa: str) -> dict[str, str]:
    """ORT session config entries an int8 model needs on ``isa`` so it computes what was validated."""
    return {ORT_PRECISION_KEY: "1"} if int8_saturates(isa) else {}


def ort_session_config_here(recorded: dict[str, str], validated_isa: str | None, here: str | None = None) -> dict[str, str]:
    """The ORT session config an int8 file runs under on ``here`` (this CPU by default).

    ``recorded`` is what its export ran it under on ``validated_isa``. For an edgekit int8 file (one that names the
    ISA it was validated on) the precision entry follows the CPU here, so a file exported on a VNNI machine gets
    U8U8 on an AMD EPYC and one exported on the EPYC does not pay for U8U8 on a VNNI machine; both compute what was
    validated. A file without that record keeps what it says (it may come from another tool)."""
    if not validated_isa:
        return dict(recorded)
    config = {key: value for key, value in recorded.items() if key != ORT_PRECISION_KEY}
    config.update(int8_runtime_config(here or isa_class()))
    return config


def validated_here(validated_isa: str | None, here: str) -> bool:
    """Whether an int8 model was validated on this CPU's ISA class (or names none): anywhere else its accuracy is
    re-checked where images are given. Expected to hold across x86 classes (see the module's note), but a
    different CPU is a different machine, and a re-check is cheap where images are at hand."""
    return not validated_isa or validated_isa == here


def check_ort_session_config(config: object, where: str) -> dict[str, str]:
    """The ``ort_session_config`` of a model's runtime metadata, validated against the allow-list."""
    if not isinstance(config, dict):
        raise ModelError(f"{where} has malformed runtime metadata (ort_session_config is not a mapping); re-export it")
    checked = {}
    for key, value in config.items():
        allowed = ALLOWED_ORT_SESSION_CONFIG.get(str(key))
        if allowed is None:
            raise ModelError(f"{where} asks for ORT session option {key!r}, which edgekit does not apply; re-export it")
        if str(value) not in allowed:
            raise ModelError(f"{where} sets {key} to {value!r}; expected one of {', '.join(allowed)}; re-export it")
        checked[str(key)] = str(value)
    return checked


def isa_mismatch_note(validated_isa: str | None, here: str | None = None) -> str | None:
    """A one-line note when a model's int8 was proven on another CPU class than this one (its accuracy here is re-checked
    only where images are given)."""
    here = here or isa_class()
    if validated_here(validated_isa, here):
        return None
    config = int8_runtime_config(here)
    how = f"run here with {', '.join(f'{k}={v}' for k, v in config.items())}" if config else "run here without U8U8"
    return (
        f"int8 validated on {validated_isa}, this CPU is {here} ({how}): its accuracy here is only known with --data; "
        "re-check with `edgekit parity` or `edgekit export` on this machine"
    )
