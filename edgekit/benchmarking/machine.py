"""The machine a bench ran on, saving reports into a run, and memory measurement."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from ..display import megabytes
from .results import BenchResult, MachineInfo

# ---- machine, saving ---------------------------------------------------------------------------------------

_INTERESTING_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
    "i8mm",
    "bf16",
)


def machine_info() -> MachineInfo:
    """CPU model, cores, the SIMD flags that decide int8/fp16 speed, memory, GPU and library versions."""
    import platform

    import psutil

    cpu_model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "CPU part") and cpu_model in ("", platform.machine(), platform.processor()):
                    cpu_model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    info = {
        "cpu": cpu_model,
        "architecture": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_flags": [flag for flag in _INTERESTING_FLAGS if flag in flags],
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": _versions(),
        "gpu": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return MachineInfo(**info)


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for package in ("edgekit", "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def stamp() -> str:
    """A UTC timestamp for report file names, sortable and free of characters awkward in paths."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def save_to_run(result: BenchResult, run_dir: str | os.PathLike, when: str | None = None) -> tuple[Path, Path]:
    """Write <run>/bench/<stamp>.json and <stamp>.md (atomically); a second bench in the same second gets -2, -3..."""
    from .. import files
    from .report import markdown

    folder = Path(run_dir) / "bench"
    base = when or stamp()
    name, counter = base, 1
    while (folder / f"{name}.json").exists():
        counter += 1
        name = f"{base}-{counter}"
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    result.to_json(json_path)
    files.write_text(md_path, markdown(result))
    return json_path, md_path


def gpu_used_mb() -> float | None:
    """Memory in use on CUDA device 0, device-wide (so it counts onnxruntime's allocations too); None without CUDA."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        return megabytes(total - free)
    except (ImportError, RuntimeError):
        return None
