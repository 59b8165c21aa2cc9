"""What an inspection starts from: the artifact (a file, or a variant name of the run), the images, and the float32
ONNX graphs an ONNX or OpenVINO artifact's layers are found in."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, EdgekitError
from ..formats import find_format
from ..metadata import InputKind
from ..parity_check import ParityData, run_parity_images
from ..results import DataSource
from ..variants import Variant

MAX_IMAGES = 32


def resolve_artifact(run, artifact: str | os.PathLike) -> Path:
    """A model file as given, or the run's exported file for a variant name ("int8", "openvino-int8")."""
    path = Path(artifact)
    if path.exists():
        if path.is_dir() or find_format(path) is None:
            raise EdgekitError(
                f"{path} is not a model file edgekit can inspect; pass an exported .onnx, .xml or .pte file or a variant name"
            )
        return path
    try:
        variant = Variant.parse(str(artifact))
    except EdgekitError:
        raise EdgekitError(
            f"{artifact} is neither a file nor a variant name; pass a file from {run.exports_dir} or a name like int8"
        ) from None
    candidate = run.exports_dir / variant.file_name
    if not candidate.is_file():
        raise EdgekitError(
            f"{run.path} has no {variant.name} variant ({candidate} is missing); run `edgekit export {run.path} ...` for it first"
        )
    return candidate


@dataclass
class Images:
    """The same real images as the artifact takes them and as the float32 PyTorch model takes them."""

    artifact: np.ndarray
    reference: np.ndarray
    source: DataSource

    def __len__(self) -> int:
        return len(self.artifact)


def run_images(run, data: str | os.PathLike | None, kind: InputKind, max_images: int = MAX_IMAGES) -> Images:
    """``data`` (a folder of images or class folders) or the run's validation images, at most ``max_images``
    (class-stratified)."""
    if max_images < 1:
        raise EdgekitError(f"--max-images {max_images} must be at least 1")
    images = run_parity_images(run.card, data, max_images)
    if images is None:
        raise DataError(f"{run.path} has no validation images to inspect on (a zoo model?); pass --data DIR with real images")
    parity_data = ParityData(run.card.preprocessing, images)
    return Images(parity_data.inputs(kind), parity_data.reference_inputs(kind), parity_data.source)


def float_graphs(run, model, artifact: Path, kind: InputKind, precision: str, workdir: Path, size: int) -> list[Path]:
    """The float32 ONNX graphs the artifact's layers may be named in: the run's fp32 export of the same input kind
    (exported afresh into ``workdir`` at ``size`` px when there is no run or it has none), and for int8 also ORT's
    quantization pre-processing of it (the graph the quantizer read, whose node names the QDQ file keeps)."""
    from ..exporting.onnx import export_onnx
    from ..exporting.quantize import prepare

    parent = Variant(input_kind=kind).file_name
    base = run.exports_dir / parent if run is not None else None
    if base is None or not base.is_file():
        if kind is not InputKind.FLOAT:
            raise EdgekitError(
                f"{artifact} takes uint8 pixels but its float32 parent {parent} is not beside it; export it with --embed-preprocessing"
            )
        import torch

        base = export_onnx(model, workdir / "fp32.onnx", torch.zeros(2, 3, size, size))
    graphs = [base]
    if precision.startswith("int8"):
        graphs.append(prepare(base, workdir / "prepared.onnx"))
    return graphs


def calibration_batches(run, images: Images, count: int, batch: int = 8) -> tuple[list[np.ndarray], str]:
    """(float NCHW batches to calibrate a re-quantization on, where they came from): ``count`` class-stratified
    training images of the run, else the inspected images themselves."""
    from ..data import load_batch, stratified_sample
    from ..data import run_images as training_images

    if run is not None and run.card.data_dir is not None:
        folder = stratified_sample(training_images(run.card, "train"), count, 0)
        paths = [path for path, _ in folder.samples]
        return [
            load_batch(paths[i : i + batch], run.card.preprocessing) for i in range(0, len(paths), batch)
        ], f"{len(paths)} training images"
    inputs = images.reference[:count]
    return [inputs[i : i + batch] for i in range(0, len(inputs), batch)], f"{len(inputs)} of the inspected images"
