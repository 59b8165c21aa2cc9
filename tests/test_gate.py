"""`edgekit gate`: config validation, every kind of threshold, baseline comparison, JUnit/markdown
reports, and the whole gate on a real trained run (export, parity, bench)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgekit.cli import cli
from edgekit.errors import ConfigError
from edgekit.gating import Check, GateConfig, GateResult, VariantMeasure
from edgekit.gating.baseline import compare_with_baseline, load_baseline
from edgekit.gating.checks import evaluate
from edgekit.gating.report import junit_xml, markdown

# --- constructed measurements: the judgement alone ------------------------------------------------


def _config(variants: dict, **extra) -> GateConfig:
    return GateConfig.model_validate({"run": "run", "variants": variants, **extra})


def _measures(int8_p50=5.0, fp32_p50=10.0, ci=0.02, **int8_fields) -> dict[str, VariantMeasure]:
    """fp32 and int8 as a healthy run would measure them; ``ci`` is the relative half-width of each median's CI."""

    def m(variant, p50, **fields):
        return VariantMeasure(
            variant=variant,
            artifact=f"model.{variant}.onnx",
            runtime="ort-cpu",
            batch_size=1,
            p50_ms=p50,
            p50_ci_ms=(p50 * (1 - ci), p50 * (1 + ci)),
            n_images=200,
            **fields,
        )

    fp32 = m(
        "fp32",
        fp32_p50,
        size_bytes=16_000_000,
        accuracy=0.95,
        reference_accuracy=0.95,
        accuracy_drop=0.0,
        agreement=1.0,
        max_abs_diff=2e-5,
        max_rel_diff=3e-6,
    )
    int8_values = dict(
        size_bytes=4_500_000,
        accuracy=0.94,
        reference_accuracy=0.95,
        accuracy_drop=0.01,
        agreement=0.97,
        max_abs_diff=0.4,
        max_rel_diff=0.05,
    )
    int8_values.update(int8_fields)
    return {"fp32": fp32, "int8": m("int8", int8_p50, **int8_values)}


PASSING = {
    "fp32": {
        "min_accuracy": 0.9,
        "max_accuracy_drop": 0.0,
        "min_agreement": 0.99,
        "max_abs_diff": 1e-3,
        "max_rel_diff": 1e-4,
        "max_size_mb": 20,
    },
    "int8": {"min_accuracy": 0.9, "max_accuracy_drop": 0.03, "min_agreement": 0.95, "max_size_mb": 6, "min_speedup_vs": {"fp32": 1.5}},
}


def test_healthy_measurements_pass_every_check():
    checks = evaluate(_config(PASSING), _measures(), [], baseline_given=False)
    assert len(checks) == 11
    assert all(c.passed and not c.skipped for c in checks), [c.message for c in checks if not c.passed]
    speedup = next(c for c in checks if c.metric == "speedup_vs_fp32")
    assert speedup.value == pytest.approx(2.0) and speedup.op == ">="


@pytest.mark.parametrize(
    "threshold, value, fields, metric, words",
    [
        ("min_accuracy", 0.96, {}, "accuracy", "accuracy 94.00% is below the minimum 96.00%"),
        ("max_accuracy_drop", 0.005, {}, "accuracy_drop", "accuracy drop vs PyTorch fp32 1.00% exceeds the maximum 0.50% (on 200 images)"),
        ("min_agreement", 0.99, {}, "agreement", "top-1 agreement with PyTorch fp32 97.00% is below the minimum 99.00%"),
        ("max_abs_diff", 0.1, {}, "max_abs_diff", "|logit difference| vs PyTorch fp32 0.4 exceeds the maximum 0.1"),
        ("max_rel_diff", 0.01, {}, "max_rel_diff", "relative to the logit spread 0.05 exceeds the maximum 0.01"),
        ("max_size_mb", 4.0, {}, "size_mb", "file size 4.50 MB exceeds the maximum 4.00 MB"),
        ("min_speedup_vs", {"fp32": 2.5}, {}, "speedup_vs_fp32", "int8 is 2.00x as fast as fp32"),
    ],
)
def test_each_kind_of_threshold_can_fail_with_a_message_naming_it(threshold, value, fields, metric, words):
    checks = evaluate(_config({"int8": {threshold: value}}), _measures(**fields), [], baseline_given=False)
    assert len(checks) == 1
    check = checks[0]
    assert not check.passed and check.metric == metric and check.name == f"int8.{metric}"
    assert words in check.message and check.message.startswith(f"int8.{metric}:")


