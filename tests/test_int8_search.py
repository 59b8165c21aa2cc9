"""Accuracy-aware int8: the fallback loop, its bounds, and `--quantize auto`'s choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sensitive_model import sensitive_setup

from edgekit.exporting.quantize import Ranking, Validation, calibrate, prepare, run_onnx, search_int8
from edgekit.parity_check import ParityThresholds, compare_logits
from edgekit.results import DataSource


@pytest.fixture(scope="module")
def sensitive(module_tmp, photo_folders):
    """(fp32 onnx, prepared, calibration batches, validation inputs, fp32 logits) for OneSensitiveLayer on real photo crops."""
    from edgekit.exporting.onnx import export_onnx

    work = module_tmp.mktemp("sensitive")
    model, train_images, inputs = sensitive_setup(photo_folders)
    base = work / "model.onnx"
    export_onnx(model, base, torch.randn(2, 3, 32, 32))
    calibration = train_images[::2][:32]
    prepared = prepare(base, work / "prepared.onnx")
    reference = run_onnx(base, inputs, {})
    return base, prepared, [calibration[i : i + 8] for i in range(0, len(calibration), 8)], inputs, reference, work


def _search(sensitive, budget: float, reachable: bool = True, **bounds):
    base, prepared, calibration, inputs, reference, work = sensitive
    ranges = calibrate(prepared, iter(calibration), "minmax", work)

    def evaluate(path):
        return compare_logits(reference, run_onnx(path, inputs, {}), None, DataSource.images("val"))

    ranking_inputs = np.concatenate(calibration)[:16]
    ranking = Ranking(ranking_inputs, run_onnx(base, ranking_inputs, {}), {})
    out = work / f"int8-{budget}-{len(bounds)}.onnx"
    within = (lambda m: m.top1_agreement >= budget) if reachable else (lambda m: False)
    result = search_int8(
        prepared, out, ranges, [], Validation(evaluate, within), ranking, ParityThresholds(min_agreement=budget), "x86-test", **bounds
    )
    return result, out


def test_fallback_finds_the_sensitive_layer_and_reaches_the_budget(sensitive):
    result, out = _search(sensitive, 0.99)
    first = result.steps[0]
    assert first.action == "quantize" and first.top1_agreement < 0.9  # fully quantized, the wide channel ruins it
    assert result.within_budget and result.stopped == "within budget"
    assert result.steps[-1].top1_agreement >= 0.99
    assert len(result.kept_float) <= 2  # the sensitive conv (and at most one more), not the whole network
    # the first layer returned to float is conv3, the one reading the wide tensor
    import onnx

    conv3 = next(n.name for n in onnx.load(str(sensitive[1])).graph.node if "conv3.weight" in n.input)
    assert result.kept_float[0] == conv3
    # the file is the last validated model, and it is really int8 with those nodes in float

    nodes = onnx.load(str(out)).graph.node
    assert any(n.op_type == "QuantizeLinear" for n in nodes)
    logits = run_onnx(out, sensitive[3], {})
    assert (logits.argmax(1) == sensitive[4].argmax(1)).mean() >= 0.99


def test_fallback_stops_at_its_step_bound_with_a_clear_message(sensitive):
    result, _ = _search(sensitive, 1.0, reachable=False, max_steps=1)
    assert not result.within_budget
    assert "raise --max-fallback-steps" in result.stopped and "\n" not in result.stopped
    assert len(result.steps) <= 2


def test_out_of_budget_search_leaves_its_best_validated_model(sensitive):
    result, out = _search(sensitive, 1.0, reachable=False, max_steps=4)
    assert not result.within_budget and len(result.steps) >= 2
    kept = result.steps[result.kept_step]
    assert kept.top1_agreement == max(s.top1_agreement for s in result.steps)
    assert result.kept_float == kept.kept_float
    logits = run_onnx(out, sensitive[3], {})  # the file on disk is that step's model, re-quantized
    assert (logits.argmax(1) == sensitive[4].argmax(1)).mean() == pytest.approx(kept.top1_agreement, abs=1e-9)


def test_fallback_stops_at_its_time_bound(sensitive):
    result, _ = _search(sensitive, 1.0, reachable=False, max_seconds=0.0)
    assert not result.within_budget and "time bound" in result.stopped and len(result.steps) == 1


# --------------------------------------------------------------------------- through export and the CLI


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
def test_int8_export_records_budget_search_and_runtime_settings(run_copy):
    from edgekit.exporting import export
    from edgekit.hardware import int8_runtime_config, isa_class
    from edgekit.metadata import read_onnx_metadata

    result = export(run_copy, quantize="int8")
    (int8,) = result.variants
    search = int8.int8.search
    assert search.budget.max_accuracy_drop == 0.01  # the run's val images have labels: the budget is accuracy
    assert search.steps[0].action == "quantize"
    assert int8.passed == search.within_budget
    metadata = read_onnx_metadata(int8.path)
    assert metadata.validated_isa == isa_class()
    assert metadata.ort_session_config == int8_runtime_config(isa_class())
    speed = int8.speed_vs_fp32  # timed against fp32 here, in alternating pairs
    assert speed.pairs >= 8 and speed.reference_ms > 0 and speed.candidate_ms > 0


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
def test_int8_export_warns_when_int8_is_clearly_slower_than_fp32(run_copy, monkeypatch):
    """The warning follows the paired timing's verdict (injected here: timings are not unit-tested)."""
    from edgekit.exporting import export
    from edgekit.exporting import speed_check as paired

    def slower(reference, candidate, **_):
        return paired.PairedTiming(
            reference_ms=5.0,
            candidate_ms=8.0,
            speedup=0.62,
            pairs=40,
            candidate_slower_pairs=38,
            clearly_slower=True,
            clearly_faster=False,
        )

    monkeypatch.setattr(paired, "compare", slower)
    (int8,) = export(run_copy, quantize="int8", accuracy_aware=False).variants
    (warning,) = [w for w in int8.warnings if "fp32" in w]
    assert "0.62x as fast as fp32" in warning and "38 of 40" in warning and "--quantize auto" in warning
    (quiet,) = export(run_copy, quantize="int8", accuracy_aware=False, speed_check=False).variants
    assert quiet.speed_vs_fp32 is None and not any("fp32" in w for w in quiet.warnings)


