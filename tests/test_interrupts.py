"""Interrupted and concurrent work: kill -9 at any write, resume to the same result, concurrent
exports, and a full disk.

Killed processes run in a subprocess (the driver below, passed with -c) so the kill is a real SIGKILL from
outside: no finally blocks, no atexit, no cleanup of any kind. The kill point is a handshake, never a timing:
the child stops at the chosen write, says so in a marker file and waits; the parent sees the marker, then kills.
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

# Runs `edgekit <args>`; with EDGEKIT_TEST_MARKER set, it stops at the point one of these names, writes the marker
# file (atomically, so the parent never reads half of it) and waits to be killed:
#   EDGEKIT_TEST_STOP_AT_REPLACE=N   just before the N-th os.replace (temp file complete, not yet renamed)
#   EDGEKIT_TEST_STOP_IN_WRITE=N     at the N-th fsync, after cutting the temp file in half (a kill mid-write)
#   EDGEKIT_TEST_STOP_AFTER_EPOCH=N  once fine-tune epoch N has written its metrics and checkpoint
# The wait ends by the parent's SIGKILL; SIGALRM ends a child whose parent never comes.
DRIVER = r"""
import os, signal, sys
import torch
torch.set_num_threads(1)
marker = os.environ.get("EDGEKIT_TEST_MARKER")
stop_at_replace = int(os.environ.get("EDGEKIT_TEST_STOP_AT_REPLACE", "0"))
stop_in_write = int(os.environ.get("EDGEKIT_TEST_STOP_IN_WRITE", "0"))
stop_after_epoch = int(os.environ.get("EDGEKIT_TEST_STOP_AFTER_EPOCH", "0"))
calls = {"replace": 0, "fsync": 0}
def wait_for_the_kill(point):
    with open(marker + ".tmp", "w") as handle:
        handle.write(point)
    os.rename(marker + ".tmp", marker)
    signal.alarm(300)
    while True:
        signal.pause()
if stop_at_replace:
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        calls["replace"] += 1
        if calls["replace"] == stop_at_replace:
            wait_for_the_kill(f"before renaming {dst}")
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
if stop_in_write:
    real_fsync = os.fsync
    def fsync(fd):
        calls["fsync"] += 1
        if calls["fsync"] == stop_in_write:
            path = os.readlink(f"/proc/self/fd/{fd}")
            os.truncate(path, os.fstat(fd).st_size // 2)
            wait_for_the_kill(f"half-way through writing {path}")
        return real_fsync(fd)
    os.fsync = fsync
if stop_after_epoch:
    import edgekit.finetuning as finetune_module
    real_report = finetune_module._Trainer._report
    def report(self, metrics, *args, **kwargs):
        real_report(self, metrics, *args, **kwargs)
        if metrics.epoch == stop_after_epoch:
            wait_for_the_kill(f"after epoch {metrics.epoch}")
    finetune_module._Trainer._report = report
from edgekit.cli import cli
cli.main(args=sys.argv[1:], prog_name="edgekit")
"""


def edgekit_process(*args, env_extra=None, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env_extra or {})}
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen([sys.executable, "-c", DRIVER, *map(str, args)], cwd=REPO, env=env, text=True, **popen)


def run_edgekit(*args, env_extra=None, timeout=180) -> subprocess.CompletedProcess:
    process = edgekit_process(*args, env_extra=env_extra)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def kill_at(stop: dict[str, str], marker: Path, *args, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `edgekit <args>` until it reaches ``stop`` (see DRIVER), SIGKILL it from here, and return what it left.

    The child's stdout and stderr go to files, so a chatty child never blocks on a full pipe while we wait."""
    logs = marker.with_suffix(".out"), marker.with_suffix(".err")
    with open(logs[0], "w") as out, open(logs[1], "w") as err:
        process = edgekit_process(*args, env_extra={**stop, "EDGEKIT_TEST_MARKER": str(marker)}, stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + timeout
            while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)  # polling for the marker: the child is not running on meanwhile, it waits
            reached = marker.exists()
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
    stderr = logs[1].read_text()
    assert reached, f"the run never reached {stop} (exit {process.returncode}): {stderr[-1500:]}"
    return subprocess.CompletedProcess(process.args, process.returncode, logs[0].read_text(), stderr)


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
def kill_data(module_tmp):
    return write_photo_folder(module_tmp.mktemp("kill") / "data", 6, seed=3, size=40)


@pytest.fixture(scope="module")
def reference_run(kill_data, module_tmp):
    """The same fine-tune, never interrupted (run in a subprocess like the interrupted ones)."""
    out = module_tmp.mktemp("reference") / "run"
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


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
def test_reference_run_is_reproducible_in_process_free_of_state(reference_run, kill_data, tmp_path):
    """Without this, 'resume equals uninterrupted' could pass or fail by chance."""
    again = tmp_path / "again"
    done = run_edgekit("finetune", "--data", kill_data, "--out", again, *FINETUNE)
    assert done.returncode == 0, done.stderr
    assert_same_run(again, reference_run)


# Writes per run: epoch 0 checkpoint; then per epoch model.pt + card (when improved), metrics.json,
# checkpoint.pt. Kill points cover: before any epoch, inside epoch 1's writes, a later epoch, mid-write.
@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
@pytest.mark.parametrize(
    "hook",
    [{"EDGEKIT_TEST_STOP_AT_REPLACE": "1"}, {"EDGEKIT_TEST_STOP_AT_REPLACE": "3"}, {"EDGEKIT_TEST_STOP_IN_WRITE": "5"}],
    ids=["first-write", "between-card-and-checkpoint", "mid-write-checkpoint"],
)
def test_kill_anywhere_then_resume_gives_the_uninterrupted_result(reference_run, kill_data, tmp_path, hook):
    out = tmp_path / "run"
    killed = kill_at(hook, tmp_path / "stopped", "finetune", "--data", kill_data, "--out", out, *FINETUNE)
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
    """A SIGKILL from outside once the first epoch's checkpoint and metrics are written."""
    out = tmp_path / "run"
    killed = kill_at({"EDGEKIT_TEST_STOP_AFTER_EPOCH": "1"}, tmp_path / "stopped", "finetune", "--data", kill_data, "--out", out, *FINETUNE)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / "stopped").read_text() == "after epoch 1"
    assert {"checkpoint.pt", "metrics.json"} <= set(assert_final_files_complete(out))
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


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
@pytest.mark.parametrize(
    "hook",
    [{"EDGEKIT_TEST_STOP_IN_WRITE": "3"}, {"EDGEKIT_TEST_STOP_AT_REPLACE": "4"}],
    ids=["mid-write-int8-quantization", "before-int8-report"],
)
def test_kill_during_export_leaves_only_complete_files_and_a_rerun_finishes(export_run, hook):
    killed = kill_at(hook, export_run.parent / "stopped", "export", export_run, *EXPORT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = assert_final_files_complete(export_run)
    assert any(name.startswith("exports/") for name in before)  # it was killed part-way, not before starting
    again = run_edgekit("export", export_run, *EXPORT)
    assert again.returncode == 0, again.stderr
    after = assert_final_files_complete(export_run)
    assert {"exports/model.onnx", "exports/model.int8.onnx", "exports/model.pt2"} <= set(after)


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
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
    killed = kill_at({"EDGEKIT_TEST_STOP_IN_WRITE": "1"}, tmp_path / "stopped", "bench", run, "--iterations", "3", "--warmup", "1")
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
