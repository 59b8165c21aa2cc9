"""bench and parity measured on a target: the torch-free runner (here, then through the rig's real sshd on an x86
loopback board and an emulated arm64 one), the report naming the target, and what a lost connection, a changed file
or a missing runtime end in."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit import runtimes
from edgekit.benchmarking import bench
from edgekit.benchmarking.on_target import EMULATED_NOTE
from edgekit.cli import cli
from edgekit.exporting import export
from edgekit.hardware import IsaClass, isa_class
from edgekit.models import get_spec
from edgekit.parity_check import parity, thresholds_for
from edgekit.targets import jobs, ship
from edgekit.targets.setup import host_version

FEW = {"warmup": 1, "iterations": 3, "batch_sizes": (1,), "threads": 1}


@pytest.fixture(scope="module")
def exported(copy_trained_run):
    """The trained run with edgekit's own fp32 and int8 ONNX exports (the int8 validated on this CPU)."""
    run = copy_trained_run("target-bench", name="photos")
    export(run, formats="onnx", quantize="none,int8", calib_size=30)
    return run


@pytest.fixture(scope="module")
def val_dir(photo_folders) -> Path:
    return photo_folders[1]


# ---- the runner, here --------------------------------------------------------------------------------------------


def _runner_job(tmp_path: Path, artifact: Path, inputs: np.ndarray) -> tuple[Path, Path]:
    """A job folder for the runner archive, as the host writes one on a device."""
    name, data = ship.runner_archive()
    runner = tmp_path / name
    runner.write_bytes(data)
    host = runtimes.load(artifact, "ort-cpu")
    entry = jobs.artifact_entry(0, host, "ort-cpu", 1, {"session_config": {}}, "inputs")
    entry["path"] = str(artifact)
    job = jobs.new_job([entry], batch_sizes=(1, 2), warmup=1, iterations=3, bundle=True)
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "job.json").write_text(json.dumps(job))
    with open(folder / "bundle.npz", "wb") as handle:
        np.savez(handle, inputs=inputs)
    return runner, folder


