"""`edgekit export` on a small trained model: every format and quantization, metadata, dynamic batch,
embedded preprocessing, parity failures that exit 1, and a zoo model exported directly."""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from edgekit.cli import cli
from edgekit.errors import ConfigError, ExportError
from edgekit.exporting import ExportResult, export, variant_file_name
from edgekit.metadata import read_onnx_metadata
from edgekit.parity_check import ParityResult
from edgekit.runs import Run

ALL_VARIANTS = ("fp32", "fp16", "int8", "int8-dynamic", "fp32-uint8in", "int8-uint8in", "torch-export")


@pytest.fixture(scope="module")
def exported(trained_run, module_tmp):
    """One export of a copy of the trained run with every format and quantization, run from an empty
    working directory (which must stay empty: no temporary files in the CWD)."""
    base = module_tmp.mktemp("export")
    run_dir = base / "run"
    shutil.copytree(trained_run.path, run_dir)
    cwd = base / "cwd"
    cwd.mkdir()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        result = export(run_dir, formats="all", quantize="none,fp16,int8,int8-dynamic", calib_size=30)
        embedded = export(run_dir, formats="onnx", quantize="none,int8", embed_preprocessing=True, calib_size=30)
    finally:
        os.chdir(previous)
    variants = {v.variant: v for v in [*result.variants, *embedded.variants]}
    return Run.load(run_dir), result, variants, cwd


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
def test_every_variant_is_written_and_passes(exported):
    run, result, variants, cwd = exported
    assert set(variants) == set(ALL_VARIANTS)
    assert result.passed and all(v.passed for v in variants.values())
    assert str(result.parity_data) == f"images:{run.card.val_dir}"
    names = sorted(p.name for p in run.exports_dir.iterdir())
    for name, variant in variants.items():
        assert variant.path == str(run.exports_dir / variant_file_name(name))
        assert variant.size_bytes == os.path.getsize(variant.path) > 0
        report = ParityResult.from_json(run.exports_dir / f"{name}.parity.json")
        assert report.passed and report.variant == name and report.metrics.n_images == 24
    assert "model.onnx" in names and "model.pt2" in names
    # one self-contained file per variant: no side .data file, no temporary file left behind
    assert not [n for n in names if n.endswith((".data", ".tmp")) or n.startswith(".")]
    assert list(cwd.iterdir()) == []
    assert ExportResult.from_json(result.to_json()) == result


@pytest.mark.slow
def test_precision_shows_in_size_and_parity(exported):
    _, _, variants, _ = exported
    fp32 = variants["fp32"]
    assert fp32.parity.metrics.max_rel_diff < 1e-4 and fp32.parity.metrics.top1_agreement == 1.0
    assert variants["fp16"].size_bytes < 0.55 * fp32.size_bytes
    assert variants["int8"].size_bytes < 0.3 * fp32.size_bytes
    # lossy variants really differ from the reference (so parity is measuring something) but agree on decisions
    assert variants["int8"].parity.metrics.max_abs_diff > 1e-4
    assert variants["int8"].parity.metrics.top1_agreement >= 0.8
    assert variants["int8"].parity.metrics.accuracy_drop is not None
    assert variants["fp16"].parity.metrics.max_abs_diff > 0


