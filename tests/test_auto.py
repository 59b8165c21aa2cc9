"""--quantize auto: the choice over formats, runtimes and settings (injected measurements), the pruning of clearly
slower candidates, the deployment card (relative paths, round trip, its Python snippet really runs), and the whole
path on the tests' trained model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from edgekit.auto import choose
from edgekit.card import CandidateFigures, DeployCard, MeasuredOn, read_card
from edgekit.device.timing import Raced, drop_the_slower
from edgekit.errors import EdgekitError


def _figures(
    file, p50, *, runtime="ort-cpu", fmt="onnx", variant="fp32", setting="2 threads", within=True, ci=None, extra=None, size=1000, drop=None
):
    return CandidateFigures(
        file=file,
        variant=variant,
        format=fmt,
        runtime=runtime,
        setting=setting,
        within_budget=within,
        p50_ms=p50,
        p50_ci_ms=ci or (p50 * 0.99, p50 * 1.01),
        extra=extra,
        size_bytes=size,
        accuracy_drop=drop,
    )


# ---- the choice, on injected figures ----------------------------------------------------------------------


def test_the_fastest_within_budget_wins_across_formats_and_settings():
    candidates = [
        _figures("model.onnx", 7.4, setting="2 threads, spinning off"),
        _figures("model.onnx", 6.7, setting="2 threads, spinning on"),
        _figures("model.int8.onnx", 3.0, variant="int8", within=False),  # fastest, but out of budget: never chosen
        _figures("model.xml", 5.6, runtime="openvino", fmt="openvino", variant="openvino-fp32", extra="openvino"),
        _figures("model.int8.pte", 4.6, runtime="executorch", fmt="executorch", variant="executorch-int8", extra="executorch", drop=0.003),
    ]
    decision = choose(candidates, batch_size=1)
    assert candidates[decision.chosen].file == "model.int8.pte"
    assert decision.speedup_vs_onnx_fp32 == pytest.approx(6.7 / 4.6, rel=1e-3)
    assert "model.int8.pte on executorch" in decision.reason and "-0.3 pt" in decision.reason and "1.46x" in decision.reason


def test_a_noisy_wide_interval_does_not_tie_a_far_slower_candidate():
    """From a contended CI run: ORT int8 at 2 threads with spinning had a median of 8.59 ms but an interval reaching
    down to 2.99 ms, which overlaps the fastest's; it must not win the simplicity rule over a 3.15 ms candidate."""
    noisy = _figures("model.int8.onnx", 8.59, variant="int8", setting="2 threads, spinning on", ci=(2.99, 8.99), size=4_000_000)
    steady = _figures("model.int8.onnx", 4.56, variant="int8", setting="2 threads, spinning off", ci=(4.39, 4.68), size=4_000_000)
    fastest = _figures(
        "model.int8.xml", 3.15, runtime="openvino", fmt="openvino", variant="openvino-int8", ci=(3.03, 3.51), extra="openvino"
    )
    close = _figures(
        "model.xml", 3.26, runtime="openvino", fmt="openvino", variant="openvino-fp32", ci=(3.07, 3.55), extra="openvino", size=13_000_000
    )
    decision = choose([noisy, steady, fastest, close])
    assert decision is not None and decision.chosen == 2  # tied with the fp32 IR only; the smaller file wins
    assert decision.tied == [3]


def test_a_tie_goes_to_fewer_dependencies_then_the_smaller_file():
    core = _figures("model.onnx", 5.02, ci=(4.9, 5.1), size=13_000_000)
    extra = _figures("model.xml", 5.0, runtime="openvino", fmt="openvino", variant="openvino-fp32", ci=(4.95, 5.05), extra="openvino")
    assert choose([extra, core]).chosen == 1  # within noise: the core install wins over an extra's runtime
    big = _figures("model.onnx", 5.0, ci=(4.9, 5.1), size=13_000_000)
    small = _figures("model.int8.onnx", 5.03, variant="int8", ci=(4.95, 5.12), size=4_000_000)
    decision = choose([big, small])
    assert decision.chosen == 1 and "tied within noise" in decision.reason  # then the smaller file
    clear = _figures("model.int8.onnx", 4.0, variant="int8", ci=(3.9, 4.1), size=4_000_000)
    assert choose([_figures("model.onnx", 5.0, ci=(4.9, 5.1)), clear]).tied == []  # beyond noise: no tie


