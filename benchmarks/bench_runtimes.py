"""pytest-benchmark over edgekit's runtimes: one small model, every runtime available here, batch 1 and 8.

    pytest benchmarks/bench_runtimes.py --benchmark-only [--benchmark-json out.json]

pytest-benchmark runs one case after another, so its absolute times drift with the machine's load; the
last case runs edgekit.bench once, interleaved, and records the ratios between runtimes (the figures to
compare). The model: ResNet-18 at 96 px with 10 classes, random weights with BatchNorm statistics
re-estimated on real photo crops (so activations, and int8 calibration, are not degenerate).
"""

from __future__ import annotations

import pytest
import torch
from side_by_side import reestimate_batchnorm, write_crops

from edgekit import runtimes
from edgekit.benchmarking import bench
from edgekit.data import load_batch
from edgekit.exporting.onnx import export_onnx
from edgekit.exporting.quantize import quantize_dynamic_matmul, quantize_static
from edgekit.exporting.torch_export import export_program
from edgekit.metadata import ModelMetadata
from edgekit.models import build
from edgekit.preprocessing import Preprocessing
from edgekit.runs import RunCard, save_run

THREADS = 2
SIZE = 96
CASES = [
    ("torch", "run"),
    ("torch-export", "model.pt2"),
    ("ort-cpu", "model.onnx"),
    ("ort-cpu", "model.int8.onnx"),
    ("ort-cpu", "model.int8-dynamic.onnx"),
    ("ort-cuda", "model.onnx"),
    ("openvino", "model.onnx"),
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench-runtimes")
    preprocessing = Preprocessing.for_size(SIZE)
    crops = load_batch(write_crops(base / "crops", 32, seed=0, size=128), preprocessing)
    batches = [crops[i : i + 8] for i in range(0, len(crops), 8)]
    model, _ = build("resnet18", "none", num_classes=10)
    reestimate_batchnorm(model, batches)
    classes = [f"class_{i}" for i in range(10)]
    run = save_run(
        base / "run", RunCard(model="resnet18", weights="none", class_names=classes, preprocessing=preprocessing), model.state_dict()
    )
    metadata = ModelMetadata(classes, preprocessing, {"model": "resnet18"})
    example = torch.from_numpy(crops[:2])
    fp32 = export_onnx(model, run.exports_dir / "model.onnx", example, metadata)
    export_program(model, run.exports_dir / "model.pt2", example, metadata)
    quantize_static(fp32, run.exports_dir / "model.int8.onnx", batches)
    quantize_dynamic_matmul(fp32, run.exports_dir / "model.int8-dynamic.onnx")
    return run.path


@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize("runtime,artifact", CASES, ids=[f"{r}:{a}" for r, a in CASES])
def test_runtime_latency(benchmark, run_dir, runtime, artifact, batch_size):
    reason = runtimes.available_runtimes()[runtime]
    if reason is not None:
        pytest.skip(reason)
    session = runtimes.load(run_dir if artifact == "run" else run_dir / "exports" / artifact, runtime, threads=THREADS)
    batch = session.example_batch(batch_size)
    benchmark.group = f"resnet18 {SIZE}px, batch {batch_size}, {THREADS} threads"
    benchmark.extra_info.update({"runtime": runtime, "artifact": artifact, **{k: str(v) for k, v in session.info.items()}})

    def run_once():
        session.run(batch)
        session.synchronize()

    benchmark.pedantic(run_once, warmup_rounds=3, rounds=20, iterations=1)


def test_interleaved_ratios(benchmark, run_dir):
    """One interleaved edgekit.bench over torch and ORT; the ratios land in extra_info (and --benchmark-json)."""
    result = benchmark.pedantic(
        lambda: bench(run_dir, runtimes=["torch", "torch-export", "ort-cpu"], batch_sizes=(1, 8), threads=THREADS, warmup=2, iterations=10),
        rounds=1,
        iterations=1,
    )
    benchmark.group = "interleaved edgekit.bench"
    for m in result.measurements:
        key = f"b{m.batch_size} {m.variant}/{m.runtime}"
        benchmark.extra_info[key] = {
            "p50_ms": round(m.p50_ms, 3),
            "ratio_to_fastest": round(m.ratio_to_fastest, 3),
            "ratio_to_fp32": None if m.ratio_to_fp32 is None else round(m.ratio_to_fp32, 3),
        }
    benchmark.extra_info["warnings"] = result.warnings
    assert {m.runtime for m in result.measurements} == {"torch", "torch-export", "ort-cpu"}
