"""`edgekit inspect`: per-layer numerics against PyTorch, per-op profiles, the report and its HTML page in a browser."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sensitive_model import sensitive_setup

from edgekit.cli import cli as main
from edgekit.inspection import InspectResult, inspect, inspect_model
from edgekit.inspection.report import InspectReport
from edgekit.inspection.sources import Images
from edgekit.results import DataSource

FAST = {"warmup": 2, "runs": 8}  # profiles in tests: a few runs are enough to see every node


def _onnx_and_prepared(model, work: Path, example) -> tuple[Path, Path]:
    from edgekit.exporting.onnx import export_onnx
    from edgekit.exporting.quantize import prepare

    base = export_onnx(model, work / "model.onnx", example)
    return base, prepare(base, work / "prepared.onnx")


@pytest.fixture(scope="module")
def sensitive(module_tmp, photo_folders):
    """The model with one sensitive layer (conv3 reads a tensor with one huge channel), its plain int8 ONNX
    (per-tensor uint8 activations, no search) and the held-out crops."""
    from edgekit.exporting.quantize import quantize_static

    work = module_tmp.mktemp("inspect-sensitive")
    model, train_images, val_images = sensitive_setup(photo_folders)
    base, prepared = _onnx_and_prepared(model, work, torch.randn(2, 3, 32, 32))
    int8 = quantize_static(base, work / "model.int8.onnx", [train_images[i : i + 8] for i in range(0, 32, 8)], method="minmax")
    return model, base, prepared, int8, val_images


def test_the_sensitive_layer_is_the_first_diverging_one(sensitive):
    model, base, prepared, int8, val_images = sensitive
    result = inspect_model(model, int8, Images(val_images, val_images, DataSource.images("val")), float_onnx=[base, prepared], **FAST)
    numerics = result.numerics
    by_name = {layer.layer: layer for layer in numerics.layers}
    assert set(by_name) == {"conv1", "conv2", "conv3", "head"}  # named after the modules owning the weights
    assert numerics.first_diverging == "conv3"
    assert numerics.worst_own[0] == "conv3"  # on its own too: its input's per-tensor range is what ruins it
    assert numerics.search_first[0] == "conv3"  # and the search's own score, computed by default, puts it first
    assert by_name["conv3"].precision == "int8" and by_name["conv1"].precision == "fp32"  # first Conv kept float
    assert by_name["conv2"].accumulated.sqnr_db > numerics.threshold_db > by_name["conv3"].accumulated.sqnr_db
    # conv3 is followed by a functional relu: matched through its pre-activation, the graph's Relu applied
    assert "Relu" in by_name["conv3"].reference and "pre-activation" in by_name["conv3"].matched_by
    assert by_name["conv2"].reference == "module conv2 output"
    assert result.profile.total_ms > 0 and any(node.ran_as == "int8" for node in result.profile.nodes)


def test_search_ranking_scores_the_sensitive_layer_as_the_search_would(sensitive):
    model, base, prepared, int8, val_images = sensitive
    images = Images(val_images, val_images, DataSource.images("val"))
    # no float graphs given: exported again here, and the exporter names the nodes as it did for the int8 file
    result = inspect_model(model, int8, images, profile=False)
    scores = {layer.layer: layer.search_error for layer in result.numerics.layers if layer.search_error is not None}
    assert set(scores) == {"conv2", "conv3"}  # the quantized layers
    assert min(scores, key=scores.get) == "conv3"  # the layer whose float version helps most: the search's first pick
    assert result.numerics.search_first == ["conv3", "conv2"]
    skipped = inspect_model(model, int8, images, profile=False, search_ranking=False).numerics
    assert skipped.search_first == [] and all(layer.search_error is None for layer in skipped.layers)


@pytest.fixture(scope="module")
def float_conv_variant(trained_run, module_tmp, photo_folders):
    """The trained ResNet's int8 with one mid-network Conv (layer2.1.conv2) kept in float, as the search keeps layers."""
    from edgekit.data import load_batch
    from edgekit.exporting.quantize import load_model, quantize_static

    work = module_tmp.mktemp("inspect-float-conv")
    model = trained_run.build_model()
    base, prepared = _onnx_and_prepared(model, work, torch.randn(2, 3, 48, 48))
    node = next(n.name for n in load_model(prepared).graph.node if n.op_type == "Conv" and n.input[1] == "layer2.1.conv2.weight")
    train = sorted(photo_folders[0].rglob("*.jpg"))[:24]
    calibration = load_batch(train, trained_run.card.preprocessing)
    int8 = quantize_static(base, work / "model.int8.onnx", [calibration[i : i + 8] for i in range(0, 24, 8)], exclude=[node])
    val = load_batch(sorted(photo_folders[1].rglob("*.jpg")), trained_run.card.preprocessing)
    return model, base, prepared, int8, Images(val, val, DataSource.images(photo_folders[1]))


