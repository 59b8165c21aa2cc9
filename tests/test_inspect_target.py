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
from edgekit.targets import TargetOptions, jobs, ship
from edgekit.targets.setup import setup_target

FAST = {"warmup": 1, "runs": 4, "numerics": False}


@pytest.fixture(scope="module")
def exported(copy_trained_run):
    """The trained run with its fp32 and int8 ONNX exports (and the int8 OpenVINO IR, where OpenVINO is installed)."""
    run = copy_trained_run("inspect-target", name="photos")
    export(run, formats="onnx", quantize="none,int8", calib_size=30, speed_check=False)
    return run


@pytest.mark.slow
def test_the_runner_profiles_and_leaves_the_trace_and_graph_for_the_host(exported, tmp_path):
    from edgekit.inspection.profile_ort import read_profile

    artifact = exported.exports_dir / "model.int8.onnx"
    name, data = ship.runner_archive()
    runner = tmp_path / name
    runner.write_bytes(data)
    host = runtimes.load(artifact, "ort-cpu")
    entry = jobs.artifact_entry(0, host, "ort-cpu", 1, {"session_config": {}}, None)
    entry["path"] = str(artifact)
    job = jobs.new_job([entry], timing=False)
    job["profile"] = {"warmup": 1, "runs": 5}
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "job.json").write_text(json.dumps(job))
    done = subprocess.run([sys.executable, "-I", str(runner), str(folder / "job.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (record,) = json.loads((folder / "result.json").read_text())["artifacts"]
    profile = record["profile"]
    assert len(profile["unprofiled_ms"]) == 5 and all(ms > 0 for ms in profile["unprofiled_ms"])
    assert (folder / profile["trace"]).is_file() and (folder / profile["graph"]).is_file()
    import onnx

    measured, names = read_profile(
        artifact, json.loads((folder / profile["trace"]).read_text()), onnx.load(str(folder / profile["graph"])), 5, [], {}
    )
    assert len(measured.run_ms) == 5 and any(node.ran_as == "int8" for node in measured.nodes)
    assert "layer1.0.conv1" in names.values()  # the file's layers, tied to the modules as a local profile ties them


def test_a_target_profile_of_an_ir_is_one_line_before_connecting(exported, tmp_path):
    pytest.importorskip("openvino")
    export(exported, formats="openvino", quantize="none", speed_check=False)
    # a target that does not exist: the runtime is refused before anything is sent
    result = CliRunner().invoke(
        cli, ["inspect", str(exported.path), "openvino-fp32", "--no-numerics", "--target", "ssh://nobody@203.0.113.1"]
    )
    assert result.exit_code == 2 and "ONNX Runtime's for now" in result.output and "Traceback" not in result.output


@pytest.fixture(scope="module")
def x86_target(ssh_board, module_tmp):
    url = f"{ssh_board.url}{module_tmp.mktemp('inspect-x86-cache')}/cache"
    options = TargetOptions(ssh_config=ssh_board.config_path)
    setup_target(url, ["ort-cpu"], from_host=True, progress=False, options=options)
    return url, options


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
    assert profile["source"].endswith("(on the target)") and profile["runs"] == 5 and profile["total_ms"] > 0
    assert profile["settings"]["target"].startswith(url.split("/tmp")[0]) and any(url.split("/tmp")[0] in n for n in profile["notes"])
    ran = [node for node in profile["nodes"] if node["layer"] == "layer1.0.conv1"]
    assert ran and ran[0]["ran_as"] == "int8"  # the int8 kernel, tied back to its module, as on the host
    assert inspected["numerics"]["layers"]  # the numerics are still taken here


@pytest.fixture(scope="module")
def arm64_target(arm64_board):
    options = TargetOptions(ssh_config=arm64_board.config_path)
    setup_target(arm64_board.url, ["ort-cpu"], from_host=True, progress=False, options=options)
    return arm64_board.url, options


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
