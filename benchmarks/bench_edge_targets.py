"""Edge targets side by side: ONNX Runtime, OpenVINO and ExecuTorch, fp32 and int8, in one interleaved bench per model.

    python benchmarks/bench_edge_targets.py [--models efficientnet_lite0,mobilenet_v3_small,efficientnet_b0,resnet50]
                                            [--threads 2] [--iterations 20] [--out runs/edge-targets] [--md table.md]

Needs both extras in one environment (`pip install -e '.[openvino,executorch]'` with executorch's matching torch).
It goes through the CLI a user would type, per model:

    edgekit export --model M --weights W --out OUT/M --format onnx,openvino,executorch --quantize none,int8 \\
                   --calib-data PHOTOS/train --parity-data PHOTOS/val
    edgekit bench OUT/M/exports/model*.onnx OUT/M/exports/*.xml OUT/M/exports/*.pte --threads 2 --batch-sizes 1

Weights: efficientnet_lite0 has real ImageNet weights offline (DEFAULT); the torchvision models cannot be downloaded
here, so they run with random weights (weights=none): their latencies are real, their agreement figures are not
evidence of anything (random MobileNet/EfficientNet logits are degenerate). Calibration and parity use random crops
of scikit-image's real photos. The ExecuTorch int8 export of a real model takes minutes on two cores.
Not a pytest benchmark: it has no test functions, so `pytest benchmarks` collects nothing from it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("efficientnet_lite0", "mobilenet_v3_small", "efficientnet_b0", "resnet50")
REAL_WEIGHTS = {"efficientnet_lite0": "DEFAULT"}


def photo_folders(root: Path) -> tuple[Path, Path]:
    """train/ and val/ folders of 224-px random crops of real photos (three 'classes', unlabelled for ImageNet)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    for split, per_class, seed in (("train", 40, 0), ("val", 40, 1)):
        rng = np.random.default_rng(seed)
        for name in ("chelsea", "coffee", "astronaut", "rocket"):
            image = getattr(data, name)()
            folder = root / split / name
            if folder.is_dir():
                continue
            folder.mkdir(parents=True)
            height, width = image.shape[:2]
            for index in range(per_class):
                side = int(rng.integers(min(height, width) // 2, min(height, width)))
                top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
                Image.fromarray(image[top : top + side, left : left + side]).resize((256, 256)).save(folder / f"{index:03d}.jpg")
    return root / "train", root / "val"


def edgekit(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "edgekit", *args]
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/edge-targets"))
    parser.add_argument("--md", type=Path, default=None, help="write one markdown table per model here")
    args = parser.parse_args()
    train, val = photo_folders(args.out / "photos")
    reports = []
    for model in args.models.split(","):
        run_dir = args.out / model
        started = time.perf_counter()
        exported = edgekit(
            "export",
            "--model",
            model,
            "--weights",
            REAL_WEIGHTS.get(model, "none"),
            "--out",
            str(run_dir),
            "--format",
            "onnx,openvino,executorch",
            "--quantize",
            "none,int8",
            "--calib-data",
            str(train),
            "--calib-size",
            "64",
            "--parity-data",
            str(val),
            "--max-parity-images",
            "64",
            "--json",
            # Random weights have no accuracy to hold: the int8 search would only chase degenerate logits.
            *([] if model in REAL_WEIGHTS else ["--no-fallback"]),
        )
        print(f"{model}: export took {time.perf_counter() - started:.0f} s (exit {exported.returncode})", flush=True)
        exports = run_dir / "exports"
        artifacts = sorted(exports.glob("model*.onnx")) + sorted(exports.glob("*.xml")) + sorted(exports.glob("*.pte"))
        md = args.out / f"{model}.md"
        edgekit(
            "bench",
            *map(str, artifacts),
            "--threads",
            str(args.threads),
            "--batch-sizes",
            "1",
            "--iterations",
            str(args.iterations),
            "--md",
            str(md),
            "--json",
            str(args.out / f"{model}.bench.json"),
            "--no-save",
        )
        if md.is_file():
            reports.append(f"### {model}\n\n{md.read_text()}")
    if args.md is not None:
        args.md.write_text("\n\n".join(reports))
    print(json.dumps({"reports": [str(args.out / f"{m}.md") for m in args.models.split(",")]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
