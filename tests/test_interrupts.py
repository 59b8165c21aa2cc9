"""Interrupted and concurrent work: kill -9 at any write, resume to the same result, concurrent
exports, and a full disk.

Killed processes run in a subprocess (tests/_kill_driver.py-like code below, passed with -c) so the
kill is a real SIGKILL: no finally blocks, no atexit, no cleanup of any kind.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_photo_folder

from edgekit import files
from edgekit.errors import EdgekitError

REPO = Path(__file__).resolve().parents[1]

# Runs `edgekit <args>` with optional hooks, chosen by environment variables:
#   EDGEKIT_TEST_KILL_AT_REPLACE=N  SIGKILL itself just before the N-th os.replace (temp file complete, not renamed)
#   EDGEKIT_TEST_KILL_IN_WRITE=N    at the N-th fsync, cut the temp file in half, then SIGKILL (a kill mid-write)
#   EDGEKIT_TEST_EPOCH_PAUSE=S      sleep S seconds after each fine-tune epoch (room for an outside kill)
DRIVER = r"""
import os, signal, sys, time
import torch
torch.set_num_threads(1)
kill_at_replace = int(os.environ.get("EDGEKIT_TEST_KILL_AT_REPLACE", "0"))
kill_in_write = int(os.environ.get("EDGEKIT_TEST_KILL_IN_WRITE", "0"))
pause = float(os.environ.get("EDGEKIT_TEST_EPOCH_PAUSE", "0"))
calls = {"replace": 0, "fsync": 0}
if kill_at_replace:
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        calls["replace"] += 1
        if calls["replace"] == kill_at_replace:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
