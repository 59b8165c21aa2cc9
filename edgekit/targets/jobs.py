"""Jobs for the device runner, decided here: which settings an artifact runs with on the target's CPU, the job entry
that names it (with the SHA-256 of each of its files), and the logits of a batch of inputs computed there.

    settings = settings_for_target("ort-cpu", host_session, {"allow_spinning": False}, info)
    logits = logits_on_target(target, info, host_session, "ort-cpu", inputs)       # what `edgekit parity --target` uses

The host session (``edgekit.runtimes.load`` here) is what the file was checked with and what it says of itself
(input kind and shape, fixed batch, recorded session config, the ISA class its int8 was validated on).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TargetError
from ..files import sha256_file
from ..formats import find_format
from ..hardware import ORT_PRECISION_KEY, ort_session_config_here
from ..safety import load_npz
from . import Target, ship
from .info import TargetInfo
from .setup import missing_runtime

JOB_VERSION = 1


def artifact_files(path: Path) -> list[Path]:
    """A model file and the companions that travel with it (an IR's .bin, an ONNX file's external data)."""
    fmt = find_format(path)
    return fmt.files(path) if fmt is not None else [Path(path)]


def settings_for_target(runtime: str, host_session, options: dict, info: TargetInfo) -> dict:
    """The settings the device opens a file with: ``options`` (what a runtime takes besides threads), and for ORT the
    session config an int8 file needs on the *target's* ISA class (``hardware.ort_session_config_here``), not on this
    machine's: an int8 file validated with VNNI gets U8U8 kernels on an x86 target without it, nothing on ARM."""
    settings = {k: v for k, v in options.items() if k not in ("provider_options", "device")}
    if runtime == "ncnn":  # fp16 arithmetic as the host ran it (an fp16 export's side file asks for it)
        settings.setdefault("fp16", host_session.info.get("fp16_storage_and_arithmetic") == "on")
    if runtime == "ort-cpu":
        recorded = dict(host_session.info.get("session_config") or {})
        validated = host_session.info.get("validated_isa")
        if validated:
            recorded.pop(ORT_PRECISION_KEY, None)  # what this machine's CPU needed; the target's decides below
        target_config = ort_session_config_here(recorded, validated, here=info.isa.value)
        settings["session_config"] = {**target_config, **{str(k): str(v) for k, v in (options.get("session_config") or {}).items()}}
    return settings


def artifact_entry(index: int, host_session, runtime: str, threads: int | None, settings: dict, bundle_input: str | None) -> dict[str, Any]:
    """One artifact of a job (its device path is filled in once it is there: ``send``)."""
    return {
        "id": f"a{index}",
        "path": "",
        "files": {path.name: sha256_file(path) for path in artifact_files(host_session.artifact)},
        "runtime": runtime,
        "threads": threads,
        "settings": settings,
        "input": {"kind": host_session.input_kind.value, "shape": list(host_session.resolved_input_shape())},
        "fixed_batch": host_session.fixed_batch,
        "bundle_input": bundle_input,
    }


def new_job(
    artifacts: list[dict],
    batch_sizes=(1,),
    warmup: int = 1,
    iterations: int = 1,
    timing: bool = True,
    threshold: float = 0.25,
    bundle: bool = False,
) -> dict:
    """A job in the runner's format (see ``edgekit/device/runner.py``)."""
    return {
        "job_version": JOB_VERSION,
        "batch_sizes": list(batch_sizes),
        "warmup": warmup,
        "iterations": iterations,
        "timing": timing,
        "contention_threshold": threshold,
        "bundle": "bundle.npz" if bundle else None,
        "artifacts": artifacts,
    }


def require_runtimes(info: TargetInfo, runtimes) -> None:
    """A one-line error naming `edgekit target setup` when the target lacks one of ``runtimes``."""
    for runtime in sorted(set(runtimes)):
        problem = missing_runtime(info, runtime)
        if problem:
            raise TargetError(problem)


def send(target: Target, info: TargetInfo, job: dict, host_sessions: list) -> str:
    """The runner and every artifact of ``job`` onto the device (each only if not there yet); fills in their paths and
    returns the runner's path."""
    runner = ship.ensure_runner(target, info.cache_dir)
    remote = ship.send_artifacts(target, info.cache_dir, [artifact_files(s.artifact) for s in host_sessions])
    for entry, path in zip(job["artifacts"], remote):
        entry["path"] = path
    return runner


def execute(target: Target, info: TargetInfo, job: dict, host_sessions: list, bundle: dict[str, np.ndarray] | None) -> tuple[dict, dict]:
    """Send and run ``job`` with ``bundle`` (arrays, as an .npz); (the result JSON, the logits arrays by name)."""
    runner = send(target, info, job, host_sessions)
    with tempfile.TemporaryDirectory(prefix="edgekit-job-") as folder:
        inputs = {}
        if bundle:
            inputs["bundle.npz"] = Path(folder) / "bundle.npz"
            with open(inputs["bundle.npz"], "wb") as handle:  # plain arrays: the device loads it with allow_pickle=False
                np.savez(handle, **bundle)  # type: ignore[arg-type]  # (numpy's stub reads **kwds as allow_pickle)
        back = Path(folder) / "back"
        result = ship.run_job(target, info.cache_dir, runner, job, inputs, ["logits.npz"], back)
        return result, load_npz(back / "logits.npz")


def logits_on_target(
    target: Target, info: TargetInfo, host_session, runtime: str, inputs: np.ndarray, threads: int | None = None
) -> tuple[np.ndarray, dict]:
    """The logits of ``inputs`` (a batch of what the artifact takes) computed on the target, nothing timed; with the
    settings the device used (its ``info``)."""
    require_runtimes(info, [runtime])
    settings = settings_for_target(runtime, host_session, {}, info)
    job = new_job([artifact_entry(0, host_session, runtime, threads, settings, "inputs")], timing=False, bundle=True)
    result, logits = execute(target, info, job, [host_session], {"inputs": inputs})
    record = result["artifacts"][0]
    if record.get("error"):
        raise TargetError(f"{host_session.artifact.name} failed on {target.name}: {record['error']}")
    return logits["logits_a0"], dict(record.get("info") or {})
