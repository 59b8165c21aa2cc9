"""Fine-tune throughput, head-only: cached backbone features vs. the naive loop that re-runs the frozen
backbone every epoch. Same data, same model, runs interleaved (A B A B) so the ratio survives a noisy
machine.

    python benchmarks/bench_finetune.py [--model efficientnet_lite0] [--epochs 5] [--repeats 3] [--image-size 64]

Data: scikit-learn's digits (real scans) written as an image folder. Throughput is training images
processed per second of wall time for the whole fine-tune (feature extraction included), so the cached
path pays for its one backbone pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from edgekit.demo import write_digits
from edgekit.finetune import finetune


def measure(model: str, epochs: int, repeats: int, image_size: int, device: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folders = write_digits(Path(tmp) / "data")
        rates: dict[str, list[float]] = {"cached": [], "naive": []}
        for repeat in range(repeats):
            for mode in ("cached", "naive") if repeat % 2 == 0 else ("naive", "cached"):
                result = finetune(
                    model=model, data=folders["train"], val_data=folders["val"], out=Path(tmp) / f"{mode}{repeat}",
                    strategy="head", cache_features=mode == "cached", augment=False, epochs=epochs,
                    image_size=image_size, patience=None, device=device,
                )
                rates[mode].append(result.train_images * result.epochs_run / result.seconds)
    cached, naive = statistics.median(rates["cached"]), statistics.median(rates["naive"])
    return {
        "model": model, "epochs": epochs, "image_size": image_size, "device": device, "threads": torch.get_num_threads(),
        "cached_images_per_s": round(cached, 1), "naive_images_per_s": round(naive, 1), "speedup": round(cached / naive, 2),
        "runs": rates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    report = measure(args.model, args.epochs, args.repeats, args.image_size, args.device)
    print("| model | epochs | input | cached img/s | naive img/s | speed-up |\n|---|---|---|---|---|---|")
    print(f"| {report['model']} | {report['epochs']} | {report['image_size']} | {report['cached_images_per_s']} | "
          f"{report['naive_images_per_s']} | {report['speedup']}x |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