def test_a_threshold_that_was_not_measured_fails_rather_than_passing_silently():
    measures = _measures()
    measures["int8"].agreement = None
    del measures["fp32"]
    checks = evaluate(_config({"int8": {"min_agreement": 0.9, "min_speedup_vs": {"fp32": 1.2}}}), measures, [], False)
    assert [c.passed for c in checks] == [False, False]
    assert "was not measured" in checks[0].message and "was not measured" in checks[1].message


def test_thresholds_are_met_exactly_despite_float_rounding():
    measures = _measures(accuracy=0.94, reference_accuracy=0.945, accuracy_drop=0.945 - 0.94)
    assert evaluate(_config({"int8": {"max_accuracy_drop": 0.005}}), measures, [], False)[0].passed
    assert not evaluate(_config({"int8": {"max_accuracy_drop": 0.0049}}), measures, [], False)[0].passed


def test_int8_slower_than_fp32_fails_the_speedup_ratio_whatever_the_absolute_times():
    # the same ratio on a machine 10x slower gives the same verdict: latency is only ever a ratio
    for scale in (1.0, 10.0):
        checks = evaluate(
            _config({"int8": {"min_speedup_vs": {"fp32": 1.5}}}), _measures(int8_p50=8.0 * scale, fp32_p50=10.0 * scale), [], False
        )
        assert not checks[0].passed and checks[0].value == pytest.approx(1.25)


# --- config validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, key",
    [
        ({"run": "r", "variants": {"int8": {"min_acuracy": 0.9}}}, "variants.int8.min_acuracy"),
        ({"run": "r", "variants": {"int8": {"min_accuracy": "high"}}}, "variants.int8.min_accuracy"),
        ({"run": "r", "variants": {"int8": {"min_accuracy": 1.5}}}, "variants.int8.min_accuracy"),
        ({"run": "r", "variants": {"int9": {}}}, "variants.int9"),
        ({"run": "r", "variants": {"int8": {}}, "treads": 2}, "treads"),
        ({"run": "r", "variants": {"int8": {}}, "baseline": {"max_slowdown": "10%"}}, "baseline.max_slowdown"),
        ({"run": "r", "variants": {"int8": {"min_speedup_vs": {"fp32": 0}}}}, "min_speedup_vs"),
        ({"run": "r"}, "variants"),
        ({"run": "r", "variants": {"int8": {"min_speedup_vs": {"int8": 1.5}}}}, "variants.int8.min_speedup_vs.int8"),
    ],
)
def test_a_malformed_config_names_the_key(tmp_path, data, key):
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        GateConfig.from_yaml(path)
    result = CliRunner().invoke(cli, ["gate", "--config", str(path)])
    assert result.exit_code == 2, result.output
    assert key in result.output and "Traceback" not in result.output


def test_parity_thresholds_without_a_run_are_refused(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump({"artifacts": {"int8": "m.onnx"}, "data": "d", "variants": {"int8": {"min_agreement": 0.9}}}))
    result = CliRunner().invoke(cli, ["gate", "--config", str(path)])
    assert result.exit_code == 2 and "need `run`" in result.output


def test_missing_config_file_and_bad_yaml_exit_2(tmp_path):
    assert CliRunner().invoke(cli, ["gate", "--config", str(tmp_path / "nope.yaml")]).exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("variants: [int8\n")
    result = CliRunner().invoke(cli, ["gate", "--config", str(bad)])
    assert result.exit_code == 2 and "not valid YAML" in result.output


def test_relative_paths_resolve_against_root_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "gate.yaml"
    path.write_text(yaml.safe_dump({"root": "..", "run": "runs/demo/run", "data": "/abs/data", "variants": {"fp32": {}}}))
    monkeypatch.chdir("/")
    config = GateConfig.from_yaml(path)
    assert config.resolve(config.run) == tmp_path / "runs" / "demo" / "run"
    assert config.resolve(config.data) == Path("/abs/data")


def test_the_shipped_example_config_is_valid():
    config = GateConfig.from_yaml(Path(__file__).parent.parent / "configs" / "gate.yaml")
    assert config.run is not None and "int8" in config.variants
    assert config.resolve(config.run) == (Path(__file__).parent.parent / "runs" / "demo" / "run").resolve()


# --- baseline -------------------------------------------------------------------------------------


def _baseline_checks(now, then, **policy):
    config = _config({"fp32": {}, "int8": {}}, baseline=policy)
    comparisons = compare_with_baseline(config, now, then)
    return comparisons, evaluate(config, now, comparisons, baseline_given=True)


