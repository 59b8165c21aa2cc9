"""Fixed-shape mobile ONNX: --fixed-batch twins with the same parity, ORT's mobile-usability verdict, .ort files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit import runtimes
from edgekit.cli import cli as main
from edgekit.errors import ConfigError


@pytest.fixture(scope="module")
def mobile_run(trained_run, module_tmp):
    from edgekit.exporting import export
    from edgekit.runs import Run

    target = module_tmp.mktemp("mobile") / "run"
    shutil.copytree(trained_run.path, target)
    run = Run.load(target)
    return run, export(run, formats="onnx", quantize="none,int8", calib_size=30, fixed_batch=1, ort_format=True)


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
def test_fixed_batch_twins_pass_parity_and_nnapi_takes_every_node(mobile_run):
    run, result = mobile_run
    by_name = {v.variant: v for v in result.variants}
    assert set(by_name) == {"fp32", "fp32-b1", "int8", "int8-b1"}
    for name in ("fp32-b1", "int8-b1"):
        variant = by_name[name]
        assert variant.passed, variant.failures
        assert (run.exports_dir / f"{name}.parity.json").is_file()
        nnapi = variant.mobile["nnapi"]
        assert nnapi.supported_nodes == nnapi.nodes > 0 and nnapi.suitability == "YES"
        assert variant.as_variant.fixed_batch == 1 and variant.fixed_from == by_name[name[:-3]].file_name
    assert by_name["fp32-b1"].parity.metrics.top1_agreement >= 0.999
    # The dynamic-batch parent: NNAPI takes no node whose input shape is dynamic.
    parent = by_name["fp32"].mobile["nnapi"]
    assert parent.supported_nodes < parent.nodes and parent.nodes_with_dynamic_input > 0


@pytest.mark.slow
def test_fixed_file_has_a_fixed_batch_and_keeps_its_metadata(mobile_run):
    run, _ = mobile_run
    session = runtimes.load(run.exports_dir / "model.fp32-b1.onnx", threads=1)
    assert session.fixed_batch == 1
    assert session.labels == list(run.card.class_names)
    from edgekit.variants import Variant

    assert Variant.of_artifact(run.exports_dir / "model.int8-b1.onnx").name == "int8-b1"
    import onnxruntime

    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument):
        session.run(session.example_batch(2))  # a fixed-shape model really refuses another batch


@pytest.mark.slow
def test_ort_format_files_match_their_onnx(mobile_run):
    run, result = mobile_run
    for variant in result.variants:
        ort_file = run.exports_dir / variant.ort_file.file
        assert ort_file.suffix == ".ort" and ort_file.stat().st_size == variant.ort_file.bytes > 0
        assert variant.ort_file.max_abs_diff < 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(str(run.exports_dir / "model.fp32-b1.ort"), providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    (logits,) = session.run(None, {session.get_inputs()[0].name: np.zeros(shape, dtype=np.float32)})
    assert logits.shape == (1, run.card.num_classes)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fixed-batch", "0"], "--fixed-batch 0 must be between 1"),
        (["--format", "torch-export", "--fixed-batch", "1"], "add --format onnx"),
        (["--format", "torch-export", "--ort-format"], "add --format onnx"),
    ],
)
def test_mobile_flags_are_checked_in_one_line(run_copy, args, message):
    result = CliRunner().invoke(main, ["export", str(run_copy.path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_fixed_batch_session_runs_any_batch_in_chunks():
    from edgekit.exporting.mobile import FixedBatchSession

    class Doubler:
        input_kind = "float32-nchw"
        calls: list[int] = []

        def run(self, batch):
            assert len(batch) == 4  # the model only ever sees its fixed batch
            self.calls.append(len(batch))
            return batch.reshape(len(batch), -1)[:, :2] * 2

    inner = Doubler()
    inputs = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    out = FixedBatchSession(inner, 4).run(inputs)
    assert out.shape == (7, 2) and np.array_equal(out, inputs[:, :2] * 2)
    assert inner.calls == [4, 4]


def test_a_huge_fixed_batch_is_refused_before_any_work():
    from edgekit.exporting import ExportOptions, plan

    with pytest.raises(ConfigError, match="between 1 and"):
        plan(ExportOptions(fixed_batch=100_000))