def test_a_conv_kept_in_float_is_shown_running_float_with_the_reorders_around_it(float_conv_variant):
    model, base, prepared, int8, images = float_conv_variant
    result = inspect_model(model, int8, images, float_onnx=[base, prepared], numerics=False, **FAST)
    profile = result.profile
    ran = [node for node in profile.nodes if node.layer == "layer2.1.conv2"]
    assert ran and ran[0].ran_as == "fp32" and ran[0].op_type in ("Conv", "FusedConv")
    flag = next(f for f in profile.flags if f.kind == "float layer in an int8 graph" and f.layer == "layer2.1.conv2")
    assert "ReorderInput" in flag.message and "ReorderOutput" in flag.message  # ORT's NCHWc layout around a float conv
    # the Conv before it lost its output QuantizeLinear (its reader is float), so ORT cannot fuse it into QLinearConv
    meant = [f for f in profile.flags if f.kind == "meant int8, ran float"]
    assert [f.layer for f in meant] == ["layer2.1.conv1"]
    assert all(node.ran_as == "int8" for node in profile.nodes if node.op_type == "QLinearConv")


def test_numerics_of_the_float_conv_variant_show_it_in_float(float_conv_variant):
    model, base, prepared, int8, images = float_conv_variant
    numerics = inspect_model(model, int8, images, float_onnx=[base, prepared], profile=False).numerics
    by_name = {layer.layer: layer for layer in numerics.layers}
    assert by_name["layer2.1.conv2"].precision == "fp32" and by_name["layer2.1.conv2"].own is None
    assert by_name["layer2.1.conv1"].precision == "int8" and by_name["layer2.1.conv1"].own is not None


@pytest.fixture(scope="module")
def exported_run(copy_trained_run):
    """A copy of the trained run (ResNet-18, 48 px, real photos) with fp32 and plain int8 ONNX exports."""
    from edgekit.exporting import export

    run = copy_trained_run("inspect")
    export(run, formats="onnx", quantize="none,int8", calib_size=30, accuracy_aware=False, speed_check=False)
    return run


def test_numerics_on_the_trained_run_tie_every_layer_to_a_module(exported_run):
    result = inspect(exported_run, "int8", **FAST)
    numerics = result.numerics
    assert numerics.data_source.kind == "images" and numerics.images == 24
    assert len(numerics.layers) == 21  # 20 convolutions and the classifier
    assert all(layer.reference.startswith("module ") for layer in numerics.layers)  # none fell back to the ONNX graph
    assert all("checked by value" in layer.matched_by for layer in numerics.layers)
    # a module called twice per block (ResNet's relu) is told apart by its call
    assert any("call 1 of 2" in layer.reference for layer in numerics.layers)
    int8_layers = [layer for layer in numerics.layers if layer.precision == "int8"]
    assert int8_layers and all(layer.own is not None for layer in int8_layers)
    # accumulated error only grows along the depth on average, and each layer alone adds less than everything before it
    assert np.mean([layer.own.sqnr_db - layer.accumulated.sqnr_db for layer in int8_layers[3:]]) > 0
    assert numerics.logits.cosine > 0.99 and len(numerics.worst) == 5
    fp32 = inspect(exported_run, "fp32", profile=False).numerics
    assert min(layer.accumulated.sqnr_db for layer in fp32.layers) > fp32.threshold_db == 60.0
    assert fp32.first_diverging is None


def test_json_has_the_documented_fields_and_round_trips(exported_run, tmp_path):
    result = inspect(exported_run, "int8", **FAST)
    data = json.loads(InspectReport(results=[result]).to_json(tmp_path / "r.json"))
    first = data["results"][0]
    layer = first["numerics"]["layers"][0]
    assert {"sqnr_db", "cosine", "max_abs_diff"} <= set(layer["accumulated"])
    assert {"layer", "node", "precision", "reference", "matched_by", "own", "accumulated"} <= set(layer)
    assert "first_diverging" in first["numerics"] and first["profile"]["total_ms"] > 0
    assert {"op_types", "nodes", "flags", "unprofiled_p50_ms"} <= set(first["profile"])
    assert data["schema_version"] == InspectReport.SCHEMA_VERSION
    assert InspectReport.from_json(tmp_path / "r.json").results[0].numerics == result.numerics
    assert InspectResult.from_json(result.to_json()).profile == result.profile


