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


# ---- memory ----------------------------------------------------------------------------------------------------


class PeakMemory:
    """The peak resident memory of this process inside a ``with`` block, as an increase over its start.

    Linux: the kernel's high-water mark (VmHWM), reset on entry through /proc/self/clear_refs, so the peak is
    exact and costs nothing. resource.getrusage's ru_maxrss cannot be used for this: it is a lifetime maximum
    that never comes down, so after one big model every smaller one would report the same peak. Elsewhere (or
    where clear_refs is not writable) a background thread samples RSS with psutil every 2 ms, which can miss
    spikes shorter than that.
    """

    _INTERVAL_S = 0.002

    def __enter__(self):
        self.start_mb = current_rss_mb()
        self.peak_mb = self.start_mb
        self._exact = _reset_high_water_mark()
        if not self._exact:
            import threading

            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, current_rss_mb())
            self._stop.wait(self._INTERVAL_S)

    def checkpoint(self) -> float:
        """The peak increase so far (MB), without ending the block: peak after loading, then after a first run..."""
        if self._exact:
            return max(0.0, (_high_water_mark_mb() or 0.0) - self.start_mb)
        return max(0.0, max(self.peak_mb, current_rss_mb()) - self.start_mb)

    def __exit__(self, *exc):
        if self._exact:
            self.peak_mb = max(self.start_mb, _high_water_mark_mb() or 0.0)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, current_rss_mb())
        return False

    @property
    def delta_mb(self) -> float:
        return max(0.0, self.peak_mb - self.start_mb)


def current_rss_mb() -> float:
    import psutil

    return megabytes(psutil.Process().memory_info().rss)


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")  # 5 = reset the peak RSS to the current RSS (Linux 4.0+)
        return _high_water_mark_mb() is not None
    except OSError:
        return False


def _high_water_mark_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return megabytes(int(line.split()[1]) * 1024)  # the kernel's "kB" are KiB
    except OSError:
        return None
    return None


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
