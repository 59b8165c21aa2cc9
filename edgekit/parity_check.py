"""Parity: does an exported artifact still compute what the float32 PyTorch model computes, on real images?

    result = parity("runs/flowers", "runs/flowers/exports/model.int8.onnx")
    result.passed, result.failures, result.metrics.top1_agreement

The reference is always the run's PyTorch model in float32 on the CPU, fed exactly the pixels the artifact
gets. Images come from the run's validation split (or ``data``); random inputs are used only when no image
is at hand, and the result says so (``metrics.data_source.is_random``).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .card import MeasuredOn
from .data import (
    IMAGE_EXTENSIONS,
    ImageFolder,
    load_batch,
    run_images,
    scan_folder,
    stratified_sample,
)
from .errors import DataError, EdgekitError
from .metadata import InputKind
from .preprocessing import Preprocessing, normalize_pixels
from .results import RANDOM, DataSource, Result
from .variants import Variant

RANDOM_IMAGES = 32  # how many random inputs stand in when there is no image at all
CONFIDENT = 0.5  # top-1 probability from which the reference counts as confident about an input
NEAR_TIE = 0.05  # reference top-1 minus top-2 probability under which an input is a near-tie
REFERENCE = "torch-fp32"


class ParityThresholds(BaseModel):
    """Limits a variant must meet; None means that metric is not checked."""

    model_config = ConfigDict(extra="forbid")

    # Bounded so that a threshold no model could ever meet (agreement 1.5, a negative difference) is a
    # user error up front instead of a parity run that always fails.
    max_rel_diff: float | None = Field(None, ge=0)  # max |logit diff| / reference logit spread, worst image
    min_agreement: float | None = Field(None, ge=0, le=1)  # top-1 agreement with the reference
    max_accuracy_drop: float | None = Field(None, ge=-1, le=1)  # reference accuracy - variant accuracy (needs labels)


class ParityOptions(BaseModel):
    """`edgekit parity`'s options: its flags and its ``--config`` YAML keys come from here, and so do
    ``parity()``'s keyword defaults, so each default is written once. The three limits override the
    model's per-variant thresholds (validated as ``ParityThresholds``)."""

    model_config = ConfigDict(extra="forbid")

    data: Path | None = Field(None, description="Images (a folder, or <class>/<image> folders) [default: the run's validation images].")
    variant: str | None = Field(None, description="Which thresholds apply (fp32, fp16, int8, ...) [default: read from the artifact].")
    max_images: int = Field(256, description="Use at most this many images (class-stratified).")
    max_rel_diff: float | None = Field(
        None, description="Largest allowed max |logit diff| / reference logit spread, e.g. 1e-4. Default: per model and variant."
    )
    min_agreement: float | None = Field(
        None, description="Smallest allowed top-1 agreement with the float32 PyTorch model, e.g. 0.9. Default: per model and variant."
    )
    max_accuracy_drop: float | None = Field(
        None, description="Largest allowed drop in accuracy (needs labelled images), e.g. 0.05. Default: per model and variant."
    )


_PARITY_DEFAULTS = ParityOptions()


class ParityMetrics(BaseModel):
    """How far a variant's logits and decisions are from the reference's."""

    model_config = ConfigDict(extra="forbid")

    n_images: int
    data_source: DataSource  # a folder of real images, or random inputs
    max_abs_diff: float
    mean_abs_diff: float
    max_rel_diff: float  # per image: max |diff| / (max - min of the reference logits); the worst image
    cosine_similarity: float  # per image; the lowest
    top1_agreement: float
    top5_overlap: float  # mean |top-k(reference) & top-k(variant)| / k, k = min(5, classes)
    reference_accuracy: float | None = None
    variant_accuracy: float | None = None
    accuracy_drop: float | None = None  # reference - variant; None without labels
    n_confident: int | None = None  # images where the reference's top-1 softmax probability is >= CONFIDENT
    confident_agreement: float | None = None  # top-1 agreement on those (reported, not judged)
    # Disagreements on near-ties: images whose reference top-1 and top-2 probabilities are within NEAR_TIE of each
    # other, where any rounding may flip the answer (reported, not judged).
    near_tie_disagreements: int | None = None
    disagreements: int | None = None
    # Standard errors of the two decision metrics over these images (paired for the accuracy drop), so a reader,
    # and the int8 search, can tell a real difference from the luck of one sample.
    top1_agreement_se: float | None = None
    accuracy_drop_se: float | None = None


