"""edgekit bench against OpenVINO's own benchmark_app on the same ONNX file: do the two agree on the p50?

    python benchmarks/bench_vs_benchmark_app.py [--model mobilenet_v3_small] [--onnx FILE] [--threads 2]
                                               [--seconds 10] [--iterations 200] [--repeats 2] [--md out.md]

benchmark_app runs with ``-api sync -nireq 1 -hint latency`` (one synchronous request at a time, the way edgekit
times a call; with --threads N, whose -nthreads benchmark_app only takes without a hint, with ``-hint none -nstreams 1
-nthreads N`` instead, which is what the LATENCY hint sets up); its "Median" latency is compared with:

- edgekit bench of the same file on the openvino runtime alone (PERFORMANCE_HINT=LATENCY, same threads): the
  like-for-like figure, goal within 10%;
- the same file benched the way benchmarks/side_by_side.py does it: interleaved with ONNX Runtime on the same file
  (fair settings), whose p50 carries the cost of sharing caches and cores with the other session;
- ONNX Runtime alone (its defaults: spinning on), for context.

The runs alternate (benchmark_app, edgekit, benchmark_app, edgekit, ...) so drift on a shared machine hits both;
the medians over --repeats are compared. Without --onnx the model is built like side_by_side.py builds it (random
weights, BatchNorm statistics re-estimated on real photo crops) and exported with edgekit.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from edgekit.benchmarking import bench

_MEDIAN = re.compile(r"Median:\s+([0-9.]+)\s*ms")


def find_benchmark_app() -> str | None:
    """benchmark_app next to this Python (a venv's bin/) or on PATH; it comes with the openvino pip package."""
    beside = Path(sys.executable).parent / "benchmark_app"
    return str(beside) if beside.is_file() else shutil.which("benchmark_app")


def build_onnx(model: str, folder: Path) -> Path:
    import torch
    from side_by_side import reestimate_batchnorm, write_crops

    from edgekit.data import load_batch
    from edgekit.exporting.onnx import export_onnx
    from edgekit.metadata import ModelMetadata
    from edgekit.models import build, get_spec

    preprocessing = get_spec(model).preprocessing
    network, _ = build(model, "none")
    crops = load_batch(write_crops(folder / "crops", 32, seed=0), preprocessing)
    reestimate_batchnorm(network, [crops[i : i + 16] for i in range(0, len(crops), 16)])
    classes = [f"class_{i:04d}" for i in range(network(torch.zeros(1, 3, preprocessing.crop, preprocessing.crop)).shape[1])]
    metadata = ModelMetadata(classes, preprocessing, {"model": model, "weights": "none (BatchNorm re-estimated)"})
    return export_onnx(network, folder / f"{model}.onnx", torch.from_numpy(crops[:2]), metadata)


def input_shape_argument(onnx_file: Path) -> str:
    """benchmark_app's -shape for a batch of one: name[1,C,H,W] (a dynamic batch dimension must be fixed)."""
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    (first,) = [i for i in graph.input if i.name not in initializers][:1]
    dims = [d.dim_value if d.dim_value > 0 else 1 for d in first.type.tensor_type.shape.dim]
    return f"{first.name}[{','.join(map(str, dims))}]"


def run_benchmark_app(executable: str, onnx_file: Path, threads: int | None, seconds: int, static: bool) -> float:
    """benchmark_app's median latency. ``static``: reshape the model to batch 1 before compiling (-shape), as a
    deployment would; else keep the dynamic batch and only feed batch 1 (-data_shape), as edgekit's openvino runtime
    compiles the .onnx."""
    tuning = ["-hint", "latency"] if threads is None else ["-hint", "none", "-nstreams", "1", "-nthreads", str(threads)]
    command = [
        executable,
        "-m",
        str(onnx_file),
        "-d",
        "CPU",
        "-api",
        "sync",
        "-nireq",
        "1",
        *tuning,
        "-t",
        str(seconds),
        "-shape" if static else "-data_shape",
        input_shape_argument(onnx_file),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds * 4 + 120)
    found = _MEDIAN.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"benchmark_app failed (exit {done.returncode}): {(done.stderr or done.stdout)[-600:]}")
    return float(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--onnx", type=Path, help="Bench this ONNX file instead of building --model.")
    parser.add_argument("--threads", type=int, help="Threads for both [default: each tool's LATENCY default].")
    parser.add_argument("--workdir", type=Path, help="Build the model here and keep it (default: a temporary folder).")
    parser.add_argument("--seconds", type=int, default=10, help="benchmark_app's -t per repeat.")
    parser.add_argument("--iterations", type=int, default=200, help="edgekit's timed iterations per repeat.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--md", type=Path, help="Also write the report here.")
    args = parser.parse_args(argv)
    executable = find_benchmark_app()
    if executable is None:
        print("benchmark_app is not installed (pip install openvino); nothing to compare", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="edgekit-vs-benchmark-app-") as tmp:
        workdir = args.workdir or Path(tmp)
        built = workdir / f"{args.model}.onnx"
        onnx_file = args.onnx or (built if built.is_file() else build_onnx(args.model, workdir))
        theirs, theirs_static, alone, interleaved, ort_deployed, contended = [], [], [], [], [], []
        for repeat in range(args.repeats):
            print(f"[{repeat + 1}/{args.repeats}] benchmark_app, then edgekit bench", file=sys.stderr, flush=True)
            theirs.append(run_benchmark_app(executable, onnx_file, args.threads, args.seconds, static=False))
            theirs_static.append(run_benchmark_app(executable, onnx_file, args.threads, args.seconds, static=True))
            solo = bench(onnx_file, runtimes=["openvino"], threads=args.threads, warmup=10, iterations=args.iterations, save=False)
            both = bench(
                onnx_file, runtimes=["ort-cpu", "openvino"], threads=args.threads, warmup=10, iterations=args.iterations, save=False
            )
            alone.append(solo.measurements[0].p50_ms)
            rows = {m.runtime: m for m in both.measurements}
            interleaved.append(rows["openvino"].p50_ms)
            ort_alone = bench(onnx_file, runtimes=["ort-cpu"], threads=args.threads, warmup=10, iterations=args.iterations, save=False)
            ort_deployed.append(ort_alone.measurements[0].p50_ms)
            contended += [m.label for m in (*solo.measurements, *both.measurements) if m.contended]
            machine = solo.machine
    median = statistics.median
    reference = median(theirs)
    lines = [
        f"## edgekit bench vs benchmark_app -api sync -nireq 1 -hint latency ({onnx_file.name}, batch 1)",
        "",
        f"{machine.cpu}, {machine.usable_cores} usable cores, flags {' '.join(machine.cpu_flags)}; {args.threads or 'default'} threads; "
        f"openvino {machine.versions.get('openvino', '?')}, onnxruntime {machine.versions.get('onnxruntime', '?')}; "
        f"median of {args.repeats} alternating repeats (benchmark_app -t {args.seconds}, edgekit {args.iterations} iterations).",
        "",
        "| measurement | p50 / median ms | vs benchmark_app |",
        "|---|---|---|",
        f"| benchmark_app median (OpenVINO, LATENCY hint, dynamic batch fed batch 1, as edgekit compiles it) | {reference:.3f} | 1.00 |",
        f"| benchmark_app median, model reshaped to a static batch of 1 (-shape) | {median(theirs_static):.3f} | "
        f"{median(theirs_static) / reference:.2f} |",
        f"| edgekit bench, openvino alone | {median(alone):.3f} | {median(alone) / reference:.2f} |",
        f"| edgekit bench, openvino interleaved with ORT (side_by_side.py's way, fair) | {median(interleaved):.3f} | "
        f"{median(interleaved) / reference:.2f} |",
        f"| edgekit bench, ort-cpu alone (its defaults, spinning on) | {median(ort_deployed):.3f} | {median(ort_deployed) / reference:.2f} |",
        "",
        f"Like for like (openvino alone): {median(alone) / reference:.2f}x benchmark_app's median "
        f"({'within' if abs(median(alone) / reference - 1) <= 0.10 else 'OUTSIDE'} the 10% goal). Per repeat: "
        f"benchmark_app {', '.join(f'{v:.3f}' for v in theirs)}; edgekit {', '.join(f'{v:.3f}' for v in alone)} ms.",
    ]
    if contended:
        lines.append(f"⚑ contended (other processes busy while timing): {', '.join(sorted(set(contended)))}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        args.md.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
