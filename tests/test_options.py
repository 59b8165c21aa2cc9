"""`edgekit export` and `edgekit bench` read their options from one model each: --config files, flags winning over
them, unknown keys named, and every flag they always had still there."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edgekit.cli import cli

EXPORT_FLAGS = [
    "--model",
    "--weights",
    "--out",
    "--config",
    "--format",
    "--quantize",
    "--batch-size",
    "--no-fallback",
    "--max-fallback-steps",
    "--max-fallback-seconds",
    "--opset",
    "--calib-data",
    "--calib-size",
    "--calib-method",
    "--parity-data",
    "--max-parity-images",
    "--embed-preprocessing",
    "--fixed-batch",
    "--ort-format",
    "--max-rel-diff",
    "--min-agreement",
    "--max-accuracy-drop",
    "--json",
]
BENCH_FLAGS = [
    "--config",
    "--runtime",
    "--batch-sizes",
    "--threads",
    "--data",
    "--max-images",
    "--warmup",
    "--iterations",
    "--end-to-end",
    "--graph-opt-level",
    "--allow-spinning",
    "--no-allow-spinning",
    "--provider-option",
    "--device",
    "--json",
    "--md",
    "--plot",
    "--save",
    "--no-save",
]


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_error_line(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_every_export_and_bench_flag_is_still_in_help():
    for command, flags in (("export", EXPORT_FLAGS), ("bench", BENCH_FLAGS)):
        result = _invoke(command, "--help")
        assert result.exit_code == 0, result.output
        words = set(result.output.replace(",", " ").replace("/", " ").split())
        missing = [flag for flag in flags if flag not in words]
        assert not missing, (command, missing)


def test_export_config_file_applies_and_a_flag_wins(run_copy, tmp_path):
    config = tmp_path / "export.yaml"
    config.write_text("quantize: none\nmax_parity_images: 3\nmin_agreement: 0.1\n")
    result = _invoke("export", run_copy.path, "--config", config, "--min-agreement", "0.2", "--json")
    assert result.exit_code == 0, result.output
    exported = json.loads(result.stdout)
    (variant,) = exported["variants"]
    assert variant["parity"]["metrics"]["n_images"] == 3  # from the file
    assert variant["parity"]["thresholds"]["min_agreement"] == 0.2  # the flag beat the file's 0.1


def test_export_config_unknown_key_is_one_line_naming_file_and_key(run_copy, tmp_path):
    config = tmp_path / "export.yaml"
    config.write_text("quantize: none\ncalib_sizes: 10\n")
    _one_error_line(_invoke("export", run_copy.path, "--config", config), str(config), "calib_sizes", "unknown key")
    assert not run_copy.exports_dir.exists() or not any(run_copy.exports_dir.iterdir())


def test_export_no_fallback_and_lists_from_yaml_mean_the_same_as_flags():
    from edgekit.exporting.options import ExportOptions

    from_yaml = ExportOptions.model_validate({"formats": ["onnx", "torch-export"], "accuracy_aware": False})
    from_flags = ExportOptions.model_validate({"formats": "onnx, torch-export", "accuracy_aware": False})
    assert from_yaml == from_flags and from_yaml.formats == ("onnx", "torch-export")


def test_bench_config_file_applies_and_a_flag_wins(run_copy, tmp_path):
    config = tmp_path / "bench.yaml"
    config.write_text("runtimes: torch\nwarmup: 1\niterations: 5\nsave: false\n")
    out = tmp_path / "bench.json"
    result = _invoke("bench", run_copy.path, "--config", config, "--iterations", "3", "--json", out)
    assert result.exit_code == 0, result.output
    settings = json.loads(out.read_text())["settings"]
    assert settings["warmup"] == 1 and settings["runtimes"] == ["torch"]  # from the file
    assert settings["iterations"] == 3  # the flag beat the file's 5
    assert not (run_copy.path / "bench").exists() or not any((run_copy.path / "bench").iterdir())  # save: false


def test_bench_config_unknown_key_is_one_line_naming_file_and_key(run_copy, tmp_path):
    config = tmp_path / "bench.yaml"
    config.write_text("iterations: 3\nruntime: torch\n")
    _one_error_line(_invoke("bench", run_copy.path, "--config", config), str(config), "runtime", "unknown key")
