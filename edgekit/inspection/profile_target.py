"""A per-op profile taken on a target (`edgekit inspect --target`): the device runner profiles the file with ONNX
Runtime's own profiler (``device/profiling.py``) under the settings the host decides for the target's CPU, and sends
back the raw trace and the graph ORT ran there; they are read here by the local profile's code
(``profile_ort.read_profile``), so a profile means the same wherever it was taken."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..errors import EdgekitError, TargetError
from .profile import Measured


def measure_on_target(
    target, options, artifact: Path, runtime: str, threads: int | None, warmup: int, runs: int
) -> tuple[Measured, dict[str, str]]:
    """Profile ``artifact`` on ``target`` (a --target text; ``options``: its TargetOptions)."""
    import onnx

    from .. import runtimes
    from ..device.profiling import PROFILED_RUNTIMES
    from ..targets import jobs, ship
    from ..targets.info import open_with_info
    from .profile_ort import read_profile

    if runtime not in PROFILED_RUNTIMES:
        raise EdgekitError(
            f"the per-op profile on a target is ONNX Runtime's for now and {artifact.name} runs on {runtime}; "
            "pass an .onnx variant, or drop --target to profile it here"
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
            back = Path(folder)
            result = ship.run_job(opened, info.cache_dir, runner, job, {}, [], back, more=_profile_files)
            record = result["artifacts"][0]
            done = record.get("profile") or {}
            problem = record.get("error") or done.get("error")
            if problem:
                raise TargetError(f"{artifact.name} could not be profiled on {opened.name}: {problem}")
            trace = json.loads((back / done["trace"]).read_text(encoding="utf-8"))  # plain JSON, nothing unpickled
            optimized = onnx.load(str(back / done["graph"]))
    finally:
        opened.close()
    used = record.get("info") or {}
    profile_settings = {k: str(v) for k, v in used.items() if k in ("library", "intra_op_threads", "session_config")}
    profile_settings["target"] = info.summary()
    measured, names = read_profile(artifact, trace, optimized, int(done["runs"]), list(done["unprofiled_ms"]), profile_settings)
    measured.notes.append(f"profiled on {info.summary()}")  # an emulated board says so there: its times are not evidence
    return measured, names


def _profile_files(result: dict) -> list[str]:
    done = (result.get("artifacts") or [{}])[0].get("profile") or {}
    return [done[key] for key in ("trace", "graph") if isinstance(done.get(key), str) and "/" not in done[key]]
