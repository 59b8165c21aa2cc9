"""Parity: metrics that can fail, thresholds per variant, real images by default, exit 1 on a failure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import PHOTOS, write_photo_folder

from edgekit.cli import cli
from edgekit.errors import EdgekitError
from edgekit.models import ParityTolerance
from edgekit.parity_check import (
    ParityMetrics,
    ParityResult,
    ParityThresholds,
    artifact_variant,
    compare_logits,
    images_in,
    judge,
    merge_thresholds,
    parity,
    thresholds_for,
    variant_kind,
)
from edgekit.results import DataSource

# --------------------------------------------------------------------------- metrics


def test_identical_logits_are_perfect():
    logits = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    metrics = compare_logits(logits, logits.copy(), np.argmax(logits, axis=1), DataSource.images("x"))
    assert metrics.max_abs_diff == 0 and metrics.max_rel_diff == 0
    assert metrics.top1_agreement == 1 and metrics.top5_overlap == 1
    assert metrics.cosine_similarity == pytest.approx(1.0)
    assert metrics.reference_accuracy == 1 and metrics.accuracy_drop == 0
    assert metrics.n_images == 10 and str(metrics.data_source) == "images:x"


def test_metrics_are_computed_per_image():
    reference = np.array([[0.0, 10.0, 5.0], [0.0, 1.0, 0.5]])
    candidate = np.array([[0.0, 10.0, 5.5], [0.0, 0.4, 0.5]])  # second image flips its top-1
    labels = np.array([1, 1])
    metrics = compare_logits(reference, candidate, labels)
    assert metrics.max_abs_diff == pytest.approx(0.6)
    assert metrics.mean_abs_diff == pytest.approx((0.5 + 0.6) / 6)
    # relative to each image's own spread: 0.5/10 and 0.6/1 -> the worst is 0.6
    assert metrics.max_rel_diff == pytest.approx(0.6)
    assert metrics.top1_agreement == 0.5
    assert metrics.reference_accuracy == 1.0 and metrics.variant_accuracy == 0.5 and metrics.accuracy_drop == 0.5
    assert metrics.cosine_similarity < 1.0


def test_top5_overlap_counts_shared_classes():
    reference = np.arange(10, dtype=np.float32)[None]  # top-5: 9 8 7 6 5
    candidate = reference.copy()
    candidate[0, 9] = -1  # class 9 leaves the top-5, class 4 enters
    assert compare_logits(reference, candidate).top5_overlap == pytest.approx(4 / 5)


def test_disagreements_on_near_ties_are_counted_apart():
    # image 0: a near-tie (logits 2.0 vs 1.99, probabilities within 0.05) that the candidate flips;
    # image 1: a decisive answer the candidate flips; image 2: agreement
    reference = np.array([[2.0, 1.99, -5.0], [4.0, 0.0, -5.0], [0.0, 3.0, -5.0]])
    candidate = np.array([[1.98, 2.0, -5.0], [0.0, 4.0, -5.0], [0.0, 3.1, -5.0]])
    metrics = compare_logits(reference, candidate)
    assert metrics.disagreements == 2 and metrics.near_tie_disagreements == 1
    assert compare_logits(reference, reference.copy()).disagreements == 0


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(EdgekitError, match="another run or class count"):
        compare_logits(np.zeros((2, 3)), np.zeros((2, 4)))


def test_judge_names_the_metric_and_value():
    metrics = compare_logits(np.array([[0.0, 1.0]]), np.array([[0.0, 1.2]]), None)
    failures, not_checked = judge(metrics, ParityThresholds(max_rel_diff=1e-3, min_agreement=0.9, max_accuracy_drop=0.01))
    assert len(failures) == 1 and failures[0].startswith("max_rel_diff 0.2 > 0.001")
    assert not_checked and "max_accuracy_drop" in not_checked[0]
    assert judge(metrics, ParityThresholds()) == ([], [])


# --------------------------------------------------------------------------- thresholds


def test_thresholds_follow_the_variant_kind():
    tolerance = ParityTolerance(
        fp32_max_rel_diff=1e-5, fp16_max_rel_diff=1e-2, fp16_min_agreement=0.97, int8_min_agreement=0.7, int8_max_accuracy_drop=0.04
    )
    assert thresholds_for(tolerance, "fp32") == ParityThresholds(max_rel_diff=1e-5)
    assert thresholds_for(tolerance, "torch-export") == ParityThresholds(max_rel_diff=1e-5)
    assert thresholds_for(tolerance, "fp32-uint8in") == ParityThresholds(max_rel_diff=1e-5)
    assert thresholds_for(tolerance, "fp16") == ParityThresholds(max_rel_diff=1e-2, min_agreement=0.97)
    for variant in ("int8", "int8-dynamic", "int8-uint8in"):
        assert thresholds_for(tolerance, variant) == ParityThresholds(min_agreement=0.7, max_accuracy_drop=0.04)
    # Knowing whether the images have labels, int8 is held to its budget: accuracy with labels, agreement without.
    assert thresholds_for(tolerance, "int8", has_labels=True) == ParityThresholds(max_accuracy_drop=0.04)
    assert thresholds_for(tolerance, "int8", has_labels=False) == ParityThresholds(min_agreement=0.7)
    # a ModelSpec (or its name) works too; the int8 budget is the same for every model: 1 point, or 99% agreement
    assert thresholds_for("efficientnet_lite0", "int8") == ParityThresholds(min_agreement=0.99, max_accuracy_drop=0.01)


def test_unknown_variant_is_refused():
    with pytest.raises(EdgekitError, match="unknown variant 'int4'"):
        variant_kind("int4")


def test_overrides_replace_only_the_fields_given():
    defaults = ParityThresholds(min_agreement=0.8, max_accuracy_drop=0.05)
    assert merge_thresholds(defaults, None) == defaults
    assert merge_thresholds(defaults, ParityThresholds(min_agreement=0.99)) == ParityThresholds(min_agreement=0.99, max_accuracy_drop=0.05)
    # an explicit None switches a check off
    assert merge_thresholds(defaults, ParityThresholds(max_accuracy_drop=None)).max_accuracy_drop is None


def test_result_json_round_trip():
    metrics = ParityMetrics(
        n_images=3,
        data_source="random",
        max_abs_diff=0.1,
        mean_abs_diff=0.01,
        max_rel_diff=0.02,
        cosine_similarity=0.99,
        top1_agreement=1.0,
        top5_overlap=1.0,
    )
    result = ParityResult(
        artifact="m.onnx", variant="fp16", metrics=metrics, thresholds=ParityThresholds(max_rel_diff=0.5), passed=True, failures=[]
    )
    again = ParityResult.from_json(result.to_json())
    assert again == result and json.loads(result.to_json())["schema_version"] == ParityResult.SCHEMA_VERSION == 2


def test_schema_1_parity_reports_still_load_and_old_export_results_are_refused_in_one_line(tmp_path):
    """Reports of the previous schema wrote the data source as "images:<dir>": they still load, as a DataSource. An
    ExportResult of schema 1 (an untyped details dict) is refused with the fix, not misread."""
    from edgekit.exporting import ExportResult

    old = json.loads(_parity_report_of_schema_1())
    again = ParityResult.from_json(json.dumps(old))
    assert again.metrics.data_source == DataSource.images("/data/val") and again.schema_version == 1
    path = tmp_path / "export.json"
    path.write_text(json.dumps({"schema_version": 1, "run_dir": "r", "variants": [], "passed": True, "parity_data": "random"}))
    with pytest.raises(EdgekitError, match="schema_version 1, from an older edgekit") as info:
        ExportResult.from_json(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def _parity_report_of_schema_1() -> str:
    metrics = {"n_images": 3, "data_source": "images:/data/val", "max_abs_diff": 0.1, "mean_abs_diff": 0.01, "max_rel_diff": 0.02}
    metrics.update({"cosine_similarity": 0.99, "top1_agreement": 1.0, "top5_overlap": 1.0})
    report = {"schema_version": 1, "artifact": "m.onnx", "variant": "fp16", "metrics": metrics, "thresholds": {}, "passed": True}
    return json.dumps({**report, "failures": [], "input_kind": "float32-nchw"})


def test_variant_from_file_name(tmp_path):
    assert artifact_variant(tmp_path / "model.onnx") == "fp32"
    assert artifact_variant(tmp_path / "model.int8-dynamic.onnx") == "int8-dynamic"
    assert artifact_variant(tmp_path / "model.pt2") == "torch-export"


# --------------------------------------------------------------------------- images


def test_images_in_class_folders_and_flat_folders(tmp_path):
    write_photo_folder(tmp_path / "labelled", 3, seed=5, size=32)
    found = images_in(tmp_path / "labelled", class_names=list(PHOTOS))
    assert len(found.paths) == 9 and found.labels == [0] * 3 + [1] * 3 + [2] * 3
    # class folders a run does not know: the images are still usable, without labels
    assert images_in(tmp_path / "labelled", class_names=["cat", "dog"]).labels is None
    # a subset of the run's classes keeps the run's indices
    subset = images_in(tmp_path / "labelled", class_names=["astronaut", *PHOTOS])
    assert subset.labels == [1] * 3 + [2] * 3 + [3] * 3
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in found.paths[:4]:
        (flat / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())
    loose = images_in(flat, class_names=list(PHOTOS), max_images=3)
    assert len(loose.paths) == 3 and loose.labels is None
    assert images_in(tmp_path / "labelled", max_images=4).paths.__len__() == 4
    with pytest.raises(EdgekitError, match="no images"):
        (tmp_path / "empty").mkdir()
        images_in(tmp_path / "empty")


# --------------------------------------------------------------------------- end to end on a trained model


@pytest.fixture(scope="module")
def fp32_onnx(trained_run, module_tmp):
    from edgekit.exporting.onnx import export_onnx

    path = module_tmp.mktemp("parity") / "model.onnx"
    crop = trained_run.card.preprocessing.crop
    return export_onnx(trained_run.build_model(), path, torch.randn(2, 3, crop, crop))


@pytest.fixture(scope="module")
def perturbed_onnx(trained_run, module_tmp):
    """The same model with its classifier bias nudged: a broken export parity must catch."""
    from edgekit.exporting.onnx import export_onnx

    model = trained_run.build_model()
    with torch.no_grad():
        model.fc.bias += torch.tensor([0.5, 0.0, -0.5])
    path = module_tmp.mktemp("parity") / "model.onnx"
    crop = trained_run.card.preprocessing.crop
    return export_onnx(model, path, torch.randn(2, 3, crop, crop))


def test_fp32_onnx_passes_on_the_runs_validation_images(trained_run, fp32_onnx):
    result = parity(trained_run.path, fp32_onnx)
    assert result.passed and result.failures == []
    assert result.variant == "fp32" and result.thresholds.max_rel_diff == 1e-4
    assert str(result.metrics.data_source) == f"images:{trained_run.card.val_dir}"
    assert result.metrics.n_images == 24  # 8 validation images per class
    assert result.metrics.max_rel_diff < 1e-4 and result.metrics.top1_agreement == 1.0
    assert result.metrics.reference_accuracy is not None and result.metrics.reference_accuracy > 0.5  # a real model


def test_a_changed_model_fails_parity(trained_run, perturbed_onnx):
    result = parity(trained_run, perturbed_onnx)
    assert not result.passed
    assert result.failures[0].startswith("max_rel_diff ")
    assert result.metrics.max_abs_diff == pytest.approx(0.5, abs=1e-3)


def test_parity_on_other_images_and_fewer_of_them(trained_run, fp32_onnx, tmp_path):
    photos = write_photo_folder(tmp_path / "photos", 4, seed=9, size=40)
    result = parity(trained_run, fp32_onnx, data=photos, max_images=6)
    assert result.metrics.n_images == 6 and str(result.metrics.data_source) == f"images:{photos}"
    assert result.metrics.reference_accuracy is not None


def test_unmet_threshold_exits_1_and_names_the_metric(trained_run, fp32_onnx, tmp_path):
    # 1e-12 is a valid threshold that no float32 runtime meets (ORT sums in another order than torch);
    # an impossible one (agreement > 1) is a user error, exit 2 (tests/test_bad_input.py).
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["parity", str(trained_run.path), str(fp32_onnx), "--max-rel-diff", "1e-12", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "max_rel_diff" in result.output and "> 1e-12" in result.output
    report = ParityResult.from_json(out)
    assert report.passed is False and report.thresholds.max_rel_diff == 1e-12


def test_cli_parity_passes_and_prints_json(trained_run, fp32_onnx):
    result = CliRunner().invoke(cli, ["parity", str(trained_run.path), str(fp32_onnx), "--json"])
    assert result.exit_code == 0, result.output
    assert ParityResult.from_json(result.stdout).passed


def test_missing_artifact_is_a_user_error(trained_run, tmp_path):
    result = CliRunner().invoke(cli, ["parity", str(trained_run.path), str(tmp_path / "nope.onnx")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_zoo_run_without_images_uses_random_inputs_and_says_so(tmp_path):
    from edgekit.exporting.onnx import export_onnx
    from edgekit.preprocessing import Preprocessing
    from edgekit.runs import Run, run_from_zoo, save_run

    run = run_from_zoo("resnet18", "none", tmp_path / "zoo")
    # a zoo run has no training data; shrink its input size to keep the test fast (ResNet pools adaptively)
    card = run.card.model_copy(update={"preprocessing": Preprocessing.for_size(48)})
    model = run.build_model().train()
    with torch.no_grad():  # re-estimate BatchNorm statistics so random-weight logits are not degenerate
        for _ in range(3):
            model(torch.randn(8, 3, 48, 48))
    run = save_run(run.path, card, model.eval().state_dict())
    path = export_onnx(model, tmp_path / "model.onnx", torch.randn(2, 3, 48, 48))
    result = parity(Run.load(run.path), path, max_images=4)
    assert result.metrics.data_source.is_random and result.metrics.accuracy_drop is None
    assert result.metrics.n_images == 32  # random inputs: a fixed small number, whatever max_images says
    assert result.passed
