"""OpenVINO int8 is accuracy-aware: where plain NNCF int8 breaks the budget, NNCF's accuracy control returns layers to
float until it holds, within the step and time bounds, on OneSensitiveLayer (one layer that int8 ruins)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import PHOTOS
from sensitive_model import PREPROCESSING, OneSensitiveLayer, sensitive_setup

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from edgekit.parity_check import ParityThresholds  # noqa: E402

MODEL = "test-one-sensitive-layer"
# 24 validation photos: 0.99 agreement means every one agrees with fp32.
AGREEMENT = ParityThresholds(min_agreement=0.99, max_accuracy_drop=None)


@pytest.fixture(scope="module")
def sensitive(photo_folders):
    """(OneSensitiveLayer, its training crops, validation crops), trained once for this module."""
    return sensitive_setup(photo_folders)


@pytest.fixture(scope="module")
def sensitive_model(sensitive):
    """OneSensitiveLayer registered as a zoo model for this module, so runs of it export like any run."""
    from edgekit.models import registry
    from edgekit.models.spec import ModelSpec

    registry.get_spec("resnet18")  # the built-in zoo first, so registering it later cannot collide with this one
    spec = ModelSpec(
        name=MODEL,
        family="test",
        build=OneSensitiveLayer,
        head="head",
        blocks=lambda model: [model.conv1, model.conv2, model.conv3],
        input_size=PREPROCESSING.crop,
        preprocessing=PREPROCESSING,
        source="test",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(registry._REGISTRY, MODEL, spec)
        yield sensitive[0]


def _run(tmp_path, photo_folders, model, with_data: bool = True):
    from edgekit.runs import RunCard, save_run

    train, val = photo_folders
    card = RunCard(
        model=MODEL,
        weights="none",
        class_names=list(PHOTOS),
        preprocessing=PREPROCESSING,
        data_dir=str(train) if with_data else None,
        val_dir=str(val) if with_data else None,
    )
    return save_run(tmp_path / "run", card, model.state_dict())


def _export(run, **options):
    from edgekit.exporting import export

    (int8,) = export(run, formats="openvino", quantize="int8", calib_size=30, **options).variants
    return int8


@pytest.mark.slow
def test_accuracy_control_reaches_the_budget_plain_nncf_int8_breaks(tmp_path, photo_folders, sensitive_model):
    import openvino as ov

    from edgekit import runtimes
    from edgekit.data import load_batch

    run = _run(tmp_path, photo_folders, sensitive_model)
    plain = _export(run, thresholds=AGREEMENT, accuracy_aware=False)
    assert not plain.passed and plain.parity.metrics.top1_agreement < 0.9  # per-tensor int8 ruins conv3's input
    assert plain.int8.search is None and plain.int8.search_skipped == "accuracy-aware search off"
    # inspect scores the plain IR's layers as the searches do, and names first the layer NNCF's search returns below
    from edgekit.inspection import inspect

    scored = inspect(run, plain.path, profile=False).numerics
    int8_layers = {layer.layer for layer in scored.layers if layer.precision == "int8"}
    assert int8_layers == {"conv1", "conv2", "conv3", "head"}  # plain NNCF int8 quantizes every layer
    assert scored.search_first[0] == "conv3" and {layer.layer for layer in scored.layers if layer.search_error is not None} == int8_layers
    # and the error each layer adds on its own (fed from the float graph): conv3's input quantization is the damage
    by_name = {layer.layer: layer for layer in scored.layers}
    assert all(by_name[name].own is not None for name in int8_layers) and scored.worst_own[0] == "conv3"
    conv1 = by_name["conv1"]  # reads the image itself, so fed from float or not it computes the same
    assert conv1.own.sqnr_db == pytest.approx(conv1.accumulated.sqnr_db, abs=0.1)  # type: ignore[union-attr]
    assert by_name["conv3"].own.sqnr_db < 10 < by_name["conv1"].own.sqnr_db  # type: ignore[union-attr]

    int8 = _export(run, thresholds=AGREEMENT)
    search = int8.int8.search
    assert search.metric == "top1 agreement" and search.max_drop == pytest.approx(0.01)
    assert search.steps[0].action == "quantize" and search.steps[0].top1_agreement < 0.9
    assert search.within_budget and search.stopped == "within budget"
    assert search.final.top1_agreement >= 0.99
    # conv3, the layer reading the wide tensor, went back to float, and not the whole network
    convolutions = [
        op.get_friendly_name() for op in ov.Core().read_model(int8.path).get_ordered_ops() if op.get_type_name() == "Convolution"
    ]
    assert search.kept_float[0] == convolutions[2] and len(search.kept_float) <= 2
    assert int8.int8.kept_float == search.kept_float and search.quantized_nodes == 4
    assert int8.passed, int8.failures

    # The saved IR, run through edgekit's OpenVINO runtime, is still int8 and really agrees with PyTorch fp32.
    session = runtimes.load(int8.path, runtime="openvino")
    val = sorted(photo_folders[1].rglob("*.jpg"))
    inputs = load_batch(val, PREPROCESSING)
    import torch

    with torch.no_grad():
        reference = sensitive_model(torch.from_numpy(inputs)).numpy()
    assert (session.run(inputs).argmax(1) == reference.argmax(1)).mean() >= 0.99
    types = {op.get_type_name() for op in ov.Core().read_model(int8.path).get_ordered_ops()}
    assert "FakeQuantize" in types


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bound", "flag"), [({"max_fallback_steps": 0}, "--max-fallback-steps"), ({"max_fallback_seconds": 0}, "--max-fallback-seconds")]
)
def test_a_bound_stops_the_search_and_the_variant_fails(tmp_path, photo_folders, sensitive_model, bound, flag):
    run = _run(tmp_path, photo_folders, sensitive_model)
    int8 = _export(run, thresholds=AGREEMENT, **bound)
    search = int8.int8.search
    assert not search.within_budget and f"raise {flag}" in search.stopped and "\n" not in search.stopped
    assert [step.action for step in search.steps] == ["quantize"]  # stopped before any layer went back to float
    assert search.kept_float == [] and search.final.top1_agreement < 0.9
    assert not int8.passed and any("top1_agreement" in failure for failure in int8.failures)


@pytest.mark.slow
def test_cli_says_why_the_search_stopped_and_exits_non_zero(tmp_path, photo_folders, sensitive_model):
    from edgekit.cli import cli

    run = _run(tmp_path, photo_folders, sensitive_model)
    args = ["export", str(run.path), "--format", "openvino", "--quantize", "int8", "--calib-size", "30", "--max-fallback-seconds", "0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert "no int8 within the budget was found" in result.output and "raise --max-fallback-seconds" in result.output


@pytest.mark.slow
def test_random_inputs_skip_the_search_and_say_why(tmp_path, photo_folders, sensitive_model):
    run = _run(tmp_path, photo_folders, sensitive_model, with_data=False)
    int8 = _export(run, calib_data=photo_folders[0])
    assert int8.parity.metrics.data_source.is_random
    assert int8.int8.search is None and int8.int8.kept_float == []
    assert int8.int8.search_skipped == "no images to validate on (random inputs)"


def test_search_metric_follows_the_budget():
    from edgekit.exporting.quantize.nncf import search_metric

    assert search_metric(ParityThresholds(max_accuracy_drop=0.01), has_labels=True) == ("accuracy", 0.01)
    assert search_metric(ParityThresholds(min_agreement=0.97), has_labels=False) == ("top1 agreement", pytest.approx(0.03))
    # labels but only an agreement limit: agreement; an accuracy limit without labels cannot be searched for
    assert search_metric(ParityThresholds(min_agreement=0.99), has_labels=True)[0] == "top1 agreement"  # type: ignore[index]
    assert search_metric(ParityThresholds(max_accuracy_drop=0.01), has_labels=False) is None


@pytest.mark.slow
def test_plain_int8_keeps_no_layer_in_float(tmp_path):
    """A FakeQuantize in front of a reshape (as before a classifier) still makes the layer after it int8."""
    import openvino as ov
    import torch
    from torch import nn

    from edgekit.exporting.onnx import export_onnx
    from edgekit.exporting.quantize.nncf import float_layers, quantize

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 12 * 12, 3)).eval()
    export_onnx(model, tmp_path / "model.onnx", torch.randn(2, 3, 16, 16))
    graph = ov.convert_model(str(tmp_path / "model.onnx"))
    images = [np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32) for i in range(4)]
    assert len(float_layers(graph)[0]) == 3  # all three in float before quantization
    quantized = quantize(graph, images, overflow_fix=False)
    matmul = next(op for op in quantized.get_ordered_ops() if op.get_type_name() == "MatMul")
    assert matmul.input_value(0).get_node().get_type_name() == "Reshape"
    assert float_layers(quantized) == ([], 3)


@pytest.mark.slow
def test_out_of_budget_the_file_is_the_better_of_plain_and_nncf(sensitive, tmp_path):
    """Where the model NNCF returns misses the budget under the runtime (simulated: its measure is made terrible) and
    plain int8 was validated better, the plain model is what is left, and the record says so in one line."""
    import openvino as ov
    import torch

    from edgekit.exporting.onnx import export_onnx
    from edgekit.exporting.quantize.nncf import ValidationImages, quantize_within_budget
    from edgekit.parity_check import compare_logits
    from edgekit.results import DataSource

    model, train_images, inputs = sensitive
    export_onnx(model, tmp_path / "model.onnx", torch.randn(2, 3, 32, 32))
    graph = ov.convert_model(str(tmp_path / "model.onnx"))
    with torch.no_grad():
        reference = model(torch.from_numpy(inputs)).numpy()
    images = ValidationImages(inputs, reference, None, DataSource.images("val"))
    measured = []

    def measure(candidate):
        compiled = ov.Core().compile_model(candidate, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        metrics = compare_logits(reference, compiled(inputs)[0], None, DataSource.images("val"))
        measured.append(metrics)
        return metrics if len(measured) > 1 else metrics.model_copy(update={"top1_agreement": 0.0, "mean_abs_diff": 1e9})

    calibration = [train_images[i : i + 1] for i in range(0, 60, 2)]
    _, search = quantize_within_budget(
        graph, calibration, images, AGREEMENT, measure, overflow_fix=False, isa="test", max_steps=4, max_seconds=120
    )
    assert search.steps[-1].within_budget  # NNCF did reach the budget on its own validation
    assert search.kept_step == 0 and search.kept_float == [] and not search.within_budget
    assert search.final is not None and search.final.top1_agreement == pytest.approx(search.steps[0].top1_agreement)
    assert "edgekit's runtime settings" in search.stopped and "\n" not in search.stopped