def test_baseline_flags_a_planted_latency_regression():
    # int8 went from 0.5x of fp32's latency to 0.7x: 40% slower relative to fp32, far outside 2% CIs
    comparisons, checks = _baseline_checks(_measures(int8_p50=7.0), _measures(int8_p50=5.0))
    latency = next(c for c in comparisons if c.metric == "relative_latency")
    assert latency.variant == "int8" and latency.change == pytest.approx(0.4) and latency.verdict == "regression"
    failed = [c for c in checks if not c.passed]
    assert [c.name for c in failed] == ["int8.baseline_relative_latency"]
    assert "+40.0%" in failed[0].message and "regression" in failed[0].message


def test_baseline_ignores_a_change_within_the_runs_own_noise():
    # 8% slower, but the medians' confidence intervals are +-10% each: not distinguishable from noise
    comparisons, checks = _baseline_checks(_measures(int8_p50=5.4, ci=0.10), _measures(int8_p50=5.0, ci=0.10), max_slowdown=0.05)
    latency = next(c for c in comparisons if c.metric == "relative_latency")
    assert latency.change == pytest.approx(0.08) and latency.noise == pytest.approx(0.2) and latency.verdict == "within noise"
    assert all(c.passed for c in checks)


def test_baseline_min_noise_is_a_floor_under_tight_confidence_intervals():
    comparisons, checks = _baseline_checks(
        _measures(int8_p50=5.2, ci=0.0), _measures(int8_p50=5.0, ci=0.0), max_slowdown=0.01, min_noise=0.05
    )
    assert next(c for c in comparisons if c.metric == "relative_latency").verdict == "within noise"
    assert all(c.passed for c in checks)


def test_baseline_on_a_slower_machine_is_not_a_regression():
    # every variant 2.5x slower (another CI runner): relative latency unchanged
    comparisons, checks = _baseline_checks(_measures(int8_p50=12.5, fp32_p50=25.0), _measures(int8_p50=5.0, fp32_p50=10.0))
    assert next(c for c in comparisons if c.metric == "relative_latency").change == pytest.approx(0.0)
    assert all(c.passed for c in checks)


def test_baseline_flags_accuracy_and_size_regressions_but_not_a_one_image_wobble():
    now = _measures(accuracy=0.90, size_bytes=6_000_000)
    comparisons, checks = _baseline_checks(now, _measures())
    failed = {c.name for c in checks if not c.passed}
    assert failed == {"int8.baseline_accuracy", "int8.baseline_size_bytes"}
    # one image of 200 (0.5 pt) is the resolution of an accuracy: within noise
    comparisons, checks = _baseline_checks(_measures(accuracy=0.935), _measures(), max_accuracy_drop=0.0)
    accuracy = next(c for c in comparisons if c.metric == "accuracy" and c.variant == "int8")
    assert accuracy.verdict == "within noise" and all(c.passed for c in checks)


def test_baseline_from_a_bench_report_and_a_gate_report(tmp_path):
    config = _config({"fp32": {}, "int8": {}})
    bench_json = tmp_path / "bench.json"
    bench_json.write_text(
        json.dumps(
            {
                "machine": {},
                "measurements": [
                    {
                        "artifact": "a/model.onnx",
                        "variant": "fp32",
                        "runtime": "ort-cpu",
                        "batch_size": 1,
                        "p50_ms": 10.0,
                        "p50_ci_ms": [9.9, 10.1],
                        "size_bytes": 16_000_000,
                        "top1": 0.95,
                    },
                    {
                        "artifact": "a/model.int8.onnx",
                        "variant": "int8",
                        "runtime": "ort-cpu",
                        "batch_size": 1,
                        "p50_ms": 5.0,
                        "p50_ci_ms": [4.9, 5.1],
                        "size_bytes": 4_500_000,
                        "top1": 0.94,
                    },
                    {
                        "artifact": "a/model.int8.onnx",
                        "variant": "int8",
                        "runtime": "torch",
                        "batch_size": 1,
                        "p50_ms": 50.0,
                        "p50_ci_ms": None,
                    },
                ],
            }
        )
    )
    loaded = load_baseline(bench_json, config)
    assert set(loaded) == {"fp32", "int8"} and loaded["int8"].p50_ms == 5.0
    gate_json = tmp_path / "gate.json"
    result = GateResult(runtime="ort-cpu", variants=list(_measures().values()), checks=[], passed=True, failures=[])
    result.to_json(gate_json)
    assert load_baseline(gate_json, config)["int8"].accuracy == 0.94
    other = tmp_path / "other.json"
    other.write_text('{"something": 1}')
    with pytest.raises(Exception, match="neither a gate report"):
        load_baseline(other, config)


# --- reports --------------------------------------------------------------------------------------


def _result(checks: list[Check], comparisons=()) -> GateResult:
    failures = [c.message for c in checks if c.failed]  # as gate() builds them: a not-measured check is no failure
    return GateResult(
        runtime="ort-cpu",
        threads=2,
        variants=list(_measures().values()),
        checks=checks,
        comparisons=list(comparisons),
        baseline="main.json",
        passed=not failures,
        failures=failures,
    )


