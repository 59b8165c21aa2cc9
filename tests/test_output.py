"""What a CI log shows: every command with its output piped (no terminal, COLUMNS=80) keeps each table cell whole
and every bracket, and says sizes in one unit (MB).

Rich squeezes a table that is wider than its console until cells end in "…", and reads ``[...]`` as markup, so
``pip install 'edgekit[openvino]'`` would lose its extra. Paths with brackets (a run named ``flowers[v2]``)
carry user text through every command's output here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import cli

REPO = Path(__file__).resolve().parents[1]
CUT = "…"  # what rich leaves at the end of a cell it had to squeeze
PIPED = {"COLUMNS": "80"}  # what a CI runner often exports; CliRunner's streams are no terminal either
RUN_NAME = "flowers[v2]"


def _piped(*args):
    return CliRunner(env=PIPED).invoke(cli, [str(arg) for arg in args])


def _whole(output: str) -> str:
    assert CUT not in output, output
    return output


@pytest.fixture(scope="module")
def bracketed_run(copy_trained_run):
    return copy_trained_run("brackets", name=RUN_NAME)


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_commands_help_survives_a_pipe(command):
    result = _piped(command, "--help")
    assert result.exit_code == 0, result.output
    _whole(result.output)


def test_the_demo_help_names_its_extras_with_their_brackets():
    help_text = " ".join(_piped("demo", "--help").output.split())
    assert "edgekit[openvino]" in help_text and "edgekit[executorch]" in help_text


def test_a_piped_bench_keeps_every_column_and_bracket(bracketed_run, photo_folders, tmp_path):
    """A real process with its stdout a pipe: the console decides its width as `make demo | cat` would."""
    report = tmp_path / "bench[1].json"
    args = ["bench", bracketed_run.path, "--runtime", "torch", "--batch-sizes", "1", "--threads", "1", "--warmup", "1"]
    args += ["--iterations", "2", "--data", photo_folders[1], "--json", report, "--no-save"]
    env = {**os.environ, **PIPED, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "edgekit", *map(str, args)], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    output = _whole(done.stdout)
    header = next(line for line in output.splitlines() if "variant" in line and "runtime" in line)
    for column in ("p50 ms (CI)", "p90/p99 ms", "top-1", "top-5", "load/1st ms", "size MB", "RSS MB load/1st/all", "others' CPU"):
        assert column in header, (column, header)
    assert len(header) > 80  # it was not squeezed into the 80 columns COLUMNS asked for
    assert f"wrote {report}" in output


def test_piped_export_parity_and_predict_keep_paths_with_brackets(bracketed_run, photo_folders):
    run = bracketed_run.path
    exported = _piped("export", run, "--format", "onnx", "--quantize", "none", "--max-parity-images", "8")
    assert exported.exit_code == 0, exported.output
    assert f"{run}: parity vs float32 PyTorch" in _whole(exported.output)
    row = next(line for line in exported.output.splitlines() if "model.onnx" in line)
    assert " MB " in row and "MiB" not in row and "pass" in row

    artifact = run / "exports" / "model.onnx"
    checked = _piped("parity", run, artifact, "--data", photo_folders[1], "--max-images", "8")
    assert checked.exit_code == 0, checked.output
    assert f"{artifact} (fp32)" in _whole(checked.output)

    image = next(photo_folders[1].rglob("*.jpg"))
    renamed = run.parent / "photo [1].jpg"
    shutil.copy(image, renamed)
    predicted = _piped("predict", run, renamed, "--top-k", "2")
    assert predicted.exit_code == 0, predicted.output
    assert str(renamed) in _whole(predicted.output)


def test_piped_finetune_names_a_bracketed_run_directory(photo_folders, tmp_path):
    train, val = photo_folders
    out = tmp_path / RUN_NAME
    args = ["--model", "resnet18", "--weights", "none", "--strategy", "head", "--no-cache-features", "--epochs", "1"]
    tuned = _piped("finetune", "--data", train, "--val-data", val, "--out", out, "--image-size", "32", "--batch-size", "16", *args)
    assert tuned.exit_code == 0, tuned.output
    assert f"run written to {out}:" in _whole(tuned.output)


def test_gate_tables_keep_every_cell_and_say_mb(capsys):
    from edgekit.cli.gate import show_gate
    from edgekit.gating.results import Check, Comparison, GateResult

    size = Check(name="int8.size_mb", variant="int8", metric="size_mb", value=13.67, threshold=8, op="<=", status="fail", message="too big")
    agreement = Check(
        name="int8.agreement", variant="int8", metric="agreement", value=0.98, threshold=0.95, op=">=", status="pass", message="ok"
    )
    move = Comparison(
        variant="int8", metric="size_bytes", baseline=3.8e6, current=4.0e6, change=0.05, noise=0.0, worse=True, outside_noise=True
    )
    result = GateResult(
        runtime="ort-cpu",
        variants=[],
        checks=[size, agreement],
        comparisons=[move],
        baseline="runs/main[7]/gate.json",
        passed=False,
        failures=["int8.size_mb: file size 13.67 MB exceeds the maximum 8.00 MB"],
    )
    show_gate(result)
    output = _whole(capsys.readouterr().out)
    assert "13.67 MB" in output and "<= 8.00 MB" in output and "4.00 MB" in output
    assert "vs baseline runs/main[7]/gate.json" in output and "FAIL" in output


def test_the_demo_says_which_pip_install_adds_a_missing_extra(monkeypatch, tmp_path, capsys):
    """Both the library's progress note and the command's summary keep `edgekit[openvino]` (and every other extra) whole."""
    from edgekit import demo, runtimes
    from edgekit.formats import all_formats

    edge = [f for f in all_formats() if f.extra is not None]
    for fmt in edge:
        monkeypatch.setattr(runtimes.get_runtime(fmt.runtime), "available", lambda fmt=fmt: (False, fmt.install_hint))
    _, missing = demo.edge_formats(progress=True)
    err = capsys.readouterr().err
    for extra in ("openvino", "executorch", "litert", "ncnn"):
        assert f"pip install 'edgekit[{extra}]'" in err

    from edgekit.prediction import PredictResult

    summary = demo.DemoResult.model_construct(
        data_dir=str(tmp_path),
        run_dir=str(tmp_path / "run"),
        finetune=type("Tuned", (), {"best_val_accuracy": 0.9})(),
        predictions=PredictResult.model_construct(predictions=[]),
        export=None,
        auto=None,
        edge_targets_missing=missing,
        bench=None,
        gate=None,
    )
    monkeypatch.setattr("edgekit.demo.run_demo", lambda *args, **kwargs: summary)
    shown = _piped("demo", "--out", tmp_path / "out")
    assert shown.exit_code == 0, shown.output
    output = _whole(shown.output)
    for extra in ("openvino", "executorch", "litert", "ncnn"):
        assert f"{extra}: not exported or benched here (pip install 'edgekit[{extra}]')" in output


def test_a_bench_table_wider_than_any_terminal_is_printed_whole(capsys):
    """Every column shown (two models, accuracy, GPU memory): far wider than 80 or 160 columns, and still whole."""
    from edgekit.benchmarking import BenchResult, Measurement
    from edgekit.cli.bench import show_bench

    rows = [
        Measurement(
            model=f"{name}[v2]",
            artifact=f"runs/{name}[v2]/exports/model.int8.onnx",
            variant="int8",
            runtime="ort-cpu",
            batch_size=1,
            iterations=20,
            p50_ms=5.0,
            p90_ms=5.5,
            p99_ms=6.0,
            mean_ms=5.1,
            p50_ci_ms=(4.9, 5.1),
            images_per_second=200.0,
            peak_rss_mb=250.0,
            rss_delta_mb=20.0,
            size_bytes=13_670_000,
            top1=0.947,
            top5=0.99,
            accuracy_images=360,
            ratio_to_fastest=1.0,
            ratio_to_fp32=0.8,
            gpu_memory_mb=512.0,
            contention_share=0.01,
        )
        for name in ("efficientnet_lite0-digits", "mobilenet_v3_large-flowers")
    ]
    result = BenchResult(machine={"cpu": "Intel Xeon [test]", "usable_cores": 2}, settings={"iterations": 20}, measurements=rows)
    result.warnings.append("install the extra with pip install 'edgekit[openvino]'")
    show_bench(result)
    output = _whole(capsys.readouterr().out)
    assert max(len(line) for line in output.splitlines()) > 160
    assert "efficientnet_lite0-digits[v2]" in output and "13.67" in output and "GPU MB" in output
    assert "warning: install the extra with pip install 'edgekit[openvino]'" in output
