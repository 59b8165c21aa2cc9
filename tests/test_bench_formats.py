"""`edgekit bench` on every exported format: OpenVINO IR (.xml + .bin) and ExecuTorch (.pte) beside ONNX, each on
its natural runtime with `--runtime auto`, in one interleaved table with accuracy; a missing extra is a skip."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgekit.benchmarking import artifacts, bench, stats
from edgekit.errors import EdgekitError

FAST = {"warmup": 1, "iterations": 3, "threads": 1, "save": False}


@pytest.fixture
def ir_run(run_copy):
    """The trained run (real photos) exported to ONNX fp32 and OpenVINO IR fp32."""
    pytest.importorskip("openvino")
    from edgekit.exporting import export

    export(run_copy, formats=("onnx", "openvino"), quantize=("none",))
    assert (run_copy.exports_dir / "model.xml").is_file() and (run_copy.exports_dir / "model.bin").is_file()
    return run_copy


@pytest.fixture(scope="module")
def val_dir(photo_folders):
    return photo_folders[1]


def _rows(result) -> list[tuple[str, str, str]]:
    return [(Path(m.artifact).name, m.variant, m.runtime) for m in result.measurements]


@pytest.mark.slow
def test_auto_runs_each_artifact_on_its_natural_runtime_once(ir_run, val_dir):
    exports = ir_run.exports_dir
    result = bench(ir_run.path, runtimes="auto", data=val_dir, **FAST)

    rows = _rows(result)
    assert sorted(rows) == sorted(
        [
            (ir_run.model_path.name, "fp32", "torch"),
            ("model.onnx", "fp32", "ort-cpu"),
            ("model.xml", "openvino-fp32", "openvino"),
        ]
    )
    assert len(rows) == len(set(rows)), f"duplicate rows: {rows}"
    assert result.skipped == {}
    by_variant = {m.variant: m for m in result.measurements if m.runtime != "torch"}
    ir = by_variant["openvino-fp32"]
    xml, weights = exports / "model.xml", exports / "model.bin"
    assert ir.size_bytes == xml.stat().st_size + weights.stat().st_size
    assert ir.size_bytes > weights.stat().st_size > 10 * xml.stat().st_size  # the weights are the bulk, not the XML
    onnx = by_variant["fp32"]
    assert 0.5 < ir.size_bytes / onnx.size_bytes < 2  # the same fp32 weights in another container
    # accuracy for every format: the IR reads its labels and preprocessing from its rt_info, and it is the same model
    assert ir.top1 is not None and onnx.top1 is not None and ir.accuracy_images == onnx.accuracy_images
    assert abs(ir.top1 - onnx.top1) <= 1 / ir.accuracy_images + 1e-9
    assert ir.fp32_baseline == "openvino-fp32 on openvino"  # within its own format and runtime first
    assert onnx.fp32_baseline == "fp32 on ort-cpu"


@pytest.mark.slow
def test_named_runtimes_still_run_onnx_on_each(ir_run):
    result = bench(ir_run.path, runtimes="ort-cpu,openvino", **FAST)
    assert sorted(_rows(result)) == sorted(
        [
            ("model.onnx", "fp32", "ort-cpu"),
            ("model.onnx", "fp32", "openvino"),
            ("model.xml", "openvino-fp32", "openvino"),
        ]
    )
    assert result.skipped == {}


@pytest.mark.slow
def test_a_missing_extra_skips_its_artifacts_with_the_fix(ir_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails, as when the extra is absent
    result = bench(ir_run.path, runtimes="auto", **FAST)
    assert sorted(_rows(result)) == sorted([(ir_run.model_path.name, "fp32", "torch"), ("model.onnx", "fp32", "ort-cpu")])
    xml = ir_run.exports_dir / "model.xml"
    assert set(result.skipped) == {f"openvino: {xml}"}
    assert "pip install 'edgekit[openvino]'" in result.skipped[f"openvino: {xml}"]


@pytest.mark.slow
def test_a_pte_without_executorch_is_a_skip_with_the_fix(run_copy, monkeypatch):
    from edgekit.exporting import export

    export(run_copy, formats=("onnx",), quantize=("none",))
    pte = run_copy.exports_dir / "model.pte"
    pte.write_bytes(b"PTE" * 100)  # never loaded: the runtime is unavailable before that
    monkeypatch.setitem(sys.modules, "executorch", None)
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)
    result = bench(run_copy.path, runtimes="auto", **FAST)
    assert ("model.onnx", "fp32", "ort-cpu") in _rows(result)
    assert not any(runtime == "executorch" for _, _, runtime in _rows(result))
    assert set(result.skipped) == {f"executorch: {pte}"}
    assert "pip install 'edgekit[executorch]'" in result.skipped[f"executorch: {pte}"]


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
@pytest.mark.slow
def test_executorch_program_benches_on_executorch(run_copy):
    pytest.importorskip("executorch.runtime")
    from edgekit.exporting import export

    export(run_copy, formats=("onnx", "executorch"), quantize=("none",))
    pte = run_copy.exports_dir / "model.pte"
    # export's parity check has run a program already, so ExecuTorch's thread pool keeps its size: threads left as is
    result = bench(run_copy.path, runtimes="auto", **{**FAST, "threads": None})
    rows = _rows(result)
    assert ("model.pte", "executorch-fp32", "executorch") in rows, result.skipped
    assert ("model.onnx", "fp32", "ort-cpu") in rows
    assert len(rows) == len(set(rows)) and result.skipped == {}
    row = next(m for m in result.measurements if m.runtime == "executorch")
    assert row.size_bytes == pte.stat().st_size + (run_copy.exports_dir / "model.pte.json").stat().st_size  # the side file travels too
    assert row.fp32_baseline == "executorch-fp32 on executorch"


# ---- without exporting: names, pairing, sizes, ratios ----------------------------------------------------------


def _candidate(name: str, kind: str | None = None):
    path = Path("/nowhere/run/exports") / name
    return artifacts.Candidate("run", path, artifacts.variant_of(path), kind or path.suffix)


def test_auto_pairs_each_format_with_its_runtime_and_names_pair_all():
    found = [
        _candidate("model.onnx"),
        _candidate("model.xml"),
        _candidate("model.int8.pte"),
        _candidate("model.pt2"),
        artifacts.Candidate("run", Path("/nowhere/run/model.pt"), "fp32", "run"),
    ]
    assert [c.variant for c in found] == ["fp32", "openvino-fp32", "executorch-int8", "torch-export", "fp32"]
    pairs, _ = artifacts.pair_with_runtimes(found, ["auto"], {})
    assert {(c.path.name, runtime) for c, runtime in pairs} == {
        ("model.onnx", "ort-cpu"),
        ("model.xml", "openvino"),
        ("model.int8.pte", "executorch"),
        ("model.pt2", "torch-export"),
        ("model.pt", "torch"),
    } - ({("model.int8.pte", "executorch")} if not _available("executorch") else set())
    named, skipped = artifacts.pair_with_runtimes(found, ["ort-cpu", "openvino"], {})
    assert sorted((c.path.name, runtime) for c, runtime in named) == [
        ("model.onnx", "openvino"),
        ("model.onnx", "ort-cpu"),
        ("model.xml", "openvino"),
    ]
    both, _ = artifacts.pair_with_runtimes(found, ["auto", "openvino"], {})
    assert len(both) == len(set((c.path, r) for c, r in both))  # .xml named twice (auto and openvino): one pair
    with pytest.raises(EdgekitError, match="unknown runtime 'openvin'"):
        artifacts.pair_with_runtimes(found, ["openvin"], {})


def _available(name: str) -> bool:
    from edgekit import runtimes

    return runtimes.get_runtime(name).available()[0]


def test_ir_size_counts_its_weights(tmp_path):
    (tmp_path / "model.xml").write_bytes(b"x" * 1_000)
    (tmp_path / "model.bin").write_bytes(b"w" * 50_000)
    (tmp_path / "model.pte").write_bytes(b"p" * 7_000)
    (tmp_path / "model.pte.json").write_text("{}")
    assert artifacts.artifact_bytes(tmp_path / "model.xml") == 51_000
    assert artifacts.artifact_bytes(tmp_path / "model.pte") == 7_002  # its side file travels with it


def test_ratios_compare_within_a_format_first():
    from edgekit.benchmarking import Measurement

    def m(variant, runtime, p50):
        return Measurement(
            model="m",
            artifact=f"{variant}.x",
            variant=variant,
            runtime=runtime,
            batch_size=1,
            iterations=5,
            p50_ms=p50,
            p90_ms=p50,
            p99_ms=p50,
            mean_ms=p50,
            p50_ci_ms=(p50 * 0.95, p50 * 1.05),
            images_per_second=1000 / p50,
            peak_rss_mb=1,
            rss_delta_mb=0,
            size_bytes=1,
            ratio_to_fastest=0,
        )

    rows = [
        m("fp32", "ort-cpu", 2.0),
        m("int8", "ort-cpu", 1.0),
        m("openvino-fp32", "openvino", 1.5),
        m("openvino-int8", "openvino", 1.8),
        m("executorch-int8", "executorch", 3.0),
    ]
    warnings = stats.add_ratios(rows)
    by = {r.variant: r for r in rows}
    assert by["openvino-int8"].fp32_baseline == "openvino-fp32 on openvino"
    assert by["openvino-int8"].ratio_to_fp32 == pytest.approx(1.8 / 1.5) and by["openvino-int8"].slower_than_fp32 is True
    # no executorch-fp32 row: compared with the fastest plain fp32 elsewhere, and not judged across runtimes
    assert by["executorch-int8"].fp32_baseline == "fp32 on ort-cpu" and by["executorch-int8"].slower_than_fp32 is None
    assert [w.split(":")[1].split(" on ")[0].strip() for w in warnings] == ["openvino-int8"]
    assert stats.fp32_parent_variant("openvino-int8") == "openvino-fp32"
    assert stats.fp32_parent_variant("int8-uint8in") == "fp32-uint8in"
    assert stats.is_compressed("executorch-int8") and not stats.is_compressed("openvino-fp32")
    assert not stats.is_compressed("openvino-fp32") and not stats.is_compressed("torch-export")
    ordered = [r.variant for r in sorted(rows, key=stats.row_order)]
    assert ordered == ["fp32", "int8", "openvino-fp32", "openvino-int8", "executorch-int8"]  # Format order
