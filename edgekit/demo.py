"""The built-in default: the whole edgekit path on real data and real pretrained weights, offline.

scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes) are written out as an image folder,
efficientnet_lite0 with the ImageNet weights shipped by a pip package is fine-tuned on them, and the
run is then predicted, exported, benchmarked and gated like any user's run.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .auto import AutoResult
from .benchmarking import BenchResult
from .errors import EdgekitError
from .exporting import ExportResult
from .finetuning import FinetuneResult
from .gating import GateResult
from .prediction import PredictResult
from .progress import note
from .results import Result

SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}


def write_digits(root: Path, seed: int = 0) -> dict[str, Path]:
    """sklearn digits -> root/{train,val,test}/<digit>/<n>.png, stratified; returns the split folders."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise EdgekitError("the demo needs scikit-learn for its data: pip install 'edgekit[demo]'") from exc
    digits = load_digits()
    rng = random.Random(seed)
    folders = {split: root / split for split in SPLITS}
    for label in range(10):
        indices = [i for i, target in enumerate(digits.target) if target == label]
        rng.shuffle(indices)
        n_train = round(len(indices) * SPLITS["train"])
        n_val = round(len(indices) * SPLITS["val"])
        parts = {"train": indices[:n_train], "val": indices[n_train : n_train + n_val], "test": indices[n_train + n_val :]}
        for split, part in parts.items():
            target = folders[split] / str(label)
            target.mkdir(parents=True, exist_ok=True)
            for index in part:
                # 0..16 ink levels -> 0..255 gray, dark digit on white like a scan
                pixels = (255 - digits.images[index] * (255 / 16)).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(target / f"{index:04d}.png")
    return folders


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise EdgekitError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
        if not (out / "data").is_dir() and not (out / "run").is_dir():
            raise EdgekitError(f"{out} does not look like an edgekit demo folder; refusing to overwrite it, choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


class DemoResult(Result):
    """Where everything went, and what each step measured."""

    data_dir: str
    run_dir: str
    finetune: FinetuneResult
    predictions: PredictResult
    export: ExportResult | None = None
    auto: AutoResult | None = None
    edge_targets_missing: dict[str, str] = {}  # edge format -> why it was not exported here, with the install line
    bench: BenchResult | None = None
    gate: GateResult | None = None


def edge_formats(progress: bool = False) -> tuple[list[str], dict[str, str]]:
    """The edge formats (those that need an extra) whose runtime runs here, and, for the others, why not and the
    pip command that adds them."""
    from . import runtimes
    from .formats import all_formats

    formats, missing = [], {}
    for fmt in (f for f in all_formats() if f.extra is not None):
        ok, reason = runtimes.get_runtime(fmt.runtime).available()
        if ok:
            formats.append(fmt.name)
        else:
            missing[fmt.name] = reason
    for name, reason in missing.items():
        note(f"{name}: not exported or benched ({reason})", progress)
    return formats, missing


def run_demo(
    out: str | os.PathLike,
    overwrite: bool = False,
    epochs: int | None = None,
    gate_config: str | os.PathLike | None = None,
    steps: Sequence[str] = ("finetune", "predict", "export", "bench", "gate"),
    progress: bool = False,
) -> DemoResult:
    """The built-in default, end to end, at the weights' native 224 px: digits -> efficientnet_lite0 (ImageNet
    weights) with its head solved on cached features -> predictions on held-out images -> `--quantize auto` over
    ONNX and every edge format whose extra is installed (fp32 and accuracy-aware int8 of each, with parity; every
    file within budget timed on its runtime at each setting worth trying; the fastest written as
    exports/deploy.json and DEPLOY.md) -> bench (torch and each file on its own runtime) with accuracy on the
    held-out test split -> the gate.
    """
    from .auto import export_auto
    from .benchmarking import bench
    from .finetuning import FinetuneConfig, finetune
    from .gating import gate, load_config
    from .prediction import predict

    out = Path(out)
    prepare_out(out, overwrite)
    folders = write_digits(out / "data")
    note(
        f"wrote {sum(1 for _ in folders['train'].rglob('*.png'))} train / {sum(1 for _ in folders['val'].rglob('*.png'))} val / "
        f"{sum(1 for _ in folders['test'].rglob('*.png'))} test digit images to {out / 'data'}",
        progress,
    )
    run_dir = out / "run"
    # The head is solved, not trained for epochs, by default; --epochs only matters for the epoch loop.
    config = FinetuneConfig(
        model="efficientnet_lite0", weights="DEFAULT", data=folders["train"], val_data=folders["val"], out=run_dir, seed=0, epochs=epochs
    )
    tuned = finetune(config, progress=progress)
    if tuned is None:  # only a non-zero torchrun rank gets None; the demo is a single process
        raise EdgekitError("the demo runs in one process; start it without torchrun")
    note(f"fine-tuned efficientnet_lite0 into {run_dir}: best val accuracy {tuned.best_val_accuracy:.2%}", progress)
    held_out = [sorted((folders["test"] / str(digit)).glob("*.png"))[0] for digit in range(0, 10, 2)]
    predictions = predict(run_dir, held_out, top_k=3)
    result = DemoResult(data_dir=str(out / "data"), run_dir=str(run_dir), finetune=tuned, predictions=predictions)
    if "export" in steps:
        formats, result.edge_targets_missing = edge_formats(progress)
        # one export of every format installed here; auto times each file within budget at each setting worth trying
        result.auto = export_auto(run_dir, formats=",".join(("onnx", *formats)), batch_size=1, progress=progress)
        result.export = result.auto.export
        note(f"auto: {result.auto.card.reason} (exports/deploy.json, DEPLOY.md)", progress)
    if "bench" in steps:
        # "auto": every exported file on its natural runtime (ONNX on ORT, IR on OpenVINO, .pte on ExecuTorch), one table.
        result.bench = bench([run_dir], runtimes=("torch", "auto"), batch_sizes=(1, 8), data=folders["test"], progress=progress)
    if "gate" in steps and gate_config is not None:
        # The config's own run/data paths name the default demo folder; point them at this one.
        overrides = {"run": str(run_dir.resolve()), "data": str(folders["test"].resolve())}
        result.gate = gate(load_config(gate_config, overrides), progress=progress)
    return result
