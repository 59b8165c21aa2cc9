"""Untrusted files: no pickle ever runs, nothing is fetched from the network unless the user named
weights to download, and nothing read from a file can steer a write outside the run directory."""

from __future__ import annotations

import ast
import io
import os
import socket
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import write_photo_folder

from edgekit import files
from edgekit.cli import cli
from edgekit.errors import EdgekitError, ModelError

PACKAGE = Path(__file__).resolve().parents[1] / "edgekit"


class Payload:
    """Unpickling this object calls ``open(marker, "w")``: a marker file appears iff pickle ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant_pickle(path: Path, marker: Path, wrap=lambda payload: payload) -> Path:
    """A torch file whose unpickling would create ``marker``."""
    torch.save(wrap(Payload(marker)), path)
    return path


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """Control: without weights_only the planted file does create the marker, so the refusals below mean something."""
    marker = tmp_path / "pwned"
    path = plant_pickle(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "wrap",
    [lambda p: p, lambda p: {"state_dict": {"fc.weight": torch.zeros(2, 2)}, "extra": p}, lambda p: {"fc.weight": p}],
    ids=["bare", "inside-a-checkpoint-dict", "as-a-tensor"],
)
def test_load_torch_refuses_a_pickle_payload(tmp_path, wrap):
    marker = tmp_path / "pwned"
    path = plant_pickle(tmp_path / "evil.pt", marker, wrap)
    with pytest.raises(ModelError, match="pickled Python objects"):
        files.load_state_dict(path)
    assert not marker.exists()


def test_finetune_weights_file_with_a_payload_is_refused(tmp_path, photo_folders):
    marker = tmp_path / "pwned"
    evil = plant_pickle(tmp_path / "weights.pt", marker)
    result = CliRunner().invoke(
        cli,
        [
            "finetune",
            "--model",
            "resnet18",
            "--weights",
            str(evil),
            "--data",
            str(photo_folders[0]),
            "--out",
            str(tmp_path / "run"),
            "--image-size",
            "32",
            "--epochs",
            "1",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "pickled" in result.stderr and str(evil) in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "run" / "edgekit.json").exists()


def test_run_whose_model_pt_carries_a_payload_is_refused(run_copy, photo_folders, tmp_path):
    marker = tmp_path / "pwned"
    plant_pickle(run_copy.model_path, marker, lambda p: {"fc.weight": p})
    image = next((photo_folders[1] / "coffee").iterdir())
    result = CliRunner().invoke(cli, ["predict", str(run_copy.path), str(image)])
    assert result.exit_code == 2, result.output
    assert "pickled" in result.stderr
    assert not marker.exists()


def test_resume_checkpoint_with_a_payload_is_refused(tmp_path, photo_folders):
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    out.mkdir()
    plant_pickle(out / "checkpoint.pt", marker, lambda p: {"epoch": 1, "model": {}, "optimizer": p})
    result = CliRunner().invoke(
        cli,
        [
            "finetune",
            "--model",
            "resnet18",
            "--weights",
            "none",
            "--data",
            str(photo_folders[0]),
            "--out",
            str(out),
            "--image-size",
            "32",
            "--epochs",
            "2",
            "--resume",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "pickled" in result.stderr
    assert not marker.exists()


def _tiny_pt2(path: Path) -> Path:
    program = torch.export.export(torch.nn.Sequential(torch.nn.Linear(4, 3)).eval(), (torch.randn(2, 4),))
    torch.export.save(program, str(path))
    return path


def _plant_in_pt2(source: Path, target: Path, marker: Path, member_suffix: str, pickled_weights: bool = False) -> Path:
    """Copy a .pt2 archive, replacing one member with a torch.save'd payload."""
    payload = io.BytesIO()
    torch.save(Payload(marker), payload)
    with zipfile.ZipFile(source) as archive_in, zipfile.ZipFile(target, "w") as archive_out:
        for info in archive_in.infolist():
            data = archive_in.read(info.filename)
            if info.filename.endswith(member_suffix):
                data = payload.getvalue()
            if pickled_weights and info.filename.endswith("model_weights_config.json"):
                data = data.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
            archive_out.writestr(info, data)
    return target


@pytest.mark.parametrize(
    "member, pickled_weights", [("sample_inputs/model.pt", False), ("weights/weight_0", True)], ids=["sample-inputs", "weights"]
)
def test_pt2_with_a_payload_is_refused_where_plain_torch_would_run_it(tmp_path, member, pickled_weights):
    from edgekit import runtimes
    from edgekit.safety import load_exported_program

    clean = _tiny_pt2(tmp_path / "clean.pt2")
    marker = tmp_path / "pwned"
    evil = _plant_in_pt2(clean, tmp_path / "evil.pt2", marker, member, pickled_weights)
    with pytest.raises(ModelError, match="pickled"):
        load_exported_program(evil)
    assert not marker.exists()
    with pytest.raises(EdgekitError):
        runtimes.load(evil, runtime="auto")
    assert not marker.exists()
    # Control: torch.export.load itself falls back to full unpickling and runs the payload.
    with pytest.raises(Exception):  # noqa: B017  (what torch fails with after the payload ran differs by version; the marker is the point)
        torch.export.load(str(evil))
    assert marker.exists()
    # ...and a clean archive still loads through the safe path, with torch.load restored afterwards.
    assert load_exported_program(clean).module()(torch.ones(2, 4)).shape == (2, 3)
    assert torch.load.__name__ == "load"