class ParityResult(Result):
    """One artifact compared with the float32 PyTorch model (on this machine, or on ``target``)."""

    SCHEMA_VERSION = 2  # 2: data_source is a DataSource (schema 1's "images:<dir>" strings still load)

    artifact: str
    variant: str
    reference: str = REFERENCE
    input_kind: InputKind = InputKind.FLOAT
    metrics: ParityMetrics
    thresholds: ParityThresholds
    passed: bool
    failures: list[str]  # one line per threshold crossed: "<metric> <value> <op> <limit>"
    not_checked: list[str] = []  # thresholds set but not checkable here (accuracy without labels)
    seconds: float = 0.0
    target: MeasuredOn | None = None  # where the artifact ran, when not on this machine


def variant_kind(variant: str) -> str:
    """ "fp32", "fp16" or "int8": the precision class a variant's thresholds come from."""
    return Variant.parse(variant).threshold_kind


def thresholds_for(spec_or_tolerance, variant: str, has_labels: bool | None = None) -> ParityThresholds:
    """The default thresholds for ``variant`` from a ModelSpec (or its ParityTolerance, or a model name).

    fp32 is judged on logits relative to their spread; fp16 on that plus decisions; int8 on decisions and
    accuracy, since its logits are expected to move.
    """
    from .models import ParityTolerance, get_spec

    if isinstance(spec_or_tolerance, str):
        spec_or_tolerance = get_spec(spec_or_tolerance)
    tolerance: ParityTolerance = getattr(spec_or_tolerance, "parity", spec_or_tolerance)
    kind = variant_kind(variant)
    if kind == "int8" and has_labels is not None:
        # The int8 budget: accuracy where labels say what is right, agreement with fp32 where they do not.
        if has_labels:
            return ParityThresholds(max_accuracy_drop=tolerance.int8_max_accuracy_drop)
        return ParityThresholds(min_agreement=tolerance.int8_min_agreement)
    if kind == "fp32":
        return ParityThresholds(max_rel_diff=tolerance.fp32_max_rel_diff)
    if kind == "fp16":
        return ParityThresholds(max_rel_diff=tolerance.fp16_max_rel_diff, min_agreement=tolerance.fp16_min_agreement)
    return ParityThresholds(min_agreement=tolerance.int8_min_agreement, max_accuracy_drop=tolerance.int8_max_accuracy_drop)


def merge_thresholds(defaults: ParityThresholds, overrides: ParityThresholds | None) -> ParityThresholds:
    """``defaults`` with every field that was explicitly set in ``overrides`` replaced (set to None: not checked)."""
    if overrides is None:
        return defaults
    return defaults.model_copy(update={name: getattr(overrides, name) for name in overrides.model_fields_set})


# --------------------------------------------------------------------------- images


@dataclass
class LabelledImages:
    """Image files with labels indexed into ``class_names`` (None when the folder carries no usable labels)."""

    paths: list[Path]
    labels: list[int] | None
    source: DataSource


def images_in(
    directory: str | os.PathLike, class_names: list[str] | None = None, max_images: int | None = None, seed: int = 0
) -> LabelledImages:
    """Images under ``directory``: either class folders (``<class>/<image>``) or images lying directly in it.

    Class folders are labelled when their names are among ``class_names``; a folder whose classes the run
    does not know is still usable, without labels. ``max_images`` keeps a class-stratified sample.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory; pass a folder of images or of <class>/<image> folders")
    has_class_folders = any(entry.is_dir() and not entry.name.startswith(".") for entry in os.scandir(directory))
    if has_class_folders:
        folder = scan_folder(directory, verify=False, min_classes=1)
        if max_images is not None:
            folder = stratified_sample(folder, max_images, seed)
        labels = None
        if class_names is not None and set(folder.classes) <= set(class_names):
            labels = [class_names.index(folder.classes[label]) for _, label in folder.samples]
        return LabelledImages([path for path, _ in folder.samples], labels, DataSource.images(directory))
    paths = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not paths:
        raise DataError(f"{directory} has no images ({', '.join(IMAGE_EXTENSIONS[:4])}...) nor class folders")
    if max_images is not None and len(paths) > max_images:
        paths = sorted(random.Random(seed).sample(paths, max_images))
    return LabelledImages(paths, None, DataSource.images(directory))


def run_parity_images(card, data: str | os.PathLike | None, max_images: int, seed: int = 0) -> LabelledImages | None:
    """``data`` if given, else the run's validation images, else None (a zoo model: random inputs)."""
    if data is not None:
        return images_in(data, card.class_names, max_images, seed)
    if card.data_dir is None:
        return None
    folder: ImageFolder = stratified_sample(run_images(card, "val"), max_images, seed)
    return LabelledImages([path for path, _ in folder.samples], [label for _, label in folder.samples], DataSource.images(folder.root))


