"""The built-in default's edge-target step: which formats it adds, and what it says when an extra is missing.
(The whole demo runs in CI as `edgekit demo`; its export, bench and gate are tested in their own modules.)"""

from __future__ import annotations

from edgekit import demo, runtimes


def test_missing_extras_are_named_with_their_install_line(monkeypatch):
    from edgekit.formats import all_formats

    edge = [f for f in all_formats() if f.extra is not None]
    for fmt in edge:
        runtime = runtimes.get_runtime(fmt.runtime)
        monkeypatch.setattr(runtime, "available", lambda fmt=fmt: (False, f"{fmt.name} is not installed; {fmt.install_hint}"))
    formats, missing = demo.edge_formats()
    assert formats == []
    assert set(missing) == {f.name for f in edge} >= {"openvino", "executorch"}
    assert "pip install 'edgekit[executorch]'" in missing["executorch"]


def test_installed_extras_are_exported_and_the_rest_named(monkeypatch):
    monkeypatch.setattr(runtimes.get_runtime("openvino"), "available", lambda: (True, ""))
    monkeypatch.setattr(runtimes.get_runtime("executorch"), "available", lambda: (False, "pip install 'edgekit[executorch]'"))
    formats, missing = demo.edge_formats()
    assert "openvino" in formats and "executorch" in missing and "executorch" not in formats