# ---- the source never unpickles, never evals, never builds objects from YAML ----------------------


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                parts = [func.attr]
                value = func.value
                while isinstance(value, ast.Attribute):
                    parts.append(value.attr)
                    value = value.value
                parts.append(value.id if isinstance(value, ast.Name) else "?")  # "?": a method of some expression
                yield ".".join(reversed(parts)), node
            elif isinstance(func, ast.Name):
                yield func.id, node


def test_source_loads_torch_files_only_with_weights_only_true():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name, node in _calls(tree):
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            if name == "torch.load" and path.name != "safety.py":
                keywords = {k.arg: k.value for k in node.keywords}
                value = keywords.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    offenders.append(f"{where} torch.load without weights_only=True")
            if name in (
                "pickle.load",
                "pickle.loads",
                "pickle.Unpickler",
                "dill.load",
                "joblib.load",
                "eval",
                "exec",
                "yaml.load",
                "yaml.unsafe_load",
                "marshal.loads",
            ):
                offenders.append(f"{where} {name}")
            if name in (
                "numpy.load",
                "np.load",
            ):  # only in safety.py (and the device runner, which cannot import it), never able to unpickle
                keywords = {k.arg: k.value for k in node.keywords}
                value = keywords.get("allow_pickle")
                if path.relative_to(PACKAGE).as_posix() not in ("safety.py", "device/runner.py") or not (
                    isinstance(value, ast.Constant) and value.value is False
                ):
                    offenders.append(f"{where} {name} (use edgekit.safety.load_npz)")
            if name == "torch.export.load" and path.name != "safety.py":
                offenders.append(f"{where} torch.export.load (use edgekit.safety.load_exported_program)")
            # edgekit.device.ort opens files that its callers checked: the host runtimes (check_onnx_file) or the
            # device runner (files the host checked, verified by SHA-256 there)
            opens = name.endswith("InferenceSession") or name.endswith("device.ort.open_session")
            checked = "check_onnx_file" in path.read_text(encoding="utf-8") or path.name == "safety.py"
            if opens and not checked and path.relative_to(PACKAGE).as_posix() not in ("device/ort.py", "device/runner.py"):
                offenders.append(f"{where} InferenceSession without edgekit.safety.check_onnx_file")
    assert not offenders, offenders


