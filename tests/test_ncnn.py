"""ncnn: .ncnn.param + .ncnn.bin export (fp32, fp16 weights) of the trained test run with parity, the runtime (labels
from the side file, the batch loop said in bench's notes), damaged files, side files from another hand, ops pnnx left
unconverted, nothing written into the working directory, and the missing extra.

Needs the ncnn extra; skipped where it is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("pnnx")
pytest.importorskip("ncnn")

from edgekit import runtimes  # noqa: E402
from edgekit.cli import cli as main  # noqa: E402
from edgekit.errors import ExportError, ModelError  # noqa: E402
from edgekit.runtimes.ncnn import LOOP_NOTE, read_side_file, side_file_path  # noqa: E402

FAST = {"warmup": 1, "iterations": 3, "threads": 1, "save": False}


@pytest.fixture(scope="module")
def nc_run(copy_trained_run, module_tmp):
    """A private copy of the trained run exported to ncnn-fp32 and ncnn-fp16, from an empty working directory."""
    from edgekit.exporting import export

    run = copy_trained_run("ncnn")
    cwd = module_tmp.mktemp("cwd")
    before = os.getcwd()
    os.chdir(cwd)
    try:
        result = export(run, formats="ncnn", quantize="none,fp16")
    finally:
        os.chdir(before)
    return run, result, cwd


@pytest.mark.slow
def test_export_writes_the_pairs_with_parity_and_nothing_in_the_cwd(nc_run):
    run, result, cwd = nc_run
    assert list(cwd.iterdir()) == []  # pnnx's trace and side files stay in the export's private work folder
    by_name = {v.variant: v for v in result.variants}
    assert list(by_name) == ["ncnn-fp32", "ncnn-fp16"]
    for name, stem in (("ncnn-fp32", "model"), ("ncnn-fp16", "model.fp16")):
        variant = by_name[name]
        files = [run.exports_dir / f"{stem}.ncnn.param", run.exports_dir / f"{stem}.ncnn.bin", run.exports_dir / f"{stem}.ncnn.param.json"]
        assert variant.file_name == files[0].name and all(f.is_file() for f in files)
        assert variant.size_bytes == sum(f.stat().st_size for f in files)
        assert (run.exports_dir / f"{name}.parity.json").is_file() and variant.facts["blobs"] == "in0 -> out0"
    fp32, fp16 = by_name["ncnn-fp32"], by_name["ncnn-fp16"]
    assert fp32.passed, fp32.failures
    assert fp32.parity.metrics.data_source.kind == "images"
    assert fp32.parity.metrics.top1_agreement == 1.0 and fp32.parity.metrics.max_rel_diff < 1e-4
    assert fp16.passed, fp16.failures
    assert (run.exports_dir / "model.fp16.ncnn.bin").stat().st_size < 0.6 * (run.exports_dir / "model.ncnn.bin").stat().st_size
    side = json.loads((run.exports_dir / "model.fp16.ncnn.param.json").read_text())
    assert side["model"]["weights"] == "fp16" and side["model"]["input"] == "in0"


@pytest.mark.slow
def test_pair_loads_with_labels_and_loops_over_a_batch(nc_run):
    run, _, _ = nc_run
    session = runtimes.load(run.exports_dir / "model.ncnn.param", threads=1)
    assert session.runtime == "ncnn" and session.info["vulkan"] == "off" and session.info["fp16_storage_and_arithmetic"] == "off"
    assert session.labels == list(run.card.class_names) and session.preprocessing == run.card.preprocessing
    assert session.notes == [LOOP_NOTE]
    batch = session.example_batch(3)
    logits = session.run(batch)
    assert logits.shape == (3, run.card.num_classes) and np.allclose(session.run(batch[1:2]), logits[1:2], atol=1e-5)
    fp16 = runtimes.load(run.exports_dir / "model.fp16.ncnn.param", threads=1)
    assert fp16.info["fp16_storage_and_arithmetic"] == "on"


@pytest.mark.slow
def test_bench_auto_has_ncnn_rows_and_says_it_loops(nc_run, photo_folders):
    from edgekit.benchmarking import bench

    run, _, _ = nc_run
    result = bench(run.path, runtimes="auto", batch_sizes=(1, 2), data=photo_folders[1], **FAST)
    rows = [m for m in result.measurements if m.runtime == "ncnn"]
    assert {m.variant for m in rows} == {"ncnn-fp32", "ncnn-fp16"}, result.skipped
    assert all(LOOP_NOTE in m.notes for m in rows) and all(m.top1 is not None for m in rows)


def _copy_pair(run, tmp_path, stem="model"):
    for suffix in (".ncnn.param", ".ncnn.bin", ".ncnn.param.json"):
        (tmp_path / f"model{suffix}").write_bytes((run.exports_dir / f"{stem}{suffix}").read_bytes())
    return tmp_path / "model.ncnn.param"


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["param truncated", "param garbage", "bin truncated", "bin flipped", "bin missing"])
def test_damaged_pair_is_refused_in_one_line(nc_run, photo_folders, tmp_path, damage):
    run, _, _ = nc_run
    param = _copy_pair(run, tmp_path)
    weights = tmp_path / "model.ncnn.bin"
    if damage == "param truncated":
        param.write_text(param.read_text()[: len(param.read_text()) // 2])
    elif damage == "param garbage":
        param.write_text("hello\nworld\n")
    elif damage == "bin truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "bin flipped":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        weights.unlink()
    with pytest.raises(ModelError) as info:
        runtimes.load(param)
    assert "\n" not in str(info.value) and ("re-export" in str(info.value))
    image = next(photo_folders[1].rglob("*.jpg"))
    result = CliRunner().invoke(main, ["predict", str(param), str(image)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_param_without_side_file_is_refused_before_ncnn_parses_it(nc_run, tmp_path, damage):
    run, _, _ = nc_run
    param = _copy_pair(run, tmp_path)
    side_file_path(param).unlink()
    text = param.read_text()
    param.write_text(text[: len(text) // 2] + "\nConvolution" if damage == "truncated" else "7767517\nnot a header at all\n")
    with pytest.raises(ModelError, match="is not an ncnn .param"):
        runtimes.load(param)


@pytest.mark.slow
def test_a_bare_pair_runs_without_labels(nc_run, tmp_path):
    run, _, _ = nc_run
    param = _copy_pair(run, tmp_path)
    side_file_path(param).unlink()
    metadata, facts = read_side_file(param)
    assert metadata.labels is None and facts == {}
    session = runtimes.load(param, threads=1)
    crop = run.card.preprocessing.crop
    assert session.run(np.zeros((1, 3, crop, crop), np.float32)).shape == (1, run.card.num_classes)


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["metadata"].update({"edgekit.labels": json.dumps({"not": "a list"})}), "edgekit.labels"),
        (lambda d: d["metadata"].update({"edgekit.labels": ["a", "b", "c"]}), "strings to strings"),
        (lambda d: d.update({"loader": "os.system('echo hi')"}), "unknown key 'loader'"),
        (lambda d: d["model"].update({"path": "/etc/passwd"}), "malformed 'model'"),
        (lambda d: d["model"].update({"weights": "int4"}), "weights must be one of"),
        (lambda d: d.update({"edgekit_side_file": 99}), "not an edgekit side file"),
    ],
)
def test_side_file_from_another_hand_is_checked_like_onnx_metadata(nc_run, tmp_path, change, message):
    run, _, _ = nc_run
    param = _copy_pair(run, tmp_path)
    side = side_file_path(param)
    data = json.loads(side.read_text())
    change(data)
    side.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=message):
        runtimes.load(param)


@pytest.mark.slow
def test_the_app_snippet_runs_as_is(nc_run):
    from edgekit.runtimes.tuning import Example, Setting

    run, _, _ = nc_run
    crop = run.card.preprocessing.crop
    code = runtimes.get_runtime("ncnn").app_code("model.ncnn.param", Setting(1, {}, "1 thread"), Example((2, 3, crop, crop)))
    assert "net.opt.num_threads = 1;" in code.cpp and 'net.load_model("model.ncnn.bin");' in code.cpp
    done = subprocess.run(
        [sys.executable, "-c", code.python + "\nprint(logits.shape)\n"], cwd=run.exports_dir, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == f"(2, {run.card.num_classes})"


def test_ops_pnnx_could_not_map_are_refused(tmp_path):
    from edgekit.exporting.ncnn import _checked_io

    param = tmp_path / "model.ncnn.param"
    param.write_text("7767517\n3 3\nInput in0 0 1 in0\ntorch.gt gt_0 1 1 in0 1\nInnerProduct fc 1 1 1 out0 0=3\n", encoding="utf-8")
    (tmp_path / "model.ncnn.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ExportError, match="pnnx left ops ncnn cannot run: torch.gt"):
        _checked_io(param, "ignore torch.gt torch.gt_0 param ...")
    with pytest.raises(ModelError, match=r"holds torch ops ncnn cannot run \(torch.gt\)"):
        read_side_file(param)


def test_int8_is_refused_in_one_line_naming_why(run_copy):
    result = CliRunner().invoke(main, ["export", str(run_copy.path), "--format", "ncnn", "--quantize", "int8"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "no int8 route from pip" in result.output


def test_missing_extra_is_one_line_exit_2(run_copy, monkeypatch):
    from edgekit.exporting import export

    for name in [m for m in sys.modules if m.split(".")[0] in ("ncnn", "pnnx")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "ncnn", None)
    monkeypatch.setitem(sys.modules, "pnnx", None)
    with pytest.raises(ExportError, match=r"pip install 'edgekit\[ncnn\]'"):
        export(run_copy, formats="ncnn")
    result = CliRunner().invoke(main, ["export", str(run_copy.path), "--format", "ncnn"])
    assert result.exit_code == 2
    assert "pip install 'edgekit[ncnn]'" in result.output and len(result.output.strip().splitlines()) == 1
    assert "pip install 'edgekit[ncnn]'" in runtimes.get_runtime("ncnn").available()[1]


def test_format_row_names_and_files():
    from edgekit.formats import find_format, get_format
    from edgekit.variants import Variant

    fmt = get_format("ncnn")
    assert [Variant.of(fmt, q).file_name for q in ("none", "fp16")] == ["model.ncnn.param", "model.fp16.ncnn.param"]
    assert Variant.of_artifact("x/model.fp16.ncnn.param").name == "ncnn-fp16" and find_format("m.ncnn.param") is fmt
    assert [p.name for p in fmt.companions(__import__("pathlib").Path("e/model.fp16.ncnn.param"))] == [
        "model.fp16.ncnn.bin",
        "model.fp16.ncnn.param.json",
    ]
    assert runtimes.auto_runtime("model.ncnn.param") == "ncnn"