@dataclass
class ParityData:
    """The inputs every artifact and the reference see: uint8 pixels after resize+crop, and the float
    tensors after the full preprocessing. Built lazily, once per input kind."""

    preprocessing: Preprocessing
    images: LabelledImages | None
    n_random: int = RANDOM_IMAGES
    seed: int = 0
    _cache: dict = field(default_factory=dict)

    @property
    def source(self) -> DataSource:
        return self.images.source if self.images is not None else RANDOM

    @property
    def labels(self) -> np.ndarray | None:
        if self.images is None or self.images.labels is None:
            return None
        return np.asarray(self.images.labels)

    def inputs(self, kind: str) -> np.ndarray:
        """The batch of every image for an input kind ("float32-nchw" or "uint8-nhwc")."""
        if kind not in self._cache:
            self._cache[kind] = self._build(kind)
        return self._cache[kind]

    def _build(self, kind: str) -> np.ndarray:
        if self.images is None:
            crop = self.preprocessing.crop
            pixels = np.random.default_rng(self.seed).integers(0, 256, size=(self.n_random, crop, crop, 3), dtype=np.uint8)
            return pixels if kind == InputKind.UINT8 else normalize_pixels(pixels, self.preprocessing)
        return load_batch(self.images.paths, self.preprocessing, kind)

    def reference_inputs(self, kind: str) -> np.ndarray:
        """What the float32 PyTorch model gets for an artifact of input kind ``kind``: the same pixels.

        For a uint8 artifact the reference normalizes the very pixels the artifact got (not a separately
        resized float image), so the comparison measures the export, not two resize implementations.
        """
        if kind == InputKind.UINT8:
            return normalize_pixels(self.inputs(InputKind.UINT8), self.preprocessing)
        return self.inputs(InputKind.FLOAT)


class ParityChecker:
    """Compares artifacts with one PyTorch model on one data set; reference logits are computed once per input kind."""

    def __init__(self, model, data: ParityData, batch_size: int = 32):
        self.model = model.eval()
        self.data = data
        self.batch_size = batch_size
        self._reference: dict[str, np.ndarray] = {}

    def reference_logits(self, kind: str) -> np.ndarray:
        import torch

        if kind not in self._reference:
            inputs = self.data.reference_inputs(kind)
            with torch.no_grad():
                chunks = [
                    self.model(torch.from_numpy(inputs[i : i + self.batch_size])).numpy() for i in range(0, len(inputs), self.batch_size)
                ]
            self._reference[kind] = np.concatenate(chunks).astype(np.float32)
        return self._reference[kind]

    def check(
        self, artifact: str | os.PathLike, variant: str, thresholds: ParityThresholds, session=None, target=None, target_options=None
    ) -> ParityResult:
        """Run ``artifact`` (through ``session`` if already loaded) on the data, compare with the reference,
        and judge against ``thresholds``. ``target``: run it there instead (``parity``'s), the references staying
        here and computed once for every artifact this checker sees."""
        from .targets import is_local

        if not is_local(target):
            return _check_on_target(self, Path(artifact), variant, thresholds, target, target_options)
        started = time.perf_counter()
        session = session if session is not None else open_artifact(artifact)
        kind = session.input_kind
        inputs = self.data.inputs(kind)
        candidate = np.concatenate([session.run(inputs[i : i + self.batch_size]) for i in range(0, len(inputs), self.batch_size)])
        return self.judged(artifact, variant, kind, candidate, thresholds, started)

    def judged(
        self, artifact, variant: str, kind, candidate: np.ndarray, thresholds: ParityThresholds, started=None, where=None
    ) -> ParityResult:
        """The verdict on ``candidate``, the artifact's logits for the data's ``kind`` inputs (computed here, or on
        the target ``where``, a MeasuredOn), against the reference; ``started``: when the check began (perf_counter)."""
        metrics = compare_logits(self.reference_logits(kind), candidate, self.data.labels, self.data.source)
        failures, not_checked = judge(metrics, thresholds)
        return ParityResult(
            artifact=str(artifact),
            variant=variant,
            input_kind=kind,
            metrics=metrics,
            thresholds=thresholds,
            passed=not failures,
            failures=failures,
            not_checked=not_checked,
            seconds=round(time.perf_counter() - started, 3) if started is not None else 0.0,
            target=where,
        )