def test_nothing_within_budget_or_nothing_timed_gives_no_choice():
    assert choose([_figures("model.int8.onnx", 2.0, within=False)]) is None
    untimed = _figures("model.onnx", 2.0)
    untimed.error = "RuntimeError: no such kernel"
    assert choose([untimed]) is None


@pytest.mark.parametrize("seed", range(25))
def test_the_choice_is_never_slower_beyond_noise_nor_out_of_budget(seed):
    rng = np.random.default_rng(seed)
    candidates = []
    for index in range(8):
        p50 = float(rng.uniform(1, 20))
        half = float(rng.uniform(0.01, 0.5))
        candidates.append(
            _figures(
                f"m{index}.onnx",
                p50,
                ci=(p50 - half, p50 + half),
                within=bool(rng.integers(0, 2)) or index == 0,
                size=int(rng.integers(1, 9)),
            )
        )
    decision = choose(candidates)
    chosen = candidates[decision.chosen]
    assert chosen.within_budget
    for other in candidates:
        if other.within_budget:  # nothing within budget is faster beyond the noise of both medians
            assert not (other.p50_ci_ms[1] < chosen.p50_ci_ms[0])


def test_a_row_that_keeps_losing_its_blocks_is_dropped_and_a_close_one_is_not():
    def timing(medians):
        return Raced(times=list(medians), blocks=dict(enumerate(medians)))

    leader = timing([1.00, 1.01, 0.99, 1.00, 1.02, 0.98, 1.00, 1.01])
    slow = timing([1.20, 1.21, 1.19, 1.22, 1.20, 1.18, 1.21, 1.20])  # lost all 8 blocks: p = 1/256
    close = timing([1.01, 0.99, 1.02, 1.00, 0.99, 1.01, 1.00, 1.00])  # loses about half: chance
    kept = drop_the_slower([leader, slow, close], [0, 1, 2], cycle=8)
    assert kept == [0, 2] and slow.dropped_after == 8 and close.dropped_after is None


def test_the_race_alternates_blocks_keeps_every_call_alone_and_stops_at_its_bound():
    from edgekit.device import contention
    from edgekit.device.timing import race

    calls, order = [], []
    for name in "abc":
        calls.append(lambda name=name: order.append(name))
    quiet = contention.Monitor(retries_per_chunk=0, retries_per_pass=0)  # a busy CPU re-measures nothing here
    raced = race(calls, seconds=0.0, monitor=quiet, block_rounds=2, min_cycles=2, max_cycles=5, pause=0.0)
    assert [len(r.times) for r in raced] == [4, 4, 4] and all(sorted(r.blocks) == [0, 1] for r in raced)  # min_cycles, then the bound
    # each block: one untimed call then 2 timed, alone; the second cycle in reverse order
    assert "".join(order) == "aaabbbccc" + "cccbbbaaa"


# ---- the card ---------------------------------------------------------------------------------------------


def test_the_card_round_trips_with_relative_paths_and_refuses_one_that_escapes(tmp_path):
    card = DeployCard(
        file="model.int8.xml",
        companions=["model.int8.bin"],
        format="openvino",
        variant="openvino-int8",
        runtime="openvino",
        setting="2 threads, f32",
        app_settings="PERFORMANCE_HINT=LATENCY",
        python="print(1)",
        cpp="ov::Core core;",
        batch_size=1,
        p50_ms=4.2,
        measured_on=MeasuredOn(isa="x86-avx2"),
        reason="r",
        candidates=[_figures("model.int8.xml", 4.2, runtime="openvino")],
    )
    json_path, md_path = card.write(tmp_path)
    again = read_card(tmp_path)
    assert again == card and not Path(again.file).is_absolute() and again.path_in(tmp_path) == tmp_path / "model.int8.xml"
    assert "model.int8.xml" in md_path.read_text() and "| model.int8.xml | openvino |" in md_path.read_text()
    data = json.loads(json_path.read_text())
    data["file"] = "../../etc/passwd"
    json_path.write_text(json.dumps(data))
    with pytest.raises(EdgekitError, match="outside its folder"):
        read_card(tmp_path)


