"""edgekit predict: real pretrained weights on real photos, and runs."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import real_photo
from PIL import Image

from edgekit.cli import cli
from edgekit.prediction import predict


@pytest.fixture(scope="module")
def photos(module_tmp):
    root = module_tmp.mktemp("real")
    for name in ("coffee", "chelsea"):
        Image.fromarray(real_photo(name)).save(root / f"{name}.png")
    return root


def test_lite0_default_weights_call_the_coffee_photo_espresso(photos):
    result = CliRunner().invoke(
        cli,
        [
            "predict",
            "--model",
            "efficientnet_lite0",
            "--weights",
            "DEFAULT",
            str(photos / "coffee.png"),
            str(photos / "chelsea.png"),
            "--top-k",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    coffee, cat = report["predictions"]
    assert coffee["top"][0][0] == "espresso" and coffee["top"][0][1] > 0.5
    assert cat["top"][0][0] in {"tiger cat", "Egyptian cat", "tabby"}
    assert len(coffee["top"]) == 3 and coffee["top"][0][1] >= coffee["top"][1][1]


def test_predict_from_a_run_uses_its_labels(trained_run, photo_folders):
    _, val = photo_folders
    images = sorted((val / "coffee").glob("*.jpg"))[:2] + sorted((val / "rocket").glob("*.jpg"))[:2]
    result = predict(trained_run.path, images, top_k=2)
    assert [len(p.top) for p in result.predictions] == [2] * 4
    for prediction in result.predictions:
        assert {label for label, _ in prediction.top} <= {"chelsea", "coffee", "rocket"}
        assert sum(prob for _, prob in prediction.top) <= 1.0 + 1e-6


def test_predict_table_output(trained_run, photo_folders):
    _, val = photo_folders
    image = sorted((val / "coffee").glob("*.jpg"))[0]
    result = CliRunner().invoke(cli, ["predict", str(trained_run.path), str(image), "--top-k", "1"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert image.name in result.output and "probability" in result.output


def test_predict_bad_inputs_exit_2_with_one_line(trained_run, tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    cases = [
        ([str(trained_run.path), str(tmp_path / "notes.jpg")], "notes.jpg is not a readable image"),
        ([str(trained_run.path), str(tmp_path / "missing.jpg")], "missing.jpg does not exist"),
        ([str(tmp_path), str(tmp_path / "notes.jpg")], "is not an edgekit run directory"),
        ([str(trained_run.path), str(tmp_path / "notes.jpg"), "--top-k", "0"], "--top-k 0 must be at least 1"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, ["predict", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
