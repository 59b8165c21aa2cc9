"""`edgekit gate` on targets: the config's target(s), every check named after the target it was measured on, reports
of one machine never reused for another, baselines compared like with like, emulated latency skipped, and, through
the rig's real sshd (tests/rig), a gate on the x86 loopback board, on it and this machine at once, and on a closed
port."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgekit.card import MeasuredOn
from edgekit.cli import cli
from edgekit.errors import ConfigError
from edgekit.exporting import export
from edgekit.gating import GateConfig, GateResult, VariantMeasure, load_config
from edgekit.gating.baseline import load_baseline_by_target
from edgekit.gating.checks import evaluate
from edgekit.gating.measure import HERE, Where, measured_where
from edgekit.targets import TargetOptions
from edgekit.targets.info import TargetInfo
from edgekit.targets.setup import setup_target

BOARD = "ssh://pi@board:2222"


def _write(path: Path, **data) -> Path:
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str))))
    return path


# --- config ---------------------------------------------------------------------------------------


def test_target_and_targets_together_are_one_config_error_naming_the_file(tmp_path):
    path = _write(tmp_path / "gate.yaml", run="r", target="local", targets=["local", BOARD], variants={"fp32": {}})
    with pytest.raises(ConfigError, match="gate.yaml: .*`target:` .* or `targets:`"):
        GateConfig.from_yaml(path)
    result = CliRunner().invoke(cli, ["gate", "--config", str(path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and str(path) in result.output, result.output
    assert "Traceback" not in result.output


def test_a_bad_target_in_the_config_names_the_key_and_a_password_is_never_repeated(tmp_path):
    path = _write(tmp_path / "gate.yaml", run="r", targets=["local", "ssh://me:hunter2@board"], variants={"fp32": {}})
    result = CliRunner().invoke(cli, ["gate", "--config", str(path)])
    assert result.exit_code == 2 and "targets.1" in result.output and "hunter2" not in result.output, result.output
    twice = _write(tmp_path / "twice.yaml", run="r", targets=[BOARD, BOARD], variants={"fp32": {}})
    assert "listed twice" in CliRunner().invoke(cli, ["gate", "--config", str(twice)]).output


def test_the_cli_target_replaces_the_configs_and_connection_options_resolve(tmp_path):
    path = _write(tmp_path / "gate.yaml", run="r", target=BOARD, ssh_config="board.config", variants={"fp32": {}})
    config = load_config(path)
    assert config.target_names == [BOARD]
    assert config.target_options() == TargetOptions(ssh_config=tmp_path / "board.config", accept_new_host_key=False)
    overridden = load_config(path, {"targets": ["local", "pi"], "accept_new_host_key": True})
    assert overridden.target_names == ["local", "pi"] and overridden.target is None and overridden.accept_new_host_key
    assert load_config(_write(tmp_path / "plain.yaml", run="r", variants={"fp32": {}})).target_names == [None]


# --- judgement on constructed measures ------------------------------------------------------------


def _measures(target: str | None) -> dict[str, VariantMeasure]:
    def m(variant: str, p50: float, accuracy: float) -> VariantMeasure:
        return VariantMeasure(
            variant=variant, target=target, p50_ms=p50, p50_ci_ms=(p50 * 0.99, p50 * 1.01), accuracy=accuracy, n_images=50
        )

    return {"fp32": m("fp32", 10.0, 0.9), "int8": m("int8", 5.0, 0.88)}


LIMITS = {"fp32": {"min_accuracy": 0.8}, "int8": {"min_accuracy": 0.8, "min_speedup_vs": {"fp32": 1.5}}}


def test_checks_on_a_target_are_named_after_it():
    config = GateConfig.model_validate({"run": "r", "variants": LIMITS})
    checks = evaluate(config, _measures(BOARD), [], baseline_given=False, target=BOARD)
    assert [c.name for c in checks] == [f"fp32.accuracy@{BOARD}", f"int8.accuracy@{BOARD}", f"int8.speedup_vs_fp32@{BOARD}"]
    assert all(c.target == BOARD and c.message.startswith(f"{c.name}: ") and c.status == "pass" for c in checks)
    local = evaluate(config, _measures(None), [], baseline_given=False)
    assert [c.name for c in local] == ["fp32.accuracy", "int8.accuracy", "int8.speedup_vs_fp32"] and {c.target for c in local} == {None}


def test_on_an_emulated_target_latency_is_skipped_and_accuracy_judged():
    config = GateConfig.model_validate({"run": "r", "variants": {**LIMITS, "int8": {**LIMITS["int8"], "min_accuracy": 0.95}}})
    measures = {name: m.model_copy(update={"p50_ms": None, "p50_ci_ms": None}) for name, m in _measures(BOARD).items()}  # not timed
    checks = {c.metric + c.variant: c for c in evaluate(config, measures, [], False, target=BOARD, emulation="qemu-user")}
    speedup = checks["speedup_vs_fp32int8"]
    assert speedup.status == "skipped" and "emulated (qemu-user)" in speedup.message and "not evidence" in speedup.message
    assert checks["accuracyint8"].status == "fail" and checks["accuracyfp32"].status == "pass"


def test_a_baseline_compares_like_with_like_and_says_when_a_target_is_missing(tmp_path):
    import edgekit.gating as gate_module
    from edgekit.gating.measure import Measured

    config = GateConfig.model_validate({"run": "r", "variants": LIMITS})
    local = GateResult(runtime="ort-cpu", variants=list(_measures(None).values()), checks=[], passed=True, failures=[])
    path = tmp_path / "main-gate.json"
    local.to_json(path)
    baselines = load_baseline_by_target(path, config)
    assert set(baselines) == {"local"}
    # a target the baseline never measured on: nothing is compared with this machine's figures, and it says so
    comparisons, checks = gate_module._judged(config, Measured(_measures(BOARD), target=BOARD), baselines)
    skipped = [c for c in checks if c.metric == "baseline"]
    assert comparisons == [] and len(skipped) == 2 and all(c.status == "skipped" for c in skipped)
    assert f"no figures measured on {BOARD}" in skipped[0].message and skipped[0].name == f"fp32.baseline@{BOARD}"
    # the same machine: compared, each comparison carrying its target
    slower = {n: m.model_copy(update={"target": "local"}) for n, m in _measures(None).items()}
    comparisons, _ = gate_module._judged(config, Measured(slower, target="local"), baselines)
    assert comparisons and {c.target for c in comparisons} == {"local"}


def test_reports_of_one_machine_are_never_taken_for_another():
    info = TargetInfo(target=BOARD, transport="ssh", arch="aarch64", isa="arm64-dotprod", python="3.11", cache_dir="/c", cpu="A76")
    board = Where(label=BOARD, target=object(), info=info)  # type: ignore[arg-type]
    there = info.measured_on()
    assert measured_where(None, HERE) and measured_where(MeasuredOn(isa="x86-avx2"), HERE)  # this machine's: local
    assert not measured_where(there, HERE) and not measured_where(None, board)  # a target's here, or this machine's there
    assert measured_where(there, board)
    assert not measured_where(there.model_copy(update={"target": "ssh://pi@other"}), board)
    assert not measured_where(there.model_copy(update={"cpu": "A55"}), board)


# --- through the rig --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(copy_trained_run):
    """The trained run with its fp32 ONNX export (and export's local parity report beside it)."""
    run = copy_trained_run("gate-target", name="photos")
    export(run, formats="onnx", quantize="none")
    return run


@pytest.fixture(scope="module")
def board_target(ssh_board, module_tmp):
    """The x86 board with edgekit's venv in a private cache folder: (its --target URL, its name in checks)."""
    url = f"{ssh_board.url}{module_tmp.mktemp('gate-cache')}/cache"
    setup_target(url, ["ort-cpu"], from_host=True, progress=False, options=TargetOptions(ssh_config=ssh_board.config_path))
    return url, ssh_board.url


PARITY = {"fp32": {"min_accuracy": 0.3, "max_abs_diff": 1e-3, "min_agreement": 0.99}}


def _gate(config: Path, out: Path, *extra: str):
    args = [
        "gate",
        "--config",
        str(config),
        "--json",
        str(out / "gate.json"),
        "--junit",
        str(out / "gate.xml"),
        "--md",
        str(out / "gate.md"),
    ]
    return CliRunner().invoke(cli, [*args, *extra])


@pytest.mark.slow
@pytest.mark.board
def test_a_gate_on_the_board_measures_parity_there_and_names_it(exported, photo_folders, board_target, ssh_board, tmp_path):
    url, name = board_target
    settings = dict(run=str(exported.path), data=str(photo_folders[1]), max_images=12, ssh_config=str(ssh_board.config_path))
    result = _gate(_write(tmp_path / "gate.yaml", target=url, variants=PARITY, **settings), tmp_path)
    assert result.exit_code == 0, result.output
    report = GateResult.from_json(tmp_path / "gate.json")
    assert report.targets == [name] and report.measured_on[name].transport == "ssh" and not report.measured_on[name].emulated
    assert {c.target for c in report.checks} == {name} and all(c.name.endswith(f"@{name}") for c in report.checks)
    assert report.measure("fp32").n_images == 12 and report.measure("fp32").target == name
    assert not any(path.endswith(".parity.json") for path in report.reports)  # export's local report is not the board's
    assert f"measured on {name}" in result.output and f"on {name}" in (tmp_path / "gate.md").read_text()
    # a threshold no export can meet fails with exit 1, naming the target
    failing = {"fp32": {**PARITY["fp32"], "max_abs_diff": 0.0}}
    failed = _gate(_write(tmp_path / "failing.yaml", target=url, variants=failing, **settings), tmp_path / "failed")
    assert failed.exit_code == 1, failed.output
    assert f"FAIL fp32.max_abs_diff@{name}: " in failed.output and f"FAILED (1 of 3 checks on {name})" in failed.output


@pytest.mark.slow
@pytest.mark.board
def test_two_targets_give_each_check_once_per_target(exported, photo_folders, board_target, ssh_board, tmp_path):
    url, name = board_target
    config = _write(
        tmp_path / "gate.yaml",
        run=str(exported.path),
        data=str(photo_folders[1]),
        max_images=12,
        variants=PARITY,
        target="local",  # replaced by the two --target flags
    )
    result = _gate(config, tmp_path, "--target", "local", "--target", url, "--ssh-config", str(ssh_board.config_path))
    assert result.exit_code == 0, result.output
    report = GateResult.from_json(tmp_path / "gate.json")
    assert report.targets == ["local", name] and len(report.checks) == 6
    names = [c.name for c in report.checks]
    for metric in ("accuracy", "max_abs_diff", "agreement"):
        assert names.count(f"fp32.{metric}@local") == 1 and names.count(f"fp32.{metric}@{name}") == 1
    assert {m.target for m in report.variants} == {"local", name}
    cases = [case.get("name") for case in ET.parse(tmp_path / "gate.xml").getroot().iter("testcase")]
    assert sorted(cases) == sorted(names)


@pytest.mark.board
def test_an_unreachable_target_is_one_line_and_writes_no_report(exported, ssh_board, tmp_path):
    from rig.sshd import free_port

    closed = f"ssh://{ssh_board.user}@127.0.0.1:{free_port()}"
    config = _write(tmp_path / "gate.yaml", run=str(exported.path), target=closed, ssh_config=str(ssh_board.config_path), variants=PARITY)
    out = tmp_path / "out"
    result = _gate(config, out)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and closed in lines[0] and "connection refused" in lines[0] and "Traceback" not in result.output
    assert not out.exists()
