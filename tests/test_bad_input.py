"""Bad input from many hands: broken image folders, odd image modes, bad configs and flags.

Every user mistake must end as one line on stderr that names the file or value and the fix, exit code 2,
no traceback, and no run directory written half-way.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_photo_folder
from PIL import Image

from edgekit.cli import cli
from edgekit.data import load_image, scan_folder
from edgekit.errors import DataError

TINY = [
    "--model",
    "resnet18",
    "--weights",
    "none",
    "--image-size",
    "32",
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--no-augment",
    "--warmup-epochs",
    "0",
]


def run_cli(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)


def assert_user_error(result, *needles: str) -> str:
    """Exit 2, no traceback, exactly one 'error:' line that contains every needle; returns that line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an escaped exception
    text = result.stderr if result.stderr else result.output
    assert "Traceback" not in result.output
    lines = [line for line in text.strip().splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith(("error:", "Error:"))]
    assert len(error_lines) == 1, text
    for needle in needles:
        assert needle in error_lines[0], (needle, error_lines[0])
    return error_lines[0]


def assert_no_run(out: Path) -> None:
    """Nothing that looks like a (partial) run: no card, no weights, no checkpoint."""
    if out.exists():
        names = {p.name for p in out.rglob("*")}
        assert not names & {"edgekit.json", "model.pt", "checkpoint.pt", "metrics.json"}, names