@pytest.mark.slow
def test_metadata_round_trip(exported):
    from edgekit.metadata import read_pt2_metadata

    run, _, variants, _ = exported
    for name, variant in variants.items():
        meta = read_pt2_metadata(variant.path) if name == "torch-export" else read_onnx_metadata(variant.path)
        assert meta.labels == run.card.class_names
        assert meta.preprocessing == run.card.preprocessing
        assert meta.source["variant"] == name and meta.source["model"] == "resnet18"
        assert meta.input_kind == ("uint8-nhwc" if name.endswith("-uint8in") else "float32-nchw")
    int8_source = read_onnx_metadata(variants["int8"].path).source
    assert int8_source["quantization"]["calibration_images"] == 30
    assert len(int8_source["quantization"]["kept_float"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fp32", "fp16", "int8", "int8-dynamic", "fp32-uint8in"])
def test_onnx_batch_axis_is_dynamic_and_nothing_else(exported, name):
    import onnxruntime as ort

    run, _, variants, _ = exported
    model = onnx.load(variants[name].path)
    onnx.checker.check_model(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and all(d.dim_value > 0 for d in dims[1:])
    session = ort.InferenceSession(variants[name].path, providers=["CPUExecutionProvider"])
    crop = run.card.preprocessing.crop
    for batch in (1, 2, 7):
        if name.endswith("uint8in"):
            inputs = np.random.default_rng(batch).integers(0, 256, (batch, crop, crop, 3), dtype=np.uint8)
        else:
            inputs = np.random.default_rng(batch).standard_normal((batch, 3, crop, crop)).astype(np.float32)
        (logits,) = session.run(None, {session.get_inputs()[0].name: inputs})
        assert logits.shape == (batch, 3) and logits.dtype == np.float32


@pytest.mark.slow
def test_torch_export_program_loads_and_matches_at_several_batch_sizes(exported):
    run, _, variants, _ = exported
    program = torch.export.load(variants["torch-export"].path)
    model = run.build_model()
    for batch in (1, 2, 7):
        inputs = torch.randn(batch, 3, 48, 48)
        with torch.no_grad():
            torch.testing.assert_close(program.module()(inputs), model(inputs), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_quantized_graphs_have_the_expected_operators(exported):
    _, _, variants, _ = exported
    int8 = onnx.load(variants["int8"].path)
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QuantizeLinear") > 10 and "DequantizeLinear" in ops
    # the first Conv and the final Gemm stay float (better agreement, almost no speed cost)
    kept = read_onnx_metadata(variants["int8"].path).source["quantization"]["kept_float"]
    by_name = {n.name: n for n in int8.graph.node}
    producers = {out: n for n in int8.graph.node for out in n.output}
    for name in kept:
        weight = by_name[name].input[1]
        assert weight not in producers or producers[weight].op_type != "DequantizeLinear", name
    dynamic_ops = {n.op_type for n in onnx.load(variants["int8-dynamic"].path).graph.node}
    assert "MatMulInteger" in dynamic_ops and "ConvInteger" not in dynamic_ops and "Conv" in dynamic_ops
    fp16 = onnx.load(variants["fp16"].path)
    assert {t.data_type for t in fp16.graph.initializer if len(t.dims) > 1} == {onnx.TensorProto.FLOAT16}
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.slow
def test_embedded_preprocessing_takes_pixels_and_predicts_like_the_run(exported, photo_folders):
    from edgekit.prediction import predict

    run, _, variants, _ = exported
    path = variants["fp32-uint8in"].path
    model_input = onnx.load(path).graph.input[0].type.tensor_type
    assert model_input.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in model_input.shape.dim][1:] == [48, 48, 3]
    assert variants["fp32-uint8in"].parity.metrics.max_rel_diff < 1e-4
    images = sorted(photo_folders[1].rglob("*.jpg"))[::4]
    from_onnx = predict(path, images, top_k=1).predictions
    from_run = predict(run.path, images, top_k=1).predictions
    agree = [a.top[0][0] == b.top[0][0] for a, b in zip(from_onnx, from_run)]
    assert sum(agree) >= len(agree) - 1  # PIL vs tensor resizing may move one borderline image


def test_opset_is_selectable(trained_run, tmp_path):
    from edgekit.exporting.onnx import export_onnx

    path = export_onnx(trained_run.build_model(), tmp_path / "m.onnx", torch.randn(1, 3, 48, 48), opset=18)
    assert {o.version for o in onnx.load(str(path)).opset_import if o.domain == ""} == {18}


def test_bad_choices_are_user_errors(trained_run):
    with pytest.raises(ConfigError, match="'int4' is not one of"):
        export(trained_run, quantize="int4")
    with pytest.raises(ConfigError, match="applies to onnx, openvino, executorch, litert only"):
        export(trained_run, formats="torch-export", quantize="int8")
    with pytest.raises(ConfigError, match="calib_method"):
        export(trained_run, quantize="int8", calib_method="mse")
    result = CliRunner().invoke(cli, ["export", str(trained_run.path), "--format", "tflite"])
    assert result.exit_code == 2 and "'tflite' is not one of" in result.output


def test_parity_failure_exits_1_and_keeps_the_file_marked_failed(run_copy):
    result = CliRunner().invoke(cli, ["export", str(run_copy.path), "--format", "onnx", "--max-rel-diff", "1e-12"])
    assert result.exit_code == 1, result.output
    assert "fp32 failed" in result.output and "max_rel_diff" in result.output and "FAIL" in result.output
    assert (run_copy.exports_dir / "model.onnx").is_file()
    report = ParityResult.from_json(run_copy.exports_dir / "fp32.parity.json")
    assert report.passed is False and report.failures[0].startswith("max_rel_diff")


def test_cli_export_json_output(run_copy):
    result = CliRunner().invoke(cli, ["export", str(run_copy.path), "--format", "torch-export", "--json"])
    assert result.exit_code == 0, result.output
    parsed = ExportResult.from_json(result.stdout)
    assert [v.variant for v in parsed.variants] == ["torch-export"] and parsed.passed


def test_int8_without_calibration_data_is_a_clear_error(tmp_path):
    from edgekit.runs import run_from_zoo

    run = run_from_zoo("resnet18", "none", tmp_path / "zoo")
    with pytest.raises(ExportError, match="--calib-data"):
        export(run, quantize="int8")


@pytest.mark.slow
def test_zoo_model_exported_directly(tmp_path, photo_folders):
    """Real ImageNet weights (Lite0, shipped offline), no fine-tune; parity on real photos without labels."""
    out = tmp_path / "lite0"
    result = CliRunner().invoke(
        cli,
        [
            "export",
            "--model",
            "efficientnet_lite0",
            "--weights",
            "DEFAULT",
            "--out",
            str(out),
            "--parity-data",
            str(photo_folders[1]),
            "--max-parity-images",
            "12",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    parsed = ExportResult.from_json(result.stdout)
    (variant,) = parsed.variants
    assert variant.variant == "fp32" and variant.passed
    assert str(variant.parity.metrics.data_source) == f"images:{photo_folders[1]}" and variant.parity.metrics.n_images == 12
    assert variant.parity.metrics.accuracy_drop is None  # photo classes are not ImageNet labels
    meta = read_onnx_metadata(out / "exports" / "model.onnx")
    assert len(meta.labels) == 1000 and meta.preprocessing.mean == (0.5, 0.5, 0.5)


@pytest.mark.slow
def test_zoo_model_without_images_says_parity_was_random(tmp_path):
    result = CliRunner().invoke(
        cli, ["export", "--model", "resnet18", "--weights", "none", "--out", str(tmp_path / "r18"), "--format", "torch-export"]
    )
    assert result.exit_code == 0, result.output
    assert "random inputs" in result.output
