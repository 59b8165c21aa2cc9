"""Side by side, in one interleaved run per model: torch eager fp32, ONNX Runtime fp32, ORT int8 static (QDQ)
and ORT int8 dynamic (MatMul/Gemm only), at batch 1 and 32 with 2 threads.

    python benchmarks/side_by_side.py [--models mobilenet_v3_small,efficientnet_b0,resnet50] [--batch-sizes 1,32]
                                      [--threads 2] [--iterations 10] [--md side_by_side.md] [--json side_by_side.json]

It goes through edgekit itself: each model becomes a run directory, is exported and quantized with
edgekit.export / edgekit.quantize, and measured with edgekit.bench (variants interleaved A B C D, rotating),
so every ratio in the table comes from one run on one machine state.

Weights: none can be downloaded here, so the models start from random weights. Random EfficientNet/MobileNet
logits are degenerate (~1e-20, one class for every input), which would make int8 calibration meaningless and
any agreement figure vacuous. So the BatchNorm running statistics are re-estimated on real photo crops
(scikit-image / scikit-learn sample photos) before export, and int8 is calibrated on other crops of them.
"Agreement" is the top-1 agreement of each variant with torch fp32 on held-out crops: with random weights it
measures how faithfully a variant computes the same function, not how good the classifier is.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from edgekit.benchmarking import BenchResult, bench
from edgekit.data import load_batch
from edgekit.exporting.onnx import export_onnx
from edgekit.exporting.quantize import quantize_dynamic_matmul, quantize_static
from edgekit.metadata import ModelMetadata
from edgekit.models import build, get_spec
from edgekit.runs import RunCard, save_run

MODELS = ("mobilenet_v3_small", "efficientnet_b0", "resnet50")
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "hubble_deep_field", "retina")
GRAY_PHOTOS = ("camera", "brick", "grass", "gravel", "coins", "moon", "clock")
PATHS = {  # (variant, runtime) -> the name in the table
    ("fp32", "torch"): "torch eager fp32",
    ("fp32", "ort-cpu"): "ORT fp32",
    ("int8", "ort-cpu"): "ORT int8 static (QDQ)",
    ("int8-dynamic", "ort-cpu"): "ORT int8 dynamic (MatMul/Gemm)",
}


def photos() -> list[np.ndarray]:
    """Real photographs that ship inside scikit-image and scikit-learn (no download), as RGB uint8 arrays."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    images = [getattr(data, name)() for name in COLOUR_PHOTOS]
    images += [np.stack([getattr(data, name)()] * 3, axis=-1) for name in GRAY_PHOTOS]
    images += list(load_sample_images().images)
    return [image[..., :3].astype(np.uint8) for image in images]


