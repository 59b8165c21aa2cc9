"""LiteRT and ncnn on a target: `target setup --runtime litert,ncnn` installs their wheels there (from this machine's
downloads), and bench measures .tflite and ncnn files there through the rig's real sshd, with parity against
PyTorch from the logits the device returned."""

from __future__ import annotations

import pytest

from edgekit.benchmarking import bench
from edgekit.exporting import export
from edgekit.targets import TargetOptions
from edgekit.targets.setup import setup_target

pytest.importorskip("ai_edge_litert")
pytest.importorskip("ncnn")


@pytest.fixture(scope="module")
def exported(copy_trained_run):
    run = copy_trained_run("target-edge", name="photos")
    export(run, formats="litert,ncnn", quantize="none", max_parity_images=12)
    return run


@pytest.mark.slow
@pytest.mark.board
def test_litert_and_ncnn_files_are_benched_on_the_board(exported, ssh_board, photo_folders, module_tmp):
    url = f"{ssh_board.url}{module_tmp.mktemp('edge-cache')}/cache"
    options = TargetOptions(ssh_config=ssh_board.config_path)
    setup = setup_target(url, ["litert", "ncnn"], from_host=True, progress=False, options=options)
    assert setup.installed.get("ai_edge_litert") and setup.installed.get("ncnn"), setup.installed
    files = [exported.exports_dir / "model.tflite", exported.exports_dir / "model.ncnn.param"]
    result = bench(
        files,
        data=photo_folders[1],
        max_images=12,
        warmup=1,
        iterations=3,
        batch_sizes=(1,),
        threads=1,
        save=False,
        target=url,
        target_options=options,
    )
    rows = {m.runtime: m for m in result.measurements}
    assert set(rows) == {"litert", "ncnn"} and result.target is not None and result.target.transport == "ssh"
    for row in rows.values():
        assert row.runtime_info["ran_on"] == "target" and row.p50_ms > 0
        assert row.parity is not None and row.parity.n_images == 12 and row.parity.max_abs_diff < 1e-3  # fp32 there
    assert result.target.runtimes.get("ai_edge_litert") and result.target.runtimes.get("ncnn")


@pytest.mark.slow
@pytest.mark.timeout(1200)  # emulated arm64: the wheels install and every run is slow
@pytest.mark.board
def test_litert_and_ncnn_run_on_the_emulated_arm64_board(exported, arm64_board, photo_folders):
    options = TargetOptions(ssh_config=arm64_board.config_path)
    setup_target(arm64_board.url, ["ort-cpu", "litert", "ncnn"], from_host=True, progress=False, options=options)
    files = [exported.exports_dir / "model.tflite", exported.exports_dir / "model.ncnn.param"]
    result = bench(
        files,
        data=photo_folders[1],
        max_images=6,
        warmup=0,
        iterations=1,
        batch_sizes=(1,),
        threads=1,
        save=False,
        target=arm64_board.url,
        target_options=options,
    )
    assert result.target is not None and (result.target.arch, result.target.emulated) == ("aarch64", True)
    rows = {m.runtime: m for m in result.measurements}
    assert set(rows) == {"litert", "ncnn"}
    for row in rows.values():  # ARM's kernels (XNNPACK, ncnn's NEON) computing the same fp32 function
        assert row.parity is not None and row.parity.n_images == 6 and row.parity.top1_agreement == 1.0 and row.parity.max_abs_diff < 1e-2
    print({name: row.parity.max_abs_diff for name, row in rows.items()})