def test_junit_xml_parses_with_one_case_per_check_and_failures_marked():
    config = _config({"fp32": {"max_rel_diff": 1e-4}, "int8": {"min_accuracy": 0.99, "min_speedup_vs": {"fp32": 1.2}}})
    now = _measures(int8_p50=7.0)
    comparisons = compare_with_baseline(config, now, _measures())
    checks = evaluate(config, now, comparisons, baseline_given=True)
    result = _result(checks, comparisons)
    suite = ET.fromstring(junit_xml(result).split("\n", 1)[1])
    cases = suite.findall("testcase")
    assert suite.tag == "testsuite" and len(cases) == len(checks) == int(suite.get("tests"))
    assert [c.get("name") for c in cases] == [c.name for c in checks]
    failed = [c for c in cases if c.find("failure") is not None]
    assert {c.get("name") for c in failed} == {"int8.accuracy", "int8.baseline_relative_latency"}
    assert int(suite.get("failures")) == 2
    assert "int8 accuracy 94.00% is below the minimum 99.00%" in failed[0].find("failure").get("message")


def test_markdown_summary_lists_failures_checks_and_baseline_moves():
    config = _config({"int8": {"min_accuracy": 0.99}})
    now = _measures(int8_p50=7.0)
    comparisons = compare_with_baseline(config, now, _measures())
    text = markdown(_result(evaluate(config, now, comparisons, True), comparisons))
    assert text.startswith("## :x: edgekit gate FAILED")
    assert "| `int8.accuracy` | 94.00% | >= 99.00% | **FAIL** |" in text
    assert "| int8 | relative_latency | 0.500x | 0.700x | +40.0% |" in text and "regression" in text


def test_the_gate_exports_missing_variants_in_one_call_and_names_the_command():
    from types import SimpleNamespace

    from edgekit.errors import EdgekitError
    from edgekit.gating.measure import _export_request

    request = _export_request(SimpleNamespace(path=Path("runs/r")), ["int8-uint8in", "torch-export", "fp32", "int8"])
    assert request.formats == ("onnx", "torch-export") and request.quantize == ("int8", "none") and request.embed_preprocessing
    assert request.command == "edgekit export runs/r --format onnx,torch-export --quantize int8,none --embed-preprocessing"
    with pytest.raises(EdgekitError, match="variant executorch-int8 cannot be exported by the gate"):
        _export_request(SimpleNamespace(path=Path("runs/r")), ["fp32", "executorch-int8"])


def test_the_package_keeps_the_public_names():
    import edgekit

    assert callable(edgekit.gate) and edgekit.GateConfig is GateConfig and edgekit.GateResult is GateResult


# --- contention: a latency check timed on a busy CPU is not measured --------------------------------


def _contended(measures: dict[str, VariantMeasure], variant: str = "int8", share: float = 0.4) -> dict[str, VariantMeasure]:
    measures[variant] = measures[variant].model_copy(update={"contended": True, "contention_share": share})
    return measures


def test_a_contended_latency_check_is_not_measured_while_accuracy_and_size_are_still_judged():
    config = _config({"int8": {"min_accuracy": 0.99, "max_size_mb": 6, "min_speedup_vs": {"fp32": 1.5}}})
    checks = {c.metric: c for c in evaluate(config, _contended(_measures()), [], baseline_given=False)}
    speedup = checks["speedup_vs_fp32"]
    assert speedup.status == "not_measured" and not speedup.passed and not speedup.failed
    assert speedup.message.startswith("int8.speedup_vs_fp32: not measured") and "40% of the CPU" in speedup.message
    assert checks["accuracy"].status == "fail" and checks["size_mb"].status == "pass"  # unaffected by the busy CPU
    # contention on the reference variant counts as well: the ratio needs both medians
    fp32_busy = evaluate(config, _contended(_measures(), "fp32"), [], baseline_given=False)
    assert next(c for c in fp32_busy if c.metric == "speedup_vs_fp32").status == "not_measured"


def test_a_contended_baseline_latency_move_is_not_measured_but_accuracy_moves_still_fail():
    now = _contended(_measures(int8_p50=7.0, accuracy=0.90))  # a +40% latency move AND a 4-point accuracy drop
    comparisons, checks = _baseline_checks(now, _measures())
    latency = next(c for c in comparisons if c.metric == "relative_latency")
    assert latency.contended and latency.verdict == "not measured (contended)"
    by_name = {c.name: c.status for c in checks}
    assert by_name["int8.baseline_relative_latency"] == "not_measured" and by_name["int8.baseline_accuracy"] == "fail"


