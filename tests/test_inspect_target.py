"""`edgekit inspect --target`: the per-op profile taken by the device runner (here, then through the rig's real sshd on
the x86 loopback board and the emulated arm64 one) and read on the host by the local profile's code."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit import runtimes
from edgekit.cli import cli
from edgekit.exporting import export
from edgekit.inspection import inspect
from edgekit.targets import jobs, ship
from edgekit.targets.info import target_info
from edgekit.targets.setup import setup_target

FAST = {"warmup": 1, "runs": 4, "numerics": False}


@pytest.fixture(scope="module")
def exported(copy_trained_run):
    """The trained run with its fp32 and int8 ONNX exports (and the int8 OpenVINO IR, where OpenVINO is installed)."""
    run = copy_trained_run("inspect-target", name="photos")
    export(run, formats="onnx", quantize="none,int8", calib_size=30, speed_check=False)
    return run


def _run_the_runner_here(artifact, runtime: str, folder, threads=1, runs=5):
    """The runner's profile job for ``artifact``, run as the device runs it (the zipped runner, a clean ``-I``
    interpreter), in ``folder``: (its record, what the host reads from its files)."""
    from edgekit.inspection.profile_target import profiler

    name, data = ship.runner_archive()
    (folder / name).write_bytes(data)
    host = runtimes.load(artifact, runtime)
    entry = jobs.artifact_entry(0, host, runtime, threads, jobs.settings_for_target(runtime, host, {}, target_info()), None)
    entry["path"] = str(artifact)
    job = jobs.new_job([entry], timing=False)
    job["profile"] = {"warmup": 1, "runs": runs}
    (folder / "job.json").write_text(json.dumps(job))
    done = subprocess.run([sys.executable, "-I", str(folder / name), str(folder / "job.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (record,) = json.loads((folder / "result.json").read_text())["artifacts"]
    assert record["error"] is None and "error" not in record["profile"], record
    for file_name in record["profile"]["files"].values():
        assert (folder / file_name).is_file() and "/" not in file_name
    measured, names = profiler(runtime).from_target(artifact, folder, record["profile"], record["info"])
    assert len(record["profile"]["unprofiled_ms"]) == runs and all(ms > 0 for ms in record["profile"]["unprofiled_ms"])
    return record, measured, names


@pytest.mark.slow
def test_the_runner_profiles_and_leaves_the_trace_and_graph_for_the_host(exported, tmp_path):
    artifact = exported.exports_dir / "model.int8.onnx"
    record, measured, names = _run_the_runner_here(artifact, "ort-cpu", tmp_path)
    assert set(record["profile"]["files"]) == {"trace", "graph"}
    assert len(measured.run_ms) == 5 and any(node.ran_as == "int8" for node in measured.nodes)
    assert "layer1.0.conv1" in names.values()  # the file's layers, tied to the modules as a local profile ties them


@pytest.fixture(scope="module")
def exported_ir(exported):
    """The same run with its NNCF int8 OpenVINO IR too."""
    pytest.importorskip("openvino")
    export(exported, formats="openvino", quantize="int8", calib_size=30, accuracy_aware=False, speed_check=False)
    return exported


@pytest.mark.slow
def test_the_runner_profiles_an_ir_with_openvino_counters(exported_ir, tmp_path):
    artifact = exported_ir.exports_dir / "model.int8.xml"
    record, measured, _ = _run_the_runner_here(artifact, "openvino", tmp_path)
    assert set(record["profile"]["files"]) == {"counters"} and record["info"]["config"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert len(measured.run_ms) == 5
    ran = {node.layer: node for node in measured.nodes if node.layer}
    # the counters name the IR's layers through the executable graph, and the kernels that ran: int8 ones where the
    # IR's FakeQuantize asks for int8, as a local profile reads them
    assert ran and any(node.meant == "int8" and node.ran_as == "int8" for node in ran.values())
    assert all(node.kernel for node in measured.nodes)


@pytest.mark.slow
def test_the_runner_profiles_a_pte_with_its_etdump(exported, tmp_path):
    if runtimes.available_runtimes().get("executorch") is not None:
        pytest.skip(f"executorch runtime unavailable: {runtimes.available_runtimes()['executorch']}")
    pytest.importorskip("executorch.devtools")
    export(exported, formats="executorch", quantize="int8", calib_size=30, speed_check=False)
    artifact = exported.exports_dir / "model.int8.pte"
    # a child process of its own: ExecuTorch's threadpool is sized once per process (device/executorch.py)
    record, measured, _ = _run_the_runner_here(artifact, "executorch", tmp_path)
    assert set(record["profile"]["files"]) == {"etdump"}
    assert len(measured.run_ms) == 5 and measured.nodes
    assert any(node.ran_as == "int8" for node in measured.nodes)  # XNNPACK's QS8 convolutions, named in the ETDump


@pytest.mark.slow
@pytest.mark.board
def test_inspect_on_the_x86_board_returns_the_profile(exported, x86_target, ssh_board, tmp_path):
    url, _ = x86_target
    report = tmp_path / "inspect.json"
    args = ["inspect", str(exported.path), "int8", "--target", url, "--ssh-config", str(ssh_board.config_path), "--json", str(report)]
    result = CliRunner().invoke(cli, [*args, "--max-images", "8", "--runs", "5", "--warmup", "1", "--no-search-ranking"])
    assert result.exit_code == 0, result.output
    (inspected,) = json.loads(report.read_text())["results"]
    profile = inspected["profile"]
    assert profile["source"] == "onnxruntime enable_profiling, on the target" and profile["runs"] == 5 and profile["total_ms"] > 0
    assert profile["settings"]["target"].startswith(url.split("/tmp")[0]) and any(url.split("/tmp")[0] in n for n in profile["notes"])
    ran = [node for node in profile["nodes"] if node["layer"] == "layer1.0.conv1"]
    assert ran and ran[0]["ran_as"] == "int8"  # the int8 kernel, tied back to its module, as on the host
    assert inspected["numerics"]["layers"]  # the numerics are still taken here


@pytest.mark.slow
@pytest.mark.board
def test_inspect_an_ir_on_the_x86_board_with_openvino_counters(exported_ir, x86_target, ssh_board, tmp_path):
    url, options = x86_target
    # the shared venv has ONNX Runtime only: one line naming the setup that adds openvino, before anything is sent
    args = ["inspect", str(exported_ir.path), "openvino-int8", "--no-numerics", "--target", url, "--ssh-config", str(ssh_board.config_path)]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2 and "Traceback" not in refused.output, refused.output
    assert "no openvino" in refused.output and "--runtime openvino" in refused.output
    url = f"{ssh_board.url}{tmp_path}/openvino-cache"  # a venv of this test's own, with openvino
    setup_target(url, ["ort-cpu", "openvino"], from_host=True, progress=False, options=options)
    result = inspect(exported_ir, "openvino-int8", target=url, target_options=options, **FAST)
    profile = result.profile
    assert profile is not None and profile.source == "openvino PERF_COUNT (get_profiling_info), on the target"
    assert profile.runs == FAST["runs"] and profile.total_ms > 0 and profile.settings["target"].startswith(url.split("/tmp")[0])
    assert profile.settings["inference_precision_hint"] == "f32"  # the precision decided for the target's CPU, as bench's
    int8 = [node for node in profile.nodes if node.layer and node.ran_as == "int8"]
    assert int8 and all(node.kernel for node in profile.nodes)  # the device's kernels, tied back to the IR's layers


@pytest.mark.slow
@pytest.mark.timeout(900)  # emulated arm64: every model run takes seconds
@pytest.mark.board
def test_inspect_profile_on_the_emulated_arm64_board(exported, arm64_target):
    url, options = arm64_target
    result = inspect(exported, "int8", target=url, target_options=options, **FAST)
    profile = result.profile
    assert profile is not None and profile.total_ms > 0 and profile.settings["target"].startswith(url)
    assert "aarch64" in profile.settings["target"] and any("emulated" in note for note in profile.notes)
    convolutions = [node for node in profile.nodes if node.layer == "layer1.0.conv1"]
    assert convolutions and convolutions[0].ran_as == "int8"  # ORT's arm64 int8 kernel, read from its own trace
    assert np.isfinite(profile.total_ms)