def write_crops(folder: Path, count: int, seed: int, size: int = 256) -> list[Path]:
    """``count`` random square crops of the real photos, resized to ``size`` and saved as JPEG."""
    rng = np.random.default_rng(seed)
    sources = photos()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image = sources[int(rng.integers(len(sources)))]
        height, width = image.shape[:2]
        side = int(rng.integers(min(height, width) // 4, min(height, width) + 1))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = Image.fromarray(image[top : top + side, left : left + side]).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        path = folder / f"{index:04d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def reestimate_batchnorm(model: torch.nn.Module, batches: list[np.ndarray]) -> torch.nn.Module:
    """Replace BatchNorm running statistics by the exact averages over ``batches`` (train-mode forward passes)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over every batch seen
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(torch.from_numpy(batch))
    return model.eval()


def prepare_run(name: str, workdir: Path, calibration: list[Path], agreement_images: list[Path]) -> tuple[Path, Path | None, dict]:
    """A run directory for ``name`` with exports/model.onnx, model.int8.onnx, model.int8-dynamic.onnx, and a
    labelled folder whose labels are torch fp32's own predictions (so top-1 there is agreement with fp32)."""
    spec = get_spec(name)
    preprocessing = spec.preprocessing
    model, _ = build(name, "none")
    calibration_batch = load_batch(calibration, preprocessing)
    batches = [calibration_batch[i : i + 16] for i in range(0, len(calibration_batch), 16)]
    reestimate_batchnorm(model, batches)
    classes = [f"class_{i:04d}" for i in range(model(torch.zeros(1, 3, preprocessing.crop, preprocessing.crop)).shape[1])]
    card = RunCard(
        model=name, weights="none (BatchNorm statistics re-estimated on real photo crops)", class_names=classes, preprocessing=preprocessing
    )
    run = save_run(workdir / name, card, model.state_dict())
    timings = {}
    start = time.perf_counter()
    metadata = ModelMetadata(classes, preprocessing, {"model": name, "weights": card.weights})
    fp32 = export_onnx(model, run.exports_dir / "model.onnx", torch.from_numpy(calibration_batch[:2]), metadata)
    timings["export_s"] = time.perf_counter() - start
    start = time.perf_counter()
    quantize_static(fp32, run.exports_dir / "model.int8.onnx", batches)
    timings["quantize_static_s"] = time.perf_counter() - start
    quantize_dynamic_matmul(fp32, run.exports_dir / "model.int8-dynamic.onnx")

    with torch.no_grad():
        logits = torch.cat(
            [model(torch.from_numpy(load_batch(agreement_images[i : i + 16], preprocessing))) for i in range(0, len(agreement_images), 16)]
        )
    predicted = logits.argmax(1).tolist()
    spread = float(logits.std(dim=1).mean())
    timings.update({"distinct_predictions": len(set(predicted)), "logit_spread": spread})
    if len(set(predicted)) < 2:
        return run.path, None, timings  # one class for every image: agreement would be vacuous
    labelled = workdir / f"{name}-agreement"
    for path, label in zip(agreement_images, predicted):
        (labelled / classes[label]).mkdir(parents=True, exist_ok=True)
        (labelled / classes[label] / path.name).write_bytes(path.read_bytes())
    return run.path, labelled, timings


def table(results: dict[str, BenchResult]) -> str:
    """The markdown table: per model and batch size, each path's p50, throughput, ratios and agreement."""
    lines = [
        "| model | batch | path | p50 ms (95% CI) | img/s | vs torch eager | vs ORT fp32 | top-1 agreement with fp32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for batch_size in sorted({m.batch_size for m in result.measurements}):
            rows = {(m.variant, m.runtime): m for m in result.for_model(name, batch_size)}
            torch_p50 = rows[("fp32", "torch")].p50_ms if ("fp32", "torch") in rows else None
            for key, label in PATHS.items():
                m = rows.get(key)
                if m is None:
                    continue
                versus_torch = f"{torch_p50 / m.p50_ms:.2f}x faster" if torch_p50 else "-"
                versus_fp32 = (
                    "-"
                    if key[0] == "fp32"
                    else (f"{1 / m.ratio_to_fp32:.2f}x faster" if not m.slower_than_fp32 else f"**{m.ratio_to_fp32:.2f}x SLOWER** ⚠")
                )
                agreement = "-" if m.top1 is None else f"{m.top1:.1%}"
                lines.append(
                    f"| {name} | {batch_size} | {label} | {m.p50_ms:.2f} ({m.p50_ci_ms[0]:.2f}-{m.p50_ci_ms[1]:.2f}) | "
                    f"{m.images_per_second:.1f} | {versus_torch} | {versus_fp32} | {agreement} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--agreement-images", type=int, default=96)
    parser.add_argument("--workdir", type=Path, help="Keep the runs here (default: a temporary folder).")
    parser.add_argument("--md", type=Path, help="Write the markdown report here.")
    parser.add_argument("--json", type=Path, help="Write every BenchResult here (a JSON object keyed by model).")
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="edgekit-side-by-side-") as tmp:
        workdir = args.workdir or Path(tmp)
        calibration = write_crops(workdir / "calibration", args.calibration_images, seed=0)
        agreement = write_crops(workdir / "agreement", args.agreement_images, seed=1)
        results, facts = {}, {}
        for name in args.models.split(","):
            print(f"[{name}] BatchNorm re-estimation, export, int8 quantization...", file=sys.stderr, flush=True)
            run_dir, labelled, facts[name] = prepare_run(name, workdir, calibration, agreement)
            print(f"[{name}] benchmarking ({facts[name]})", file=sys.stderr, flush=True)
            results[name] = bench(
                run_dir,
                runtimes=["torch", "ort-cpu"],
                batch_sizes=batch_sizes,
                threads=args.threads,
                data=labelled,
                warmup=args.warmup,
                iterations=args.iterations,
                progress=True,
            )
    first = next(iter(results.values()))
    machine = first.machine
    text = [
        "## Side by side: torch eager vs ONNX Runtime fp32 / int8",
        "",
        f"{machine['cpu']}, {machine['usable_cores']} usable cores, flags {' '.join(machine['cpu_flags'])}; "
        f"{args.threads} threads; {args.warmup} warm-up + {args.iterations} timed iterations per path, paths interleaved; "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
        + ".",
        "",
        table(results),
        "",
        "Per model (from edgekit bench's own summary):",
        "",
    ]
    for result in results.values():
        text += [f"- {line}" for line in result.summary]
    warnings = [w for result in results.values() for w in result.warnings]
    if warnings:
        text += ["", *[f"> ⚠ **{w}**" for w in warnings]]
    text += [
        "",
        "Model facts (random weights, BatchNorm re-estimated): "
        + "; ".join(
            f"{name}: {f['distinct_predictions']} distinct top-1 classes over {args.agreement_images} crops, "
            f"mean logit std {f['logit_spread']:.3g}, export {f['export_s']:.0f} s, static int8 {f['quantize_static_s']:.0f} s"
            for name, f in facts.items()
        ),
    ]
    output = "\n".join(text) + "\n"
    print(output)
    if args.md:
        args.md.write_text(output, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps({k: json.loads(v.to_json()) for k, v in results.items()}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
