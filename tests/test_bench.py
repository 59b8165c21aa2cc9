"""edgekit bench: what it measures, how it names and compares variants, its reports and its CLI.

Nothing here asserts a speed: timings on a shared CI machine are noise. Ratio logic and warnings are
tested on constructed measurements; real runs are checked for consistency (p50 <= p90, ratios = p50 / p50).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import edgekit.benchmarking as bench_module
import edgekit.device.memory as memory_module
from edgekit import runtimes
from edgekit.benchmarking import BenchResult, Measurement, bench, report
from edgekit.benchmarking.stats import add_ratios, summarize
from edgekit.errors import DataError, EdgekitError

sys.path.insert(0, str(Path(__file__).parent))
from test_runtimes import _onnx_export, write_exports  # noqa: E402  (shared private export helpers)

FAST = {"warmup": 1, "iterations": 3}


@pytest.fixture(scope="module")
def exported_run(copy_trained_run):
    """A private copy of the trained run with exports: fp32, fp32-uint8in (embedded preprocessing), int8, int8-dynamic, .pt2."""
    run = copy_trained_run("bench", name="flowers")
    write_exports(run, with_quantized=True)
    return run


@pytest.fixture(scope="module")
def val_dir(photo_folders):
    return photo_folders[1]


@pytest.fixture(scope="module")
def run_result(exported_run, val_dir) -> BenchResult:
    return bench(exported_run.path, runtimes=["torch", "torch-export", "ort-cpu"], batch_sizes=(1, 2), threads=1, data=val_dir, **FAST)


def _expected_top1(run, folder_dir) -> float:
    """Top-1 of the eager model on the folder, computed independently of edgekit.bench."""
    from edgekit.data import load_batch, scan_folder

    folder = scan_folder(folder_dir)
    batch = torch.from_numpy(load_batch([p for p, _ in folder.samples], run.card.preprocessing))
    with torch.no_grad():
        predicted = run.build_model()(batch).argmax(1).numpy()
    truth = np.array([run.card.class_names.index(folder.classes[label]) for _, label in folder.samples])
    return float((predicted == truth).mean())


@pytest.mark.timeout(900)  # long by nature (minutes on 2 busy cores); the default is 300 s
def test_every_variant_on_every_runtime_that_loads_it(run_result, exported_run):
    seen = {(m.variant, m.runtime, m.batch_size) for m in run_result.measurements}
    expected = {
        ("fp32", "torch"),
        ("torch-export", "torch-export"),
        ("fp32", "ort-cpu"),
        ("fp32-uint8in", "ort-cpu"),
        ("int8", "ort-cpu"),
        ("int8-dynamic", "ort-cpu"),
    }
    assert seen == {(v, r, b) for v, r in expected for b in (1, 2)}
    assert {m.model for m in run_result.measurements} == {"flowers"}
    assert run_result.skipped == {}


def test_measurements_are_consistent(run_result, exported_run):
    for m in run_result.measurements:
        assert m.iterations == 3
        assert 0 < m.p50_ms <= m.p90_ms <= m.p99_ms
        assert m.p50_ci_ms[0] <= m.p50_ms <= m.p50_ci_ms[1]
        assert m.images_per_second == pytest.approx(m.batch_size * 1000 / m.mean_ms)
        assert m.peak_rss_mb > 0 and m.rss_delta_mb >= 0
        assert m.size_bytes == Path(m.artifact).stat().st_size
        assert m.runtime_info, "what the runtime used must be recorded"
    by_key = {(m.variant, m.runtime, m.batch_size): m for m in run_result.measurements}
    torch_row = by_key[("fp32", "torch", 1)]
    assert torch_row.artifact == str(exported_run.model_path)
    assert torch_row.parameters == sum(p.numel() for p in exported_run.build_model().parameters())
    assert torch_row.runtime_info["threads"] == 1
    assert by_key[("fp32", "ort-cpu", 1)].runtime_info["intra_op_threads"] == 1
    assert by_key[("int8", "ort-cpu", 1)].size_bytes < by_key[("fp32", "ort-cpu", 1)].size_bytes / 2


def test_ort_spinning_is_off_when_sessions_take_turns(run_result, exported_run):
    # idle ORT threads spinning on the cores the next interleaved session needs would distort its timing
    assert all(m.runtime_info["allow_spinning"] is False for m in run_result.measurements if m.runtime == "ort-cpu")
    assert run_result.settings["options"]["allow_spinning"] is False
    alone = bench(exported_run.exports_dir / "model.onnx", threads=1, **FAST)
    assert alone.measurements[0].runtime_info["allow_spinning"] == "default"
    chosen = bench(
        [exported_run.exports_dir / "model.onnx", exported_run.exports_dir / "model.int8.onnx"],
        threads=1,
        options={"allow_spinning": True},
        **FAST,
    )
    assert all(m.runtime_info["allow_spinning"] is True for m in chosen.measurements)


def test_every_row_carries_cold_and_warm_figures_and_its_settings(run_result, exported_run):
    data = json.loads(run_result.to_json())
    for row in data["measurements"]:
        label = f"{row['variant']} on {row['runtime']} batch {row['batch_size']}"
        for key in (
            "load_ms",
            "first_inference_ms",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "peak_rss_after_load_mb",
            "peak_rss_after_first_inference_mb",
        ):
            assert isinstance(row[key], float) and row[key] > 0, (label, key)
        assert row["first_inference_batch_size"] == 1  # the first batch size benched
        assert row["peak_rss_after_load_mb"] <= row["peak_rss_after_first_inference_mb"], label
        assert isinstance(row["contended"], bool) and 0.0 <= row["contention_share"] <= 1.0
        assert row["fair_settings"], label
        assert row["p50_ci_ms"][0] <= row["p50_ms"] <= row["p50_ci_ms"][1]
        assert "deployment" not in row  # settings are compared by --quantize auto, in alternating blocks
        if row["runtime"] == "ort-cpu":  # interleaved: spinning off, so no session's idle threads tax the next
            assert row["fair_settings"]["allow_spinning"] is False and row["fair_settings"]["intra_op_threads"] == 1


def test_the_summary_picks_the_fastest_of_the_interleaved_rows_and_no_fixed_settings(run_result):
    for batch_size in (1, 2):
        group = [m for m in run_result.measurements if m.batch_size == batch_size]
        fastest = min(group, key=lambda m: m.p50_ms)
        line = next(line for line in run_result.summary if line.startswith(f"flowers, batch {batch_size}:"))
        assert f"fastest is {fastest.label}, {fastest.p50_ms:.2f} ms p50" in line
        assert "run it with" not in line  # which settings to deploy is --quantize auto's measured answer, not a guess
    assert run_result.summary[-1].startswith("machine: ")
    text = report.markdown(run_result)
    assert "p50 ms (95% CI)" in text and "--quantize auto" in text


def test_bench_saves_its_reports_into_the_run(exported_run):
    before = set(exported_run.bench_dir.glob("*.json")) if exported_run.bench_dir.exists() else set()
    result = bench(exported_run.exports_dir / "model.onnx", threads=1, **FAST)  # a file inside the run counts
    json_path, md_path = result.saved
    assert json_path not in before and BenchResult.from_json(json_path).measurements == result.measurements
    assert md_path.read_text().startswith("## edgekit bench")
    unsaved = bench(exported_run.exports_dir / "model.onnx", threads=1, save=False, **FAST)
    assert unsaved.saved == [] and set(exported_run.bench_dir.glob("*.json")) == before | {json_path}


def test_settings_and_machine_are_typed_and_still_read_like_dicts(run_result):
    from edgekit.benchmarking import BenchSettings, MachineInfo

    assert isinstance(run_result.settings, BenchSettings) and isinstance(run_result.machine, MachineInfo)
    assert run_result.settings.get("threads") == run_result.settings.threads == 1  # how gate reads them
    assert run_result.machine.get("cpu") == run_result.machine["cpu"] == run_result.machine.cpu
    assert run_result.settings.get("no such key", "fallback") == "fallback"
    from pydantic import BaseModel

    class Holder(BaseModel):  # a report that still types the machine as a dict accepts it
        machine: dict

    assert Holder(machine=run_result.machine).machine["cpu"] == run_result.machine.cpu


def test_ratios_are_computed_within_the_result(run_result):
    for batch_size in (1, 2):
        group = [m for m in run_result.measurements if m.batch_size == batch_size]
        fastest = min(m.p50_ms for m in group)
        for m in group:
            assert m.ratio_to_fastest == pytest.approx(m.p50_ms / fastest)
            parent = {"fp32-uint8in": "fp32-uint8in", "int8-uint8in": "fp32-uint8in"}.get(m.variant, "fp32")
            parent = m.variant if m.variant == "torch-export" else parent  # a torch.export program is its own fp32
            baseline = next(b for b in group if b.variant == parent and b.runtime == m.runtime)
            assert m.ratio_to_fp32 == pytest.approx(m.p50_ms / baseline.p50_ms)
            assert m.fp32_baseline == f"{parent} on {m.runtime}"
            if m.variant.startswith("int8"):
                assert m.slower_than_fp32 == (m.ratio_to_fp32 >= 1.0)
                flagged = f"batch {batch_size}: {m.variant} on {m.runtime} is NOT faster than"
                assert any(flagged in w for w in run_result.warnings) == m.slower_than_fp32
        assert min(m.ratio_to_fastest for m in group) == 1.0


def test_accuracy_matches_an_independent_computation(run_result, exported_run, val_dir):
    expected = _expected_top1(exported_run, val_dir)
    images = sum(1 for _ in val_dir.rglob("*.jpg"))
    for m in run_result.measurements:
        assert m.accuracy_images == images
        assert m.top5 == 1.0  # three classes: the true one is always among the top five
        if m.variant in ("fp32", "fp32-uint8in"):  # same function, same preprocessing: same decisions
            assert m.top1 == pytest.approx(expected, abs=1.5 / images), m.label
    assert expected > 0.5, "the fixture model should be well above chance (1/3), or this test proves little"


def test_accuracy_maps_classes_by_name_not_position(exported_run, tmp_path, val_dir):
    # a folder with only two of the three classes: index 0 of the folder is index 1 of the model
    partial = tmp_path / "partial"
    for name in ("coffee", "rocket"):
        shutil.copytree(val_dir / name, partial / name)
    result = bench(exported_run.exports_dir / "model.onnx", data=partial, threads=1, **FAST)
    (m,) = result.measurements
    assert m.top1 == pytest.approx(_expected_top1(exported_run, partial))

    strange = tmp_path / "strange"
    shutil.copytree(val_dir / "coffee", strange / "coffee")
    shutil.copytree(val_dir / "rocket", strange / "tulip")
    with pytest.raises(DataError, match="tulip"):
        bench(exported_run.exports_dir / "model.onnx", data=strange, threads=1, **FAST)


class _RankedLogits(runtimes.Session):
    """A session whose logits rank each image's true class at a chosen place: the accuracy is known in advance."""

    def __init__(self, labels, truth, ranks):
        from edgekit.preprocessing import Preprocessing

        super().__init__(Path("ranked.onnx"), labels=labels, preprocessing=Preprocessing.for_size(8))
        self.truth, self.ranks, self.seen = truth, ranks, 0

    def run(self, batch):
        logits = np.zeros((len(batch), len(self.labels)), dtype=np.float32)
        for row in range(len(batch)):
            true_class, rank = self.truth[self.seen + row], self.ranks[self.seen + row]
            order = [c for c in range(len(self.labels)) if c != true_class]
            order.insert(rank, true_class)  # order[j] gets the j-th highest logit
            logits[row, order] = np.arange(len(self.labels), 0, -1)
        self.seen += len(batch)
        return logits