def rgb_array(height=24, width=30, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


# ---- image modes are converted, not rejected ------------------------------------------------------


def _save_mode(path: Path, mode: str) -> Image.Image:
    rgb = Image.fromarray(rgb_array())
    if mode == "I;16":
        image = Image.fromarray((np.arange(24 * 30).reshape(24, 30) * 90).astype(np.uint16))
    elif mode == "P+transparency":
        image = rgb.convert("P")
        image.info["transparency"] = 0
    else:
        image = rgb.convert(mode)
    image.save(path)
    return image


@pytest.mark.parametrize(
    "mode, name",
    [
        ("CMYK", "cmyk.jpg"),
        ("I;16", "sixteen.png"),
        ("P", "palette.png"),
        ("P+transparency", "palette_alpha.png"),
        ("RGBA", "rgba.png"),
        ("LA", "gray_alpha.png"),
        ("L", "gray.png"),
        ("1", "bilevel.png"),
        ("F", "float.tif"),
    ],
)
def test_image_modes_are_converted_to_8bit_rgb(tmp_path, mode, name):
    _save_mode(tmp_path / name, mode)
    image = load_image(tmp_path / name)
    assert image.mode == "RGB"
    assert image.size == (30, 24)
    array = np.asarray(image)
    assert array.dtype == np.uint8
    if mode in ("L", "I;16", "1", "F"):  # gray stays gray: three equal channels
        assert (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()


def test_sixteen_bit_uses_the_full_range(tmp_path):
    ramp = np.linspace(0, 65535, 24 * 30).reshape(24, 30).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    array = np.asarray(load_image(tmp_path / "ramp.png"))[..., 0]
    assert array.min() == 0 and array.max() == 255  # not clipped to white, not divided into black


def test_transparent_pixels_become_black(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 200  # bright colour, but fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    assert np.asarray(load_image(tmp_path / "clear.png")).max() == 0


def test_mislabelled_extension_is_decoded_by_content(tmp_path):
    Image.fromarray(rgb_array()).save(tmp_path / "really_a_png.jpg", format="PNG")
    assert np.array_equal(np.asarray(load_image(tmp_path / "really_a_png.jpg")), rgb_array())


# ---- broken files ----------------------------------------------------------------------------------


def _truncated_jpeg(path: Path) -> Path:
    Image.fromarray(rgb_array(64, 64)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _huge_png(path: Path, side: int = 20_000) -> Path:
    """A valid PNG header claiming side x side pixels (a decompression bomb) over a tiny body."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


BROKEN = {
    "truncated.jpg": _truncated_jpeg,
    "empty.jpg": lambda p: (p.write_bytes(b""), p)[1],
    "notes.jpg": lambda p: (p.write_text("these are not pixels\n"), p)[1],
    "bomb.png": _huge_png,
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_image_is_a_dataerror_naming_the_file(tmp_path, name):
    path = BROKEN[name](tmp_path / name)
    with pytest.raises(DataError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert ("too large" in message) if name == "bomb.png" else ("--skip-bad-images" in message)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_finetune_stops_on_a_broken_image_before_writing_anything(tmp_path, name):
    data = write_photo_folder(tmp_path / "data", 3, seed=0, size=40)
    bad = BROKEN[name](data / "coffee" / name)
    out = tmp_path / "run"
    result = run_cli("finetune", "--data", data, "--out", out, *TINY)
    assert_user_error(result, str(bad))
    assert_no_run(out)


def test_skip_bad_images_leaves_them_out_and_reports_them(tmp_path):
    data = write_photo_folder(tmp_path / "data", 3, seed=0, size=40)
    bad = [BROKEN[name](data / "rocket" / name) for name in sorted(BROKEN)]
    folder = scan_folder(data, skip_bad_images=True)
    assert sorted(p for p, _ in folder.skipped) == sorted(bad)
    assert folder.counts() == {"chelsea": 3, "coffee": 3, "rocket": 3}


# ---- folder layout -----------------------------------------------------------------------------------


def test_empty_class_folder(tmp_path):
    data = write_photo_folder(tmp_path / "data", 3, seed=0, size=40)
    (data / "dog").mkdir()
    result = run_cli("finetune", "--data", data, "--out", tmp_path / "run", *TINY)
    assert_user_error(result, str(data / "dog"), "no usable images")
    assert_no_run(tmp_path / "run")


def test_class_folder_with_only_unreadable_images_counts_as_empty(tmp_path):
    data = write_photo_folder(tmp_path / "data", 3, seed=0, size=40)
    (data / "dog").mkdir()
    _truncated_jpeg(data / "dog" / "a.jpg")
    with pytest.raises(DataError, match="dog has no usable images"):
        scan_folder(data, skip_bad_images=True)


def test_one_class_is_refused(tmp_path):
    data = write_photo_folder(tmp_path / "data", 3, seed=0, size=40, classes=("coffee",))
    result = run_cli("finetune", "--data", data, "--out", tmp_path / "run", *TINY)
    assert_user_error(result, str(data), "only one class")


def test_no_class_folders(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.fromarray(rgb_array()).save(tmp_path / "flat" / "a.jpg")
    assert_user_error(run_cli("finetune", "--data", tmp_path / "flat", "--out", tmp_path / "run", *TINY), str(tmp_path / "flat"), "<class")


def test_missing_data_folder(tmp_path):
    assert_user_error(run_cli("finetune", "--data", tmp_path / "nope", "--out", tmp_path / "run", *TINY), str(tmp_path / "nope"))


def test_train_val_class_mismatch(tmp_path):
    train = write_photo_folder(tmp_path / "train", 3, seed=0, size=40)
    val = write_photo_folder(tmp_path / "val", 2, seed=1, size=40, classes=("chelsea", "coffee", "astronaut"))
    result = run_cli("finetune", "--data", train, "--val-data", val, "--out", tmp_path / "run", *TINY)
    line = assert_user_error(result, str(val), "astronaut", "rocket")
    assert "same class folders" in line
    assert_no_run(tmp_path / "run")


def test_symlink_loop_is_refused(tmp_path):
    data = write_photo_folder(tmp_path / "data", 3, seed=0, size=40)
    os.symlink(data / "coffee", data / "coffee" / "again")  # coffee/again -> coffee: endless
    result = run_cli("finetune", "--data", data, "--out", tmp_path / "run", *TINY)
    assert_user_error(result, "symlink loop", "remove the link")


def test_self_referencing_symlink_file_is_a_bad_image(tmp_path):
    data = write_photo_folder(tmp_path / "data", 3, seed=0, size=40)
    os.symlink("loop.jpg", data / "coffee" / "loop.jpg")
    with pytest.raises(DataError, match="loop.jpg"):
        scan_folder(data)


def test_two_links_to_one_folder_are_not_a_loop(tmp_path):
    data = write_photo_folder(tmp_path / "data", 3, seed=0, size=40)
    shared = write_photo_folder(tmp_path / "shared", 2, seed=5, size=40, classes=("astronaut",)) / "astronaut"
    os.symlink(shared, data / "coffee" / "link_a")
    os.symlink(shared, data / "coffee" / "link_b")
    assert scan_folder(data).counts()["coffee"] == 3 + 2 + 2


def test_spaces_and_non_ascii_names_train_and_predict(tmp_path):
    """A whole round trip through folder and class names that break naive quoting or ASCII assumptions."""
    root = tmp_path / "mes photos été"
    write_photo_folder(root, 4, seed=0, size=40)
    renamed = {"chelsea": "chat tigré", "coffee": "café ☕", "rocket": "ракета"}
    for old, new in renamed.items():
        (root / old).rename(root / new)
    image = next((root / "café ☕").iterdir())
    image.rename(image.with_name("tasse n° 1.jpg"))
    out = tmp_path / "runs ü" / "run 1"
    result = run_cli("finetune", "--data", root, "--val-split", "0.25", "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    predicted = run_cli("predict", out, root / "café ☕" / "tasse n° 1.jpg", "--json")
    assert predicted.exit_code == 0, predicted.output
    import json

    labels = {label for label, _ in json.loads(predicted.stdout)["predictions"][0]["top"]}
    assert labels == set(renamed.values())


# ---- configs and flags ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data(module_tmp):
    return write_photo_folder(module_tmp.mktemp("cfg") / "data", 3, seed=0, size=40)


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "finetune.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "yaml_text, needles",
    [
        ("epoch: 3\n", ["epoch", "unknown key"]),
        ("epochs: ten\n", ["epochs", "'ten'"]),
        ("epochs: 0\n", ["epochs", "greater than or equal to 1"]),
        ("batch_size: -4\n", ["batch_size", "-4"]),
        ("image_size: 0\n", ["image_size"]),
        ("lr: 0\n", ["lr"]),
        ("val_split: 1.5\n", ["val_split", "1.5"]),
        ("strategy: everything\n", ["strategy", "'everything'"]),
        ("label_smoothing: 1.0\n", ["label_smoothing"]),
        ("augment: [1, 2]\n", ["augment"]),
        ("- just\n- a list\n", ["mapping"]),
        ("epochs: [\n", ["not valid YAML"]),
    ],
)
def test_bad_config_file(tmp_path, small_data, yaml_text, needles):
    config = _config(tmp_path, yaml_text)
    result = run_cli("finetune", "--config", config, "--data", small_data, "--out", tmp_path / "run")
    assert_user_error(result, str(config), *needles)
    assert_no_run(tmp_path / "run")


def test_missing_config_file(tmp_path, small_data):
    result = run_cli("finetune", "--config", tmp_path / "nope.yaml", "--data", small_data, "--out", tmp_path / "run")
    assert_user_error(result, str(tmp_path / "nope.yaml"), "does not exist")


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--val-data", "{data}", "--val-split", "0.2"], ["val_data", "val_split", "not both"]),
        (["--strategy", "head", "--unfreeze", "2"], ["unfreeze", "partial"]),
        (["--batch-size", "0"], ["batch_size"]),
        (["--epochs", "-1"], ["epochs"]),
        (["--val-split", "0"], ["val_split"]),
        (
            ["--device", "cuda"] if not __import__("torch").cuda.is_available() else ["--epochs", "0"],
            ["--device cuda" if not __import__("torch").cuda.is_available() else "epochs"],
        ),
        (["--strategy", "partial", "--unfreeze", "99"], ["--unfreeze 99", "blocks"]),
        (["--model", "resnet1800"], ["resnet1800", "resnet18"]),
        (["--weights", "IMAGENET_V9"], ["IMAGENET_V9", "valid"]),
    ],
)
def test_bad_or_contradicting_flags(tmp_path, small_data, flags, needles):
    flags = [f.replace("{data}", str(small_data)) for f in flags]
    base = [a for a in TINY]
    for flag in flags[::2]:  # the case's own flags win over the tiny defaults
        if flag in base:
            index = base.index(flag)
            del base[index : index + 2]
    result = run_cli("finetune", "--data", small_data, "--out", tmp_path / "run", *base, *flags)
    assert_user_error(result, *needles)
    assert_no_run(tmp_path / "run")


def test_flag_of_the_wrong_type_is_a_usage_error(tmp_path, small_data):
    result = run_cli("finetune", "--data", small_data, "--out", tmp_path / "run", "--epochs", "ten")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--epochs" in result.output and "ten" in result.output


def test_out_dir_holding_a_run_is_not_overwritten(tmp_path, small_data):
    out = tmp_path / "run"
    out.mkdir()
    (out / "edgekit.json").write_text("{}")
    result = run_cli("finetune", "--data", small_data, "--out", out, *TINY)
    assert_user_error(result, str(out), "--resume")
    assert (out / "edgekit.json").read_text() == "{}"


def test_resume_without_a_checkpoint(tmp_path, small_data):
    result = run_cli("finetune", "--data", small_data, "--out", tmp_path / "run", "--resume", *TINY)
    assert_user_error(result, "nothing to resume", "without --resume")


@pytest.mark.parametrize("top_k", ["0", "-3"])
def test_predict_bad_top_k(trained_run, photo_folders, top_k):
    image = next((photo_folders[1] / "coffee").iterdir())
    assert_user_error(run_cli("predict", trained_run.path, image, "--top-k", top_k), f"--top-k {top_k}")


def test_predict_missing_image(trained_run, tmp_path):
    assert_user_error(run_cli("predict", trained_run.path, tmp_path / "ghost.jpg"), str(tmp_path / "ghost.jpg"))


def test_predict_not_a_run(tmp_path, photo_folders):
    image = next((photo_folders[1] / "coffee").iterdir())
    assert_user_error(run_cli("predict", tmp_path, image), str(tmp_path), "not an edgekit run")


def test_self_referencing_link_beside_the_class_folders_is_ignored(tmp_path):
    data = write_photo_folder(tmp_path / "data", 3, seed=0, size=40)
    os.symlink("knot", data / "knot")
    assert scan_folder(data).classes == ["chelsea", "coffee", "rocket"]


# ---- impossible thresholds and contradicting flags beyond finetune --------------------------------


@pytest.mark.parametrize(
    "args, needles",
    [
        (["parity", "{run}", "{run}/model.onnx", "--min-agreement", "1.5"], ["min_agreement", "1.5"]),
        (["export", "{run}", "--max-rel-diff", "-1"], ["max_rel_diff", "-1"]),
        (["export", "{run}", "--max-accuracy-drop", "2"], ["max_accuracy_drop", "2"]),
        (
            ["export", "{run}", "--format", "torch-export", "--quantize", "int8"],
            ["--quantize int8", "applies to onnx, openvino, executorch, litert only"],
        ),
        (["export", "{run}", "--quantize", "int4"], ["int4"]),
        (["export", "{run}", "--calib-size", "0"], ["--calib-size 0"]),
        (["bench", "{run}", "--iterations", "0"], ["iterations"]),
        (["bench", "{run}", "--threads", "0"], ["threads"]),
        (["bench", "{run}", "--batch-sizes", "0"], ["batch"]),
        (["bench", "{run}", "--runtime", "tensorrtx"], ["tensorrtx"]),
    ],
)
def test_impossible_thresholds_and_contradicting_export_flags(run_copy, args, needles):
    args = [a.replace("{run}", str(run_copy.path)) for a in args]
    before = sorted(p.name for p in run_copy.path.rglob("*"))
    assert_user_error(run_cli(*args), *needles)
    assert sorted(p.name for p in run_copy.path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize(
    "thresholds, needles",
    [
        ("min_accuracy: 1.5", ["variants.fp32.min_accuracy", "1.5"]),
        ("min_agreement: -0.1", ["variants.fp32.min_agreement", "-0.1"]),
        ("max_size_mb: 0", ["variants.fp32.max_size_mb"]),
        ("min_speedup_vs: {fp32: 0}", ["min_speedup_vs"]),
        ("max_accuracy_dorp: 0.1", ["max_accuracy_dorp", "unknown key"]),
    ],
)
def test_impossible_gate_thresholds(trained_run, tmp_path, thresholds, needles):
    config = tmp_path / "gate.yaml"
    config.write_text(f"run: {trained_run.path}\nvariants:\n  fp32:\n    {thresholds}\n", encoding="utf-8")
    assert_user_error(run_cli("gate", "--config", config), str(config), *needles)
