"""The ISA decision, with simulated CPU flags, and the runtime metadata that carries it."""

from __future__ import annotations

import json

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


@pytest.mark.parametrize(
    "recorded, validated, here, expected",
    [
        ({}, "x86-amx", "x86-avx2", {"session.x64quantprecision": "1"}),  # exported with VNNI, run on an EPYC: U8U8
        ({"session.x64quantprecision": "1"}, "x86-avx2", "x86-amx", {}),  # exported on an EPYC, run with VNNI: not
        ({"session.x64quantprecision": "1"}, "x86-avx2", "x86-avx512", {"session.x64quantprecision": "1"}),
        ({}, "x86-avx512-vnni", "x86-avx-vnni", {}),
        ({}, "x86-avx2", "arm64-dotprod", {}),
        ({"session.x64quantprecision": "1"}, None, "x86-amx", {"session.x64quantprecision": "1"}),  # not edgekit's: as is
    ],
)
def test_the_precision_option_follows_the_cpu_that_runs_the_model(recorded, validated, here, expected):
    assert hardware.ort_session_config_here(recorded, validated, here) == expected


def test_a_model_is_validated_here_only_on_its_own_class():
    assert hardware.validated_here("x86-amx", "x86-amx")
    assert hardware.validated_here(None, "x86-avx2")
    assert not hardware.validated_here("x86-avx512-vnni", "x86-amx")
    assert not hardware.validated_here("x86-avx2", "x86-avx512")


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


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
@pytest.mark.parametrize("exported_on", ["x86-avx2", "x86-amx"])
def test_ort_runs_an_int8_file_with_the_precision_of_the_cpu_it_runs_on(trained_run, tmp_path, monkeypatch, exported_on):
    """Whichever CPU exported it, edgekit's ORT runtime gives an int8 file U8U8 kernels on a CPU without VNNI and
    none on one with VNNI (simulated flags), and both compute the same logits wherever this CPU does not saturate."""
    import shutil

    import numpy as np
    import onnx

    from edgekit import runtimes
    from edgekit.exporting import export
    from edgekit.exporting.onnx import set_metadata

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run.path, run_dir)
    export(run_dir, quantize="int8", accuracy_aware=False, speed_check=False)
    path = run_dir / "exports" / "model.int8.onnx"
    proto = onnx.load(str(path))
    recorded = hardware.int8_runtime_config(exported_on)
    set_metadata(proto, {RUNTIME_KEY: json.dumps({"ort_session_config": recorded, "validated_isa": exported_on})})
    onnx.save(proto, str(path))
    crop = trained_run.card.preprocessing.crop
    batch = np.random.default_rng(0).standard_normal((4, 3, crop, crop)).astype(np.float32)
    here = hardware.isa_class()  # the real CPU, before the flags are simulated
    logits = {}
    for cpu, flags in (("epyc", EPYC_ZEN2), ("sapphire rapids", SAPPHIRE_RAPIDS)):
        monkeypatch.setattr(hardware, "cpu_flags", lambda flags=flags: frozenset(flags))
        session = runtimes.load(path, runtime="ort-cpu")
        expected = {"session.x64quantprecision": "1"} if cpu == "epyc" else {}
        assert session.info["session_config"] == expected, cpu
        logits[cpu] = session.run(batch)
        assert logits[cpu].shape == (4, trained_run.card.num_classes) and np.isfinite(logits[cpu]).all()
    if not hardware.int8_saturates(here):
        # U8U8 and VNNI/AMX both sum exact integer products: the same model, the same logits
        np.testing.assert_array_equal(logits["epyc"], logits["sapphire rapids"])
    explicit = runtimes.load(path, runtime="ort-cpu", session_config={"session.x64quantprecision": "0"})
    assert explicit.info["session_config"] == {"session.x64quantprecision": "0"}  # an explicit option wins


def test_a_model_validated_on_another_int8_class_gets_a_note():
    assert "without U8U8" in hardware.isa_mismatch_note("x86-avx2", "x86-avx512-vnni")
    assert "x86-avx2" in hardware.isa_mismatch_note("x86-avx2", "x86-amx")
    assert "session.x64quantprecision=1" in hardware.isa_mismatch_note("x86-amx", "x86-avx2")
    assert "--data" in hardware.isa_mismatch_note("x86-amx", "x86-avx512-vnni")
    assert hardware.isa_mismatch_note("x86-amx", "x86-amx") is None
    assert hardware.isa_mismatch_note(None, "x86-avx2") is None