def test_onnx_runtime_keeps_no_telemetry_files(tmp_path, trained_run):
    """ONNX Runtime 1.32+ writes a device id and an event database under $XDG_CACHE_HOME/Microsoft (and $TMPDIR/.ses)
    at import unless told not to: importing edgekit first opts out, so a session leaves nothing behind."""
    import subprocess
    import sys

    from edgekit.exporting.onnx import export_onnx

    model = tmp_path / "model.onnx"
    export_onnx(trained_run.build_model(), model, torch.randn(2, 3, 48, 48))
    cache, scratch = tmp_path / "xdg", tmp_path / "tmp"
    cache.mkdir(), scratch.mkdir()
    code = "import edgekit, numpy as np; from edgekit import runtimes; runtimes.load(__import__('sys').argv[1]).run(np.zeros((1, 3, 48, 48), np.float32))"
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(model)],
        env={**env, "XDG_CACHE_HOME": str(cache), "TMPDIR": str(scratch)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(cache.iterdir()) == [] and list(scratch.iterdir()) == []


def test_no_network_client_in_the_package():
    """Telemetry or downloads would need one of these; only torchvision's own weight download is allowed."""
    banned = ("requests", "httpx", "aiohttp", "urllib.request", "http.client", "socket", "urllib3", "ftplib", "smtplib")
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                if name in banned or name.startswith(tuple(f"{b}." for b in banned)):
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {name}")
    assert not offenders, offenders


# ---- no network at run time ----------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection or resolve a name is recorded and refused."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args else kwargs)
        raise OSError(101, "network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(self, *a))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, *a: refuse(self, *a))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, *a))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: refuse(None, *a))
    return attempts


@pytest.mark.slow
def test_whole_workflow_makes_no_network_call(no_network, tmp_path):
    from edgekit import runtimes
    from edgekit.exporting import export
    from edgekit.finetuning import finetune
    from edgekit.prediction import predict

    data = write_photo_folder(tmp_path / "data", 4, seed=0, size=40)
    out = tmp_path / "run"
    finetune(
        model="resnet18",
        weights="none",
        data=data,
        val_split=0.25,
        out=out,
        strategy="full",
        epochs=1,
        batch_size=8,
        image_size=32,
        warmup_epochs=0,
    )
    image = next((data / "rocket").iterdir())
    predict(out, [image], top_k=2)
    result = export(out, formats="onnx", quantize="none", max_parity_images=8)
    artifact = Path(result.variants[0].path)
    predict(artifact, [image], top_k=2)
    session = runtimes.load(artifact)
    assert session.run(session.example_batch(2)).shape == (2, 3)
    from edgekit.models import build

    build("efficientnet_lite0", "DEFAULT", num_classes=3)  # the offline pretrained weights ship in a package
    assert no_network == []


def test_named_torchvision_weights_offline_fail_cleanly(no_network, monkeypatch, tmp_path, photo_folders):
    """The one allowed download: weights named by the user. Offline, it is a one-line error with the fix."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))  # no cached copy to fall back on
    result = CliRunner().invoke(
        cli,
        [
            "finetune",
            "--model",
            "resnet18",
            "--weights",
            "IMAGENET1K_V1",
            "--data",
            str(photo_folders[0]),
            "--out",
            str(tmp_path / "run"),
            "--image-size",
            "32",
            "--epochs",
            "1",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "could not download" in result.stderr and "--weights" in result.stderr
    assert len(no_network) >= 1  # it did try: only because the user named the weights


# ---- paths from files cannot steer writes ---------------------------------------------------------


def test_path_like_labels_and_names_in_a_card_write_nothing_outside_the_run(run_copy, tmp_path, photo_folders):
    from edgekit.exporting import export

    card = files.read_json(run_copy.path / "edgekit.json")
    card["class_names"] = ["../../escaped", "/tmp/absolute", "..\\windows"]
    files.write_json(run_copy.path / "edgekit.json", card)
    outside_before = sorted(p.name for p in run_copy.path.parent.iterdir())
    export(run_copy.path, formats="onnx", quantize="none", max_parity_images=8, parity_data=photo_folders[1])
    assert sorted(p.name for p in run_copy.path.parent.iterdir()) == outside_before
    assert not Path("/tmp/absolute").exists()
    exported = [p for p in run_copy.path.rglob("*") if p.is_file()]
    assert all(run_copy.path.resolve() in p.resolve().parents for p in exported)
    from edgekit.metadata import read_onnx_metadata

    # The labels are carried as data, unchanged, into the artifact's metadata.
    assert read_onnx_metadata(next(run_copy.exports_dir.glob("*.onnx"))).labels == card["class_names"]


def test_model_name_in_a_card_is_a_registry_key_not_a_path(run_copy, photo_folders):
    card = files.read_json(run_copy.path / "edgekit.json")
    card["model"] = "../../../../usr/lib/python3/evil"
    files.write_json(run_copy.path / "edgekit.json", card)
    image = next((photo_folders[1] / "coffee").iterdir())
    result = CliRunner().invoke(cli, ["predict", str(run_copy.path), str(image)])
    assert result.exit_code == 2
    assert "unknown model" in result.stderr.lower() or "evil" in result.stderr


def test_check_inside_refuses_escapes(tmp_path):
    from edgekit.safety import check_inside

    (tmp_path / "run").mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", tmp_path / "run" / "link")
    assert check_inside(tmp_path / "run", "exports/a.onnx") == (tmp_path / "run" / "exports" / "a.onnx").resolve()
    for bad in ("../outside/x", "/etc/passwd", "link/x", "exports/../../outside"):
        with pytest.raises(EdgekitError, match="points outside"):
            check_inside(tmp_path / "run", bad)


# ---- values in ONNX metadata are checked, not trusted -----------------------------------------------


def _with_props(source: Path, target: Path, **changes) -> Path:
    import onnx

    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key]
    onnx.save_model(model, str(target))
    return target


@pytest.fixture
def exported_onnx(run_copy, photo_folders):
    from edgekit.exporting import export

    result = export(run_copy.path, formats="onnx", quantize="none", max_parity_images=8, parity_data=photo_folders[1])
    return Path(result.variants[0].path)


def test_metadata_that_asks_for_a_gigantic_resize_is_refused(exported_onnx, tmp_path, photo_folders):
    from edgekit.metadata import PREPROCESSING_KEY

    image = next((photo_folders[1] / "coffee").iterdir())
    huge = '{"resize": 1000000000, "crop": 1000000000}'
    crafted = _with_props(exported_onnx, tmp_path / "huge.onnx", **{PREPROCESSING_KEY: huge})
    result = CliRunner().invoke(cli, ["predict", str(crafted), str(image)])
    assert result.exit_code == 2, result.output
    assert "huge.onnx" in result.stderr and "sane input size" in result.stderr


def test_metadata_with_the_wrong_number_of_labels_is_refused(exported_onnx, tmp_path, photo_folders):
    from edgekit.metadata import LABELS_KEY

    image = next((photo_folders[1] / "coffee").iterdir())
    crafted = _with_props(exported_onnx, tmp_path / "labels.onnx", **{LABELS_KEY: '["only one"]'})
    result = CliRunner().invoke(cli, ["predict", str(crafted), str(image), "--top-k", "3"])
    assert result.exit_code == 2, result.output
    assert "1 labels" in result.stderr and "3 scores" in result.stderr
