"""Sending work to a target and bringing its answer back: the device runner as one file, artifacts by content, one
job folder per run.

    runner = ensure_runner(target, cache)                      # <cache>/runner/runner-<hash>.pyz, sent once per version
    remote = send_artifacts(target, cache, [files_of_a, ...])  # <cache>/artifacts/<hash>/<name>, sent once per content
    result, arrays = run_job(target, cache, runner, job, {"bundle.npz": path})

The runner is the ``edgekit/device`` package zipped as an executable archive (``python runner.pyz job.json``), built
here from the installed package and named by its content's hash, so a device runs exactly this edgekit's code and a
changed edgekit sends a new one. Artifacts are stored by the hash of their bytes (with their companions: an IR's .bin,
an ONNX file's external data), so benching the same file again sends nothing. A job's folder is removed when its
answer is back, whatever happened; a result comes back through ``Target.get``, atomically.

On the device the runner runs with ``XDG_CACHE_HOME`` and ``TMPDIR`` inside the cache folder: onnxruntime 1.32 writes
a device id and a database under ``$XDG_CACHE_HOME/Microsoft`` and a ``$TMPDIR/.ses`` file when it is imported, and
nothing may land outside the cache folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Callable, Sequence

from .. import files
from ..device import facts as device_facts
from ..errors import TargetError
from . import Target

APP_PACKAGE = "edgekit_device"  # the package's name inside the runner archive (no edgekit is installed there)
RUNNER_DIR = "runner"
ARTIFACTS_DIR = "artifacts"
JOBS_DIR = "jobs"
STALE_JOB_MINUTES = 60
JOB_TIMEOUT_S = 4 * 3600  # emulated boards are slow; a hung job is ended by the connection's keep-alive instead
_MAIN = f"from {APP_PACKAGE}.runner import main\nmain()\n"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the same archive bytes for the same sources: its name is their hash
# Runs the runner with the cache venv's Python, its temporary and cache files inside the cache folder.
_LAUNCH = 'mkdir -p "$1/tmp" "$1/xdg" && XDG_CACHE_HOME="$1/xdg" TMPDIR="$1/tmp" exec "$1/venv/bin/python" "$2" "$3"'
RUNNER_FAILED = 3  # the runner's exit status for an error it explains in its last stderr line (a JSON object)


def runner_archive() -> tuple[str, bytes]:
    """(file name, bytes) of the runner: every module of ``edgekit/device`` under ``edgekit_device/`` plus a
    ``__main__.py``, named ``runner-<sha256 prefix>.pyz``."""
    package = Path(device_facts.__file__).parent
    sources = sorted(package.glob("*.py"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in [*sources, None]:
            name = "__main__.py" if path is None else f"{APP_PACKAGE}/{path.name}"
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, _MAIN if path is None else path.read_bytes())
    data = buffer.getvalue()
    return f"runner-{hashlib.sha256(data).hexdigest()[:16]}.pyz", data


def ensure_runner(target: Target, cache: str) -> str:
    """The runner's path on the device, sending it first when this version is not there yet."""
    name, data = runner_archive()
    remote = f"{cache}/{RUNNER_DIR}/{name}"
    if target.run(["test", "-f", remote], timeout=60, doing="looking for edgekit's runner").rc == 0:
        return remote
    with tempfile.TemporaryDirectory(prefix="edgekit-runner-") as folder:
        local = Path(folder) / name
        local.write_bytes(data)
        target.put([local], f"{cache}/{RUNNER_DIR}", doing="copying edgekit's runner")
    return remote


def content_key(group: Sequence[Path]) -> str:
    """The hash naming a model file and its companions on the device (their names and bytes)."""
    digest = hashlib.sha256()
    for path in group:
        digest.update(path.name.encode() + b"\0" + files.sha256_file(path).encode() + b"\0")
    return digest.hexdigest()[:24]


