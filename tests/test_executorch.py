"""ExecuTorch: .pte export (fp32 and pt2e int8, XNNPACK-delegated) of the trained test run, parity, predict,
bench, side files from other hands, damaged programs, and the missing extra.

Needs the executorch extra (and its matching torch); skipped where it is not installed."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from click.testing import CliRunner

pytest.importorskip("executorch.runtime")

from edgekit import runtimes  # noqa: E402
from edgekit.cli import cli as main  # noqa: E402
from edgekit.errors import ExportError, ModelError  # noqa: E402
from edgekit.exporting.executorch import MAX_BATCH, read_side_file, side_file_path  # noqa: E402

THREADS = None  # ExecuTorch's threadpool cannot be resized once programs ran (the export fixture runs them)


@pytest.fixture(scope="module")
def et_run(copy_trained_run):
    """A private copy of the trained run exported to executorch-fp32 and executorch-int8."""
    from edgekit.exporting import export

    run = copy_trained_run("executorch")
    return run, export(run, formats="executorch", quantize="none,int8", calib_size=30)


def _copy_program(run, tmp_path, name="model.pte", with_side_file=True):
    shutil.copy(run.exports_dir / name, tmp_path / "model.pte")
    if with_side_file:
        shutil.copy(side_file_path(run.exports_dir / name), side_file_path(tmp_path / "model.pte"))
    return tmp_path / "model.pte"


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
def test_export_writes_delegated_programs_with_parity(et_run):
    run, result = et_run
    by_name = {v.variant: v for v in result.variants}
    assert set(by_name) == {"executorch-fp32", "executorch-int8"}
    for name, file_name in (("executorch-fp32", "model.pte"), ("executorch-int8", "model.int8.pte")):
        variant = by_name[name]
        assert (run.exports_dir / file_name).is_file() and side_file_path(run.exports_dir / file_name).is_file()
        assert (run.exports_dir / f"{name}.parity.json").is_file()
        assert variant.facts["delegated_nodes"] > 0 and variant.facts["delegated_subgraphs"] >= 1
        assert 0.5 < variant.facts["delegated_share"] <= 1.0
        assert variant.facts["batch"] == f"dynamic 1..{MAX_BATCH}"
        assert not variant.warnings  # no compute op of a ResNet falls back to portable kernels
    fp32 = by_name["executorch-fp32"]
    assert fp32.passed, fp32.failures
    assert fp32.parity.metrics.data_source.kind == "images"
    assert fp32.parity.metrics.top1_agreement >= 0.999 and fp32.parity.metrics.max_rel_diff < 1e-4
    int8 = by_name["executorch-int8"]
    assert int8.int8.calibration_images == 30
    # accuracy-aware like ONNX int8: the search (or why it did not run) is recorded the same way
    search = int8.int8.search
    assert search.steps[0].action == "quantize" and search.kept_float == int8.int8.kept_float
    assert search.within_budget == search.steps[search.kept_step].within_budget and "\n" not in search.stopped
    assert set(int8.int8.kept_float) <= set(int8.facts["float_layers"])
    assert int8.size_bytes < fp32.size_bytes / 2


@pytest.mark.slow
def test_program_loads_with_labels_and_runs_batches_beyond_its_plan(et_run):
    run, _ = et_run
    session = runtimes.load(run.exports_dir / "model.pte", threads=THREADS)
    assert session.runtime == "executorch"
    assert session.labels == list(run.card.class_names) and session.preprocessing == run.card.preprocessing
    assert session.fixed_batch is None and session.info["batch"] == f"dynamic 1..{MAX_BATCH}"
    batch = session.example_batch(MAX_BATCH + 3)  # runs as chunks of the planned upper bound
    logits = session.run(batch)
    assert logits.shape == (MAX_BATCH + 3, run.card.num_classes)
    import numpy as np

    assert np.allclose(session.run(batch[-3:]), logits[-3:], atol=1e-5)


@pytest.mark.slow
def test_predict_and_bench_on_pte(et_run, photo_folders):
    run, _ = et_run
    image = next(photo_folders[1].rglob("*.jpg"))
    predicted = CliRunner().invoke(main, ["predict", str(run.exports_dir / "model.int8.pte"), str(image), "--json"])
    assert predicted.exit_code == 0, predicted.output
    assert any(label in predicted.output for label in run.card.class_names)

    from edgekit.benchmarking import bench

    result = bench(run.exports_dir / "model.pte", runtimes=["executorch"], threads=THREADS, warmup=1, iterations=3)
    assert result.measurements and all(m.runtime == "executorch" for m in result.measurements)


def test_missing_extra_is_one_line_exit_2(run_copy, monkeypatch):
    from edgekit.exporting import export

    for name in [m for m in sys.modules if m == "executorch" or m.startswith("executorch.")]:
        monkeypatch.setitem(sys.modules, name, None)  # every `import executorch...` fails, as where it is not installed
    monkeypatch.setitem(sys.modules, "executorch", None)
    with pytest.raises(ExportError, match=r"pip install 'edgekit\[executorch\]'"):
        export(run_copy, formats="executorch")
    result = CliRunner().invoke(main, ["export", str(run_copy.path), "--format", "executorch"])
    assert result.exit_code == 2
    assert "edgekit[executorch]" in result.output and len(result.output.strip().splitlines()) == 1
    assert "pip install 'edgekit[executorch]'" in runtimes.get_runtime("executorch").available()[1]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "flipped", "garbage", "empty"])
def test_damaged_program_is_refused_in_one_line(et_run, photo_folders, tmp_path, damage):
    run, _ = et_run
    pte = _copy_program(run, tmp_path)
    data = pte.read_bytes()
    if damage == "truncated":
        pte.write_bytes(data[: len(data) // 3])
    elif damage == "flipped":
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0xFF
        pte.write_bytes(bytes(flipped))
    elif damage == "garbage":
        pte.write_bytes(b"not a program" * 100)
    else:
        pte.write_bytes(b"")
    with pytest.raises(ModelError, match="does not match its side file"):
        runtimes.load(pte, threads=THREADS)
    image = next(photo_folders[1].rglob("*.jpg"))
    result = CliRunner().invoke(main, ["predict", str(pte), str(image)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_program_without_side_file_is_refused_by_the_runtime(et_run, tmp_path, damage):
    """No side file, so no digest: ExecuTorch's own verification (InternalConsistency) must refuse it, not crash."""
    run, _ = et_run
    pte = _copy_program(run, tmp_path, with_side_file=False)
    data = pte.read_bytes()
    pte.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"\x00" * 4096)
    with pytest.raises(ModelError, match="cannot be loaded by ExecuTorch"):
        runtimes.load(pte, threads=THREADS)


