"""ExecuTorch int8, accuracy-aware: layers kept in float by the pt2e quantizer, the search that picks them (shared
with ONNX Runtime's, quantize/fallback.py), its bounds, and the lowered program that really holds the budget.

Needs the executorch extra (and its matching torch); skipped where it is not installed."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sensitive_model import PREPROCESSING, sensitive_setup

pytest.importorskip("executorch.runtime")

from edgekit.exporting.executorch import MAX_BATCH, export_program, int8_quantizer, save_program, search_float_layers  # noqa: E402
from edgekit.exporting.quantize import Validation  # noqa: E402
from edgekit.exporting.quantize.pt2e import Pt2eInt8, run_eager, search_pt2e  # noqa: E402
from edgekit.parity_check import ParityThresholds, compare_logits  # noqa: E402
from edgekit.results import DataSource

BUDGET = 0.99  # top-1 agreement with fp32


@pytest.fixture(scope="module")
def sensitive(photo_folders):
    """(model, calibrated Pt2eInt8, calibration batches, held-out inputs, their fp32 logits) for OneSensitiveLayer."""
    model, train_images, inputs = sensitive_setup(photo_folders)
    calibration = train_images[::2][:32]
    batches = [calibration[i : i + 8] for i in range(0, len(calibration), 8)]
    dynamic = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    program = torch.export.export(model, (torch.from_numpy(calibration[:2]),), dynamic_shapes=dynamic)
    int8 = Pt2eInt8(program.module(), int8_quantizer, batches)
    with torch.no_grad():
        reference = model(torch.from_numpy(inputs)).numpy()
    return model, int8, batches, inputs, reference


def _agreement(logits, reference) -> float:
    return float((logits.argmax(1) == reference.argmax(1)).mean())


def _search(sensitive, budget: float = BUDGET, reachable: bool = True, **bounds):
    _, int8, batches, inputs, reference = sensitive

    def evaluate(candidate):
        return compare_logits(reference, run_eager(candidate, inputs), None, DataSource.images("val"))

    within = (lambda m: m.top1_agreement >= budget) if reachable else (lambda m: False)
    ranking_inputs = np.concatenate(batches)[:16]
    return search_pt2e(int8, Validation(evaluate, within), ranking_inputs, ParityThresholds(min_agreement=budget), "x86-test", **bounds)


def _pte_logits(tmp_path, buffer: bytes, inputs) -> np.ndarray:
    """The program run the way users run it: saved with its side file, loaded by edgekit's executorch runtime."""
    from edgekit import runtimes
    from edgekit.metadata import InputKind, ModelMetadata

    path = save_program(
        buffer, tmp_path / "model.int8.pte", ModelMetadata(["a", "b", "c"], PREPROCESSING, {}, InputKind.FLOAT), MAX_BATCH, True
    )
    return runtimes.load(path).run(inputs)