def send_artifacts(target: Target, cache: str, groups: Sequence[Sequence[Path]]) -> list[str]:
    """Each group (a model file first, then its companions) in ``<cache>/artifacts/<hash>/`` on the device; returns
    the device path of each main file. Groups already there are not sent again."""
    folders = [f"{cache}/{ARTIFACTS_DIR}/{content_key(group)}" for group in groups]
    wanted = [f"{folder}/{path.name}" for folder, group in zip(folders, groups) for path in group]
    check = 'for f in "$@"; do [ -f "$f" ] || printf "%s\\n" "$f"; done'
    missing = set(target.run(["sh", "-c", check, "sh", *wanted], timeout=120, doing="looking for the artifacts").stdout.splitlines())
    for folder, group in zip(folders, groups):
        if any(f"{folder}/{path.name}" in missing for path in group):
            target.put(list(group), folder, doing=f"copying {group[0].name} to {folder}")
    return [f"{folder}/{group[0].name}" for folder, group in zip(folders, groups)]


def run_job(
    target: Target,
    cache: str,
    runner: str,
    job: dict,
    inputs: dict[str, Path],
    outputs: Sequence[str],
    into: Path,
    more: Callable[[dict], Sequence[str]] | None = None,
) -> dict:
    """Run one job: its JSON and ``inputs`` (name -> local file) go to a fresh job folder, the runner answers with
    ``result.json`` and the files named in ``outputs`` (and in ``more(result)``: files the result says it wrote),
    which come back into ``into`` (atomically, each). Returns the result JSON. The job folder is removed afterwards,
    also after a failure."""
    folder = f"{cache}/{JOBS_DIR}/{uuid.uuid4().hex}"
    _remove_stale_jobs(target, cache)
    try:
        with tempfile.TemporaryDirectory(prefix="edgekit-job-") as staging:
            job_file = Path(staging) / "job.json"
            job_file.write_text(json.dumps(job), encoding="utf-8")
            target.put([job_file, *inputs.values()], folder, doing="copying the job")
        done = target.run(["sh", "-c", _LAUNCH, "sh", cache, runner, f"{folder}/job.json"], timeout=JOB_TIMEOUT_S, doing="running the job")
        if done.rc != 0:
            raise runner_failure(target, done.rc, done.stderr)
        for name in ["result.json", *outputs]:
            target.get(f"{folder}/{name}", into / name, doing=f"copying {name} back")
        result = json.loads((into / "result.json").read_text(encoding="utf-8"))
        for name in more(result) if more is not None else ():
            target.get(f"{folder}/{name}", into / name, doing=f"copying {name} back")
        return result
    finally:
        _remove(target, folder)


def _remove(target: Target, folder: str) -> None:
    """Remove a job folder, trying twice: a connection that just dropped often answers again a moment later."""
    for attempt in range(2):
        try:
            target.run(["rm", "-rf", folder], timeout=120, doing=f"removing {folder}")
            return
        except TargetError:
            time.sleep(1.0 + attempt)
    # Still unreachable: the error that ended the job says so, and a later job removes the folder (_remove_stale_jobs).


def _remove_stale_jobs(target: Target, cache: str) -> None:
    """Job folders a lost connection left behind, an hour old or more (a job of another bench running now is younger)."""
    stale = f'[ -d "$1" ] && find "$1" -mindepth 1 -maxdepth 1 -type d -mmin +{STALE_JOB_MINUTES} -exec rm -rf {{}} \\; ; true'
    target.run(["sh", "-c", stale, "sh", f"{cache}/{JOBS_DIR}"], timeout=120, doing="removing stale job folders")


def runner_failure(target: Target, rc: int, stderr: str) -> TargetError:
    """The runner's own one-line explanation (its last stderr line, a JSON object), else a generic line."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if rc == RUNNER_FAILED and lines:
        try:
            said = json.loads(lines[-1])
            if said.get("error") == "missing-runtime":
                return TargetError(
                    f"{target.name} has no {said.get('module')} in edgekit's venv; run `edgekit target setup {target.address.url} "
                    f"--runtime {said.get('runtime')}` (add --from-host if its pip has no index)"
                )
            return TargetError(f"{target.name}: {said['message']}")
        except (ValueError, KeyError, TypeError):
            pass
    if any("No space left" in line for line in lines):
        return TargetError(f"the disk of {target.name} is full (while running the job); free space there (df -h) and run the command again")
    last = lines[-1][:300] if lines else f"exit {rc}"
    return TargetError(f"edgekit's runner failed on {target.name} ({last})")