@pytest.fixture(scope="module")
def cli_reports(exported_run, module_tmp):
    out = module_tmp.mktemp("inspect-cli")
    paths = {kind: out / f"report.{kind}" for kind in ("json", "md", "html")}
    flags = [f"--{kind}={path}" for kind, path in paths.items()]
    result = CliRunner().invoke(main, ["inspect", str(exported_run.path), "int8", "fp32", "--runs", "8", "--warmup", "2", *flags])
    return result, paths


def test_cli_end_to_end_writes_json_markdown_and_html(cli_reports):
    result, paths = cli_reports
    assert result.exit_code == 0, result.output
    assert "SQNR dB" in result.output and "time per op type" in result.output and "per inference as profiled" in result.output
    assert "the accuracy search would return to float first: " in result.output  # int8 only, by default
    report = json.loads(paths["json"].read_text())
    assert [r["variant"] for r in report["results"]] == ["int8", "fp32"]
    markdown = paths["md"].read_text()
    assert "## int8" in markdown and "| layer1.0.conv1 |" in markdown and "ms per inference as profiled" in markdown
    page = paths["html"].read_text()
    assert page.count("<img ") == 2 and 'id="sqnr-chart"' in page and 'id="time-chart"' in page


def test_html_page_shows_both_charts_in_a_real_browser(cli_reports, tmp_path):
    from PIL import Image

    _, paths = cli_reports
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("EDGEKIT_REQUIRE_BROWSER") == "1":
            pytest.fail("EDGEKIT_REQUIRE_BROWSER=1 but no chromium on PATH")
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); set EDGEKIT_REQUIRE_BROWSER=1 to fail instead")
    shot = tmp_path / "page.png"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
               "--window-size=1200,1600", paths["html"].resolve().as_uri()]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    boxes = _chart_frames(pixels)
    assert len(boxes) == 2, f"expected the frames of two charts, found rows {boxes}"
    (top1, bottom1), (top2, bottom2) = boxes
    assert bottom1 - top1 > 200 and bottom2 - top2 > 100 and bottom1 < top2  # the SQNR chart above the time chart
    colourful = (np.abs(pixels[..., 0] - pixels[..., 1]) + np.abs(pixels[..., 1] - pixels[..., 2])) > 80
    assert colourful[top1:bottom1].sum() > 1000  # the SQNR lines and markers
    assert colourful[top2:bottom2].sum() > 20000  # the filled bars


def _chart_frames(pixels: np.ndarray) -> list[tuple[int, int]]:
    """(top, bottom) rows of each matplotlib axes frame in a screenshot: rows holding a run of at least 400 dark pixels
    (the frame's top and bottom edges; no text or table border on the page is that long and dark), paired up."""
    dark = pixels.max(axis=2) < 90
    padded = np.pad(dark.astype(np.int8), ((0, 0), (1, 1)))
    edges = np.diff(padded, axis=1)
    longest = [int((np.flatnonzero(row == -1) - np.flatnonzero(row == 1)).max(initial=0)) for row in edges]
    rows = [index for index, run in enumerate(longest) if run >= 400]
    lines = [group[0] for group in np.split(np.array(rows), np.flatnonzero(np.diff(rows) > 3) + 1)] if rows else []
    return [(int(lines[i]), int(lines[i + 1])) for i in range(0, len(lines) - 1, 2)]


@pytest.mark.parametrize(
    "arguments, words",
    [
        (["int9"], "int9"),
        (["model.tflite"], "model.tflite"),
        (["int8-dynamic"], "no int8-dynamic variant"),
    ],
)
def test_bad_input_is_one_line_exit_2(exported_run, arguments, words):
    result = CliRunner().invoke(main, ["inspect", str(exported_run.path), *arguments])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_file_that_is_not_a_model_and_a_folder_without_images(exported_run, tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_text("not a model")
    result = CliRunner().invoke(main, ["inspect", str(exported_run.path), str(bogus)])
    assert result.exit_code == 2 and str(bogus) in result.output and "Traceback" not in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["inspect", str(exported_run.path), "int8", "--data", str(empty)])
    assert result.exit_code == 2 and "no images" in result.output and str(empty) in result.output


