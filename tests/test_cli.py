"""The command line as a user drives it: help, config files, errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import click
from click.testing import CliRunner

from edgekit.cli import cli


def test_every_command_is_documented():
    for name, command in cli.commands.items():
        assert command.help and len(command.help.strip()) > 20, f"`edgekit {name}` needs a docstring"
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage: " in result.output
        for param in command.params:
            if isinstance(param, click.Option) and param.name not in ("help",):
                assert param.help or param.name in _SELF_EXPLAINING, f"edgekit {name} {param.opts[0]} has no help"


# Options whose name and default already say everything.
_SELF_EXPLAINING = {
    "model",
    "weights",
    "data",
    "val_data",
    "val_split",
    "out",
    "strategy",
    "epochs",
    "batch_size",
    "optimizer",
    "weight_decay",
    "label_smoothing",
    "warmup_epochs",
    "augment",
    "seed",
    "device",
    "amp",
    "channels_last",
    "num_workers",
    "skip_bad_images",
    "resume",
}


def test_required_commands_exist():
    assert {"models", "finetune", "predict"} <= set(cli.commands)


def test_models_lists_the_zoo_as_json():
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["efficientnet_lite0"]["weights_offline"] is True
    assert rows["resnet50"]["default_weights"] == "IMAGENET1K_V2"
    assert 25 < rows["resnet50"]["params_m"] < 26


def test_finetune_from_a_config_file_with_a_flag_winning(photo_folders, tmp_path):
    train, val = photo_folders
    config = tmp_path / "recipe.yaml"
    config.write_text(
        f"model: resnet18\nweights: none\ndata: {train}\nval_data: {val}\nstrategy: head\nepochs: 3\nimage_size: 32\nbatch_size: 16\n"
    )
    result = CliRunner().invoke(cli, ["finetune", "--config", str(config), "--epochs", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "run written to" in result.output and "best val accuracy" in result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1  # --epochs 1 beat the file's 3


def test_config_file_errors_name_the_key_and_exit_2(tmp_path):
    cases = {
        "lr_rate: 0.1\n": "lr_rate: unknown key",
        "epochs: many\n": "epochs: Input should be a valid integer",
        "batch_size: -4\n": "batch_size: Input should be greater than or equal to 1",
        "- a list\n": "must be a mapping",
        "epochs: [1\n": "is not valid YAML",
    }
    for text, message in cases.items():
        config = tmp_path / "bad.yaml"
        config.write_text(f"data: {tmp_path}\nout: {tmp_path / 'out'}\n" + text if not text.startswith(("-", "epochs: [")) else text)
        result = CliRunner().invoke(cli, ["finetune", "--config", str(config)])
        assert result.exit_code == 2, (text, result.output)
        assert message in result.output and "Traceback" not in result.output, (text, result.output)
        assert len(result.output.strip().splitlines()) == 1


def test_missing_required_option_names_it(tmp_path):
    result = CliRunner().invoke(cli, ["finetune", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "data: Field required" in result.output


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "edgekit", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "finetune" in result.stdout
