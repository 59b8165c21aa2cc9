"""LiteRT: .tflite export (fp32, fp16 weights, accuracy-aware int8) of the trained test run with parity, the runtime
(labels from the flatbuffer, any batch on a batch-1 file), damaged files, metadata from another hand, the search on a
model with one sensitive layer, bench and auto with LiteRT rows, and the missing extra.

Needs the litert extra; skipped where it is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

from edgekit import runtimes  # noqa: E402
from edgekit.cli import cli as main  # noqa: E402
from edgekit.errors import ExportError, ModelError  # noqa: E402
from edgekit.exporting.litert import with_metadata  # noqa: E402

FAST = {"warmup": 1, "iterations": 3, "threads": 1, "save": False}


@pytest.fixture(scope="module")
def lt_run(copy_trained_run):
    """A private copy of the trained run exported to litert-fp32, litert-fp16 and litert-int8 (the search on)."""
    from edgekit.exporting import export

    run = copy_trained_run("litert")
    return run, export(run, formats="litert", quantize="none,fp16,int8", calib_size=30, max_fallback_steps=6)


@pytest.mark.timeout(900)  # a conversion and an int8 search: minutes on 2 busy cores
@pytest.mark.slow
def test_export_writes_tflite_variants_with_parity(lt_run):
    run, result = lt_run
    by_name = {v.variant: v for v in result.variants}
    assert list(by_name) == ["litert-fp32", "litert-fp16", "litert-int8"]
    for name, file_name in (("litert-fp32", "model.tflite"), ("litert-fp16", "model.fp16.tflite"), ("litert-int8", "model.int8.tflite")):
        assert by_name[name].file_name == file_name and (run.exports_dir / file_name).is_file()
        assert (run.exports_dir / f"{name}.parity.json").is_file()
        assert by_name[name].facts["batch"] == "exported at 1; the runtime resizes"
    fp32, fp16, int8 = by_name["litert-fp32"], by_name["litert-fp16"], by_name["litert-int8"]
    assert fp32.passed, fp32.failures
    assert fp32.parity.metrics.data_source.kind == "images"  # real photos, a trained model
    assert fp32.parity.metrics.top1_agreement == 1.0 and fp32.parity.metrics.max_rel_diff < 1e-4
    assert fp16.passed, fp16.failures
    assert fp16.size_bytes < 0.6 * fp32.size_bytes
    facts = int8.int8
    assert facts.calibration_images == 30 and facts.quantizer.startswith("ai-edge-quantizer")
    search = facts.search  # recorded like ONNX Runtime's and ExecuTorch's
    assert search is not None and search.steps[0].action == "quantize"
    assert search.steps[0].kept_float == ["conv1", "fc"]  # the first conv and the classifier start in float
    assert search.kept_float == facts.kept_float and set(facts.kept_float) <= set(int8.facts["float_layers"])
    assert search.within_budget == search.steps[search.kept_step].within_budget and "\n" not in search.stopped
    assert search.calibration["images"] == 30 and search.calibration["bias_corrected_layers"] > 0
    assert int8.passed == search.within_budget or not int8.passed
    assert int8.size_bytes < fp32.size_bytes / 2


@pytest.mark.slow
def test_tflite_loads_with_its_labels_and_runs_any_batch(lt_run):
    run, _ = lt_run
    session = runtimes.load(run.exports_dir / "model.tflite", threads=1)
    assert session.runtime == "litert" and session.info["threads"] == 1 and session.info["digest"] == "checked"
    assert session.labels == list(run.card.class_names) and session.preprocessing == run.card.preprocessing
    assert session.fixed_batch is None and session.input_shape == (3, run.card.preprocessing.crop, run.card.preprocessing.crop)
    batch = session.example_batch(5)
    logits = session.run(batch)
    assert logits.shape == (5, run.card.num_classes)
    assert np.allclose(session.run(batch[2:3]), logits[2:3], atol=1e-5)  # resized back to 1, same numbers


@pytest.mark.slow
def test_predict_and_parity_on_tflite(lt_run, photo_folders):
    from edgekit.parity_check import parity

    run, _ = lt_run
    image = next(photo_folders[1].rglob("*.jpg"))
    predicted = CliRunner().invoke(main, ["predict", str(run.exports_dir / "model.int8.tflite"), str(image), "--json"])
    assert predicted.exit_code == 0, predicted.output
    assert any(label in predicted.output for label in run.card.class_names)
    again = parity(run, run.exports_dir / "model.tflite")
    assert again.variant == "litert-fp32" and again.passed


def _copy(run, tmp_path, name="model.tflite"):
    target = tmp_path / "model.tflite"
    target.write_bytes((run.exports_dir / name).read_bytes())
    return target


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "flipped", "garbage", "empty"])
def test_damaged_tflite_is_refused_in_one_line(lt_run, photo_folders, tmp_path, damage):
    run, _ = lt_run
    path = _copy(run, tmp_path)
    data = path.read_bytes()
    changed = {
        "truncated": data[: len(data) // 3],
        "flipped": data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :],  # a weight byte
        "garbage": b"not a model" * 100,
        "empty": b"",
    }[damage]
    path.write_bytes(changed)
    with pytest.raises(ModelError, match="re-export it") as info:
        runtimes.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    image = next(photo_folders[1].rglob("*.jpg"))
    result = CliRunner().invoke(main, ["predict", str(path), str(image)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "model.tflite" in result.output, result.output


@pytest.mark.slow
@pytest.mark.parametrize(
    "props, message",
    [
        ({"edgekit.labels": json.dumps({"not": "a list"})}, "edgekit.labels"),
        ({"edgekit.preprocessing": json.dumps({"resize": 10**8, "crop": 10**8})}, "edgekit.preprocessing"),
        ({"edgekit.input": "float64-something"}, "edgekit.input"),
    ],
)
def test_metadata_from_another_hand_is_checked_like_onnx_metadata(lt_run, tmp_path, props, message):
    run, _ = lt_run
    path = tmp_path / "model.tflite"
    path.write_bytes(with_metadata((run.exports_dir / "model.tflite").read_bytes(), props))  # a valid digest, bad values
    with pytest.raises(ModelError, match=message):
        runtimes.load(path)


@pytest.mark.slow
def test_a_tflite_without_edgekit_metadata_runs_without_labels(lt_run, tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils

    run, _ = lt_run
    model = flatbuffer_utils.read_model(str(run.exports_dir / "model.tflite"))
    model.metadata = [m for m in model.metadata if m.name != b"edgekit"]
    path = tmp_path / "model.tflite"
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    session = runtimes.load(path, threads=1)
    assert session.labels is None and session.info["digest"].startswith("none recorded")
    crop = run.card.preprocessing.crop
    assert session.run(np.zeros((2, 3, crop, crop), np.float32)).shape == (2, run.card.num_classes)


@pytest.mark.slow
def test_bench_auto_has_litert_rows(lt_run, photo_folders):
    from edgekit.benchmarking import bench

    run, _ = lt_run
    result = bench(run.path, runtimes="auto", data=photo_folders[1], **FAST)
    rows = {(m.variant, m.runtime) for m in result.measurements}
    assert {("litert-fp32", "litert"), ("litert-fp16", "litert"), ("litert-int8", "litert")} <= rows, result.skipped
    row = next(m for m in result.measurements if m.variant == "litert-int8")
    assert row.top1 is not None and row.fp32_baseline == "litert-fp32 on litert"


@pytest.mark.slow
def test_the_app_snippet_runs_as_is(lt_run):
    from edgekit.runtimes.tuning import Example, Setting

    run, _ = lt_run
    crop = run.card.preprocessing.crop
    code = runtimes.get_runtime("litert").app_code("model.int8.tflite", Setting(1, {}, "1 thread"), Example((2, 3, crop, crop)))
    assert "num_threads=1" in code.python and "builder.SetNumThreads(1);" in code.cpp and "ResizeInputTensor" in code.cpp
    done = subprocess.run(
        [sys.executable, "-c", code.python + "\nprint(logits.shape)\n"],
        cwd=run.exports_dir,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == f"(2, {run.card.num_classes})"


def test_missing_extra_is_one_line_exit_2(run_copy, monkeypatch):
    from edgekit.exporting import export

    for name in [m for m in sys.modules if m.split(".")[0] in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer")]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("litert_torch", "ai_edge_litert", "ai_edge_litert.interpreter", "ai_edge_quantizer"):
        monkeypatch.setitem(sys.modules, name, None)  # every import of them fails, as where the extra is not installed
    with pytest.raises(ExportError, match=r"pip install 'edgekit\[litert\]'"):
        export(run_copy, formats="litert")
    result = CliRunner().invoke(main, ["export", str(run_copy.path), "--format", "litert"])
    assert result.exit_code == 2
    assert "pip install 'edgekit[litert]'" in result.output and len(result.output.strip().splitlines()) == 1
    assert "pip install 'edgekit[litert]'" in runtimes.get_runtime("litert").available()[1]


def test_format_row_names_and_files():
    from edgekit.formats import find_format, get_format
    from edgekit.variants import Variant

    fmt = get_format("litert")
    assert [Variant.of(fmt, q).file_name for q in ("none", "fp16", "int8")] == ["model.tflite", "model.fp16.tflite", "model.int8.tflite"]
    assert (
        Variant.parse("litert-int8").file_name == "model.int8.tflite" and Variant.of_artifact("x/model.fp16.tflite").name == "litert-fp16"
    )
    assert find_format("model.int8.tflite") is fmt and fmt.install_hint == "pip install 'edgekit[litert]'"
    assert runtimes.auto_runtime("model.tflite") == "litert"


# ---- the accuracy-aware search on a model with one sensitive layer ----------------------------------------------


@pytest.fixture(scope="module")
def sensitive(photo_folders, module_tmp):
    """(model, calibrated LiteRtInt8, its float .tflite, calibration images, held-out inputs, their fp32 logits)."""
    import torch
    from sensitive_model import sensitive_setup

    from edgekit.exporting.litert import convert
    from edgekit.exporting.quantize.litert import LiteRtInt8

    model, train_images, inputs = sensitive_setup(photo_folders)
    path = convert(model, torch.from_numpy(inputs[:1]), module_tmp.mktemp("sensitive") / "model.tflite")
    calibration = train_images[::2][:32]
    int8 = LiteRtInt8(path.read_bytes(), [calibration[i : i + 1] for i in range(len(calibration))], {n for n, _ in model.named_modules()})
    with torch.no_grad():
        reference = model(torch.from_numpy(inputs)).numpy()
    return model, int8, path, calibration, inputs, reference


def _search(sensitive, tmp_path, budget=0.99, reachable=True, **bounds):
    from edgekit.device.litert import LiteRtModel
    from edgekit.exporting.quantize import Validation
    from edgekit.exporting.quantize.litert import logits_of, search_litert
    from edgekit.parity_check import ParityThresholds, compare_logits
    from edgekit.results import DataSource

    _, int8, path, calibration, inputs, reference = sensitive

    def evaluate(content):
        return compare_logits(reference, logits_of(content, inputs, tmp_path, 1), None, DataSource.images("val"))

    within = (lambda m: m.top1_agreement >= budget) if reachable else (lambda m: False)
    ranking = calibration[:16]
    validation = Validation(evaluate, within)
    thresholds = ParityThresholds(min_agreement=budget)
    reference_logits = LiteRtModel(str(path), 1).run(ranking)
    return search_litert(int8, validation, ranking, reference_logits, thresholds, "x86-test", tmp_path, start_float=[], **bounds)


@pytest.mark.timeout(900)
@pytest.mark.slow
def test_the_search_keeps_the_sensitive_conv_in_float_and_the_file_holds_the_budget(sensitive, tmp_path):
    from edgekit.exporting.quantize.litert import logits_of

    _, int8, _, _, inputs, reference = sensitive
    assert int8.conv_layers == ["conv1", "conv2", "conv3", "head"]
    result = _search(sensitive, tmp_path)
    first = result.steps[0]
    assert first.action == "quantize" and not first.within_budget and first.top1_agreement < 0.9  # the wide channel ruins it
    assert result.within_budget and result.stopped == "within budget"
    assert result.kept_float[0] == "conv3"  # ranked first: the conv reading the wide tensor
    # conv3 reads float only if conv2 writes float: conv2 goes to float with it
    assert int8.float_layers(["conv3"]) == ["conv2", "conv3"]
    assert result.session_config == {} and result.calibration["images"] == int8.images == 30
    logits = logits_of(int8.quantize(result.kept_float), inputs, tmp_path, 1)
    assert float((logits.argmax(1) == reference.argmax(1)).mean()) >= 0.99  # the file itself, run by LiteRT


@pytest.mark.slow
def test_the_search_stops_at_its_step_bound_with_a_clear_message(sensitive, tmp_path):
    result = _search(sensitive, tmp_path, budget=1.0, reachable=False, max_steps=1)
    assert not result.within_budget and "raise --max-fallback-steps" in result.stopped and "\n" not in result.stopped
    kept = result.steps[result.kept_step]
    assert kept.top1_agreement == max(s.top1_agreement for s in result.steps) and result.kept_float == kept.kept_float


@pytest.mark.slow
def test_a_layer_kept_in_float_keeps_float_weights_and_its_original_bias(sensitive, tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils

    _, int8, _, _, _, _ = sensitive
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(int8.quantize(["conv3"])))
    graph = model.subgraphs[0]
    types = {}
    for op in graph.operators:
        if len(op.inputs) > 1 and op.inputs[1] != -1 and len(graph.tensors[op.inputs[1]].shape) == 4:  # a conv's weight
            types[graph.tensors[op.outputs[0]].name.decode()] = graph.tensors[op.inputs[1]].type
    conv3 = [t for name, t in types.items() if "Conv2d_conv3" in name]
    conv1 = [t for name, t in types.items() if "Conv2d_conv1" in name]
    assert conv3 == [0] and conv1 == [9]  # FLOAT32 weights in float, INT8 elsewhere (TensorType)


# ---- auto ----------------------------------------------------------------------------------------------------


@pytest.mark.timeout(900)  # two formats' exports with their int8 searches, then the timing
@pytest.mark.slow
def test_auto_takes_litert_candidates(run_copy):
    from edgekit.auto import export_auto

    result = export_auto(run_copy, formats="onnx,litert", batch_size=1, auto_seconds=3, calib_size=30, max_fallback_steps=2)
    card = result.card
    litert = [c for c in card.candidates if c.runtime == "litert"]
    assert {c.file for c in litert} >= {"model.tflite"} and {c.format for c in litert} == {"litert"}
    assert any(c.setting.startswith("1 thread") for c in litert) and all(c.extra == "litert" for c in litert)
    assert any(c.runtime == "ort-cpu" for c in card.candidates)
    assert card.path_in(run_copy.exports_dir).is_file()
