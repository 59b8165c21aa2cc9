"""Runtimes: each one loads a tiny exported model of a trained run and returns the same logits as eager torch."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit import runtimes
from edgekit.errors import EdgekitError, ModelError
from edgekit.metadata import ModelMetadata


def _onnx_export(model, example, path: Path, metadata: ModelMetadata | None) -> Path:
    """ONNX through edgekit's own exporter (dynamo, one file, dynamic batch, metadata props)."""
    from edgekit.exporting.onnx import export_onnx

    return export_onnx(model, path, example, metadata)


def write_exports(run, with_quantized: bool = False) -> dict[str, Path]:
    """Write what `edgekit export` leaves in a run's exports/ folder (file names as it names them):
    model.onnx, model.fp32-uint8in.onnx (embedded preprocessing), model.pt2, and with ``with_quantized``
    model.int8.onnx (static QDQ, calibrated on the run's real training photos) and model.int8-dynamic.onnx."""
    from edgekit.exporting.embed import EmbeddedPreprocessing
    from edgekit.exporting.torch_export import export_program
    from edgekit.preprocessing import example_pixels

    exports = run.exports_dir
    model = run.build_model()
    card = run.card
    crop = card.preprocessing.crop
    example = torch.randn(2, 3, crop, crop)
    metadata = ModelMetadata(list(card.class_names), card.preprocessing, {"run": run.path.name, "model": card.model})
    paths = {"fp32": _onnx_export(model, example, exports / "model.onnx", metadata)}
    uint8_meta = ModelMetadata(metadata.labels, metadata.preprocessing, metadata.source, "uint8-nhwc")
    embedded = EmbeddedPreprocessing(model, card.preprocessing).eval()
    paths["uint8"] = _onnx_export(embedded, example_pixels(card.preprocessing), exports / "model.fp32-uint8in.onnx", uint8_meta)
    paths["pt2"] = export_program(model, exports / "model.pt2", example, metadata)
    if with_quantized:
        from edgekit.data import load_batch, run_images
        from edgekit.exporting.quantize import quantize_dynamic_matmul, quantize_static

        train = run_images(card, "train")
        batch = load_batch([p for p, _ in train.samples[:16]], card.preprocessing)
        paths["int8"] = quantize_static(paths["fp32"], exports / "model.int8.onnx", [batch[i : i + 4] for i in range(0, 16, 4)])
        paths["int8-dynamic"] = quantize_dynamic_matmul(paths["fp32"], exports / "model.int8-dynamic.onnx")
    return paths


@pytest.fixture(scope="module")
def exported(trained_run, module_tmp):
    """A private copy of the trained run with exports/model.onnx, model.fp32-uint8in.onnx, model.pt2, and a
    bare.onnx and exports/plain.pt2 without edgekit metadata."""
    from edgekit.runs import Run

    target = module_tmp.mktemp("runtimes") / "run"
    shutil.copytree(trained_run.path, target)
    run = Run.load(target)
    paths = write_exports(run)
    paths["bare"] = _onnx_export(run.build_model(), torch.randn(2, 3, 48, 48), target / "bare.onnx", None)
    paths["pt2-no-metadata"] = target / "exports" / "plain.pt2"
    torch.export.save(torch.export.export(run.build_model(), (torch.randn(2, 3, 48, 48),)), str(paths["pt2-no-metadata"]))
    return run, paths


@pytest.fixture(scope="module")
def images(exported):
    """Real-photo validation crops: as float32 NCHW (preprocessed) and as uint8 NHWC (resized and cropped)."""
    from edgekit.data import load_image, run_images

    run, _ = exported
    paths = [p for p, _ in run_images(run.card, "val").samples[:6]]
    transform, geometry = run.card.preprocessing.transform(), run.card.preprocessing.geometry_transform()
    floats = np.stack([transform(load_image(p)).numpy() for p in paths])
    pixels = np.stack([geometry(load_image(p)) for p in paths])
    return floats, pixels


def _reference(run, floats):
    with torch.no_grad():
        return run.build_model()(torch.from_numpy(floats)).numpy()


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.parametrize("variant,runtime", [("run", "torch"), ("pt2", "torch-export"), ("fp32", "ort-cpu"), ("bare", "ort-cpu")])
def test_each_runtime_matches_eager_torch(exported, images, variant, runtime):
    run, paths = exported
    floats, _ = images
    artifact = run.path if variant == "run" else paths[variant]
    session = runtimes.load(artifact, runtime, threads=1)
    logits = session.run(floats)
    reference = _reference(run, floats)
    assert logits.dtype == np.float32 and logits.shape == (len(floats), run.card.num_classes)
    assert reference.std() > 0.1, "test model is degenerate; parity would pass vacuously"
    np.testing.assert_allclose(logits, reference, rtol=1e-3, atol=1e-3 * float(np.abs(reference).max()))
    assert session.input_kind == "float32-nchw"
    assert session.runtime == runtime


def test_uint8_model_takes_pixels_and_matches(exported, images):
    run, paths = exported
    floats, pixels = images
    session = runtimes.load(paths["uint8"], threads=1)
    assert session.input_kind == "uint8-nhwc"
    assert session.resolved_input_shape() == (48, 48, 3)
    assert session.example_batch(3).dtype == np.uint8
    logits = session.run(pixels)
    reference = _reference(run, floats)
    np.testing.assert_array_equal(logits.argmax(1), reference.argmax(1))
    np.testing.assert_allclose(logits, reference, atol=2e-3 * float(np.abs(reference).max()))


