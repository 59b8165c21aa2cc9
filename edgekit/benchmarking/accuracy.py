"""Bench's accuracy: top-1 / top-5 of each session on a labelled image folder, with the session's own labels and
preprocessing, and the image files end-to-end timing decodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import runtimes as registry
from ..errors import DataError, EdgekitError
from .sessions import Entry, image_preparer

ACCURACY_BATCH = 32


def label_indices(session: registry.Session, folder) -> list[int] | None:
    """For each class of ``folder``, its index among the model's labels (matched by name); None without labels."""
    if session.labels is None or session.preprocessing is None:
        return None
    index_of = {name: i for i, name in enumerate(session.labels)}
    missing = [name for name in folder.classes if name not in index_of]
    if missing:
        raise DataError(
            f"{folder.root} has class folders the model {session.artifact.name} does not know: {missing[:5]}; its labels "
            f"are {session.labels[:10]}{'...' if len(session.labels) > 10 else ''}. Pass a folder with the model's classes"
        )
    return [index_of[name] for name in folder.classes]


_CACHE_LIMIT_BYTES = 256 * 2**20  # keep decoded images for the next variant only while they stay this small


def accuracy(entry: Entry, folder, prepared: dict | None = None) -> None:
    """Top-1 / top-5 of the session on the labelled folder, with the session's own labels and preprocessing."""
    session = entry.session
    class_to_label = label_indices(session, folder)
    if class_to_label is None or session.preprocessing is None or session.labels is None:
        return  # label_indices only maps folders for sessions that carry labels and preprocessing
    step = session.fixed_batch or ACCURACY_BATCH
    key = (session.preprocessing.model_dump_json(), session.input_kind, step)
    cached = prepared.get(key) if prepared is not None else None
    keep, kept_bytes = [], 0
    prepare = image_preparer(session)
    top1 = top5 = 0
    k = min(5, len(session.labels))
    for number, start in enumerate(range(0, len(folder.samples), step)):
        chunk = folder.samples[start : start + step]
        batch = cached[number] if cached is not None else prepare([p for p, _ in chunk])
        if cached is None and prepared is not None and kept_bytes + batch.nbytes <= _CACHE_LIMIT_BYTES:
            keep.append(batch)
            kept_bytes += batch.nbytes
        if session.fixed_batch is not None and len(chunk) < step:  # pad the last chunk for a fixed-batch model
            batch = np.concatenate([batch, np.repeat(batch[-1:], step - len(chunk), axis=0)])
        logits = session.run(batch)[: len(chunk)]
        truth = np.array([class_to_label[label] for _, label in chunk])
        ranked = np.argsort(-logits, axis=1)[:, :k]
        top1 += int((ranked[:, 0] == truth).sum())
        top5 += int((ranked == truth[:, None]).any(axis=1).sum())
    if cached is None and prepared is not None and len(keep) == -(-len(folder.samples) // step):
        prepared[key] = keep
    entry.top1, entry.top5, entry.accuracy_images = top1 / len(folder), top5 / len(folder), len(folder)


def data_folder(data, max_images):
    from ..data import scan_folder, stratified_sample

    folder = scan_folder(data, verify=False)
    if max_images is not None:
        folder = stratified_sample(folder, max_images, seed=0)
    return folder


def end_to_end_images(folder, candidates) -> list[Path]:
    """Image files to decode in end-to-end timing: --data, else the first run's validation images."""
    if folder is not None:
        return [p for p, _ in folder.samples]
    from ..data import run_images
    from ..runs import Run

    for candidate in candidates:
        if candidate.run_dir is not None:
            try:
                return [p for p, _ in run_images(Run.load(candidate.run_dir).card, "val").samples]
            except DataError:
                continue
    raise EdgekitError("--end-to-end needs image files to decode; pass --data DIR (a folder of <class>/<image> files)")
