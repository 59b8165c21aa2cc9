"""One Variant type: names, file names, parents and the one rule that says what a file is."""

from __future__ import annotations

import pytest

from edgekit.errors import EdgekitError
from edgekit.formats import EXECUTORCH, ONNX
from edgekit.variants import InputKind, Precision, Variant, all_names, format_of


@pytest.mark.parametrize(
    "name, file_name",
    [
        ("fp32", "model.onnx"),
        ("int8", "model.int8.onnx"),
        ("int8-dynamic", "model.int8-dynamic.onnx"),
        ("fp16-uint8in", "model.fp16-uint8in.onnx"),
        ("int8-b1", "model.int8-b1.onnx"),
        ("fp32-uint8in-b4", "model.fp32-uint8in-b4.onnx"),
        ("torch-export", "model.pt2"),
        ("executorch-fp32", "model.pte"),
        ("executorch-int8", "model.int8.pte"),
        ("openvino-fp32", "model.xml"),
        ("openvino-int8", "model.int8.xml"),
    ],
)
def test_names_round_trip_and_name_their_files(name, file_name):
    variant = Variant.parse(name)
    assert variant.name == name == str(variant)
    assert variant.file_name == file_name
    assert Variant.parse(variant.name) == variant  # frozen and comparable


def test_relations():
    int8 = Variant.parse("int8-uint8in-b1")
    assert int8.fp32_parent == Variant(Precision.FP32, InputKind.UINT8, ONNX, 1)
    assert int8.is_compressed and not int8.fp32_parent.is_compressed
    assert Variant.parse("int8-dynamic").threshold_kind == "int8"
    assert Variant.parse("fp16").threshold_kind == "fp16"
    assert Variant.parse("executorch-int8").fp32_parent.name == "executorch-fp32"
    assert Variant.parse("int8").quantize_choice == "int8" and Variant.parse("fp32").quantize_choice == "none"


@pytest.mark.parametrize("bad", ["int4", "fp32-uint8", "executorch-fp16", "openvino-int8-dynamic", "", "int8-b0"])
def test_unknown_names_are_one_line_errors(bad):
    with pytest.raises(EdgekitError) as info:
        Variant.parse(bad)
    assert "\n" not in str(info.value)


def test_every_listed_name_parses():
    for name in all_names():
        assert Variant.parse(name).name == name
    assert "executorch-int8" in all_names() and "int8-uint8in" in all_names(ONNX)


def test_format_of_names_the_file(tmp_path):
    assert format_of(tmp_path / "a.pte") is EXECUTORCH
    with pytest.raises(EdgekitError, match="notes.txt"):
        format_of(tmp_path / "notes.txt")


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
def test_of_artifact_reads_metadata_then_graph(trained_run, tmp_path):
    """An exported int8 file says so in its metadata; renamed and stripped of metadata, its graph still says so."""
    import shutil

    import onnx

    from edgekit.exporting import export

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run.path, run_dir)
    export(run_dir, quantize="none,int8")
    int8 = run_dir / "exports" / "model.int8.onnx"
    assert Variant.of_artifact(int8).name == "int8"
    bare = tmp_path / "renamed.onnx"
    proto = onnx.load(str(int8))
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    assert Variant.of_artifact(bare).name == "int8"
    fp32 = tmp_path / "other.onnx"
    proto = onnx.load(str(run_dir / "exports" / "model.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(fp32))
    assert Variant.of_artifact(fp32).name == "fp32"
    assert Variant.of_artifact(tmp_path / "model.int8.pte").name == "executorch-int8"