def test_auto_runtime_follows_the_artifact(exported):
    run, paths = exported
    assert runtimes.load(paths["fp32"]).runtime == "ort-cpu"
    assert runtimes.load(paths["pt2"]).runtime == "torch-export"
    assert runtimes.load(run.path).runtime == "torch"
    assert runtimes.load(run.model_path).runtime == "torch"


def test_labels_preprocessing_and_shape_come_with_the_session(exported):
    run, paths = exported
    for artifact in (paths["fp32"], paths["pt2"], run.path):
        session = runtimes.load(artifact, threads=1)
        assert session.labels == run.card.class_names
        assert session.preprocessing == run.card.preprocessing
        assert session.resolved_input_shape() == (3, 48, 48)
    outside = run.path.parent / "moved.pt2"  # away from its run: the metadata inside the archive still says it all
    shutil.copy(paths["pt2"], outside)
    moved = runtimes.load(outside, threads=1)
    assert moved.labels == run.card.class_names and moved.preprocessing == run.card.preprocessing
    plain = runtimes.load(paths["pt2-no-metadata"], threads=1)  # no metadata inside: the run card it sits under
    assert plain.labels == run.card.class_names
    bare = runtimes.load(paths["bare"])
    assert bare.labels is None and bare.preprocessing is None
    assert bare.resolved_input_shape() == (3, 48, 48)  # from the graph
    assert bare.example_batch(2).shape == (2, 3, 48, 48)


def test_settings_are_recorded(exported):
    _, paths = exported
    session = runtimes.load(paths["fp32"], "ort-cpu", threads=1, graph_optimization_level="basic", allow_spinning=False)
    assert session.info["intra_op_threads"] == 1
    assert session.info["graph_optimization_level"] == "basic"
    assert session.info["providers"] == ["CPUExecutionProvider"]
    assert session.info["allow_spinning"] is False
    torch_session = runtimes.load(paths["pt2"], threads=1)
    assert torch_session.info["threads"] == 1


def test_unknown_runtime_lists_the_registered_ones():
    with pytest.raises(
        EdgekitError, match="registered runtimes: torch, torch-export, ort-cpu, ort-cuda, openvino, executorch, litert, ncnn$"
    ):
        runtimes.get_runtime("tensorrt")
    assert set(runtimes.available_runtimes()) == {
        "torch",
        "torch-export",
        "ort-cpu",
        "ort-cuda",
        "openvino",
        "executorch",
        "litert",
        "ncnn",
    }


def test_unavailable_runtime_is_reported_with_its_reason(exported, monkeypatch):
    import onnxruntime

    _, paths = exported
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    reason = runtimes.available_runtimes()["ort-cuda"]
    assert reason is not None and "CUDAExecutionProvider" in reason and "onnxruntime-gpu" in reason
    with pytest.raises(EdgekitError, match="ort-cuda is not available here: .*CUDAExecutionProvider"):
        runtimes.load(paths["fp32"], "ort-cuda")

    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail, as where it is not installed
    assert "pip install" in runtimes.available_runtimes()["openvino"]


def test_wrong_artifact_kind_option_typo_and_bad_values_are_refused(exported):
    run, paths = exported
    with pytest.raises(EdgekitError, match="cannot load .*model.pt2.*--runtime torch-export"):
        runtimes.load(paths["pt2"], "ort-cpu")
    with pytest.raises(EdgekitError, match="no option 'graph_opt_level'.*graph_optimization_level"):
        runtimes.load(paths["fp32"], "ort-cpu", graph_opt_level="basic")
    with pytest.raises(EdgekitError, match="'fast' is not one of"):
        runtimes.load(paths["fp32"], "ort-cpu", graph_optimization_level="fast")
    with pytest.raises(EdgekitError, match="--threads 0"):
        runtimes.load(paths["fp32"], threads=0)
    with pytest.raises(EdgekitError, match="does not exist"):
        runtimes.load(run.path / "nothing.onnx")


def test_corrupt_onnx_is_a_model_error(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07not a protobuf at all")
    with pytest.raises(ModelError, match="broken.onnx"):
        runtimes.load(broken)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        runtimes.register(runtimes.get_runtime("ort-cpu"))


@pytest.mark.gpu
def test_ort_cuda_matches_cpu(exported, images):
    _, paths = exported
    floats, _ = images
    if runtimes.available_runtimes()["ort-cuda"] is not None:
        pytest.skip(runtimes.available_runtimes()["ort-cuda"])
    cuda = runtimes.load(paths["fp32"], "ort-cuda")
    assert cuda.device == "cuda" and "CUDAExecutionProvider" in cuda.info["providers"]
    np.testing.assert_allclose(cuda.run(floats), runtimes.load(paths["fp32"]).run(floats), rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
def test_torch_on_cuda_matches_cpu(exported, images):
    run, _ = exported
    floats, _ = images
    gpu = runtimes.load(run.path, "torch", device="cuda")
    np.testing.assert_allclose(gpu.run(floats), runtimes.load(run.path).run(floats), rtol=1e-2, atol=1e-2)