def _tamper(pte, change):
    side = side_file_path(pte)
    data = json.loads(side.read_text())
    change(data)
    side.write_text(json.dumps(data))


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["metadata"].update({"edgekit.labels": json.dumps({"not": "a list"})}), "edgekit.labels"),
        (lambda d: d["metadata"].update({"edgekit.preprocessing": json.dumps({"resize": 10**8, "crop": 10**8})}), "edgekit.preprocessing"),
        (lambda d: d["metadata"].update({"edgekit.labels": ["a", "b", "c"]}), "strings to strings"),
        (lambda d: d.update({"loader": "os.system('echo hi')"}), "unknown key 'loader'"),
        (lambda d: d["program"].update({"path": "/etc/passwd"}), "malformed 'program'"),
        (lambda d: d["program"].update({"max_batch": 10**9}), "max_batch"),
        (lambda d: d.update({"edgekit_side_file": 99}), "not an edgekit side file"),
    ],
)
def test_side_file_from_another_hand_is_checked_like_onnx_metadata(et_run, tmp_path, change, message):
    run, _ = et_run
    pte = _copy_program(run, tmp_path)
    _tamper(pte, change)
    with pytest.raises(ModelError, match=message):
        read_side_file(pte)
    with pytest.raises(ModelError):
        runtimes.load(pte, threads=THREADS)


@pytest.mark.slow
def test_side_file_that_is_not_json_or_too_big(et_run, tmp_path):
    run, _ = et_run
    pte = _copy_program(run, tmp_path)
    side_file_path(pte).write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        read_side_file(pte)
    side_file_path(pte).write_text(" " * 2_000_000)
    with pytest.raises(ModelError, match="bytes, more than"):
        read_side_file(pte)


@pytest.mark.slow
def test_bare_program_runs_without_labels(et_run, tmp_path):
    run, _ = et_run
    pte = _copy_program(run, tmp_path, with_side_file=False)
    session = runtimes.load(pte, threads=THREADS)
    assert session.labels is None
    assert session.run(session.example_batch(2)).shape == (2, run.card.num_classes)


@pytest.mark.slow
def test_relu6_after_conv_is_observed_on_its_own_clamped_range():
    """The stock XNNPACKQuantizer observes the conv's output (the wide pre-activation range) and lets the ReLU6
    share it; the edgekit quantizer leaves the conv output unobserved and observes the ReLU6's own output."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from edgekit.exporting.executorch import relu6_aware_quantizer

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU6(),
        torch.nn.Conv2d(8, 4, 1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).eval()
    example = torch.randn(2, 3, 16, 16) * 4

    def relu6_input_and_observed_min(quantizer):
        quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), quantizer)
        prepared(example)
        (relu6,) = [n for n in prepared.graph.nodes if n.op == "call_function" and "hardtanh" in str(n.target)]
        (observer,) = [getattr(prepared, str(u.target)) for u in relu6.users if u.op == "call_module"]
        return relu6.args[0], float(observer.min_val)

    stock_input, stock_min = relu6_input_and_observed_min(XNNPACKQuantizer())
    fixed_input, fixed_min = relu6_input_and_observed_min(relu6_aware_quantizer())
    assert stock_input.op == "call_module" and stock_min < 0  # shared with the conv: negative pre-activations
    assert fixed_input.op == "call_function" and "conv" in str(fixed_input.target)
    assert fixed_min >= 0  # the clamped range only


@pytest.mark.slow
def test_threads_set_before_the_first_program_and_never_resized_after(et_run, tmp_path):
    """In a fresh process --threads sizes the pool before any program loads; asking for another count after
    programs ran is a one-line error (resizing then aborted a process here), not a crash."""
    import subprocess

    run, _ = et_run
    script = (
        "import sys\n"
        "from edgekit import runtimes\n"
        "from edgekit.errors import EdgekitError\n"
        f"path = {str(run.exports_dir / 'model.pte')!r}\n"
        "first = runtimes.load(path, threads=1)\n"
        "first.run(first.example_batch(2))\n"
        "print('threads', first.info['threads'])\n"
        "runtimes.load(path, threads=1).run(first.example_batch(1))\n"
        "try:\n"
        "    runtimes.load(path, threads=2)\n"
        "except EdgekitError as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "threads 1" in done.stdout
    assert "refused: ExecuTorch's threadpool has 1 threads" in done.stdout