def test_top1_top5_arithmetic(tmp_path):
    from conftest import write_photo_folder

    from edgekit.data import scan_folder

    write_photo_folder(tmp_path, 4, seed=3, size=16)  # chelsea, coffee, rocket: 12 images
    folder = scan_folder(tmp_path)
    labels = ["x1", "rocket", "x2", "chelsea", "x3", "coffee", "x4", "x5"]  # 8 model classes, another order
    truth = [labels.index(folder.classes[label]) for _, label in folder.samples]
    ranks = [0, 0, 0, 2, 4, 6] * 2  # rank 0: top-1 hit; 2 and 4: top-5 hits; 6: miss
    session = _RankedLogits(labels, truth, ranks)
    from edgekit.benchmarking.accuracy import accuracy
    from edgekit.benchmarking.sessions import Entry

    entry = Entry(bench_module.Candidate("m", Path("ranked.onnx"), "fp32", ".onnx"), "ort-cpu", session, 0)
    accuracy(entry, folder)
    assert entry.top1 == pytest.approx(6 / 12)
    assert entry.top5 == pytest.approx(10 / 12)
    assert entry.accuracy_images == 12


def test_bare_onnx_benches_with_a_note_and_no_accuracy(exported_run, tmp_path, val_dir):
    bare = _onnx_export(exported_run.build_model(), torch.randn(2, 3, 48, 48), tmp_path / "resnet.onnx", None)
    result = bench([bare], data=val_dir, threads=1, **FAST)
    (m,) = result.measurements
    assert m.runtime == "ort-cpu" and m.variant == "fp32" and m.model == "resnet"
    assert m.top1 is None and m.top5 is None
    assert any("no edgekit metadata" in note for note in m.notes)


