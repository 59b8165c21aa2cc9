"""Head fine-tune on frozen features: the new default (L-BFGS solve, L2 chosen on val) vs the old epoch loop
vs scikit-learn's LogisticRegression, on the same features; and feature extraction, ONNX Runtime vs torch
eager. Same data, interleaved runs (A B C, then C B A, ...) so the ratios survive a noisy machine.

    python benchmarks/bench_finetune.py [--model efficientnet_lite0] [--image-size 224] [--repeats 3]
                                        [--extract-images 256] [--cache-dir DIR] [--json out.json]

Data: scikit-learn's digits written as image folders exactly as the demo does (edgekit.demo.write_digits:
1,078 train / 359 val / 360 test). `--split 70-30` instead pools all 1,797 images and splits them 70/30 per
class as `edgekit finetune --data <all digits> --val-split 0.3` does (1,259 / 538, close to the issue's
1,252 / 545). Needs scikit-learn (the demo/dev extra).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.data import ImageFolder, scan_folder, stratified_split
from edgekit.demo import write_digits
from edgekit.finetuning.features import FeatureExtractor, default_cache_dir
from edgekit.finetuning.head import C_GRID, solve_linear_head
from edgekit.models import build, get_spec
from edgekit.models.build import set_submodule


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                flags = Path("/proc/cpuinfo").read_text()
                extras = [f for f in ("avx512_vnni", "amx_tile", "avx2") if f in flags]
                return f"{name} ({', '.join(extras)})"
    except OSError:
        pass
    return platform.processor() or "unknown"


def backbone_of(model_name: str, image_size: int | None):
    spec = get_spec(model_name)
    model, loaded = build(model_name, "DEFAULT", num_classes=10)
    set_submodule(model, spec.head, nn.Identity())
    preprocessing = loaded.preprocessing if image_size is None else loaded.preprocessing.resized(image_size)
    return model.eval(), loaded, preprocessing


def extractor(backbone, loaded, preprocessing, model_name, runtime, cache_dir):
    return FeatureExtractor(
        backbone,
        model=model_name,
        weights=loaded.source,
        preprocessing=preprocessing,
        device=torch.device("cpu"),
        runtime=runtime,
        cache_dir=cache_dir,
    )


def measure_extraction(backbone, loaded, preprocessing, model_name, paths, repeats) -> dict:
    """images/s of ORT fp32 vs torch eager on the same images (no cache; ORT's one-off export timed apart)."""
    ort = extractor(backbone, loaded, preprocessing, model_name, "ort-cpu", None)
    started = time.perf_counter()
    ort._ort_session(paths)  # export + session creation + cosine check, once per model
    export_seconds = time.perf_counter() - started
    eager = extractor(backbone, loaded, preprocessing, model_name, "torch-cpu", None)
    rates = {"ort": [], "eager": []}
    for repeat in range(repeats):
        for name in ("ort", "eager") if repeat % 2 == 0 else ("eager", "ort"):
            started = time.perf_counter()
            (ort if name == "ort" else eager)._extract(paths)
            rates[name].append(len(paths) / (time.perf_counter() - started))
    ort_rate, eager_rate = statistics.median(rates["ort"]), statistics.median(rates["eager"])
    return {
        "images": len(paths),
        "ort_images_per_s": round(ort_rate, 1),
        "eager_images_per_s": round(eager_rate, 1),
        "ratio": round(ort_rate / eager_rate, 2),
        "ort_export_seconds": round(export_seconds, 1),
        "ort_vs_torch_min_cosine": ort.cosine[0],
        "runs": rates,
    }


def old_epoch_loop(train_x, train_y, val_x, val_y, epochs=10, batch_size=32, lr=1e-3, seed=0) -> tuple[float, float]:
    """The previous default on cached features: AdamW lr 1e-3, weight decay 1e-4, label smoothing 0.1,
    1 warm-up epoch then cosine, batch 32, best val accuracy over the epochs (patience 5)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    vx, vy = torch.from_numpy(val_x), torch.from_numpy(val_y)
    head = nn.Linear(x.shape[1], 10)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    steps = math.ceil(len(x) / batch_size)
    total, warmup = epochs * steps, steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, total - warmup)))),
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    best, best_epoch = 0.0, 0
    for epoch in range(1, epochs + 1):
        for index in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = criterion(head(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        with torch.no_grad():
            accuracy = float((head(vx).argmax(1) == vy).double().mean())
        if accuracy > best:
            best, best_epoch = accuracy, epoch
        elif epoch - best_epoch >= 5:
            break
    return best, float(epochs)


def sklearn_grid(train_x, train_y, val_x, val_y) -> dict:
    from sklearn.linear_model import LogisticRegression

    scores = {}
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=5000).fit(train_x, train_y)
        scores[round(c, 4)] = float(model.score(val_x, val_y))
    return scores


def measure_heads(train_x, train_y, val_x, val_y, repeats, old_epochs) -> dict:
    seconds = {"solve": [], "old_loop": [], "sklearn": []}
    results = {}
    for repeat in range(repeats):
        for name in ("solve", "old_loop", "sklearn") if repeat % 2 == 0 else ("sklearn", "old_loop", "solve"):
            started = time.perf_counter()
            if name == "solve":
                _, _, solve = solve_linear_head(train_x, train_y, val_x, val_y, 10)
                results[name] = {"val_accuracy": solve.val_accuracy, "c": solve.c, "iterations": solve.iterations}
            elif name == "old_loop":
                accuracy, _ = old_epoch_loop(train_x, train_y, val_x, val_y, epochs=old_epochs)
                results[name] = {"val_accuracy": accuracy, "epochs": old_epochs}
            else:
                scores = sklearn_grid(train_x, train_y, val_x, val_y)
                best_c = max(scores, key=scores.get)
                results[name] = {"val_accuracy": scores[best_c], "c": best_c, "per_c": scores}
            seconds[name].append(time.perf_counter() - started)
    for name in seconds:
        results[name]["seconds"] = round(statistics.median(seconds[name]), 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extract-images", type=int, default=256, help="images for the ORT vs eager throughput runs (0: skip them)")
    parser.add_argument("--old-epochs", type=int, default=10, help="epochs of the old loop (its default was 10)")
    parser.add_argument("--cache-dir", type=Path, default=None, help=f"feature cache (default {default_cache_dir()})")
    parser.add_argument("--data", type=Path, help="an existing write_digits folder (default: write one to a temp dir)")
    parser.add_argument("--split", choices=("demo", "70-30"), default="demo")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or write_digits(Path(tmp) / "digits")["train"].parent
        train, val = scan_folder(root / "train"), scan_folder(root / "val")
        if args.split == "70-30":  # the order scan_folder gives one folder holding every digit: class, then name
            pooled = sorted(train.samples + val.samples + scan_folder(root / "test").samples, key=lambda s: (s[1], s[0].name))
            train, val = stratified_split(ImageFolder(root, train.classes, pooled), 0.3, 0)
        backbone, loaded, preprocessing = backbone_of(args.model, args.image_size)
        paths = [p for p, _ in train.samples]
        extraction = None
        if args.extract_images:
            extraction = measure_extraction(backbone, loaded, preprocessing, args.model, paths[: args.extract_images], args.repeats)
        cached = extractor(backbone, loaded, preprocessing, args.model, "ort-cpu", args.cache_dir or default_cache_dir())
        features, info = cached.features(paths + [p for p, _ in val.samples])
        train_x, val_x = features[: len(train)], features[len(train) :]
        train_y = np.asarray([y for _, y in train.samples])
        val_y = np.asarray([y for _, y in val.samples])
        heads = measure_heads(train_x, train_y, val_x, val_y, args.repeats, args.old_epochs)
    report = {
        "model": args.model,
        "image_size": args.image_size,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "train_images": len(train),
        "val_images": len(val),
        "features_from_cache": info.extracted == 0,
        "extraction": extraction,
        "heads": heads,
    }
    print(
        f"{args.model} at {args.image_size} px on {report['cpu']}, {report['threads']} threads; "
        f"digits {len(train)} train / {len(val)} val\n"
    )
    print("| head fit on the same features | val accuracy | wall s |\n|---|---|---|")
    print(
        f"| L-BFGS solve, L2 from val grid (new default) | {heads['solve']['val_accuracy']:.2%} (C={heads['solve']['c']:.3g}) | {heads['solve']['seconds']} |"
    )
    print(
        f"| old epoch loop (AdamW, {args.old_epochs} epochs) | {heads['old_loop']['val_accuracy']:.2%} | {heads['old_loop']['seconds']} |"
    )
    print(
        f"| scikit-learn LogisticRegression, best C of the grid | {heads['sklearn']['val_accuracy']:.2%} (C={heads['sklearn']['c']}) | {heads['sklearn']['seconds']} |"
    )
    if extraction is None:
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        return
    print("\n| feature extraction | images/s |\n|---|---|")
    print(f"| ONNX Runtime fp32 | {extraction['ort_images_per_s']} |\n| torch eager fp32 | {extraction['eager_images_per_s']} |")
    print(
        f"| ratio | {extraction['ratio']}x (ORT export once: {extraction['ort_export_seconds']} s; "
        f"min cosine to torch {extraction['ort_vs_torch_min_cosine']}) |"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
