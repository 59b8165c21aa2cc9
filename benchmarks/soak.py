"""Soak test: 10,000 inferences through every available runtime; does memory grow?

    python benchmarks/soak.py                      # all runtimes, 10,000 calls each
    python benchmarks/soak.py --calls 2000 --json soak.json

It builds a small run (MobileNetV3-Small, 96 px, one head-only epoch on real-photo crops), exports
it (ONNX fp32 and int8, torch.export), then runs each (artifact, runtime) pair in a FRESH subprocess
so one runtime's allocations never blur another's. Each child samples its resident memory (RSS) every
100 calls and reports the peak over the first and over the last 10% of the calls. A leak shows as an
end peak above the start peak by more than the noise (we allow max(4 MiB, 2%)), and as a positive
slope of RSS over the calls.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_EVERY = 100


def child(artifact: str, runtime: str, calls: int, threads: int) -> dict:
    """Runs inside the subprocess: load, warm up, then ``calls`` single-image inferences."""
    import numpy as np
    import psutil

    from edgekit import runtimes
    from edgekit.data import load_batch, scan_folder

    process = psutil.Process()
    session = runtimes.load(artifact, runtime=runtime, threads=threads)
    # Real images, preprocessed the way the model expects, cycled: the work of a serving loop.
    run_card = session.preprocessing
    data = Path(os.environ["SOAK_DATA"])
    paths = [p for p, _ in scan_folder(data).samples][:16]
    if session.input_kind == "uint8-nhwc":
        resize_crop = run_card.geometry_transform()
        from edgekit.data import load_image

        batches = [np.stack([resize_crop(load_image(p))]) for p in paths]
    else:
        batches = [load_batch([p], run_card) for p in paths]
    for batch in batches * 3:  # warm-up: allocator pools, lazy initialisation, thread pools
        session.run(batch)
    rss_after_warmup = process.memory_info().rss
    samples = []
    started = time.perf_counter()
    for index in range(calls):
        logits = session.run(batches[index % len(batches)])
        if index % SAMPLE_EVERY == 0 or index == calls - 1:
            samples.append((index, process.memory_info().rss))
    seconds = time.perf_counter() - started
    assert np.isfinite(logits).all()
    window = max(1, len(samples) // 10)
    start_peak = max(rss for _, rss in samples[:window])
    end_peak = max(rss for _, rss in samples[-window:])
    xs = np.array([i for i, _ in samples], dtype=np.float64)
    ys = np.array([rss for _, rss in samples], dtype=np.float64)
    slope = float(np.polyfit(xs, ys, 1)[0]) if len(samples) > 2 else 0.0  # bytes per call
    return {
        "artifact": Path(artifact).name if Path(artifact).is_file() else "run (model.pt)",
        "runtime": runtime,
        "calls": calls,
        "ms_per_call": round(seconds / calls * 1e3, 3),
        "rss_after_warmup_mib": round(rss_after_warmup / 2**20, 1),
        "start_peak_mib": round(start_peak / 2**20, 1),
        "end_peak_mib": round(end_peak / 2**20, 1),
        "growth_mib": round((end_peak - start_peak) / 2**20, 2),
        "slope_kib_per_1000_calls": round(slope * 1000 / 1024, 2),
    }


def build_artifacts(workdir: Path) -> tuple[Path, dict[str, Path]]:
    """A small trained run and its exports; returns (data folder, {kind: artifact})."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import write_photo_folder

    from edgekit.exporting import export
    from edgekit.finetuning import finetune

    data = write_photo_folder(workdir / "data", 8, seed=0, size=96)
    run = workdir / "run"
    finetune(
        model="mobilenet_v3_small",
        weights="none",
        data=data,
        val_split=0.25,
        out=run,
        strategy="full",
        epochs=1,
        batch_size=8,
        image_size=96,
        warmup_epochs=0,
    )
    result = export(run, formats="all", quantize="none,int8", calib_size=16, max_parity_images=8)
    artifacts = {"run": run}
    for variant in result.variants:
        artifacts[variant.variant] = Path(variant.path)
    return data, artifacts


def pairs(artifacts: dict[str, Path]) -> list[tuple[str, Path]]:
    """Every (runtime, artifact) pair that can run here."""
    from edgekit import runtimes

    chosen = []
    for name, reason in runtimes.available_runtimes().items():
        if reason is not None:
            print(f"skipping {name}: {reason}", file=sys.stderr)
            continue
        kinds = runtimes.get_runtime(name).suffixes
        for path in artifacts.values():
            if runtimes.artifact_kind(path) in kinds:
                chosen.append((name, path))
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per runtime (1: gentle on a shared machine)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--child", nargs=2, metavar=("ARTIFACT", "RUNTIME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.calls, args.threads)))
        return 0

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-soak-") as workdir:
        data, artifacts = build_artifacts(Path(workdir))
        for runtime, artifact in pairs(artifacts):
            env = {**os.environ, "SOAK_DATA": str(data), "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
            done = subprocess.run(
                [sys.executable, __file__, "--calls", str(args.calls), "--threads", str(args.threads), "--child", str(artifact), runtime],
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                print(f"{runtime} on {artifact.name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{row['runtime']:<13} {row['artifact']:<16} {row['ms_per_call']:>7.2f} ms/call  RSS start peak "
                f"{row['start_peak_mib']:>7.1f} MiB  end peak {row['end_peak_mib']:>7.1f} MiB  growth {row['growth_mib']:>+6.2f} MiB  "
                f"slope {row['slope_kib_per_1000_calls']:>+7.2f} KiB/1000 calls",
                flush=True,
            )
    leaks = [r for r in rows if r["growth_mib"] > max(4.0, 0.02 * r["start_peak_mib"])]
    if args.json:
        args.json.write_text(json.dumps({"calls": args.calls, "threads": args.threads, "rows": rows}, indent=2) + "\n")
    print("no growth beyond noise" if not leaks else f"GROWTH in: {', '.join(r['runtime'] + ' ' + r['artifact'] for r in leaks)}")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