def test_openvino_int8_numerics_and_profile(exported_run, copy_trained_run):
    pytest.importorskip("openvino")
    from edgekit.exporting import export

    run = copy_trained_run("inspect-openvino")
    export(run, formats="openvino", quantize="int8", calib_size=30, accuracy_aware=False, speed_check=False)
    result = inspect(run, "openvino-int8", **FAST)
    numerics = result.numerics
    assert result.runtime == "openvino" and len(numerics.layers) == 21
    assert sum(layer.precision == "int8" for layer in numerics.layers) >= 15  # NNCF quantizes the convolutions
    assert numerics.logits.cosine > 0.99 and numerics.first_diverging in {layer.layer for layer in numerics.layers} | {None}
    assert len(numerics.search_first) == 5 and all(layer.search_error is not None for layer in numerics.layers if layer.precision == "int8")
    # own error: every int8 layer fed from float; a layer deep in the network adds less on its own than it has
    # accumulated by then (the logits carry every layer's error, the last layer's own only its own)
    int8 = [layer for layer in numerics.layers if layer.precision == "int8"]
    assert all(layer.own is not None for layer in int8) and len(numerics.worst_own) == 5
    assert int8[-1].own.sqnr_db > int8[-1].accumulated.sqnr_db  # type: ignore[union-attr]
    profile = result.profile
    assert profile.source.startswith("openvino") and profile.total_ms > 0
    convolutions = [node for node in profile.nodes if node.op_type == "Convolution"]
    assert convolutions and sum(node.ran_as == "int8" for node in convolutions) >= len(convolutions) - 2
    assert all(node.kernel for node in convolutions)  # the exec type, e.g. jit_avx512_I8 / brgconv_..._I8
    assert any(node.layer == "layer1.0.conv1" for node in convolutions)  # friendly names map back to the modules


def test_bench_warning_for_a_slow_int8_ends_with_the_inspect_command(tmp_path):
    from edgekit.benchmarking.results import Measurement
    from edgekit.benchmarking.stats import add_ratios

    def measured(variant: str, p50: float) -> Measurement:
        artifact = tmp_path / "runs" / "flowers" / "exports" / ("model.onnx" if variant == "fp32" else f"model.{variant}.onnx")
        return Measurement(model="flowers", artifact=str(artifact), variant=variant, runtime="ort-cpu", batch_size=1, iterations=10,
                           p50_ms=p50, p90_ms=p50, p99_ms=p50, mean_ms=p50, p50_ci_ms=(p50 * 0.95, p50 * 1.05),
                           images_per_second=1000 / p50, peak_rss_mb=1, rss_delta_mb=1, size_bytes=1, ratio_to_fastest=1)  # fmt: skip

    (warning,) = add_ratios([measured("fp32", 2.0), measured("int8", 3.0)])
    assert warning.endswith(f"edgekit inspect {tmp_path / 'runs' / 'flowers'} int8 --data DIR")
    # slow on a target: the command takes the profile there
    (warning,) = add_ratios([measured("fp32", 2.0), measured("int8", 3.0)], target="ssh://pi@raspberrypi.local")
    assert warning.endswith(f"edgekit inspect {tmp_path / 'runs' / 'flowers'} int8 --data DIR --target ssh://pi@raspberrypi.local")


def test_export_message_for_an_int8_past_its_budget_ends_with_the_inspect_command(capsys):
    from types import SimpleNamespace

    from edgekit.cli.export import show_export

    metrics = SimpleNamespace(n_images=24, max_abs_diff=1.0, max_rel_diff=0.1, top1_agreement=0.9, accuracy_drop=0.05, disagreements=0)
    search = SimpleNamespace(within_budget=False, stopped="stopped after 24 layers back in float", kept_float=[], quantized_nodes=20)
    variant = SimpleNamespace(variant="int8", path="runs/flowers/exports/model.int8.onnx", size_bytes=2**20, passed=False,
                              parity=SimpleNamespace(metrics=metrics), int8=SimpleNamespace(search=search), failures=[],
                              warnings=[], notes=[], mobile=None)  # fmt: skip
    result = SimpleNamespace(run_dir="runs/flowers", parity_data=DataSource.images("photos/val"), variants=[variant], target=None)
    show_export(result)
    line = next(line for line in capsys.readouterr().err.splitlines() if "no int8 within the budget" in line)
    assert line.rstrip().endswith("edgekit inspect runs/flowers int8 --data photos/val")