def _fake_calls(reference_s: float, candidate_s: float, jitter: list[float]):
    """Two 'models' that advance a fake clock by fixed times plus a repeating jitter, and the clock."""
    now, step = [0.0], [0]

    def clock() -> float:
        return now[0]

    def call(seconds: float):
        def run():
            now[0] += seconds + jitter[step[0] % len(jitter)]
            step[0] += 1

        return run

    return call(reference_s), call(candidate_s), clock


def test_paired_timing_says_slower_only_beyond_chance():
    from edgekit.exporting.speed_check import compare

    reference, candidate, clock = _fake_calls(0.010, 0.012, [0.0, 0.001, -0.001])
    slow = compare(reference, candidate, pairs=30, clock=clock)
    assert slow.clearly_slower and not slow.clearly_faster and slow.speedup < 1 and slow.pairs == 30
    # Equal models whose noise decides every pair: the pairs split about evenly, and no verdict is given.
    reference, candidate, clock = _fake_calls(0.010, 0.010, list(np.random.default_rng(0).normal(0, 0.002, 101)))
    even = compare(reference, candidate, pairs=30, clock=clock)
    assert not even.clearly_slower and not even.clearly_faster
    # The time bound ends the pairs early (at least 8).
    reference, candidate, clock = _fake_calls(1.0, 1.0, [0.0])
    assert 8 <= compare(reference, candidate, pairs=100, max_seconds=5.0, clock=clock).pairs < 100
