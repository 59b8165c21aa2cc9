"""export on a target: every file validated again there, and --quantize auto racing its candidates there, through
the rig's real sshd (an x86 loopback board) and the emulated arm64 board; the card names where it was measured."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgekit.auto import export_auto
from edgekit.card import read_card
from edgekit.cli import cli
from edgekit.device import contention
from edgekit.device.runner import race_blocks
from edgekit.exporting import export
from edgekit.hardware import IsaClass


@pytest.fixture(scope="module")
def run(copy_trained_run):
    return copy_trained_run("target-auto", name="photos")


def test_the_runners_race_keeps_blocks_and_drops_the_clearly_slower():
    """The runner's race job, here: each record gets its block medians by cycle, and a call that loses every block
    to a faster one is dropped after the minimum cycles."""
    import time

    class Opened:
        def __init__(self, seconds):
            self.run = lambda batch: time.sleep(seconds)

    artifact = {"input": {"kind": "float32-nchw", "shape": [3, 4, 4]}, "fixed_batch": None}
    loaded = [(artifact, Opened(s), {"times": {}, "chunks": {}, "remeasured": {}}) for s in (0.0005, 0.004)]
    race_blocks(loaded, {"seconds": 30.0, "batch_size": 1}, contention.Monitor())  # ends once the slow one is out
    fast, slow = (record for _, _, record in loaded)
    assert len(fast["blocks"]) >= 4 and set(fast["times"]) == {"1"}
    assert slow["dropped_after"] is not None and fast["dropped_after"] is None
    assert sorted(slow["times"]["1"])[len(slow["times"]["1"]) // 2] > 3 * sorted(fast["times"]["1"])[len(fast["times"]["1"]) // 2]


@pytest.mark.slow
@pytest.mark.board
def test_auto_on_the_x86_board_races_there_and_the_card_names_it(run, x86_target, ssh_board):
    url, _ = x86_target
    name = url.split("/tmp")[0]  # the target as reports name it (its cache folder aside)
    args = ["export", str(run.path), "--format", "onnx", "--quantize", "auto", "--auto-seconds", "2", "--calib-size", "30"]
    result = CliRunner().invoke(
        cli, [*args, "--max-parity-images", "24", "--target", url, "--ssh-config", str(ssh_board.config_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{") :])
    for variant in data["export"]["variants"]:  # validated here, then there, from the logits the board returned
        assert variant["parity"]["target"] is None and variant["target_parity"]["target"]["transport"] == "ssh"
        assert variant["target_parity"]["metrics"]["n_images"] == 24
    assert data["export"]["target"]["target"] == name
    card = read_card(run.exports_dir)
    assert card is not None and card.measured_on.target == name and card.measured_on.transport == "ssh"
    timed = [c for c in card.candidates if c.calls]
    assert len(timed) >= 2 and all(c.runtime == "ort-cpu" for c in timed)  # raced there: every candidate got blocks
    assert card.measured_on.runtimes.get("onnxruntime")
    assert f"measured on {name}" in (run.exports_dir / "DEPLOY.md").read_text()


@pytest.mark.slow
@pytest.mark.board
def test_an_unreachable_target_ends_export_in_one_line(run):
    result = CliRunner().invoke(
        cli, ["export", str(run.path), "--format", "onnx", "--quantize", "none", "--target", "ssh://nobody@127.0.0.1:1"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "127.0.0.1" in result.output.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # emulated arm64: every model run takes a while
@pytest.mark.board
def test_int8_searched_here_is_validated_again_on_the_emulated_arm64_board(run, arm64_target):
    url, options = arm64_target
    result = export(run, formats="onnx", quantize="none,int8", calib_size=30, max_parity_images=16, target=url, target_options=options)
    int8 = result.get("int8")
    assert int8 is not None and int8.target_parity is not None
    there, here = int8.target_parity, int8.parity
    assert (there.target.arch, there.target.isa, there.target.emulated) == ("aarch64", IsaClass.ARM64.value, True)
    assert there.metrics.n_images == here.metrics.n_images == 16 and there.passed, there.failures
    assert any("re-validated on" in note for note in int8.notes)
    assert there.metrics.top1_agreement >= 0.9 and there.metrics.max_abs_diff < 0.2  # int8 rounding, not a broken file
    fp32 = result.get("fp32")
    assert fp32 is not None and fp32.target_parity is not None and fp32.target_parity.metrics.max_abs_diff < 1e-3
    print(
        f"int8 vs torch here {here.metrics.max_abs_diff:.3g}, on arm64 {there.metrics.max_abs_diff:.3g}; agreement {there.metrics.top1_agreement:.3f}"
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.board
def test_auto_on_the_emulated_arm64_board_records_an_emulated_card(run, arm64_target):
    url, options = arm64_target
    chosen = export_auto(
        run, formats="onnx", quantize="auto", auto_seconds=1, calib_size=30, max_parity_images=8, target=url, target_options=options
    )
    where = chosen.card.measured_on
    assert (where.arch, where.isa, where.emulated) == ("aarch64", IsaClass.ARM64.value, True)
    assert "not evidence" in (run.exports_dir / "DEPLOY.md").read_text()
    assert all(c.runtime == "ort-cpu" for c in chosen.card.candidates if c.calls)