def test_exit_codes_passed_failed_and_not_measured_under_strict_contention():
    config = _config({"int8": {"max_size_mb": 6, "min_speedup_vs": {"fp32": 1.5}}})
    checks = evaluate(config, _contended(_measures()), [], baseline_given=False)
    assert _result(checks).exit_code == 0 and _result(checks).passed
    strict = _result(checks).model_copy(update={"strict_contention": True})
    assert strict.exit_code == 3 and strict.passed
    failing = evaluate(_config({"int8": {"max_size_mb": 1, "min_speedup_vs": {"fp32": 1.5}}}), _contended(_measures()), [], False)
    assert _result(failing).model_copy(update={"strict_contention": True}).exit_code == 1  # a failure outranks "not measured"


def test_junit_and_markdown_show_a_contended_check_as_skipped_not_failed():
    config = _config({"int8": {"min_accuracy": 0.9, "min_speedup_vs": {"fp32": 1.5}}})
    result = _result(evaluate(config, _contended(_measures()), [], baseline_given=False))
    suite = ET.fromstring(junit_xml(result).split("\n", 1)[1])
    case = next(c for c in suite.findall("testcase") if c.get("name") == "int8.speedup_vs_fp32")
    skipped = case.find("skipped")
    assert skipped is not None and case.find("failure") is None and skipped.get("type") == "not_measured"
    assert "not measured" in skipped.get("message") and "40% of the CPU" in skipped.get("message")
    assert suite.get("failures") == "0" and suite.get("skipped") == "1"
    text = markdown(result)
    assert text.startswith("## :warning: edgekit gate passed (2 checks); 1 latency check not measured")
    assert "| `int8.speedup_vs_fp32` | 2.00x | >= 1.50x | not measured (contended) |" in text
    assert "| `int8.accuracy` | 94.00% | >= 90.00% | pass |" in text


def test_older_gate_reports_without_status_still_load_as_baselines(tmp_path):
    checks = evaluate(_config({"int8": {"min_accuracy": 0.99}}), _measures(), [], baseline_given=False)
    data = _result(checks).model_dump(mode="json")
    for check in data["checks"]:
        del check["status"]  # what a report from before `status` carries: passed and skipped only
    del data["strict_contention"]
    loaded = GateResult.from_json(json.dumps(data))
    assert [c.status for c in loaded.checks] == ["fail"] and loaded.checks[0].passed is False
    assert json.loads(loaded.to_json())["checks"][0]["passed"] is False  # still written for readers of `passed`


