"""OpenVINO IR: export (fp32 + NNCF int8) of the trained test run, parity, predict, bench, and files from other hands."""

from __future__ import annotations

import shutil
import sys

import pytest
from click.testing import CliRunner

pytest.importorskip("openvino")

from edgekit import runtimes  # noqa: E402
from edgekit.cli import cli as main  # noqa: E402
from edgekit.errors import EdgekitError, ExportError, ModelError  # noqa: E402


@pytest.fixture(scope="module")
def ov_run(copy_trained_run):
    """A private copy of the trained run exported to openvino-fp32 and openvino-int8."""
    from edgekit.exporting import export

    run = copy_trained_run("openvino")
    return run, export(run, formats="openvino", quantize="none,int8", calib_size=30)


def _copy_ir(run, tmp_path, name="model"):
    for suffix in (".xml", ".bin"):
        shutil.copy(run.exports_dir / f"{name}{suffix}", tmp_path / f"model{suffix}")
    return tmp_path / "model.xml"


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
def test_export_writes_ir_pairs_with_parity(ov_run):
    run, result = ov_run
    by_name = {v.variant: v for v in result.variants}
    assert set(by_name) == {"openvino-fp32", "openvino-int8"}
    for name, file_name in (("openvino-fp32", "model"), ("openvino-int8", "model.int8")):
        assert (run.exports_dir / f"{file_name}.xml").is_file() and (run.exports_dir / f"{file_name}.bin").is_file()
        assert (run.exports_dir / f"{name}.parity.json").is_file()
    fp32 = by_name["openvino-fp32"]
    assert fp32.passed, fp32.failures
    assert fp32.parity.metrics.data_source.kind == "images"
    assert fp32.parity.metrics.top1_agreement >= 0.999
    assert fp32.parity.metrics.max_rel_diff < 1e-4  # float32 kept: no fp16 weights, no bf16 inference
    int8 = by_name["openvino-int8"]
    assert int8.int8.calibration_images == 30
    assert int8.int8.overflow_fix in (True, False)
    assert int8.size_bytes < fp32.size_bytes / 2  # int8 weights
    # int8 is accuracy-aware, as ONNX int8 is: NNCF's accuracy control ran against the run's accuracy budget, and a
    # model within it one standard error inside the limit passes the parity check too.
    search = int8.int8.search
    assert search.budget.max_accuracy_drop == 0.01 and search.metric == "accuracy"
    assert search.steps[0].action == "quantize" and int8.int8.kept_float == search.kept_float
    assert int8.passed or not search.within_budget
    # No stray temporary files from the atomic writes.
    assert not [p for p in run.exports_dir.iterdir() if p.name.startswith(".")]


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
def test_cpu_without_vnni_gets_the_overflow_fix(run_copy, monkeypatch):
    """On a CPU whose int8 dot product saturates (simulated: AVX2 without VNNI), the IR int8 is quantized with NNCF's
    OverflowFix (7-bit weights), the model records the ISA class, and it still agrees with fp32 on this CPU."""
    from edgekit import hardware
    from edgekit.exporting import export

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"sse4_2", "avx", "avx2", "fma"}))
    assert hardware.isa_class() == "x86-avx2" and hardware.int8_saturates("x86-avx2")
    int8 = export(run_copy, formats="openvino", quantize="int8", calib_size=30).variants[0]
    assert int8.int8.overflow_fix is True and int8.int8.isa == "x86-avx2"
    # 24 validation photos: one flipped image is 4 points, so the 1-point budget is not what this checks; that the
    # 7-bit model runs and still agrees with fp32 on real photos is.
    assert int8.parity.metrics.data_source.kind == "images"
    assert int8.parity.metrics.top1_agreement >= 0.85


@pytest.mark.slow
def test_ir_loads_with_labels_and_preprocessing(ov_run):
    run, _ = ov_run
    session = runtimes.load(run.exports_dir / "model.xml", threads=1)
    assert session.runtime == "openvino"
    assert session.labels == list(run.card.class_names)
    assert session.preprocessing == run.card.preprocessing
    assert session.info["inference_precision_hint"] == "f32"
    logits = session.run(session.example_batch(3))
    assert logits.shape == (3, run.card.num_classes)


@pytest.mark.slow
def test_predict_and_bench_on_ir(ov_run, photo_folders):
    run, _ = ov_run
    image = next(photo_folders[1].rglob("*.jpg"))
    predicted = CliRunner().invoke(main, ["predict", str(run.exports_dir / "model.xml"), str(image), "--json"])
    assert predicted.exit_code == 0, predicted.output
    assert any(label in predicted.output for label in run.card.class_names)

    from edgekit.benchmarking import bench

    result = bench(run.exports_dir / "model.int8.xml", runtimes=["openvino"], threads=1, warmup=1, iterations=3)
    assert [m.runtime for m in result.measurements] and all(m.runtime == "openvino" for m in result.measurements)


