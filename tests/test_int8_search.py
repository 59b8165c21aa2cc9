"""Accuracy-aware int8: the fallback loop, its bounds, and `--quantize auto`'s choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sensitive_model import sensitive_setup
from torch import nn

from edgekit.auto import Candidate, choose
from edgekit.exporting.quantize import calibrate, prepare
from edgekit.exporting.quantize.fallback import Ranking, Validation, run_onnx, search_int8
from edgekit.parity_check import ParityThresholds, compare_logits


@pytest.fixture(scope="module")
def sensitive(tmp_path_factory, photo_folders):
    """(fp32 onnx, prepared, calibration batches, validation inputs, fp32 logits) for OneSensitiveLayer on real photo crops."""
    from edgekit.exporting.onnx import export_onnx

    work = tmp_path_factory.mktemp("sensitive")
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
        return compare_logits(reference, run_onnx(path, inputs, {}), None, "images")

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


# --------------------------------------------------------------------------- auto, with injected measurements


def _candidate(variant, p50, ci=None, within=True, drop=None):
    return Candidate(
        variant=variant,
        path=f"model.{variant}.onnx",
        within_budget=within,
        p50_ms=p50,
        p50_ci_ms=ci or (p50 * 0.98, p50 * 1.02),
        accuracy_drop=drop,
    )


def test_auto_picks_the_fastest_within_budget_and_says_why():
    choice = choose([_candidate("fp32", 10.0), _candidate("int8", 6.0, drop=0.003), _candidate("int8-dynamic", 9.0)])
    assert choice.chosen == "int8" and choice.speedup_vs_fp32 == pytest.approx(10 / 6, rel=1e-3)
    assert "int8" in choice.reason and "faster than fp32" in choice.reason and "-0.3 pt" in choice.reason


def test_auto_never_picks_a_variant_outside_its_budget():
    choice = choose([_candidate("fp32", 10.0), _candidate("int8", 3.0, within=False), _candidate("fp16", 9.9)])
    assert choice.chosen == "fp32" and "fp32" in choice.reason


def test_auto_never_picks_a_slower_variant_or_one_within_noise():
    slower = choose([_candidate("fp32", 10.0), _candidate("int8", 12.0)])
    assert slower.chosen == "fp32" and "no variant within budget was faster" in slower.reason and "slower" in slower.reason
    noisy = choose([_candidate("fp32", 10.0, ci=(8.0, 12.0)), _candidate("int8", 9.0, ci=(8.5, 9.5))])
    assert noisy.chosen == "fp32" and "noise" in noisy.reason
    marginal = choose([_candidate("fp32", 10.0), _candidate("int8", 9.8)])  # beyond noise, but under 1.05x
    assert marginal.chosen == "fp32" and "1.05x" in marginal.reason


@pytest.mark.parametrize("seed", range(20))
def test_auto_choice_is_never_slower_nor_out_of_budget(seed):
    rng = np.random.default_rng(seed)
    candidates = [_candidate("fp32", float(rng.uniform(1, 20)))]
    for name in ("int8", "int8-dynamic", "fp16"):
        candidates.append(_candidate(name, float(rng.uniform(1, 20)), within=bool(rng.integers(0, 2))))
    choice = choose(candidates)
    chosen = next(c for c in candidates if c.variant == choice.chosen)
    assert chosen.within_budget
    assert chosen.p50_ms <= candidates[0].p50_ms


# --------------------------------------------------------------------------- through export and the CLI


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
def test_int8_export_records_budget_search_and_runtime_settings(run_copy):
    from edgekit.exporting import export
    from edgekit.hardware import int8_runtime_config, isa_class
    from edgekit.metadata import read_onnx_metadata

    result = export(run_copy, quantize="int8")
    (int8,) = result.variants
    search = int8.details["search"]
    assert search["budget"]["max_accuracy_drop"] == 0.01  # the run's val images have labels: the budget is accuracy
    assert search["steps"][0]["action"] == "quantize"
    assert int8.passed == search["within_budget"]
    metadata = read_onnx_metadata(int8.path)
    assert metadata.validated_isa == isa_class()
    assert metadata.ort_session_config == int8_runtime_config(isa_class())
    speed = int8.details["speed_vs_fp32"]  # timed against fp32 here, in alternating pairs
    assert speed["pairs"] >= 8 and speed["reference_ms"] > 0 and speed["candidate_ms"] > 0


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
    (warning,) = [w for w in int8.details.get("warnings", []) if "fp32" in w]
    assert "0.62x as fast as fp32" in warning and "38 of 40" in warning and "--quantize auto" in warning
    (quiet,) = export(run_copy, quantize="int8", accuracy_aware=False, speed_check=False).variants
    assert "speed_vs_fp32" not in quiet.details and not any("fp32" in w for w in quiet.details.get("warnings", []))


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


@pytest.mark.slow
def test_cli_quantize_auto_writes_the_choice(run_copy):
    from click.testing import CliRunner

    from edgekit.cli import cli

    result = CliRunner().invoke(cli, ["export", str(run_copy.path), "--quantize", "auto", "--max-fallback-steps", "4"])
    assert result.exit_code == 0, result.output
    assert "auto: " in result.output
    exports = Path(run_copy.path) / "exports"
    choice = json.loads((exports / "auto.json").read_text())
    assert choice["chosen"] in ("fp32", "int8")
    assert (exports / "model.auto.onnx").read_bytes() == (
        exports / ("model.onnx" if choice["chosen"] == "fp32" else "model.int8.onnx")
    ).read_bytes()
    assert {c["variant"] for c in choice["candidates"]} == {"fp32", "int8"}
    # an int8 pick tells the user's app the one session option it needs on x86 without VNNI
    assert ("add_session_config_entry('session.x64quantprecision', '1')" in result.output) == (choice["chosen"] == "int8")
    # a ResNet's only matrix multiplication is its classifier: int8-dynamic is left out, and the choice says why
    assert "int8-dynamic" in choice["left_out"] and "MatMul/Gemm do" in choice["left_out"]["int8-dynamic"]
    assert "fp16" in choice["left_out"]
    if choice["chosen"] == "int8":
        fp32, int8 = (next(c for c in choice["candidates"] if c["variant"] == v) for v in ("fp32", "int8"))
        assert int8["within_budget"] and int8["p50_ms"] < fp32["p50_ms"]


def _stub_run(model: nn.Module, crop: int):
    from types import SimpleNamespace

    return SimpleNamespace(build_model=lambda: model, card=SimpleNamespace(preprocessing=SimpleNamespace(crop=crop)))


def test_int8_dynamic_is_an_auto_candidate_only_where_matmuls_do_the_work():
    from edgekit.auto import MATMUL_DOMINATES, default_candidates, matmul_share

    cnn = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    mlp = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Flatten(), nn.Linear(8 * 8 * 8, 512), nn.ReLU(), nn.Linear(512, 10))
    cnn_share, mlp_share = matmul_share(_stub_run(cnn, 32)), matmul_share(_stub_run(mlp, 32))
    assert cnn_share < 0.01 and mlp_share > MATMUL_DOMINATES  # computed, not assumed: FLOPs of each op type
    assert "int8-dynamic" not in default_candidates(_stub_run(cnn, 32))[0]
    candidates, left_out = default_candidates(_stub_run(mlp, 32))
    assert "int8-dynamic" in candidates and "int8-dynamic" not in left_out and "fp16" in left_out
