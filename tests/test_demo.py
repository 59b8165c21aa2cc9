"""The built-in default's edge-target step: which formats it adds, and what it says when an extra is missing.
(The whole demo runs in CI as `edgekit demo`; its export, bench and gate are tested in their own modules.)"""

from __future__ import annotations

from edgekit import demo, runtimes


def test_missing_extras_are_named_with_their_install_line(monkeypatch, tmp_path):
    for name in demo.EDGE_FORMATS:
        runtime = runtimes.get_runtime(name)
        monkeypatch.setattr(runtime, "available", lambda name=name: (False, f"{name} is not installed; pip install 'edgekit[{name}]'"))
    exported, missing = demo.export_edge_targets(tmp_path / "no-run-needed")
    assert exported is None  # nothing to export, and the run is never read
    assert set(missing) == {"openvino", "executorch"}
    assert "pip install 'edgekit[executorch]'" in missing["executorch"]


def test_installed_extras_are_exported_and_the_rest_named(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(runtimes.get_runtime("openvino"), "available", lambda: (True, ""))
    monkeypatch.setattr(runtimes.get_runtime("executorch"), "available", lambda: (False, "pip install 'edgekit[executorch]'"))
    monkeypatch.setattr("edgekit.exporting.export", lambda run, **options: calls.append((run, options)) or "exported")
    exported, missing = demo.export_edge_targets(tmp_path)
    assert exported == "exported" and list(missing) == ["executorch"]
    assert calls == [(tmp_path, {"formats": "openvino", "quantize": "none,int8", "progress": False})]