# ---- the whole path ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auto_run(module_tmp, trained_run):
    import shutil

    from edgekit.auto import export_auto
    from edgekit.runs import Run

    target = module_tmp.mktemp("auto") / "run"
    shutil.copytree(trained_run.path, target)
    run = Run.load(target)
    return run, export_auto(run, auto_seconds=3, max_fallback_steps=4, calib_size=30)


@pytest.mark.slow
@pytest.mark.timeout(900)  # an export with the int8 search, then the timing: minutes on 2 cores
def test_auto_writes_a_card_whose_file_holds_its_budget_and_names_where_it_was_measured(auto_run):
    from edgekit.hardware import isa_class

    run, result = auto_run
    card = read_card(run.exports_dir)
    assert card == result.card and (run.exports_dir / "DEPLOY.md").is_file()
    assert card.path_in(run.exports_dir).is_file() and card.file in {"model.onnx", "model.int8.onnx"}
    chosen = next(c for c in card.candidates if c.file == card.file and c.setting == card.setting and c.runtime == card.runtime)
    assert chosen.within_budget and card.p50_ms == chosen.p50_ms and card.measured_on.isa == isa_class().value
    # ORT at every thread count worth trying, spinning on and off, for every file within budget
    settings = {c.setting for c in card.candidates if c.file == "model.onnx"}
    assert any("spinning on" in s for s in settings) and any("spinning off" in s for s in settings)
    assert "torch-export" not in {c.variant for c in card.candidates}


@pytest.mark.slow
@pytest.mark.timeout(900)  # an export with the int8 search, then the timing: minutes on 2 cores
def test_the_cards_python_snippet_really_loads_and_runs_the_chosen_file(auto_run):
    run, result = auto_run
    card = result.card
    script = card.python + "\nprint(logits.shape)\n"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=run.exports_dir, capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"({card.batch_size}, {run.card.num_classes})"
    assert f"intra_op_num_threads = {card.threads}" in card.python  # the measured setting, as the app sets it


@pytest.mark.slow
@pytest.mark.timeout(900)  # an export with the int8 search, then the timing: minutes on 2 cores
def test_bench_of_a_run_with_a_card_says_what_to_deploy(auto_run):
    from edgekit.benchmarking import bench

    run, result = auto_run
    measured = bench(run.path, runtimes="ort-cpu", batch_sizes=(1,), iterations=3, warmup=1, save=False)
    (line,) = [s for s in measured.summary if s.startswith("deploy (exports/deploy.json)")]
    assert result.card.file in line and result.card.setting in line


@pytest.mark.slow
@pytest.mark.timeout(900)  # an export with the int8 search, then the timing: minutes on 2 cores
def test_cli_auto_prints_the_candidates_and_the_card(run_copy):
    from click.testing import CliRunner

    from edgekit.cli import cli

    args = ["export", str(run_copy.path), "--quantize", "auto", "--auto-seconds", "2", "--max-fallback-steps", "2", "--calib-size", "30"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "--quantize auto at batch 1" in result.output and "deploy: " in result.output and "deploy.json" in result.output
    refused = CliRunner().invoke(cli, ["export", str(run_copy.path), "--quantize", "auto", "--fixed-batch", "1"])
    assert refused.exit_code == 2 and "--fixed-batch" in refused.output


# ---- which variants are candidates ---------------------------------------------------------------------------


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


def test_openvino_offers_bf16_as_a_candidate_only_where_the_cpu_has_it():
    from edgekit.runtimes import get_runtime
    from edgekit.runtimes.tuning import Machine

    openvino = get_runtime("openvino")
    plain = openvino.settings_to_try(Machine(2, 2, frozenset({"avx2"})), 1)
    bf16 = openvino.settings_to_try(Machine(2, 2, frozenset({"avx512_bf16"})), 1)
    assert {s.options["inference_precision"] for s in plain} == {"f32"}
    assert {s.options["inference_precision"] for s in bf16} == {"f32", "bf16"}
    assert all(s.changes_numerics == (s.options["inference_precision"] != "f32") for s in bf16)
    batched = openvino.settings_to_try(Machine(4, 8, frozenset()), 8)
    assert {s.threads for s in batched} == {1, 4, 8} and {s.options["performance_hint"] for s in batched} == {"LATENCY", "THROUGHPUT"}
