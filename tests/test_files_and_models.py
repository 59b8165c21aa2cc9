"""Bad models and model files: unknown names, checkpoints that do not fit, truncated or corrupted
.pt / .onnx / .pt2, ONNX external data that escapes its folder, and ONNX files without edgekit metadata."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner

from edgekit import files, runtimes
from edgekit.cli import cli
from edgekit.errors import EdgekitError, ModelError
from edgekit.safety import check_onnx_file, load_exported_program


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_user_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    line = result.stderr.strip()
    assert line.startswith("error:") and "\n" not in line, line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@pytest.fixture(scope="module")
def exported(trained_run, module_tmp):
    """fp32 ONNX and .pt2 of the trained test run, exported once for this module (read-only)."""
    from edgekit.exporting import export

    root = module_tmp.mktemp("exported") / "run"
    shutil.copytree(trained_run.path, root)
    result = export(root, formats="all", quantize="none", max_parity_images=8)
    paths = {variant.format: Path(variant.path) for variant in result.variants}
    return root, paths["onnx"], paths["torch-export"]


@pytest.fixture
def image(photo_folders):
    return next((photo_folders[1] / "coffee").iterdir())


# ---- model names and checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize("command", [["finetune", "--data", "{data}", "--out", "{out}"], ["predict", "--model"], ["export", "--model"]])
def test_unknown_model_name_suggests_the_closest(command, photo_folders, tmp_path, image):
    args = [a.replace("{data}", str(photo_folders[0])).replace("{out}", str(tmp_path / "run")) for a in command]
    if command[0] == "finetune":
        args += ["--model", "resnet-18"]
    elif command[0] == "predict":
        args = ["predict", "--model", "resnet-18", str(image)]
    else:
        args = ["export", "--model", "resnet-18", "--out", str(tmp_path / "zoo")]
    line = assert_user_error(run_cli(*args), "resnet-18")
    assert "resnet18" in line  # the close match is offered
    assert not (tmp_path / "zoo").exists() and not (tmp_path / "run").exists()


def test_weights_of_another_architecture_are_refused(tmp_path, photo_folders):
    from edgekit.models import build

    other, _ = build("mobilenet_v3_small", "none", num_classes=3)
    weights = files.save_torch(tmp_path / "mobilenet.pt", other.state_dict())
    result = run_cli(
        "finetune",
        "--model",
        "resnet18",
        "--weights",
        weights,
        "--data",
        photo_folders[0],
        "--out",
        tmp_path / "run",
        "--image-size",
        "32",
        "--epochs",
        "1",
    )
    assert_user_error(result, str(weights), "another architecture")
    assert not (tmp_path / "run" / "model.pt").exists()


def test_run_weights_for_another_class_count_are_refused(run_copy, image):
    from edgekit.models import build

    five, _ = build("resnet18", "none", num_classes=5)
    files.save_torch(run_copy.model_path, five.state_dict())
    line = assert_user_error(run_cli("predict", run_copy.path, image), str(run_copy.model_path), "3 classes")
    assert "another run" in line


def test_run_weights_for_another_architecture_are_refused(run_copy, image):
    from edgekit.models import build

    other, _ = build("mobilenet_v3_small", "none", num_classes=3)
    files.save_torch(run_copy.model_path, other.state_dict())
    assert_user_error(run_cli("predict", run_copy.path, image), str(run_copy.model_path), "does not fit")


def test_a_file_that_is_not_a_state_dict(tmp_path):
    path = files.save_torch(tmp_path / "list.pt", [torch.zeros(2), torch.ones(2)])
    with pytest.raises(ModelError, match="does not hold a state_dict"):
        files.load_state_dict(path)


# ---- truncated and corrupted files -----------------------------------------------------------------


def _truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _flip_bytes(path: Path, at: float = 0.5, count: int = 64) -> Path:
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "damage",
    [lambda p: _truncate(p, 0.5), lambda p: _truncate(p, 0.0), lambda p: _flip_bytes(p, 0.5)],
    ids=["truncated", "empty", "corrupted"],
)
def test_damaged_model_pt_is_a_clear_error(run_copy, image, damage):
    damage(run_copy.model_path)
    assert_user_error(run_cli("predict", run_copy.path, image), str(run_copy.model_path))


def test_damaged_checkpoint_on_resume_is_a_clear_error(tmp_path, photo_folders):
    out = tmp_path / "run"
    files.save_torch(out / "checkpoint.pt", {"epoch": 1, "model": {"w": torch.zeros(1000)}, "optimizer": {}, "scheduler": {}})
    _truncate(out / "checkpoint.pt", 0.6)
    result = run_cli(
        "finetune",
        "--model",
        "resnet18",
        "--weights",
        "none",
        "--data",
        photo_folders[0],
        "--out",
        out,
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--resume",
    )
    assert_user_error(result, str(out / "checkpoint.pt"), "truncated or corrupted")


@pytest.mark.parametrize(
    "damage",
    [lambda p: _truncate(p, 0.5), lambda p: _truncate(p, 0.0), lambda p: _truncate(p, 0.999), lambda p: _flip_bytes(p, 0.0, 16)],
    ids=["half", "empty", "last-bytes", "header"],
)
def test_damaged_onnx_is_refused_everywhere(exported, tmp_path, image, damage):
    root, onnx_path, _ = exported
    broken = damage(Path(shutil.copy(onnx_path, tmp_path / "model.onnx")))
    with pytest.raises(ModelError, match="model.onnx"):
        check_onnx_file(broken)
    with pytest.raises(ModelError):
        runtimes.load(broken)
    assert_user_error(run_cli("predict", broken, image), "model.onnx")
    assert_user_error(run_cli("bench", broken, "--iterations", "2", "--warmup", "0", "--no-save"), "model.onnx")
    assert_user_error(run_cli("parity", root, broken), "model.onnx")


@pytest.mark.parametrize(
    "damage",
    [lambda p: _truncate(p, 0.5), lambda p: _truncate(p, 0.0), lambda p: _flip_bytes(p, 0.3, 4096)],
    ids=["half", "empty", "corrupted"],
)
def test_damaged_pt2_is_refused(exported, tmp_path, damage):
    root, _, pt2_path = exported
    broken = damage(Path(shutil.copy(pt2_path, tmp_path / "model.pt2")))
    with pytest.raises(ModelError, match="model.pt2"):
        load_exported_program(broken)
    with pytest.raises(EdgekitError):
        runtimes.load(broken)
    assert_user_error(run_cli("parity", root, broken), "model.pt2")


def test_undamaged_exports_load(exported):
    _, onnx_path, pt2_path = exported
    assert check_onnx_file(onnx_path).graph.node
    program = load_exported_program(pt2_path)
    assert program.module()(torch.zeros(2, 3, 48, 48)).shape == (2, 3)


# ---- ONNX external data: path traversal ---------------------------------------------------------------


def _with_external_data(onnx_path: Path, folder: Path) -> Path:
    """A copy of the model with every big initializer in a side file ``model.onnx.data`` (the normal, safe layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(onnx_path))
    target = folder / "model.onnx"
    onnx.save_model(
        model, str(target), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024
    )
    return target


