"""The bundle a target gets for accuracy and parity: real images preprocessed here once per (preprocessing, input kind),
each row's labels and the run's PyTorch fp32 logits for the same pixels; and the scores computed here from the logits
the target returns (top-1/top-5, and ``compare_logits`` as `edgekit parity` computes it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import runtimes as registry
from ..parity_check import ParityMetrics
from .artifacts import Candidate
from .sessions import Entry


@dataclass
class Row:
    """One artifact on one runtime, prepared here for a target."""

    candidate: Candidate
    runtime: str
    host: registry.Session  # opened here: the checks, the metadata, the input it takes
    settings: dict  # the settings it is timed with (and its logits computed with)
    bundle_key: str | None = None  # its inputs in the bundle
    truth: np.ndarray | None = None  # each bundled image's class as an index into the model's labels
    reference_key: str | None = None  # the PyTorch fp32 logits for its inputs
    notes: list[str] = field(default_factory=list)
    record_id: str = ""  # its artifact's id in the job


def build_bundle(rows: list[Row], folder) -> dict[str, np.ndarray]:
    """The bundle's arrays: ``folder``'s images preprocessed once per (preprocessing, input kind), each row's labels
    (class indices into its model's labels) and, where the row belongs to a run, the run's PyTorch fp32 logits for
    the very pixels the row gets (``ParityChecker``, as `edgekit parity` computes them). Sets each row's keys."""
    from ..parity_check import LabelledImages, ParityChecker, ParityData
    from ..results import DataSource
    from .accuracy import label_indices

    images = LabelledImages([p for p, _ in folder.samples], None, DataSource.images(folder.root))
    arrays: dict[str, np.ndarray] = {}
    data_sets: dict[str, ParityData] = {}
    checkers: dict[tuple, ParityChecker] = {}
    for row in rows:
        session = row.host
        if session.preprocessing is None:
            row.notes.append("no preprocessing recorded: no accuracy or parity on the target")
            continue
        recipe = session.preprocessing.model_dump_json()
        data = data_sets.setdefault(recipe, ParityData(session.preprocessing, images))
        row.bundle_key = "inputs_" + _short_hash(recipe + session.input_kind.value)
        if row.bundle_key not in arrays:
            arrays[row.bundle_key] = data.inputs(session.input_kind)
        class_to_label = label_indices(session, folder)
        if class_to_label is not None:
            row.truth = np.array([class_to_label[label] for _, label in folder.samples])
            arrays["labels_" + _short_hash(",".join(session.labels or []))] = row.truth
        if row.candidate.run_dir is not None:
            key = (str(row.candidate.run_dir), recipe)
            if key not in checkers:
                from ..runs import Run

                checkers[key] = ParityChecker(Run.load(row.candidate.run_dir).build_model(), data)
            row.reference_key = "reference_" + _short_hash(f"{key}{session.input_kind.value}")
            if row.reference_key not in arrays:
                arrays[row.reference_key] = checkers[key].reference_logits(session.input_kind)
    return arrays


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


def score(pairs: list[tuple[Entry, Row]], arrays: dict[str, np.ndarray], logits: dict[str, np.ndarray], source) -> dict[int, ParityMetrics]:
    """Top-1/top-5 from the bundled labels into each Entry, and parity against the bundled references from the
    target's logits (``compare_logits``, as `edgekit parity`): {id(entry): ParityMetrics}."""
    from ..parity_check import compare_logits

    parity: dict[int, ParityMetrics] = {}
    for entry, row in pairs:
        found = logits.get(f"logits_{row.record_id}")
        if found is None:
            continue
        if row.truth is not None and len(row.truth) == len(found):
            k = min(5, found.shape[1])
            ranked = np.argsort(-found, axis=1)[:, :k]
            entry.top1 = float((ranked[:, 0] == row.truth).mean())
            entry.top5 = float((ranked == row.truth[:, None]).any(axis=1).mean())
            entry.accuracy_images = len(row.truth)
        if row.reference_key is not None:
            parity[id(entry)] = compare_logits(arrays[row.reference_key], found, row.truth, source)
    return parity