@pytest.mark.slow
def test_layers_kept_in_float_reuse_the_one_calibration_exactly(sensitive):
    """A candidate's observers are copies of the full model's calibrated ones: the same logits as calibrating it anew."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    _, int8, batches, inputs, _ = sensitive
    assert int8.layers == ["conv1", "conv2", "conv3", "head"]
    for kept in (["conv3"], ["head"]):
        fresh = prepare_pt2e(copy.deepcopy(int8.module), int8_quantizer(kept))
        for batch in batches:
            run_eager(fresh, batch)
        assert np.array_equal(run_eager(convert_pt2e(fresh), inputs), run_eager(int8.converted(kept), inputs))
    assert int8.recalibrations == 0


@pytest.mark.slow
def test_a_float_layer_behind_an_add_leaves_the_conv_before_the_add_quantized():
    """keep_in_float takes a producing conv into float only through its fused activation, never through an add."""

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_a = torch.nn.Conv2d(3, 3, 1)
            self.conv_b = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.conv_b(self.conv_a(x) + x)

    torch.manual_seed(0)
    batches = [np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)]
    program = torch.export.export(Residual().eval(), (torch.from_numpy(batches[0][:2]),))
    int8 = Pt2eInt8(program.module(), int8_quantizer, batches)
    assert int8.layers == ["conv_a", "conv_b"]
    assert int8.float_layers(["conv_b"]) == ["conv_b"]
    run_eager(int8.converted(["conv_b"]), batches[0])  # converts and runs


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
def test_fallback_keeps_the_sensitive_conv_in_float_and_the_program_holds_the_budget(sensitive, tmp_path):
    model, int8, batches, inputs, reference = sensitive
    result = _search(sensitive)
    first = result.steps[0]
    assert first.action == "quantize" and not first.within_budget and first.top1_agreement < 0.9  # the wide channel ruins it
    assert result.within_budget and result.stopped == "within budget" and result.steps[-1].top1_agreement >= BUDGET
    assert result.kept_float[0] == "conv3"  # ranked first: the conv reading the wide tensor
    # conv3 reads float only if conv2 writes float, and XNNPACK runs an int8-weight conv only into an int8 output,
    # so conv2 computes in float with it: at most one more layer.
    assert "conv3" in int8.float_layers(result.kept_float) and len(int8.float_layers(result.kept_float)) <= 2
    assert result.session_config == {} and result.quantized_nodes == 4

    # The lowered program, run by edgekit's runtime, holds the budget that plain int8 broke (steps[0]).
    searched, details = export_program(model, torch.from_numpy(inputs[:2]), batches, choose_float=lambda _: result.kept_float)
    assert _agreement(_pte_logits(tmp_path, searched, inputs), reference) >= BUDGET
    assert details["float_layers"] == int8.float_layers(result.kept_float) and details["quantized_layers"] == 4 - len(
        details["float_layers"]
    )
    # The float convs run inside XNNPACK: only the mean (portable in this model's fp32 program too) is outside.
    assert details["delegated_subgraphs"] >= 1 and set(details["nodes_outside_delegate"]) <= {"aten_mean_dim"}


@pytest.mark.slow
def test_fallback_stops_at_its_step_bound_with_a_clear_message(sensitive):
    result = _search(sensitive, 1.0, reachable=False, max_steps=1)
    assert not result.within_budget
    assert "raise --max-fallback-steps" in result.stopped and "\n" not in result.stopped
    assert len(result.steps) <= 2


@pytest.mark.slow
def test_out_of_budget_search_leaves_its_best_validated_program(sensitive):
    _, int8, _, inputs, reference = sensitive
    result = _search(sensitive, 1.0, reachable=False, max_steps=3)
    assert not result.within_budget and len(result.steps) >= 2
    kept = result.steps[result.kept_step]
    assert kept.top1_agreement == max(s.top1_agreement for s in result.steps)
    assert result.kept_float == kept.kept_float  # what export_program converts and lowers
    assert _agreement(run_eager(int8.converted(result.kept_float), inputs), reference) == pytest.approx(kept.top1_agreement)


@pytest.mark.slow
def test_fallback_stops_at_its_time_bound(sensitive):
    result = _search(sensitive, 1.0, reachable=False, max_seconds=0.0)
    assert not result.within_budget and "time bound" in result.stopped and "\n" not in result.stopped and len(result.steps) == 1


@pytest.mark.parametrize(
    ("accuracy_aware", "images", "why"),
    [(False, object(), "accuracy-aware search off"), (True, None, "no images to validate on (random inputs)")],
)
def test_search_is_skipped_and_says_why(accuracy_aware, images, why):
    from edgekit.exporting import ExportJob, ExportOptions
    from edgekit.variants import Variant

    checker = SimpleNamespace(data=SimpleNamespace(images=images))
    job = ExportJob(
        ExportOptions(accuracy_aware=accuracy_aware), run=None, model=None, spec=None, checker=checker, calibration=None, workdir=None
    )
    record: dict = {}
    assert search_float_layers(job, Variant.parse("executorch-int8"), record) is None  # the one rule every int8 format follows
    assert record == {"skipped": why}


@pytest.mark.slow
def test_a_channels_last_example_still_makes_a_program_that_reads_nchw(sensitive, tmp_path):
    """torch.export records the example's strides as the program's dim order: export_program must export from a
    contiguous example, or the program misreads the contiguous NCHW batches the runtime feeds it."""
    model, _, _, inputs, reference = sensitive
    example = torch.from_numpy(inputs[:2]).to(memory_format=torch.channels_last)
    buffer, _ = export_program(model, example)
    logits = _pte_logits(tmp_path, buffer, inputs)
    assert np.abs(logits - reference).max() <= 1e-3 * (np.abs(reference).max() + 1)
