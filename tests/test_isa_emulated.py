"""An int8 file on a CPU without VNNI, emulated with qemu's user-mode x86 emulator (skipped where it is not
installed: ``apt-get install qemu-user``; CI does not have it). ONNX Runtime picks its int8 kernels from CPUID, and
``qemu-x86_64 -cpu EPYC-Rome`` reports a Zen 2 (AVX2, no AVX-512, no VNNI), so this runs the real u8s8/U8U8 kernel
choice of such a CPU on whatever x86 machine the tests have. benchmarks/bench_isa_emulated.py measures the same
on a 224 px model and real digits."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_isa_emulated import logits  # noqa: E402  (the benchmark's runner: one way to run a model emulated)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 (qemu-user) is not installed"),
]


def test_int8_under_edgekits_session_config_computes_on_a_cpu_without_vnni_what_was_validated(run_copy, tmp_path):
    from edgekit.data import load_batch
    from edgekit.exporting import export
    from edgekit.hardware import isa_class, ort_session_config_here
    from edgekit.metadata import read_onnx_metadata
    from edgekit.parity_check import images_in

    (int8,) = export(run_copy, quantize="int8", accuracy_aware=False, speed_check=False).variants
    images = images_in(run_copy.card.val_dir, run_copy.card.class_names, max_images=8)
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, load_batch(images.paths, run_copy.card.preprocessing).astype(np.float32))

    model, out = Path(int8.path), tmp_path / "out.npy"
    metadata = read_onnx_metadata(int8.path)
    native = logits(model, inputs, out, metadata.ort_session_config, None, 600)  # what export validated
    # what edgekit's ORT runtime would run this file under on a Zen 2 (qemu cannot show it its own CPU flags)
    zen2 = ort_session_config_here(metadata.ort_session_config, metadata.validated_isa, "x86-avx2")
    assert zen2, "a CPU without VNNI must get a session config against u8s8 saturation"
    emulated = logits(model, inputs, out, zen2, "EPYC-Rome", 600)
    # Both paths sum exact integer products; only float requantization could differ, by a rounding step at most.
    assert (emulated.argmax(1) == native.argmax(1)).all()
    assert np.abs(emulated - native).max() <= 0.02 * np.abs(native).max(), f"validated on {isa_class()}, differs emulated"
