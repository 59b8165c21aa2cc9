"""A per-op profile taken on a target (`edgekit inspect --target`): the device runner profiles the file with its
runtime's own profiler (``device/profiling.py``: ONNX Runtime's trace, OpenVINO's performance counters, ExecuTorch's
ETDump) under the settings the host decides for the target's CPU, and sends the raw profile back; it is read here by
the local profile's code (each ``profile_<runtime>.from_target``), so a profile means the same wherever it was
taken."""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path

from ..errors import EdgekitError, TargetError
from .profile import Measured

PROFILES = {"ort-cpu": "profile_ort", "openvino": "profile_openvino", "executorch": "profile_executorch"}


def profiler(runtime: str):
    """The module that profiles ``runtime`` here (``measure``), reads its profile from a target (``from_target``) and
    names its profiler (``SOURCE``): a runtime's profile is one file of this package."""
    return importlib.import_module(f"{__package__}.{PROFILES[runtime]}")


def measure_on_target(
    target, options, artifact: Path, runtime: str, threads: int | None, warmup: int, runs: int
) -> tuple[Measured, dict[str, str]]:
    """Profile ``artifact`` on ``target`` (a --target text; ``options``: its TargetOptions)."""
    from .. import runtimes
    from ..device.profiling import PROFILED_RUNTIMES
    from ..targets import jobs, ship
    from ..targets.info import open_with_info

    if runtime not in PROFILED_RUNTIMES:
        raise EdgekitError(
            f"{artifact.name} runs on {runtime}, which has no per-op profile on a target ({', '.join(PROFILED_RUNTIMES)} have); "
            "drop --target to profile it here"
        )
    host = runtimes.load(artifact, runtime)  # the file's checks and what it says of itself, before it travels
    opened, info = open_with_info(target, options)
    try:
        jobs.require_runtimes(info, [runtime])
        settings = jobs.settings_for_target(runtime, host, {}, info)
        job = jobs.new_job([jobs.artifact_entry(0, host, runtime, threads, settings, None)], timing=False)
        job["profile"] = {"warmup": warmup, "runs": runs}
        runner = jobs.send(opened, info, job, [host])
        with tempfile.TemporaryDirectory(prefix="edgekit-profile-") as folder:
            result = ship.run_job(opened, info.cache_dir, runner, job, {}, [], Path(folder), more=_profile_files)
            record = result["artifacts"][0]
            done = record.get("profile") or {}
            problem = record.get("error") or done.get("error")
            if problem:
                raise TargetError(f"{artifact.name} could not be profiled on {opened.name}: {problem}")
            measured, names = profiler(runtime).from_target(artifact, Path(folder), done, record.get("info") or {})
    finally:
        opened.close()
    measured.settings["target"] = info.summary()
    measured.notes.append(f"profiled on {info.summary()}")  # an emulated board says so there: its times are not evidence
    return measured, names


def _profile_files(result: dict) -> list[str]:
    """The profile files a result names: plain names inside the job folder, nothing else is fetched."""
    done = (result.get("artifacts") or [{}])[0].get("profile") or {}
    files = done.get("files")
    if not isinstance(files, dict):
        return []
    return [name for name in files.values() if isinstance(name, str) and name and "/" not in name and name not in (".", "..")]