def compare_logits(
    reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None, data_source: DataSource = RANDOM
) -> ParityMetrics:
    """Parity metrics of ``candidate`` logits against ``reference`` logits (both (N, classes))."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise EdgekitError(
            f"the artifact returns logits of shape {candidate.shape}, the reference {reference.shape}; "
            "was it exported from another run or class count?"
        )
    difference = np.abs(reference - candidate)
    spread = reference.max(axis=1) - reference.min(axis=1)
    # A constant logit row has no spread; the absolute difference is then the only meaningful measure.
    relative = difference.max(axis=1) / np.where(spread > 0, spread, 1.0)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = np.where(norms > 0, (reference * candidate).sum(axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
    reference_top1 = reference.argmax(axis=1)
    candidate_top1 = candidate.argmax(axis=1)
    k = min(5, reference.shape[1])
    reference_topk = np.argsort(-reference, axis=1)[:, :k]
    candidate_topk = np.argsort(-candidate, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(reference_topk, candidate_topk)])
    # Where the reference itself is unsure (near-ties, out-of-distribution inputs), a tiny change flips top-1; the
    # agreement on the inputs it is confident about separates "the variant is broken" from "the input is ambiguous".
    shifted = np.exp(reference - reference.max(axis=1, keepdims=True))
    probabilities = np.sort(shifted / shifted.sum(axis=1, keepdims=True), axis=1)  # the reference's, ascending
    agree = reference_top1 == candidate_top1
    confident = probabilities[:, -1] >= CONFIDENT
    confident_agreement = float(agree[confident].mean()) if confident.any() else None
    near_tie = (probabilities[:, -1] - probabilities[:, -2] < NEAR_TIE) if reference.shape[1] > 1 else np.zeros(len(reference), bool)
    reference_accuracy = variant_accuracy = accuracy_drop = accuracy_drop_se = None
    n = len(reference)
    agreement = float(agree.mean()) if n else 1.0
    agreement_se = float(np.sqrt(agreement * (1 - agreement) / n)) if n else None
    if labels is not None:
        reference_accuracy = float((reference_top1 == labels).mean())
        variant_accuracy = float((candidate_top1 == labels).mean())
        accuracy_drop = reference_accuracy - variant_accuracy
        paired = (reference_top1 == labels).astype(np.float64) - (candidate_top1 == labels).astype(np.float64)
        accuracy_drop_se = float(paired.std(ddof=1) / np.sqrt(n)) if n > 1 else None
    return ParityMetrics(
        n_images=len(reference),
        data_source=data_source,
        max_abs_diff=float(difference.max()),
        mean_abs_diff=float(difference.mean()),
        max_rel_diff=float(relative.max()),
        cosine_similarity=float(cosine.min()),
        top1_agreement=float(agree.mean()),
        top5_overlap=float(overlap),
        reference_accuracy=reference_accuracy,
        variant_accuracy=variant_accuracy,
        accuracy_drop=accuracy_drop,
        n_confident=int(confident.sum()),
        confident_agreement=confident_agreement,
        disagreements=int((~agree).sum()),
        near_tie_disagreements=int((~agree & near_tie).sum()),
        top1_agreement_se=agreement_se,
        accuracy_drop_se=accuracy_drop_se,
    )


def judge(metrics: ParityMetrics, thresholds: ParityThresholds) -> tuple[list[str], list[str]]:
    """(failures, not_checked): one line per threshold crossed, naming the metric, its value and the limit."""
    failures, not_checked = [], []
    if thresholds.max_rel_diff is not None and not metrics.max_rel_diff <= thresholds.max_rel_diff:
        failures.append(
            f"max_rel_diff {metrics.max_rel_diff:.3g} > {thresholds.max_rel_diff:.3g} (max abs diff {metrics.max_abs_diff:.3g})"
        )
    if thresholds.min_agreement is not None and not metrics.top1_agreement >= thresholds.min_agreement:
        failures.append(
            f"top1_agreement {metrics.top1_agreement:.3f} < {thresholds.min_agreement:.3f} "
            f"({metrics.n_images} images, {metrics.data_source})"
        )
    if thresholds.max_accuracy_drop is not None:
        if metrics.accuracy_drop is None:
            not_checked.append("max_accuracy_drop (the parity images have no labels the run knows)")
        elif not metrics.accuracy_drop <= thresholds.max_accuracy_drop + 1e-12:
            failures.append(
                f"accuracy_drop {metrics.accuracy_drop:.3f} > {thresholds.max_accuracy_drop:.3f} "
                f"(accuracy {metrics.reference_accuracy:.3f} -> {metrics.variant_accuracy:.3f})"
            )
    return failures, not_checked


# --------------------------------------------------------------------------- artifacts


def open_artifact(artifact: str | os.PathLike):
    """A session for an .onnx or .pt2 artifact with ``.run(batch) -> logits`` and ``.input_kind``,
    through ``edgekit.runtimes`` (ONNX Runtime on the CPU for .onnx, torch.export for .pt2)."""
    from . import runtimes

    return runtimes.load(artifact, runtime="auto")


def artifact_variant(artifact: str | os.PathLike) -> str:
    """The variant an artifact is (see ``Variant.of_artifact``: metadata, then graph, then file name)."""
    return Variant.of_artifact(artifact).name


def parity(
    run,
    artifact: str | os.PathLike,
    data: str | os.PathLike | None = None,
    thresholds: ParityThresholds | None = None,
    variant: str | None = _PARITY_DEFAULTS.variant,
    max_images: int = _PARITY_DEFAULTS.max_images,
    target=None,
    target_options=None,
) -> ParityResult:
    """Compare ``artifact`` (.onnx / .pt2) with ``run``'s float32 PyTorch model on real images.

    ``run`` is a Run or a run directory. ``data`` is a folder of images or of class folders (default:
    the run's validation images). ``thresholds`` override the model's defaults for the variant, field by
    field (only the fields set explicitly). ``variant`` defaults to what the artifact says it is.
    ``target``: where the artifact runs (``edgekit.targets``: "local", "ssh://pi@raspberrypi.local", a Target);
    the references are computed here either way, the artifact's logits there (``target_options``: how to reach it).
    """
    from .models import get_spec
    from .runs import Run

    run = run if isinstance(run, Run) else Run.load(run)
    artifact = Path(artifact)
    if not artifact.exists():
        raise EdgekitError(f"{artifact} does not exist; pass an .onnx or .pt2 file written by `edgekit export`")
    if max_images < 1:
        raise EdgekitError(f"--max-images {max_images} must be at least 1")
    variant = variant or artifact_variant(artifact)
    data_set = ParityData(run.card.preprocessing, run_parity_images(run.card, data, max_images))
    limits = merge_thresholds(thresholds_for(get_spec(run.card.model), variant, has_labels=data_set.labels is not None), thresholds)
    return ParityChecker(run.build_model(), data_set).check(artifact, variant, limits, target=target, target_options=target_options)


def _check_on_target(checker: ParityChecker, artifact: Path, variant: str, limits: ParityThresholds, target, options) -> ParityResult:
    """``ParityChecker.check`` with the artifact's logits computed on ``target`` by edgekit's device runner."""
    from . import runtimes
    from .targets import parse_target
    from .targets.info import info_from_facts, library_versions
    from .targets.jobs import logits_on_target

    started = time.perf_counter()
    runtime = runtimes.auto_runtime(artifact)
    host = runtimes.load(artifact, runtime)  # the file's checks and what it says of itself, before it travels
    kind = host.input_kind
    opened = parse_target(target, options)
    try:
        info = info_from_facts(opened, opened.facts())
        candidate, used = logits_on_target(opened, info, host, runtime, checker.data.inputs(kind))
    finally:
        if opened is not target:
            opened.close()
    return checker.judged(artifact, variant, kind, candidate, limits, started, where=info.measured_on(library_versions(used) or None))