if kill_in_write:
    real_fsync = os.fsync
    def fsync(fd):
        calls["fsync"] += 1
        if calls["fsync"] == kill_in_write:
            os.truncate(os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_fsync(fd)
    os.fsync = fsync
if pause:
    import edgekit.finetuning as finetune_module
    real_report = finetune_module._Trainer._report
    def report(self, *args, **kwargs):
        real_report(self, *args, **kwargs)
        time.sleep(pause)
    finetune_module._Trainer._report = report
from edgekit.cli import cli
cli.main(args=sys.argv[1:], prog_name="edgekit")
"""


def edgekit_process(*args, env_extra=None, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, *map(str, args)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def run_edgekit(*args, env_extra=None, timeout=180) -> subprocess.CompletedProcess:
    process = edgekit_process(*args, env_extra=env_extra)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def assert_final_files_complete(directory: Path) -> list[str]:
    """Every file under a final (non-hidden) name parses completely; returns their names."""
    from edgekit.safety import check_onnx_file, load_exported_program

    names = []
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(directory).parts):
            continue  # hidden names are temporary files of atomic writes; a kill may leave them behind
        names.append(str(path.relative_to(directory)))
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".pt":
            files.load_torch(path)
        elif path.suffix == ".onnx":
            check_onnx_file(path)
        elif path.suffix == ".pt2":
            load_exported_program(path)
    return names


# ---- fine-tune: kill -9 anywhere, resume, same result --------------------------------------------

FINETUNE = [
    "--model",
    "resnet18",
    "--weights",
    "none",
    "--image-size",
    "32",
    "--epochs",
    "3",
    "--batch-size",
    "8",
    "--val-split",
    "0.25",
    "--strategy",
    "full",
    "--lr",
    "3e-3",
    "--warmup-epochs",
    "1",
    "--seed",
    "7",
    "--patience",
    "3",
]


@pytest.fixture(scope="module")
def kill_data(tmp_path_factory):
    return write_photo_folder(tmp_path_factory.mktemp("kill") / "data", 6, seed=3, size=40)


@pytest.fixture(scope="module")
def reference_run(kill_data, tmp_path_factory):
    """The same fine-tune, never interrupted (run in a subprocess like the interrupted ones)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = run_edgekit("finetune", "--data", kill_data, "--out", out, *FINETUNE)
    assert done.returncode == 0, done.stderr
    return out


def assert_same_run(run: Path, reference: Path) -> None:
    assert not (run / "checkpoint.pt").exists()
    ours, theirs = files.load_torch(run / "model.pt"), files.load_torch(reference / "model.pt")
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key

    def comparable(metrics):
        for epoch in metrics["epochs"]:
            epoch.pop("seconds"), epoch.pop("images_per_second")
        return metrics

    assert comparable(files.read_json(run / "metrics.json")) == comparable(files.read_json(reference / "metrics.json"))
    card, reference_card = files.read_json(run / "edgekit.json"), files.read_json(reference / "edgekit.json")
    for key in ("created", "versions"):
        card.pop(key), reference_card.pop(key)
    assert card == reference_card


def test_reference_run_is_reproducible_in_process_free_of_state(reference_run, kill_data, tmp_path):
    """Without this, 'resume equals uninterrupted' could pass or fail by chance."""
    again = tmp_path / "again"
    done = run_edgekit("finetune", "--data", kill_data, "--out", again, *FINETUNE)
    assert done.returncode == 0, done.stderr
    assert_same_run(again, reference_run)


# Writes per run: epoch 0 checkpoint; then per epoch model.pt + card (when improved), metrics.json,
# checkpoint.pt. Kill points cover: before any epoch, inside epoch 1's writes, a later epoch, mid-write.
@pytest.mark.slow
@pytest.mark.parametrize(
    "hook",
    [{"EDGEKIT_TEST_KILL_AT_REPLACE": "1"}, {"EDGEKIT_TEST_KILL_AT_REPLACE": "3"}, {"EDGEKIT_TEST_KILL_IN_WRITE": "5"}],
    ids=["first-write", "between-card-and-checkpoint", "mid-write-checkpoint"],
)
def test_kill_anywhere_then_resume_gives_the_uninterrupted_result(reference_run, kill_data, tmp_path, hook):
    out = tmp_path / "run"
    killed = run_edgekit("finetune", "--data", kill_data, "--out", out, *FINETUNE, env_extra=hook)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = assert_final_files_complete(out)
    # Either resumable (a checkpoint, even when killed in the first epoch) or nothing at all yet, so
    # that a plain re-run starts afresh: never a run that is neither new nor resumable.
    assert "checkpoint.pt" in left or left == [], left
    again = run_edgekit("finetune", "--data", kill_data, "--out", out, *FINETUNE, *(["--resume"] if left else []))
    assert again.returncode == 0, again.stderr
    assert_same_run(out, reference_run)


@pytest.mark.slow
def test_outside_kill_after_first_checkpoint_then_resume(reference_run, kill_data, tmp_path):
    """A SIGKILL from outside, at whatever moment after the first epoch's checkpoint appears."""
    out = tmp_path / "run"
    process = edgekit_process("finetune", "--data", kill_data, "--out", out, *FINETUNE, env_extra={"EDGEKIT_TEST_EPOCH_PAUSE": "0.5"})
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "checkpoint.pt").exists() and (out / "metrics.json").exists():
                break
            time.sleep(0.02)
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before it could be killed: {process.communicate()[1][-1500:]}")
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert_final_files_complete(out)
    resumed = run_edgekit("finetune", "--data", kill_data, "--out", out, *FINETUNE, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(out, reference_run)


def test_resume_from_a_checkpoint_of_another_model_is_a_clear_error(kill_data, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    out = tmp_path / "run"
    out.mkdir()
    files.save_torch(out / "checkpoint.pt", {"epoch": 1, "model": {"weight": torch.zeros(3)}, "optimizer": {}, "scheduler": {}})
    result = CliRunner().invoke(cli, ["finetune", "--data", str(kill_data), "--out", str(out), *FINETUNE, "--resume"])
    assert result.exit_code == 2, result.output
    assert "checkpoint.pt does not fit this run" in result.output and "Traceback" not in result.output


# ---- disk full --------------------------------------------------------------------------------------


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("writer", ["json", "torch", "bytes"])
def test_disk_full_keeps_the_previous_file_and_leaves_no_temp(tmp_path, monkeypatch, writer):
    target = tmp_path / {"json": "metrics.json", "torch": "model.pt", "bytes": "model.onnx"}[writer]
    write = {
        "json": lambda: files.write_json(target, {"epoch": 2}),
        "torch": lambda: files.save_torch(target, {"w": torch.ones(2)}),
        "bytes": lambda: files.write_bytes(target, b"new model"),
    }[writer]
    target.write_bytes(b"previous, complete")
    monkeypatch.setattr(os, "fsync", _enospc)  # the kernel reports a full disk at the latest at fsync
    with pytest.raises(EdgekitError, match="no space left") as info:
        write()
    assert str(target) in str(info.value)
    assert target.read_bytes() == b"previous, complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def _full_after(monkeypatch, good_writes: int) -> None:
    """After ``good_writes`` successful Path.write_bytes calls, every write goes to /dev/full: a real ENOSPC from the kernel."""
    real_write_bytes = Path.write_bytes
    count = {"n": 0}

    def write_bytes(self, data):
        count["n"] += 1
        return real_write_bytes(self if count["n"] <= good_writes else Path("/dev/full"), data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_real_enospc_keeps_the_previous_model_and_names_it(tmp_path, monkeypatch):
    target = files.save_torch(tmp_path / "model.pt", {"w": torch.zeros(4)})
    _full_after(monkeypatch, 0)
    with pytest.raises(EdgekitError, match="no space left") as info:
        files.save_torch(target, {"w": torch.ones(100_000)})
    assert str(target) in str(info.value)
    assert torch.equal(files.load_torch(target)["w"], torch.zeros(4))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_torch_own_writer_would_hide_a_full_disk():
    """Why save_torch serializes in memory first: torch.save to a full device is a bare RuntimeError."""
    with pytest.raises(RuntimeError):
        torch.save({"w": torch.ones(100_000)}, "/dev/full")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_during_finetune_is_one_line_and_exit_2(kill_data, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from edgekit.cli import cli

    _full_after(monkeypatch, 1)  # the epoch-0 checkpoint fits, the first model.pt does not
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["finetune", "--data", str(kill_data), "--out", str(out), *FINETUNE])
    assert result.exit_code == 2, (result.output, result.exception)
    assert "no space left" in result.stderr and str(out / "model.pt") in result.stderr and "Traceback" not in result.output
    assert assert_final_files_complete(out) == ["checkpoint.pt"]  # resumable once space is freed
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


# ---- export, quantization and bench: kill -9, concurrency, disk full ---------------------------------

EXPORT = ["--format", "all", "--quantize", "none,int8", "--calib-size", "8", "--max-parity-images", "8"]


@pytest.fixture
def export_run(trained_run, tmp_path):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(trained_run.path, target, ignore=shutil.ignore_patterns("exports", "bench"))
    return target


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize(
    "hook",
    [{"EDGEKIT_TEST_KILL_IN_WRITE": "3"}, {"EDGEKIT_TEST_KILL_AT_REPLACE": "4"}],
    ids=["mid-write-int8-quantization", "before-int8-report"],
)
def test_kill_during_export_leaves_only_complete_files_and_a_rerun_finishes(export_run, hook):
    killed = run_edgekit("export", export_run, *EXPORT, env_extra=hook)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = assert_final_files_complete(export_run)
    assert any(name.startswith("exports/") for name in before)  # it was killed part-way, not before starting
    again = run_edgekit("export", export_run, *EXPORT)
    assert again.returncode == 0, again.stderr
    after = assert_final_files_complete(export_run)
    assert {"exports/model.onnx", "exports/model.int8.onnx", "exports/model.pt2"} <= set(after)


@pytest.mark.slow
def test_two_exports_of_one_run_at_once_do_not_corrupt_each_other(export_run):
    args = ["--format", "onnx", "--quantize", "none,int8", "--calib-size", "8", "--max-parity-images", "8"]
    first, second = edgekit_process("export", export_run, *args), edgekit_process("export", export_run, *args)
    outputs = [process.communicate(timeout=300) for process in (first, second)]
    assert first.returncode == 0, outputs[0][1]
    assert second.returncode == 0, outputs[1][1]
    names = assert_final_files_complete(export_run)
    assert {"exports/model.onnx", "exports/model.int8.onnx", "exports/fp32.parity.json", "exports/int8.parity.json"} <= set(names)
    assert not [p for p in (export_run / "exports").iterdir() if p.name.startswith(".")]  # no temp files left over
    report = json.loads((export_run / "exports" / "int8.parity.json").read_text())
    assert report["passed"] is True and Path(report["artifact"]).name == "model.int8.onnx"


def test_kill_during_bench_leaves_only_complete_reports(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run.path, run, ignore=shutil.ignore_patterns("exports", "bench"))
    killed = run_edgekit("bench", run, "--iterations", "3", "--warmup", "1", env_extra={"EDGEKIT_TEST_KILL_IN_WRITE": "1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    names = assert_final_files_complete(run)
    assert not [name for name in names if name.startswith("bench/")]  # killed in its first write: no report under a final name


def test_disk_full_during_export_keeps_the_previous_artifact(export_run, monkeypatch):
    from click.testing import CliRunner

    from edgekit.cli import cli

    args = ["export", str(export_run), "--format", "onnx", "--quantize", "none", "--max-parity-images", "8"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    artifact = export_run / "exports" / "model.onnx"
    previous = _digest(artifact)
    monkeypatch.setattr(os, "fsync", _enospc)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert "no space left" in result.stderr and "Traceback" not in result.output
    assert _digest(artifact) == previous
    assert not [p for p in (export_run / "exports").iterdir() if p.name.startswith(".")]
