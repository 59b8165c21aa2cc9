"""What a runtime can be tuned on, and how an app sets it: the optional half of the runtime protocol that
``--quantize auto`` uses.

    runtime.settings_to_try(machine, batch_size) -> [Setting, ...]   the run-time settings worth measuring here
    runtime.app_code(file_name, setting, example) -> AppCode         the lines that load the file with that setting

A runtime without them is timed at its defaults and gets no snippet. Settings are measured, never assumed: which
thread count or spinning mode wins depends on the machine (see ``edgekit.device.timing``'s alternating blocks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..hardware import IsaClass, cpu_flags, isa_class


@dataclass(frozen=True)
class Machine:
    """The facts a choice of settings depends on: cores and CPU flags of the machine (or target) that runs it."""

    physical_cores: int
    logical_cores: int
    flags: frozenset[str] = frozenset()
    isa: IsaClass = IsaClass.UNKNOWN

    @property
    def thread_counts(self) -> list[int]:
        """1, the physical cores, and the logical cores where they differ: the thread counts worth trying."""
        return sorted({1, max(1, self.physical_cores), max(1, self.logical_cores)})

    @property
    def has_bf16(self) -> bool:
        """The CPU computes bfloat16 natively (x86 AVX512_BF16 or AMX-BF16; ARM BF16), where runtimes may default to it."""
        return bool(self.flags & {"avx512_bf16", "amx_bf16", "bf16"})


def this_machine() -> Machine:
    """The machine edgekit runs on."""
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        import psutil

        physical = min(psutil.cpu_count(logical=False) or logical, logical)
    except ImportError:
        physical = logical
    return Machine(physical_cores=physical, logical_cores=logical, flags=cpu_flags(), isa=isa_class())


@dataclass(frozen=True)
class Setting:
    """One way to run a file: the threads and the runtime options ``runtimes.load`` takes."""

    threads: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    label: str = "defaults"  # "2 threads, spinning on"
    # The setting changes what the model computes (OpenVINO's bf16 precision hint), so it must pass parity itself
    # before it may be chosen; threads and spinning change only speed.
    changes_numerics: bool = False


@dataclass(frozen=True)
class AppCode:
    """How an app loads a file with a setting: Python it can run as is, the C++ API calls, and one line of settings."""

    python: str
    cpp: str
    settings: str


@dataclass(frozen=True)
class Example:
    """The input an app feeds: its shape (batch included), dtype and what it is (for the snippet's comment)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    comment: str = ""