def _tiny_onnx(path: Path, floats: int) -> Path:
    """A valid ONNX file of about ``floats`` * 4 bytes (the gate reads its size; the bench is injected)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros(floats, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [floats])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [floats])],
        [weight],
    )
    onnx.save(helper.make_model(graph), str(path))
    return path


@pytest.fixture
def injected_bench(tmp_path, monkeypatch):
    """Bare fp32/int8 artifacts and a bench that reports int8 as timed under contention (share 0.4) unless told
    otherwise: the gate's handling of bench's flag, without depending on a real neighbour."""
    from edgekit.benchmarking.results import BenchResult, Measurement
    from edgekit.gating import measure as gate_measure

    fp32, int8 = _tiny_onnx(tmp_path / "model.onnx", 4000), _tiny_onnx(tmp_path / "model.int8.onnx", 1000)
    (tmp_path / "images" / "cat").mkdir(parents=True)
    state = {"contended": True, "calls": 0}

    def fake_bench(targets, runtimes, batch_sizes, **_):
        state["calls"] += 1
        rows = []
        for path, variant, p50 in ((fp32, "fp32", 10.0), (int8, "int8", 5.0)):
            busy = state["contended"] and variant == "int8"
            rows.append(
                Measurement(
                    model="model",
                    artifact=str(path),
                    variant=variant,
                    runtime=runtimes[0],
                    batch_size=batch_sizes[0],
                    iterations=20,
                    p50_ms=p50,
                    p90_ms=p50,
                    p99_ms=p50,
                    mean_ms=p50,
                    p50_ci_ms=(p50 * 0.98, p50 * 1.02),
                    images_per_second=100 / p50,
                    peak_rss_mb=1.0,
                    rss_delta_mb=0.0,
                    size_bytes=path.stat().st_size,
                    top1=0.9,
                    accuracy_images=20,
                    ratio_to_fastest=1.0,
                    contended=busy,
                    contention_share=0.4 if busy else 0.01,
                )
            )
        return BenchResult(machine={}, settings={}, measurements=rows)

    monkeypatch.setattr(gate_measure, "run_bench", fake_bench)
    config = _write_config(
        tmp_path / "gate.yaml",
        artifacts={"fp32": str(fp32), "int8": str(int8)},
        data=str(tmp_path / "images"),
        variants={"int8": {"min_accuracy": 0.8, "max_size_mb": 1, "min_speedup_vs": {"fp32": 1.5}}},
    )
    return config, state


def test_the_cli_reports_a_contended_latency_check_as_not_measured_and_exits_0(injected_bench, tmp_path):
    config, state = injected_bench
    out = [str(tmp_path / name) for name in ("g.json", "g.xml", "g.md")]
    result = CliRunner().invoke(cli, ["gate", "--config", str(config), "--json", out[0], "--junit", out[1], "--md", out[2]])
    assert result.exit_code == 0, result.output
    assert state["calls"] == 1 and "NOT MEASURED int8.speedup_vs_fp32: not measured" in result.output
    assert "FAIL" not in result.output and "1 latency check not measured" in result.output
    report = GateResult.from_json(Path(out[0]))
    assert {c.metric: c.status for c in report.checks} == {"accuracy": "pass", "size_mb": "pass", "speedup_vs_fp32": "not_measured"}
    assert report.measure("int8").contended and report.measure("int8").contention_share == 0.4
    assert not report.measure("fp32").contended
    assert ET.parse(out[1]).getroot().get("skipped") == "1" and "not measured (contended)" in Path(out[2]).read_text()


def test_strict_contention_exits_3_from_the_flag_or_the_config(injected_bench):
    config, _ = injected_bench
    flag = CliRunner().invoke(cli, ["gate", "--config", str(config), "--strict-contention"])
    assert flag.exit_code == 3, flag.output
    data = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**data, "strict_contention": True}))
    assert CliRunner().invoke(cli, ["gate", "--config", str(config)]).exit_code == 3
    assert CliRunner().invoke(cli, ["gate", "--config", str(config), "--no-strict-contention"]).exit_code == 0


def test_on_a_quiet_machine_the_same_latency_check_is_judged(injected_bench):
    config, state = injected_bench
    state["contended"] = False
    passing = CliRunner().invoke(cli, ["gate", "--config", str(config), "--strict-contention"])
    assert passing.exit_code == 0 and "NOT MEASURED" not in passing.output, passing.output
    data = yaml.safe_load(config.read_text())
    data["variants"]["int8"]["min_speedup_vs"] = {"fp32": 3.0}
    config.write_text(yaml.safe_dump(data))
    failing = CliRunner().invoke(cli, ["gate", "--config", str(config)])
    assert failing.exit_code == 1 and "FAIL int8.speedup_vs_fp32" in failing.output, failing.output


# --- the whole gate on a real trained run ---------------------------------------------------------


def _write_config(path: Path, **data) -> Path:
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str))))
    return path


PARITY_ONLY = {
    "fp32": {
        "min_accuracy": 0.5,
        "max_accuracy_drop": 0.0,
        "min_agreement": 0.99,
        "max_rel_diff": 1e-4,
        "max_abs_diff": 1e-3,
        "max_size_mb": 100,
    },
    "int8": {"min_accuracy": 0.5, "max_accuracy_drop": 0.25, "min_agreement": 0.6, "max_size_mb": 100},
}


@pytest.fixture(scope="module")
def gated(module_tmp, trained_run, photo_folders):
    """A copy of the trained run with no exports, gated once through the CLI: the gate exports fp32 and
    int8 itself, checks parity on the validation photos and writes all three reports."""
    import shutil

    base = module_tmp.mktemp("gate")
    run_dir = base / "run"
    shutil.copytree(trained_run.path, run_dir, ignore=shutil.ignore_patterns("exports", "bench"))
    config = _write_config(base / "gate.yaml", run="run", data=str(photo_folders[1]), variants=PARITY_ONLY)
    out = base / "out"
    result = CliRunner().invoke(
        cli,
        ["gate", "--config", str(config), "--json", str(out / "gate.json"), "--junit", str(out / "gate.xml"), "--md", str(out / "gate.md")],
    )
    return base, run_dir, out, result


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
def test_a_passing_gate_exports_what_is_missing_and_exits_0(gated):
    base, run_dir, out, result = gated
    assert result.exit_code == 0, result.output
    assert (run_dir / "exports" / "model.onnx").is_file() and (run_dir / "exports" / "model.int8.onnx").is_file()
    report = GateResult.from_json(out / "gate.json")
    assert report.passed and len(report.checks) == 10 and not report.failures
    int8 = report.measure("int8")
    assert int8.n_images == 24 and 0.5 <= int8.accuracy <= 1.0 and int8.size_bytes < report.measure("fp32").size_bytes
    assert "gate passed" in result.output and "fp32.max_rel_diff" in result.output


@pytest.mark.slow
def test_the_gate_reuses_fresh_parity_reports_made_on_the_same_images(gated, photo_folders):
    base, run_dir, out, _ = gated
    report = GateResult.from_json(out / "gate.json")
    # export wrote parity reports on the gate's images moments ago: they were reused, not recomputed
    assert str(run_dir / "exports" / "int8.parity.json") in report.reports
    # other images: the same artifacts are checked afresh
    config = GateConfig.from_yaml(_write_config(base / "train.yaml", run="run", data=str(photo_folders[0]), variants=PARITY_ONLY))
    from edgekit.gating import gate

    again = gate(config)
    assert not any(path.endswith(".parity.json") for path in again.reports)
    assert again.measure("int8").n_images == 60


@pytest.mark.slow
def test_int8_validated_on_another_cpu_class_is_measured_again_not_taken_from_its_report(gated, photo_folders, monkeypatch):
    from edgekit import hardware
    from edgekit.gating import gate

    base, run_dir, out, _ = gated
    here = hardware.isa_class()
    other = {"sse2", "avx", "avx2", "fma"} if here != "x86-avx2" else {"sse2", "avx2", "avx512f", "avx512_vnni", "amx_int8"}
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(other))  # the same files, on a simulated other CPU
    config = GateConfig.from_yaml(_write_config(base / "other-cpu.yaml", run="run", data=str(photo_folders[1]), variants=PARITY_ONLY))
    again = gate(config)
    assert str(run_dir / "exports" / "int8.parity.json") not in again.reports  # int8 re-measured on this "CPU"
    assert str(run_dir / "exports" / "fp32.parity.json") in again.reports  # fp32 names no ISA: its report stands
    assert again.passed and again.measure("int8").n_images == 24


@pytest.mark.slow
def test_junit_and_markdown_files_from_the_cli_are_complete(gated):
    _, _, out, _ = gated
    suite = ET.parse(out / "gate.xml").getroot()
    assert suite.tag == "testsuite" and len(suite.findall("testcase")) == 10 and suite.get("failures") == "0"
    assert "edgekit gate passed" in (out / "gate.md").read_text()


@pytest.mark.slow
def test_crossed_thresholds_exit_1_naming_each_failure(gated):
    base, _, out, _ = gated
    failing = {"fp32": {"max_abs_diff": 0.0, "max_size_mb": 0.001}, "int8": {"max_rel_diff": 1e-9, "min_accuracy": 1.0}}
    config = _write_config(base / "failing.yaml", run="run", data=str(Path(GateResult.from_json(out / "gate.json").data)), variants=failing)
    result = CliRunner().invoke(cli, ["gate", "--config", str(config), "--junit", str(base / "failing.xml")])
    assert result.exit_code == 1, result.output
    fail_lines = [line for line in result.output.splitlines() if line.startswith("FAIL ")]
    named = {line.split()[1].rstrip(":") for line in fail_lines}
    assert {"fp32.size_mb", "fp32.max_abs_diff", "int8.max_rel_diff", "int8.accuracy"} == named
    suite = ET.parse(base / "failing.xml").getroot()
    assert int(suite.get("failures")) == len(fail_lines) >= 2


LATENCY = {"fp32": {}, "int8": {"min_agreement": 0.6, "min_speedup_vs": {"fp32": 0.05}}}


@pytest.fixture
def quiet_cpu(monkeypatch):
    """Bench's contention probe reports an idle machine. The real-bench tests below are about latency ratios,
    baselines and report reuse; under `make test -n 2` the other worker (or anything else on these 2 cores) is a
    real neighbour, and bench would rightly mark their rows contended, which makes every latency check "not
    measured" (tested above with an injected contended result, and in test_bench with a real neighbour)."""
    from edgekit.benchmarking import contention

    monkeypatch.setattr(contention, "probe", lambda: lambda: contention.Reading(share=0.0))


