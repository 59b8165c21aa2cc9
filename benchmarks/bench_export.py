"""Export and quantization wall time per model, and int8 agreement on real photos.

    python benchmarks/bench_export.py                      # wall time: mobilenet_v3_small, efficientnet_lite0, resnet18
    python benchmarks/bench_export.py --models resnet18 --repeats 3
    python benchmarks/bench_export.py --agreement          # Lite0 ImageNet weights: int8 vs PyTorch top-1 on real photo crops
    python benchmarks/bench_export.py --json out.json      # also write the figures

Wall time uses random weights (``weights none``; time does not depend on the values) and random calibration
inputs. Agreement needs real weights and real images: EfficientNet-Lite0 with its offline ImageNet weights,
random crops of the scikit-image and scikit-learn sample photos, calibration crops disjoint from the
evaluation crops, measured through ``edgekit.export`` itself (the same parity code a user gets).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_MODELS = ("mobilenet_v3_small", "efficientnet_lite0", "resnet18")
CALIBRATION_IMAGES = 32


def _median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_wall_time(models, repeats: int, threads: int) -> list[dict]:
    """Seconds per step (median of ``repeats``) for each model at its own input size, random weights."""
    import torch

    from edgekit.exporting.onnx import export_onnx
    from edgekit.exporting.quantize import convert_fp16, quantize_dynamic_matmul, quantize_static
    from edgekit.exporting.torch_export import export_program
    from edgekit.models import build

    torch.set_num_threads(threads)
    rows = []
    for name in models:
        model, loaded = build(name, "none")
        model.eval()
        crop = loaded.preprocessing.crop
        example = torch.randn(2, 3, crop, crop)
        rng = np.random.default_rng(0)
        calibration = [rng.standard_normal((8, 3, crop, crop)).astype(np.float32) for _ in range(CALIBRATION_IMAGES // 8)]
        with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as workdir:
            work = Path(workdir)
            base = work / "model.onnx"
            row = {"model": name, "input": crop, "threads": threads, "repeats": repeats}
            row["onnx_export_s"] = _median_seconds(lambda: export_onnx(model, base, example), repeats)
            row["torch_export_s"] = _median_seconds(lambda: export_program(model, work / "model.pt2", example), repeats)
            row["fp16_s"] = _median_seconds(lambda: convert_fp16(base, work / "fp16.onnx"), repeats)
            row["int8_static_s"] = _median_seconds(lambda: quantize_static(base, work / "int8.onnx", iter(calibration)), repeats)
            row["int8_dynamic_s"] = _median_seconds(lambda: quantize_dynamic_matmul(base, work / "dyn.onnx"), repeats)
            row["calibration_images"] = CALIBRATION_IMAGES
            for variant, file_name in (
                ("fp32", "model.onnx"),
                ("fp16", "fp16.onnx"),
                ("int8", "int8.onnx"),
                ("int8_dynamic", "dyn.onnx"),
                ("pt2", "model.pt2"),
            ):
                row[f"{variant}_mib"] = round(os.path.getsize(work / file_name) / 2**20, 2)
        rows.append(row)
        print(_format_time_row(row), flush=True)
    return rows


def _format_time_row(row: dict) -> str:
    return (
        f"{row['model']:<20} {row['input']:>4}px  onnx {row['onnx_export_s']:6.2f}s  torch.export {row['torch_export_s']:6.2f}s  "
        f"fp16 {row['fp16_s']:5.2f}s  int8 static ({row['calibration_images']} img) {row['int8_static_s']:6.2f}s  "
        f"int8 dynamic {row['int8_dynamic_s']:5.2f}s  |  MiB fp32 {row['fp32_mib']} fp16 {row['fp16_mib']} "
        f"int8 {row['int8_mib']} dyn {row['int8_dynamic_mib']} pt2 {row['pt2_mib']}"
    )


# --------------------------------------------------------------------------- agreement on real photos


def real_photos() -> list[tuple[str, np.ndarray]]:
    """The sample photos that ship with scikit-image and scikit-learn (no download), as RGB arrays."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera", "brick", "grass", "gravel"):
        image = getattr(data, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        photos.append((name, image[..., :3]))
    sample = load_sample_images()
    for file_name, image in zip(sample.filenames, sample.images):
        photos.append((Path(file_name).stem, image))
    return photos


def write_crops(root: Path, count: int, seed: int) -> Path:
    """``count`` random square crops (a third to all of the short side) spread over the photos, as JPEG files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = real_photos()
    root.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        name, image = photos[index % len(photos)]
        height, width = image.shape[:2]
        side = int(rng.integers(min(height, width) // 3, min(height, width) + 1))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        Image.fromarray(np.ascontiguousarray(image[top : top + side, left : left + side])).save(
            root / f"{index:03d}_{name}.jpg", quality=92
        )
    return root


def bench_agreement(eval_images: int, calib_images: int) -> list[dict]:
    """int8 (and fp16) Lite0 against the float32 PyTorch model on real photo crops, per calibration choice."""
    from edgekit.exporting import export
    from edgekit.exporting.quantize import quantize_static
    from edgekit.parity_check import ParityChecker, ParityData, ParityThresholds, images_in
    from edgekit.runs import run_from_zoo

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-agreement-") as workdir:
        work = Path(workdir)
        evaluation = write_crops(work / "eval", eval_images, seed=1)
        calibration = write_crops(work / "calib", calib_images, seed=2)
        run = run_from_zoo("efficientnet_lite0", "DEFAULT", work / "lite0")
        # The product path: default int8 (minmax, first Conv and last Gemm in float) plus fp32 and fp16.
        no_limits = ParityThresholds(max_rel_diff=None, min_agreement=None, max_accuracy_drop=None)
        result = export(
            run,
            quantize="none,fp16,int8,int8-dynamic",
            calib_data=calibration,
            parity_data=evaluation,
            max_parity_images=eval_images,
            thresholds=no_limits,
        )
        for variant in result.variants:
            rows.append(_agreement_row(variant.variant, "default", variant.size_bytes, variant.parity.metrics))
        # The alternatives measured side by side on the same images.
        checker = ParityChecker(run.build_model(), ParityData(run.card.preprocessing, images_in(evaluation, max_images=eval_images)))
        base = run.exports_dir / "model.onnx"
        for method, exclude in (("minmax", False), ("percentile", True), ("entropy", True)):
            out = work / f"int8-{method}-{exclude}.onnx"
            quantize_static(base, out, _calibration_batches(run, calibration), method=method, exclude_first_last=exclude)
            metrics = checker.check(out, "int8", no_limits).metrics
            rows.append(_agreement_row("int8", f"{method}{'' if exclude else ', all layers int8'}", out.stat().st_size, metrics))
    for row in rows:
        print(
            f"{row['variant']:<13} {row['calibration']:<28} top-1 agreement {row['top1_agreement']:.1%} "
            f"({row['n_images']} crops)  top-5 overlap {row['top5_overlap']:.1%}  min cosine {row['cosine']:.4f}  "
            f"{row['mib']:.2f} MiB",
            flush=True,
        )
    return rows


def _calibration_batches(run, folder: Path):
    from edgekit.data import load_batch

    paths = sorted(folder.glob("*.jpg"))
    for start in range(0, len(paths), 8):
        yield load_batch(paths[start : start + 8], run.card.preprocessing)


def _agreement_row(variant: str, calibration: str, size: int, metrics) -> dict:
    return {
        "variant": variant,
        "calibration": calibration,
        "mib": round(size / 2**20, 2),
        "n_images": metrics.n_images,
        "top1_agreement": metrics.top1_agreement,
        "top5_overlap": metrics.top5_overlap,
        "cosine": metrics.cosine_similarity,
        "max_abs_diff": metrics.max_abs_diff,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo model names")
    parser.add_argument("--repeats", type=int, default=1, help="runs per step; the median is reported")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--agreement", action="store_true", help="measure Lite0 int8 agreement on real photos instead")
    parser.add_argument("--eval-images", type=int, default=108)
    parser.add_argument("--calib-images", type=int, default=200)
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.agreement:
        rows = bench_agreement(args.eval_images, args.calib_images)
    else:
        rows = bench_wall_time([m.strip() for m in args.models.split(",") if m.strip()], args.repeats, args.threads)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