def _point_external_data(model_path: Path, location: str) -> Path:
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(model_path))
    return model_path


def test_external_data_beside_the_model_is_accepted(exported, tmp_path):
    _, onnx_path, _ = exported
    model_path = _with_external_data(onnx_path, tmp_path / "ok")
    check_onnx_file(model_path)
    session = runtimes.load(model_path)
    assert session.run(session.example_batch(2)).shape == (2, 3)


@pytest.mark.parametrize(
    "location",
    ["../secret/model.onnx.data", "{abs}", "sub/../../secret/model.onnx.data", "link/model.onnx.data"],
    ids=["dotdot", "absolute", "normalised-dotdot", "symlink-out"],
)
def test_external_data_outside_the_folder_is_refused(exported, tmp_path, image, location):
    _, onnx_path, _ = exported
    model_path = _with_external_data(onnx_path, tmp_path / "model")
    secret = tmp_path / "secret"
    secret.mkdir()
    shutil.move(str(tmp_path / "model" / "model.onnx.data"), secret / "model.onnx.data")  # the bytes exist, but outside
    (tmp_path / "model" / "link").symlink_to(secret)
    _point_external_data(model_path, location.replace("{abs}", str(secret / "model.onnx.data")))
    with pytest.raises(ModelError, match="refusing|absolute"):
        check_onnx_file(model_path)
    with pytest.raises(ModelError):
        runtimes.load(model_path)
    assert_user_error(run_cli("predict", model_path, image), "model.onnx")
    assert_user_error(run_cli("bench", model_path, "--iterations", "2", "--warmup", "0", "--no-save"), "model.onnx")


def test_missing_or_short_external_data_is_refused(exported, tmp_path):
    _, onnx_path, _ = exported
    model_path = _with_external_data(onnx_path, tmp_path / "model")
    data = tmp_path / "model" / "model.onnx.data"
    _truncate(data, 0.5)
    with pytest.raises(ModelError, match="truncated"):
        check_onnx_file(model_path)
    data.unlink()
    with pytest.raises(ModelError, match="missing"):
        check_onnx_file(model_path)


# ---- ONNX without edgekit metadata ---------------------------------------------------------------


@pytest.fixture
def bare_onnx(exported, tmp_path):
    _, onnx_path, _ = exported
    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save_model(model, str(path))
    return path


def test_bare_onnx_still_benches_with_a_note(bare_onnx, tmp_path):
    from edgekit.benchmarking import bench

    result = bench([bare_onnx], iterations=3, warmup=1)
    (row,) = result.measurements
    assert row.p50_ms > 0
    assert any("no edgekit metadata" in note for note in row.notes), row.notes
    assert row.top1 is None


def test_bare_onnx_with_labelled_data_benches_without_accuracy(bare_onnx, photo_folders):
    from edgekit.benchmarking import bench

    result = bench([bare_onnx], iterations=2, warmup=0, data=photo_folders[1], max_images=6)
    (row,) = result.measurements
    assert row.top1 is None and any("no accuracy" in note for note in row.notes)


def test_bare_onnx_cannot_be_gated_on_accuracy(bare_onnx, photo_folders, tmp_path):
    config = tmp_path / "gate.yaml"
    config.write_text(
        f"artifacts:\n  fp32: {bare_onnx}\ndata: {photo_folders[1]}\nmax_images: 6\niterations: 2\nwarmup: 0\n"
        "variants:\n  fp32:\n    min_accuracy: 0.1\n",
        encoding="utf-8",
    )
    result = run_cli("gate", "--config", config)
    assert result.exit_code in (1, 2), result.output  # never a pass: accuracy cannot be measured without labels
    assert "Traceback" not in result.output
    assert "accuracy" in result.output.lower()


def test_bare_onnx_cannot_predict_labels(bare_onnx, image):
    assert_user_error(run_cli("predict", bare_onnx, image), "no edgekit labels")