@pytest.mark.slow
def test_the_runner_times_rows_and_returns_the_bundles_logits(exported, tmp_path):
    artifact = exported.exports_dir / "model.int8.onnx"
    inputs = np.random.default_rng(0).standard_normal((5, 3, 48, 48)).astype(np.float32)
    runner, folder = _runner_job(tmp_path, artifact, inputs)
    done = subprocess.run([sys.executable, "-I", str(runner), str(folder / "job.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads((folder / "result.json").read_text())
    (record,) = result["artifacts"]
    assert record["error"] is None and set(record["times"]) == {"1", "2"} and len(record["times"]["1"]) == 3
    assert record["cold"]["load_ms"] > 0 and record["cold"]["first_inference_ms"] > 0 and record["rss_delta_mb"] >= 0
    assert all(len(chunk) == 3 for chunk in record["chunks"]["1"])
    with np.load(folder / "logits.npz", allow_pickle=False) as logits:
        there = logits["logits_a0"]
    here = runtimes.load(artifact, "ort-cpu", threads=1).run(inputs)
    np.testing.assert_allclose(there, here, atol=1e-5)
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.npz", "job.json", "logits.npz", "result.json"]  # no temporary left


@pytest.mark.slow
def test_the_runner_refuses_a_file_that_changed(exported, tmp_path):
    artifact = tmp_path / "model.onnx"
    artifact.write_bytes((exported.exports_dir / "model.onnx").read_bytes())
    runner, folder = _runner_job(tmp_path, artifact, np.zeros((1, 3, 48, 48), np.float32))
    with open(artifact, "r+b") as handle:  # one flipped byte after the host hashed it
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 1]))
    done = subprocess.run([sys.executable, "-I", str(runner), str(folder / "job.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == ship.RUNNER_FAILED
    said = json.loads(done.stderr.strip().splitlines()[-1])
    assert said["error"] == "changed-file" and "SHA-256 differs" in said["message"]
    assert not (folder / "result.json").exists()


def test_the_runner_archive_is_the_device_package_named_by_its_content():
    import io
    import zipfile

    name, data = ship.runner_archive()
    assert (name, data) == ship.runner_archive()  # the same bytes for the same sources: sent once per version
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "__main__.py" in names and "edgekit_device/runner.py" in names and "edgekit_device/timing.py" in names
    assert not any(n.startswith("edgekit/") for n in names)


def test_int8_settings_follow_the_targets_isa_not_this_machines():
    from edgekit.targets.info import TargetInfo

    class Host:
        info = {"session_config": {"session.x64quantprecision": "1"}, "validated_isa": "x86-avx2"}

    def on(isa: str) -> dict:
        info = TargetInfo(target="ssh://b", transport="ssh", arch="x", isa=isa, python="3.11", cache_dir="/c")
        return jobs.settings_for_target("ort-cpu", Host(), {"allow_spinning": False}, info)["session_config"]

    assert on("arm64-dotprod") == {} and on("x86-avx512-vnni") == {}  # no saturating u8s8 kernels there
    assert on("x86-avx2") == {"session.x64quantprecision": "1"}  # U8U8 on an x86 target without VNNI


@pytest.mark.slow
def test_a_password_in_the_bench_target_is_one_line(exported):
    result = CliRunner().invoke(cli, ["bench", str(exported.path), "--target", "ssh://me:hunter2@board", "--no-save"])
    assert result.exit_code == 2 and "carries a password" in result.output and "hunter2" not in result.output


# ---- through the rig ----------------------------------------------------------------------------------------------


def _cli(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.slow
@pytest.mark.board
def test_bench_on_the_x86_board_reports_like_local_bench_and_names_the_target(exported, val_dir, x86_target, ssh_board, tmp_path):
    url, _ = x86_target
    report, markdown = tmp_path / "bench.json", tmp_path / "bench.md"
    args = ["bench", str(exported.path), "--target", url, "--ssh-config", str(ssh_board.config_path), "--data", str(val_dir)]
    result = _cli(
        *args, "--max-images", "12", "--iterations", "3", "--threads", "1", "--no-save", "--json", str(report), "--md", str(markdown)
    )
    assert result.exit_code == 0, result.output
    assert f"edgekit bench on {url.split('/tmp')[0]}" in result.output and "skipped torch" in result.output
    data = json.loads(report.read_text())
    target = data["target"]
    assert (target["transport"], target["arch"], target["isa"], target["emulated"]) == ("ssh", "x86_64", isa_class().value, False)
    assert target["runtimes"]["onnxruntime"] == host_version("onnxruntime")  # what `target setup` installed there
    rows = {m["variant"]: m for m in data["measurements"]}
    assert {"fp32", "int8"} <= set(rows)
    for row in rows.values():
        assert row["top1"] is not None and row["parity"]["n_images"] == 12 and row["p50_ms"] > 0 and row["load_ms"] > 0
        assert row["runtime_info"]["ran_on"] == "target"
    assert rows["fp32"]["parity"]["max_abs_diff"] < 1e-4 and rows["int8"]["parity"]["top1_agreement"] >= 0.9
    assert markdown.read_text().startswith(f"## edgekit bench on {target['target']}\n")
    # Local bench of the same files: the same rows (the torch ones aside) and the same report shape.
    local = bench(exported.path, runtimes=["auto"], data=val_dir, max_images=12, save=False, **FEW)
    assert {(m.variant, m.runtime) for m in local.measurements if m.runtime == "ort-cpu"} == {
        (m["variant"], m["runtime"]) for m in data["measurements"]
    }
    assert set(local.measurements[0].model_dump()) == set(data["measurements"][0])


@pytest.mark.slow
@pytest.mark.board
def test_a_missing_runtime_names_the_setup_command_and_setup_fixes_it(exported, ssh_board, tmp_path):
    url, config = f"{ssh_board.url}{tmp_path}/cache", str(ssh_board.config_path)
    artifact = str(exported.exports_dir / "model.int8.onnx")
    missing = _cli("bench", artifact, "--target", url, "--ssh-config", config, "--iterations", "2", "--no-save")
    assert missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1, missing.output
    assert f"edgekit target setup {url} --runtime ort-cpu" in missing.output and "pip install onnxruntime==" in missing.output
    assert _cli("target", "setup", url, "--ssh-config", config, "--runtime", "ort-cpu", "--from-host").exit_code == 0
    fixed = _cli("bench", artifact, "--target", url, "--ssh-config", config, "--iterations", "2", "--no-save")
    assert fixed.exit_code == 0, fixed.output


@pytest.mark.slow
@pytest.mark.board
def test_a_connection_killed_mid_bench_leaves_no_report(exported, x86_target, ssh_board, tmp_path):
    url, _ = x86_target
    cache = Path(url.split(str(ssh_board.port), 1)[1])  # the x86 board is this machine: its cache folder is local
    report = tmp_path / "out" / "bench.json"
    argv = [sys.executable, "-m", "edgekit", "bench", str(exported.exports_dir / "model.onnx"), "--target", url]
    argv += ["--ssh-config", str(ssh_board.config_path), "--iterations", "100000", "--threads", "1", "--json", str(report)]
    saved = exported.path / "bench"
    before = set(saved.iterdir()) if saved.is_dir() else set()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(cache.glob("jobs/*/job.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(2.0)  # the runner is timing now
    ssh_board.kill_sessions()
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: lost the connection to {url.split('/tmp')[0]} while running the job"), err
    assert "nothing was written" in lines[0] and "Traceback" not in err
    assert not report.exists() and not (tmp_path / "out").exists()
    assert (set(saved.iterdir()) if saved.is_dir() else set()) == before  # nor in the run's bench/ folder
    assert list(cache.glob("jobs/*")) == []  # the job folder went with a new connection


@pytest.fixture
def small_disk(tmp_path):
    """A 200 MB tmpfs (the x86 board is this machine, so the device's disk is a local mount)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)


@pytest.mark.slow
@pytest.mark.board
def test_a_full_disk_on_the_device_is_one_line_and_leaves_no_report(exported, ssh_board, small_disk, tmp_path):
    url, config = f"{ssh_board.url}{small_disk}/cache", str(ssh_board.config_path)
    assert _cli("target", "setup", url, "--ssh-config", config, "--runtime", "ort-cpu", "--from-host").exit_code == 0
    free = shutil.disk_usage(small_disk).free
    subprocess.run(["fallocate", "-l", str(free - 2_000_000), str(small_disk / "filler")], check=True)  # 2 MB left
    report = tmp_path / "bench.json"
    result = _cli(
        "bench", str(exported.exports_dir / "model.onnx"), "--target", url, "--ssh-config", config, "--json", str(report), "--no-save"
    )
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith(f"error: the disk of {ssh_board.url} is full while copying model.onnx") and "df -h" in result.output
    assert not report.exists() and not list((small_disk / "cache" / "artifacts").rglob("*.onnx"))  # no half file there either


@pytest.mark.slow
@pytest.mark.timeout(900)  # emulated arm64: every model run takes seconds
@pytest.mark.board
def test_bench_on_the_emulated_arm64_board(exported, val_dir, arm64_target):
    url, options = arm64_target
    started = time.monotonic()
    result = bench(
        [exported.exports_dir / "model.onnx", exported.exports_dir / "model.int8.onnx"],
        data=val_dir,
        max_images=6,
        warmup=0,
        iterations=1,
        batch_sizes=(1,),
        threads=1,
        save=False,
        target=url,
        target_options=options,
    )
    seconds = time.monotonic() - started
    target = result.target
    assert (target.arch, target.isa, target.emulated) == ("aarch64", IsaClass.ARM64, True)
    assert result.machine.architecture == "aarch64" and any("emulated" in w for w in result.warnings)
    rows = {m.variant: m for m in result.measurements}
    assert set(rows) == {"fp32", "int8"}
    budget = thresholds_for(get_spec(exported.card.model), "int8", has_labels=True).max_accuracy_drop
    for row in rows.values():
        assert row.top1 is not None and row.accuracy_images == 6 and EMULATED_NOTE in row.notes
        assert row.runtime_info["session_config"] == {}  # an ARM target needs no U8U8 option, whatever the host's CPU
    assert rows["fp32"].parity.max_abs_diff < 1e-3
    assert rows["int8"].parity.accuracy_drop <= budget, rows["int8"].parity
    print(f"arm64 bench of fp32 + int8 on 6 images: {seconds:.0f} s; int8 vs torch max abs diff {rows['int8'].parity.max_abs_diff:.3g}")


@pytest.mark.slow
@pytest.mark.timeout(900)  # emulated arm64: every model run takes seconds
@pytest.mark.board
def test_parity_on_the_emulated_arm64_board(exported, val_dir, arm64_target):
    url, options = arm64_target
    result = parity(exported.path, exported.exports_dir / "model.int8.onnx", data=val_dir, max_images=6, target=url, target_options=options)
    assert result.passed, result.failures
    assert (result.target.arch, result.target.isa, result.target.emulated) == ("aarch64", IsaClass.ARM64, True)
    assert result.metrics.n_images == 6 and result.target.runtimes.get("onnxruntime")
