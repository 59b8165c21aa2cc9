"""Top-k predictions for image files from a run directory, a zoo model or an exported .onnx file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import load_batch
from .errors import EdgekitError
from .formats import format_of
from .results import Result
from .variants import is_model_file


class Prediction(Result):
    image: str
    top: list[tuple[str, float]]  # (label, probability), best first


class PredictResult(Result):
    source: str
    predictions: list[Prediction]


def predict(
    source: str | os.PathLike | None,
    images: Sequence[str | os.PathLike],
    top_k: int = 5,
    model: str | None = None,
    weights: str = "DEFAULT",
) -> PredictResult:
    """Classify ``images`` with a run directory, an .onnx file, or a zoo ``model`` with ``weights``,
    using the preprocessing recorded for it."""
    if top_k < 1:
        raise EdgekitError(f"--top-k {top_k} must be at least 1")
    if not images:
        raise EdgekitError("no images given; pass one or more image files")
    if (source is None) == (model is None):
        raise EdgekitError("pass either a run directory / .onnx file or --model, not both")
    if model is not None:
        logits, labels = _zoo_logits(model, weights, images)
        source = f"{model}:{weights}"
    elif source is None:  # unreachable: exactly one of the two was checked above (this tells the type checker)
        raise EdgekitError("pass a run directory / .onnx file or --model")
    elif is_model_file(source):  # an exported file: labels and preprocessing travel with it
        logits, labels = _onnx_logits(Path(source), images)
    else:
        logits, labels = _run_logits(Path(source), images)
    probabilities = _softmax(logits)
    k = min(top_k, probabilities.shape[1])
    predictions = []
    for image, row in zip(images, probabilities):
        best = np.argsort(-row)[:k]
        predictions.append(Prediction(image=str(image), top=[(labels[i], round(float(row[i]), 6)) for i in best]))
    return PredictResult(source=str(source), predictions=predictions)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _run_logits(run_dir: Path, images) -> tuple[np.ndarray, list[str]]:
    from .runs import Run

    run = Run.load(run_dir)
    return _torch_logits(run.build_model(), run.card.preprocessing, images), run.card.class_names


def _zoo_logits(name: str, weights: str, images) -> tuple[np.ndarray, list[str]]:
    from .models import build

    model, loaded = build(name, weights)
    logits = _torch_logits(model.eval(), loaded.preprocessing, images)
    return logits, loaded.categories or [f"class_{i}" for i in range(logits.shape[1])]


def _torch_logits(model, preprocessing, images) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(load_batch(images, preprocessing))).numpy()


def _onnx_logits(path: Path, images) -> tuple[np.ndarray, list[str]]:
    from . import runtimes

    # The one way to run an artifact: the ONNX file is checked (corrupt files, external data outside its
    # folder) and its metadata validated before ONNX Runtime opens it.
    session = runtimes.load(path, "auto")  # the format's own runtime
    if session.labels is None or session.preprocessing is None:
        raise EdgekitError(
            f"{path} has no edgekit labels/preprocessing metadata (its format keeps them in {format_of(path).metadata}); "
            "export it with `edgekit export`, or predict from its run directory"
        )
    logits = session.run(load_batch(images, session.preprocessing, session.input_kind))
    if logits.ndim != 2 or logits.shape[1] != len(session.labels):
        raise EdgekitError(
            f"{path} returns {logits.shape[-1]} scores per image but its metadata names {len(session.labels)} labels; "
            "the metadata does not belong to this model, re-export it"
        )
    return logits, session.labels