@pytest.mark.slow
def test_latency_ratio_and_baseline_on_a_real_bench(gated, quiet_cpu):
    base, _, out, _ = gated
    data = GateResult.from_json(out / "gate.json").data
    settings = dict(run="run", data=data, threads=1, warmup=2, iterations=30)
    config = _write_config(base / "latency.yaml", variants=LATENCY, baseline={"min_noise": 0.5}, **settings)
    first = CliRunner().invoke(cli, ["gate", "--config", str(config), "--json", str(base / "first.json")])
    assert first.exit_code == 0, first.output
    report = GateResult.from_json(base / "first.json")
    speedup = next(c for c in report.checks if c.metric == "speedup_vs_fp32")
    int8, fp32 = report.measure("int8"), report.measure("fp32")
    assert speedup.value == pytest.approx(fp32.p50_ms / int8.p50_ms) and int8.p50_ci_ms[0] <= int8.p50_ms <= int8.p50_ci_ms[1]

    # the same models against their own report: every move is within noise
    again = CliRunner().invoke(
        cli, ["gate", "--config", str(config), "--baseline", str(base / "first.json"), "--md", str(base / "again.md")]
    )
    assert again.exit_code == 0, again.output
    assert "within noise" in (base / "again.md").read_text() and "regression" not in (base / "again.md").read_text()

    # plant a regression: in the baseline int8 took a 50th of its time relative to fp32 (far outside the
    # noise even on a loaded 2-core machine; the noise arithmetic itself is tested on constructed values)
    planted = json.loads((base / "first.json").read_text())
    for row in planted["variants"]:
        if row["variant"] == "int8":
            row["p50_ms"] /= 50
            row["p50_ci_ms"] = [v / 50 for v in row["p50_ci_ms"]]
    (base / "planted.json").write_text(json.dumps(planted))
    worse = CliRunner().invoke(cli, ["gate", "--config", str(config), "--baseline", str(base / "planted.json")])
    assert worse.exit_code == 1, worse.output
    assert "FAIL int8.baseline_relative_latency" in worse.output and "regression" in worse.output

    # an impossible speedup fails by name
    config = _write_config(base / "fast.yaml", variants={"int8": {"min_speedup_vs": {"fp32": 50}}}, **settings)
    slow = CliRunner().invoke(cli, ["gate", "--config", str(config)])
    assert slow.exit_code == 1 and "FAIL int8.speedup_vs_fp32" in slow.output and "minimum 50.00x" in slow.output