def test_executorch_profile_from_etdump_and_logits(copy_trained_run):
    pytest.importorskip("executorch.devtools")
    from edgekit import runtimes
    from edgekit.exporting import export

    if runtimes.available_runtimes().get("executorch") is not None:
        pytest.skip(f"executorch runtime unavailable: {runtimes.available_runtimes()['executorch']}")
    run = copy_trained_run("inspect-executorch")
    export(run, formats="executorch", quantize="none")
    result = inspect(run, "executorch-fp32", **FAST)
    assert result.numerics.layers == [] and result.numerics.logits.sqnr_db > 60  # per-layer: not available, said so
    assert "ETRecord" in result.numerics.notes[0]
    profile = result.profile
    assert profile.source.startswith("executorch") and profile.total_ms > 0
    convolutions = [node for node in profile.nodes if node.op_type == "Convolution"]
    assert len(convolutions) == 20 and all(node.ran_as == "fp32" and "F32" in node.kernel for node in convolutions)


def test_a_pte_with_one_conv_kept_in_float_shows_that_conv_running_float(copy_trained_run, monkeypatch):
    """XNNPACK's events carry no module names: inspect ties them to the model's convs by order. A program with one
    conv kept in float checks that order: its one F32 convolution event must be the one named after that conv."""
    pytest.importorskip("executorch.devtools")
    from edgekit import runtimes
    from edgekit.exporting import executorch as executorch_export
    from edgekit.exporting import export

    if runtimes.available_runtimes().get("executorch") is not None:
        pytest.skip(f"executorch runtime unavailable: {runtimes.available_runtimes()['executorch']}")
    kept = "layer2.0.conv1"
    monkeypatch.setattr(executorch_export, "search_float_layers", lambda job, variant, record: lambda int8: [kept])
    run = copy_trained_run("inspect-executorch-float-conv")
    export(run, formats="executorch", quantize="int8", calib_size=30, speed_check=False)
    side = json.loads((run.exports_dir / "model.int8.pte.json").read_text())
    assert json.loads(side["metadata"]["edgekit.source"])["quantization"]["float_layers"] == [kept]
    result = inspect(run, "executorch-int8", numerics=False, warmup=1, runs=5)
    tied = {node.layer: node for node in result.profile.nodes if node.layer}
    assert len(tied) == 21 and "fc" in tied  # 20 convolutions and the fully-connected head
    assert tied[kept].ran_as == "fp32" and "F32" in tied[kept].kernel
    assert all(node.ran_as == "int8" for name, node in tied.items() if name != kept)
    flags = {(flag.kind, flag.layer) for flag in result.profile.flags}
    assert ("float layer in an int8 graph", kept) in flags  # by name, as for ONNX and OpenVINO files
    assert not any(kind == "meant int8, ran float" for kind, _ in flags)  # the side file says it is meant float
    assert not any("not tied" in note for note in result.profile.notes)


def test_pt2e_eager_fallback_names_the_sensitive_layer_too(sensitive, photo_folders):
    """ExecuTorch int8's per-layer figures come from the pt2e eager fallback (the .pte's delegate is one call)."""
    pytest.importorskip("torchao")
    from edgekit.inspection.executorch_pt2e import pt2e_layers
    from edgekit.inspection.metrics import first_below
    from edgekit.inspection.ranking import search_first

    model, _, _, _, val_images = sensitive
    _, train_images, _ = sensitive_setup(photo_folders)
    layers, notes = pt2e_layers(model, val_images, [train_images[i : i + 8] for i in range(0, 32, 8)], search_ranking=True)
    assert [layer.layer for layer in layers] == ["conv1", "conv2", "conv3", "head"]
    assert first_below(layers, 20.0) == "conv3"
    # the ExecuTorch search's own score, as its rank_layers gives it: conv3 back in float helps most
    assert all(layer.search_error is not None for layer in layers) and search_first(layers)[0] == "conv3"
    assert "then clamped" in layers[2].reference  # conv3's functional relu, applied to the module's output
    # own error: each layer fed the float twin's tensor; conv1 reads the image either way, conv3's own input
    # quantization is the damage
    own = {layer.layer: layer.own for layer in layers}
    assert all(stats is not None for stats in own.values()) and min(own, key=lambda name: own[name].sqnr_db) == "conv3"  # type: ignore[union-attr]
    assert own["conv1"].sqnr_db == pytest.approx(layers[0].accumulated.sqnr_db, abs=0.1)  # type: ignore[union-attr]
    assert own["head"].sqnr_db > layers[3].accumulated.sqnr_db  # type: ignore[union-attr]
    assert "pt2e eager fallback" in notes[0] and "not the .pte" in notes[0]