def test_unavailable_runtime_is_skipped_with_its_reason(exported_run, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setitem(sys.modules, "openvino", None)
    result = bench(exported_run.exports_dir / "model.onnx", runtimes=["ort-cpu", "ort-cuda", "openvino"], threads=1, **FAST)
    assert [m.runtime for m in result.measurements] == ["ort-cpu"]
    assert "CUDAExecutionProvider" in result.skipped["ort-cuda"]
    assert "openvino is not installed" in result.skipped["openvino"]
    with pytest.raises(EdgekitError, match="nothing could be benched.*ort-cuda: onnxruntime"):
        bench(exported_run.exports_dir / "model.onnx", runtimes=["ort-cuda"], **FAST)


def test_runtime_without_artifacts_and_bad_arguments(exported_run):
    onnx_file = exported_run.exports_dir / "model.onnx"
    result = bench(onnx_file, runtimes="ort-cpu,torch-export", threads=1, **FAST)  # a comma list works too
    assert "no artifact it can load" in result.skipped["torch-export"]
    with pytest.raises(EdgekitError, match="registered runtimes: torch, torch-export, ort-cpu"):
        bench(onnx_file, runtimes=["tensorrt"])
    with pytest.raises(EdgekitError, match="option 'device' is not used by any chosen runtime"):
        bench(onnx_file, runtimes=["ort-cpu"], options={"device": "cuda"})
    with pytest.raises(EdgekitError, match="--batch-sizes"):
        bench(onnx_file, batch_sizes=(0,))
    with pytest.raises(EdgekitError, match="not an edgekit run directory"):
        bench(exported_run.exports_dir)


def test_end_to_end_times_decoding_too(exported_run, val_dir):
    files = [exported_run.exports_dir / "model.onnx", exported_run.exports_dir / "model.fp32-uint8in.onnx"]
    result = bench(files, end_to_end=True, data=val_dir, threads=1, batch_sizes=(2,), **FAST)
    assert all(m.end_to_end for m in result.measurements)
    assert "decode" in result.settings["timing"]
    # with no --data and no run, there are no images to decode
    bare_dir = exported_run.path.parent / "bare-e2e"
    bare_dir.mkdir(exist_ok=True)
    shutil.copy(files[0], bare_dir / "model.onnx")
    with pytest.raises(EdgekitError, match="--end-to-end needs image files"):
        bench(bare_dir / "model.onnx", end_to_end=True)


def test_variant_names():
    assert bench_module.variant_of(Path("x/model.onnx")) == "fp32"
    assert bench_module.variant_of(Path("x/model.fp16.onnx")) == "fp16"
    assert bench_module.variant_of(Path("x/model.int8-dynamic.onnx")) == "int8-dynamic"
    assert bench_module.variant_of(Path("x/model.pt2")) == "torch-export"
    assert bench_module.variant_of(Path("x/model.xml")) == "openvino-fp32"
    assert bench_module.variant_of(Path("x/model.int8.xml")) == "openvino-int8"
    assert bench_module.variant_of(Path("x/model.pte")) == "executorch-fp32"
    assert bench_module.variant_of(Path("x/model.int8.pte")) == "executorch-int8"
    assert bench_module.variant_of(Path("x/model.pt")) == "fp32"


def test_variant_of_an_unconventionally_named_file_comes_from_its_graph(exported_run, tmp_path):
    shutil.copy(exported_run.exports_dir / "model.int8.onnx", tmp_path / "mine.onnx")
    shutil.copy(exported_run.exports_dir / "model.int8-dynamic.onnx", tmp_path / "other.onnx")
    shutil.copy(exported_run.exports_dir / "model.onnx", tmp_path / "plain.onnx")
    assert bench_module.variant_of(tmp_path / "mine.onnx") == "int8"
    assert bench_module.variant_of(tmp_path / "other.onnx") == "int8-dynamic"
    assert bench_module.variant_of(tmp_path / "plain.onnx") == "fp32"


def _measurement(variant, runtime, p50, batch=1, top1=None, model="m", spread=0.05):
    return Measurement(
        model=model,
        artifact=f"{variant}.onnx",
        variant=variant,
        runtime=runtime,
        batch_size=batch,
        iterations=10,
        p50_ms=p50,
        p90_ms=p50 * 1.1,
        p99_ms=p50 * 1.2,
        mean_ms=p50,
        p50_ci_ms=(p50 * (1 - spread), p50 * (1 + spread)),
        images_per_second=1000 / p50,
        peak_rss_mb=100,
        rss_delta_mb=10,
        size_bytes=1000,
        top1=top1,
        ratio_to_fastest=0,
    )


def test_int8_slower_than_fp32_is_flagged_and_explained():
    measurements = [
        _measurement("fp32", "torch", 11.6, top1=0.90),
        _measurement("fp32", "ort-cpu", 2.35, top1=0.90),
        _measurement("int8", "ort-cpu", 3.46, top1=0.88),
        _measurement("int8-dynamic", "ort-cpu", 1.98, top1=0.90),
        _measurement("fp32", "ort-cpu", 42.8, model="resnet50"),
        _measurement("int8", "ort-cpu", 15.5, model="resnet50"),
    ]
    warnings = add_ratios(measurements)
    by = {(m.model, m.variant, m.runtime): m for m in measurements}
    slow = by[("m", "int8", "ort-cpu")]
    assert slow.slower_than_fp32 is True and slow.ratio_to_fp32 == pytest.approx(3.46 / 2.35)
    assert slow.fp32_baseline == "fp32 on ort-cpu"
    assert by[("m", "int8-dynamic", "ort-cpu")].slower_than_fp32 is False
    assert by[("resnet50", "int8", "ort-cpu")].slower_than_fp32 is False
    assert by[("m", "fp32", "torch")].slower_than_fp32 is None  # fp32 is the baseline, not a compressed variant
    assert by[("m", "int8-dynamic", "ort-cpu")].ratio_to_fastest == 1.0
    assert by[("m", "fp32", "torch")].ratio_to_fastest == pytest.approx(11.6 / 1.98)
    assert by[("resnet50", "int8", "ort-cpu")].ratio_to_fastest == 1.0  # models are compared only within themselves
    assert len(warnings) == 1
    assert "int8 on ort-cpu is NOT faster than its fp32 parent fp32" in warnings[0] and "1.47x" in warnings[0]
    assert "top-1 88.0% vs 90.0%" in warnings[0]

    summary = summarize(measurements)
    assert summary[0].startswith("m, batch 1: fastest is int8-dynamic on ort-cpu, 1.98 ms p50")
    assert "within noise" not in summary[0]  # 1.98 (1.88-2.08) vs 2.35 (2.23-2.47): clearly apart
    tie = [_measurement("fp32", "ort-cpu", 2.00), _measurement("int8-dynamic", "ort-cpu", 1.98)]
    add_ratios(tie)
    assert "within noise of each other" in summarize(tie)[0]
    assert "resnet50, batch 1: fastest is int8 on ort-cpu" in summary[1]

    result = BenchResult(machine={"cpu": "test"}, settings={}, measurements=measurements, summary=summary, warnings=warnings)
    text = report.markdown(result)
    assert "⚠ **m, batch 1: int8 on ort-cpu is NOT faster" in text
    row = next(line for line in text.splitlines() if line.startswith("| m | int8 | ort-cpu"))
    assert "1.47x ⚠ not faster" in row
    data = json.loads(result.to_json())
    assert [m["slower_than_fp32"] for m in data["measurements"]][:4] == [None, None, True, False]


def test_json_round_trip(run_result, tmp_path):
    path = tmp_path / "bench.json"
    run_result.to_json(path)
    again = BenchResult.from_json(path)
    assert again.model_dump() == run_result.model_dump()
    data = json.loads(path.read_text())
    assert data["schema_version"] == BenchResult.SCHEMA_VERSION == 2 and "artifacts" in data
    for key in ("cpu", "logical_cores", "cpu_flags", "versions", "gpu"):
        assert key in data["machine"]
    assert "onnxruntime" in data["machine"]["versions"] and "torch" in data["machine"]["versions"]
    assert data["settings"]["iterations"] == 3 and data["settings"]["threads"] == 1
    old = {**data, "schema_version": 1, "targets": data["artifacts"]}  # a schema-1 report: "targets", per-row deployment
    del old["artifacts"]
    old["measurements"] = [{**m, "deployment": {"alone": True}} for m in data["measurements"]]
    assert BenchResult.from_json(json.dumps(old)).artifacts == data["artifacts"]
    data["measurements"][0]["surprise"] = 1
    with pytest.raises(EdgekitError, match="surprise"):
        BenchResult.from_json(json.dumps(data))


def test_plot_is_a_png_with_the_pareto_front(run_result, tmp_path):
    from PIL import Image

    path = report.pareto_plot(run_result, tmp_path / "pareto.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300
    no_accuracy = run_result.model_copy(update={"measurements": [m.model_copy(update={"top1": None}) for m in run_result.measurements]})
    with pytest.raises(EdgekitError, match="--data"):
        report.pareto_plot(no_accuracy, tmp_path / "none.png")


def test_pareto_front():
    #            fast+bad   slow+good  dominated  fastest+worst  same-speed-better
    points = [(1.0, 0.80), (5.0, 0.95), (6.0, 0.90), (0.5, 0.50), (1.0, 0.85)]
    assert report.pareto_front(points) == [3, 4, 1]


def test_median_ci():
    low, high = bench_module.median_ci([float(v) for v in range(1, 101)])
    assert (low, high) == (40.0, 61.0)  # the textbook order statistics for n = 100 at 95%
    assert bench_module.median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)


@pytest.mark.parametrize("exact", [True, False])
def test_peak_memory_sees_a_short_allocation(monkeypatch, exact):
    import mmap
    import time

    if not exact:
        monkeypatch.setattr(memory_module, "_reset_high_water_mark", lambda: False)
    size = 40 * 2**20
    with memory_module.PeakMemory() as memory:
        # fresh anonymous pages, touched: malloc could instead reuse memory this process already holds
        block = mmap.mmap(-1, size)
        block.write(b"\x01" * size)
        time.sleep(0.05)  # long enough for the sampler
        block.close()
    assert memory.delta_mb > 30


def test_cli_bench_run_writes_reports(exported_run, val_dir, tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    args = [
        "bench",
        str(exported_run.path),
        "--runtime",
        "torch,ort-cpu",
        "--batch-sizes",
        "1",
        "--threads",
        "1",
        "--warmup",
        "1",
        "--iterations",
        "2",
        "--data",
        str(val_dir),
        "--json",
        str(tmp_path / "b.json"),
        "--md",
        str(tmp_path / "b.md"),
        "--plot",
        str(tmp_path / "p.png"),
        "--graph-opt-level",
        "extended",
    ]
    before = set(exported_run.bench_dir.glob("*.json")) if exported_run.bench_dir.exists() else set()
    outcome = CliRunner().invoke(cli, args)
    assert outcome.exit_code == 0, outcome.output
    assert "fastest is" in outcome.output
    result = BenchResult.from_json(tmp_path / "b.json")
    assert {m.runtime for m in result.measurements} == {"torch", "ort-cpu"}
    assert all(m.runtime_info["graph_optimization_level"] == "extended" for m in result.measurements if m.runtime == "ort-cpu")
    assert (tmp_path / "b.md").read_text().startswith("## edgekit bench")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    new = set(exported_run.bench_dir.glob("*.json")) - before
    assert len(new) == 1 and BenchResult.from_json(new.pop()).measurements == result.measurements
    assert len(list(exported_run.bench_dir.glob("*.md"))) >= 1


@pytest.mark.parametrize(
    "args,message",
    [
        (["--runtime", "tensorrt"], "registered runtimes: torch, torch-export, ort-cpu, ort-cuda, openvino"),
        (["--plot", "x.png"], "--plot draws latency against accuracy"),
        (["--batch-sizes", "1,x"], "--batch-sizes"),
        (["--provider-option", "device_id"], "KEY=VALUE"),
    ],
)
def test_cli_user_errors_exit_2(exported_run, args, message):
    from click.testing import CliRunner

    from edgekit.cli import cli

    outcome = CliRunner().invoke(cli, ["bench", str(exported_run.exports_dir / "model.onnx"), *args])
    assert outcome.exit_code == 2
    assert message in outcome.output
    assert "Traceback" not in outcome.output


def test_cli_lists_runtimes_and_requires_targets():
    from click.testing import CliRunner

    from edgekit.cli import cli

    listing = CliRunner().invoke(cli, ["bench", "--runtime", "list"])
    assert listing.exit_code == 0
    for name in ("torch", "torch-export", "ort-cpu", "ort-cuda", "openvino"):
        assert name in listing.output
    assert "edgekit[openvino]" in listing.output.replace("\n", "").replace(" ", "") or "openvino" in listing.output
    empty = CliRunner().invoke(cli, ["bench"])
    assert empty.exit_code == 2 and "no ARTIFACTS" in empty.output


def test_int8_validated_on_another_cpu_class_is_benched_with_this_cpus_precision_and_a_note(exported_run, tmp_path, val_dir, monkeypatch):
    """A file exported on a VNNI machine, benched on a (simulated) AMD EPYC: U8U8 kernels, and a note that its
    accuracy here is only known from the images."""
    import json

    import onnx

    from edgekit import hardware
    from edgekit.exporting.onnx import set_metadata
    from edgekit.metadata import RUNTIME_KEY

    path = tmp_path / "model.int8.onnx"
    proto = onnx.load(str(exported_run.exports_dir / "model.int8.onnx"))
    set_metadata(proto, {RUNTIME_KEY: json.dumps({"ort_session_config": {}, "validated_isa": "x86-amx"})})
    onnx.save(proto, str(path))
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"sse2", "avx", "avx2", "fma"}))
    (m,) = bench([path], runtimes=["ort-cpu"], data=val_dir, threads=1, **FAST).measurements
    assert m.fair_settings["session_config"] == {"session.x64quantprecision": "1"}
    assert any("validated on x86-amx" in note and "x86-avx2" in note and "x64quantprecision=1" in note for note in m.notes)
    assert m.top1 is not None  # with images, its accuracy here is measured