def test_missing_extra_is_one_line_exit_2(run_copy, monkeypatch):
    from edgekit.exporting import export

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` fails, as where it is not installed
    with pytest.raises(ExportError, match=r"pip install 'edgekit\[openvino\]'"):
        export(run_copy, formats="openvino")
    result = CliRunner().invoke(main, ["export", str(run_copy.path), "--format", "openvino"])
    assert result.exit_code == 2
    assert "edgekit[openvino]" in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated-bin", "other-bin", "garbage-xml", "truncated-xml", "missing-bin"])
def test_damaged_ir_is_refused_in_one_line(ov_run, photo_folders, tmp_path, damage):
    run, _ = ov_run
    xml = _copy_ir(run, tmp_path)
    weights = xml.with_suffix(".bin")
    if damage == "truncated-bin":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "other-bin":  # same size, other weights: only the recorded digest can tell
        shutil.copy(run.exports_dir / "model.bin", weights)
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "garbage-xml":
        xml.write_bytes(b"\x00\x01not an IR at all")
    elif damage == "truncated-xml":
        xml.write_bytes(xml.read_bytes()[:2000])
    else:
        weights.unlink()
    with pytest.raises(ModelError):
        runtimes.load(xml)
    image = next(photo_folders[1].rglob("*.jpg"))
    result = CliRunner().invoke(main, ["predict", str(xml), str(image)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.slow
@pytest.mark.parametrize(
    "field, bad",
    [
        ("edgekit.labels", "{&quot;not&quot;: &quot;a list&quot;}"),
        ("edgekit.preprocessing", "{&quot;resize&quot;: 100000000, &quot;crop&quot;: 100000000}"),
    ],
)
def test_tampered_rt_info_is_checked_like_onnx_metadata(ov_run, tmp_path, field, bad):
    import re

    run, _ = ov_run
    xml = _copy_ir(run, tmp_path)
    text = xml.read_text(encoding="utf-8")
    tampered, count = re.subn(rf'(<{re.escape(field)} value=")[^"]*(")', rf"\g<1>{bad}\g<2>", text)
    assert count == 1
    xml.write_text(tampered, encoding="utf-8")
    with pytest.raises(ModelError, match=re.escape(field)):
        runtimes.load(xml)


@pytest.mark.slow
def test_inference_precision_option_is_checked(ov_run):
    run, _ = ov_run
    with pytest.raises(EdgekitError, match="inference precision"):
        runtimes.load(run.exports_dir / "model.xml", inference_precision="int4")


@pytest.mark.slow
def test_throughput_runs_a_batch_on_every_stream_and_the_cards_code_does_the_same(ov_run, tmp_path):
    """Under THROUGHPUT one synchronous request keeps one stream busy (a batch of 8 ran at one thread's speed with
    2 streams on 2 cores), so auto would have timed the hint unfairly. The session splits the batch over the
    requests the compiled model asks for, and the app code the card writes does the same, with the same logits."""
    import subprocess

    import numpy as np

    from edgekit.data import load_batch
    from edgekit.parity_check import images_in
    from edgekit.runtimes.tuning import Example, Setting

    run, _ = ov_run
    images = images_in(run.card.val_dir, run.card.class_names, max_images=8)
    batch = load_batch(images.paths, run.card.preprocessing).astype(np.float32)
    xml = run.exports_dir / "model.xml"
    latency = runtimes.load(xml, "openvino", threads=2, performance_hint="LATENCY")
    streams = runtimes.load(xml, "openvino", threads=2, performance_hint="THROUGHPUT", num_streams=2)
    assert getattr(streams._run, "requests", 1) == 2 and not hasattr(latency._run, "requests")
    expected = latency.run(batch)
    assert expected.shape == (8, run.card.num_classes) and np.ptp(expected) > 1  # trained logits, not a flat output
    np.testing.assert_allclose(streams.run(batch), expected, rtol=1e-4, atol=1e-4)
    assert (streams.run(batch[:3]).argmax(1) == expected[:3].argmax(1)).all()  # a batch smaller than the streams

    setting = Setting(2, {"inference_precision": "f32", "performance_hint": "THROUGHPUT"}, "2 threads, f32, THROUGHPUT")
    code = runtimes.get_runtime("openvino").app_code("model.xml", setting, Example(batch.shape))
    assert "start_async" in code.python and "optimal_number_of_infer_requests" in code.cpp
    np.save(tmp_path / "batch.npy", batch)
    (zeros,) = [line for line in code.python.splitlines() if line.startswith("batch = np.zeros(")]
    script = code.python.replace(zeros, f"batch = np.load({str(tmp_path / 'batch.npy')!r})")  # the real images
    script += f"\nnp.save({str(tmp_path / 'out.npy')!r}, logits)\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=run.exports_dir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-4, atol=1e-4)