@pytest.mark.slow
def test_a_fresh_bench_report_from_edgekit_bench_is_reused(gated, quiet_cpu):
    from edgekit.benchmarking import bench, save_to_run
    from edgekit.gating import gate

    base, run_dir, out, _ = gated
    data = GateResult.from_json(out / "gate.json").data
    exports = run_dir / "exports"
    result = bench([exports / "model.onnx", exports / "model.int8.onnx"], runtimes=("ort-cpu",), threads=1, warmup=1, iterations=12)
    json_path, _ = save_to_run(result, run_dir)
    config = GateConfig.from_yaml(_write_config(base / "reuse.yaml", run="run", data=data, threads=1, iterations=12, variants=LATENCY))
    reused = gate(config)
    assert str(json_path) in reused.reports
    int8 = next(m for m in result.measurements if m.variant == "int8")
    assert reused.measure("int8").p50_ms == int8.p50_ms  # the report's numbers, not a new run
    # other settings (2 threads): the report does not apply and a new bench runs
    other = GateConfig.from_yaml(_write_config(base / "other.yaml", run="run", data=data, threads=2, iterations=12, variants=LATENCY))
    assert str(json_path) not in gate(other).reports


@pytest.mark.slow
def test_data_without_the_runs_classes_cannot_check_accuracy(gated, tmp_path):
    from conftest import write_photo_folder

    _, run_dir, _, _ = gated
    folder = write_photo_folder(tmp_path / "other", 2, seed=3, size=32, classes=("astronaut", "camera"))
    config = _write_config(tmp_path / "gate.yaml", run=str(run_dir), data=str(folder), variants={"fp32": {"min_accuracy": 0.5}})
    result = CliRunner().invoke(cli, ["gate", "--config", str(config)])
    assert result.exit_code == 2 and "carry no labels the run knows" in result.output, result.output


@pytest.mark.slow
def test_bare_artifacts_without_a_run_are_gated_on_bench_accuracy_size_and_speed(gated, tmp_path, quiet_cpu):
    _, run_dir, out, _ = gated
    data = GateResult.from_json(out / "gate.json").data
    exports = run_dir / "exports"
    config = _write_config(
        tmp_path / "bare.yaml",
        artifacts={"fp32": str(exports / "model.onnx"), "int8": str(exports / "model.int8.onnx")},
        data=data,
        threads=1,
        warmup=1,
        iterations=10,
        variants={"int8": {"min_accuracy": 0.5, "max_size_mb": 100, "min_speedup_vs": {"fp32": 0.05}}},
    )
    result = CliRunner().invoke(cli, ["gate", "--config", str(config), "--json", str(tmp_path / "bare.json")])
    assert result.exit_code == 0, result.output
    int8 = GateResult.from_json(tmp_path / "bare.json").measure("int8")
    assert int8.n_images == 24 and int8.accuracy >= 0.5 and int8.agreement is None  # no PyTorch reference without a run
