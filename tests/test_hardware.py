"""The ISA decision, with simulated CPU flags, and the runtime metadata that carries it."""

from __future__ import annotations

import pytest

from edgekit import hardware
from edgekit.errors import ModelError
from edgekit.metadata import RUNTIME_KEY, ModelMetadata

EPYC_ZEN2 = {"sse2", "avx", "avx2", "fma"}
SKYLAKE_SP = EPYC_ZEN2 | {"avx512f", "avx512bw"}
ICE_LAKE = SKYLAKE_SP | {"avx512_vnni"}
SAPPHIRE_RAPIDS = ICE_LAKE | {"amx_int8", "amx_tile"}
ALDER_LAKE = EPYC_ZEN2 | {"avx_vnni"}


@pytest.mark.parametrize(
    "flags, machine, isa, saturates",
    [
        (EPYC_ZEN2, "x86_64", "x86-avx2", True),
        (SKYLAKE_SP, "x86_64", "x86-avx512", True),
        (ICE_LAKE, "x86_64", "x86-avx512-vnni", False),
        (SAPPHIRE_RAPIDS, "x86_64", "x86-amx", False),
        (ALDER_LAKE, "x86_64", "x86-avx-vnni", False),
        ({"sse2"}, "x86_64", "x86", True),
        ({"fp", "asimd", "asimddp"}, "aarch64", "arm64-dotprod", False),
        ({"fp", "asimd"}, "aarch64", "arm64", False),
        (set(), "riscv64", "unknown", False),
    ],
)
def test_isa_class_and_saturation(flags, machine, isa, saturates):
    assert hardware.isa_class(flags, machine) == isa
    assert hardware.int8_saturates(isa) is saturates
    assert hardware.int8_runtime_config(isa) == ({"session.x64quantprecision": "1"} if saturates else {})


def test_this_machine_has_a_class():
    assert hardware.isa_class() in hardware.ISA_CLASSES


def test_numerics_compare_by_saturation_not_by_name():
    assert hardware.same_int8_numerics("x86-avx512-vnni", "x86-amx")
    assert hardware.same_int8_numerics("x86-avx2", "x86-avx512")
    assert not hardware.same_int8_numerics("x86-avx512-vnni", "x86-avx2")
    assert hardware.same_int8_numerics(None, "x86-avx2")


def test_runtime_metadata_round_trips():
    runtime = {"ort_session_config": {"session.x64quantprecision": "1"}, "validated_isa": "x86-avx2"}
    metadata = ModelMetadata(["a", "b"], None, {"variant": "int8"}, runtime=runtime)
    again = ModelMetadata.from_props(metadata.to_props())
    assert again.ort_session_config == {"session.x64quantprecision": "1"}
    assert again.validated_isa == "x86-avx2"
    assert ModelMetadata.from_props(ModelMetadata(["a"], None, {}).to_props()).runtime == {}


@pytest.mark.parametrize(
    "payload",
    [
        '{"ort_session_config": {"session.use_env_allocators": "1"}}',  # not on the allow-list
        '{"ort_session_config": {"session.x64quantprecision": "7"}}',
        '{"ort_session_config": ["session.x64quantprecision"]}',
        '["x"]',
        '{"validated_isa": "' + "x" * 100 + '"}',
    ],
)
def test_runtime_metadata_from_another_hand_is_checked(payload):
    with pytest.raises(ModelError) as info:
        ModelMetadata.from_props({RUNTIME_KEY: payload}, "evil.onnx")
    assert "evil.onnx" in str(info.value) and "\n" not in str(info.value)


def test_ort_applies_the_recorded_session_config(trained_run, tmp_path):
    """A model that records U8U8 int8 kernels gets them in edgekit's ORT runtime (on any x86 CPU it runs)."""
    import shutil

    import numpy as np
    import onnx

    from edgekit import runtimes
    from edgekit.exporting import export
    from edgekit.exporting.onnx import set_metadata

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run.path, run_dir)
    export(run_dir, quantize="int8")
    path = run_dir / "exports" / "model.int8.onnx"
    proto = onnx.load(str(path))
    set_metadata(proto, {RUNTIME_KEY: '{"ort_session_config": {"session.x64quantprecision": "1"}, "validated_isa": "x86-avx2"}'})
    onnx.save(proto, str(path))
    session = runtimes.load(path, runtime="ort-cpu")
    assert session.info["session_config"] == {"session.x64quantprecision": "1"}
    crop = trained_run.card.preprocessing.crop
    logits = session.run(np.zeros((2, 3, crop, crop), np.float32))
    assert logits.shape == (2, trained_run.card.num_classes) and np.isfinite(logits).all()


def test_a_model_validated_on_another_int8_class_gets_a_note():
    assert hardware.isa_mismatch_note("x86-avx2", "x86-avx512-vnni") is not None
    assert "x86-avx2" in hardware.isa_mismatch_note("x86-avx2", "x86-amx")
    assert hardware.isa_mismatch_note("x86-amx", "x86-avx512-vnni") is None
    assert hardware.isa_mismatch_note(None, "x86-avx2") is None
