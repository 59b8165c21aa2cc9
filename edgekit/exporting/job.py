"""The context every format's exporter gets: ``ExportJob``, typed and frozen.

A format module's contract (see ``edgekit.formats``):

    def export_variant(job: ExportJob, variant: Variant) -> VariantResult
    def require() -> None            # optional: a one-line ExportError naming the extra when it is not installed

``export_variant`` writes ``job.path_of(variant)`` atomically (with its companions), then returns
``job.finish(variant, path, seconds, ...)``, which runs the batch-size check and parity against the float32
PyTorch model on the job's images and writes the parity report.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..data import load_batch
from ..errors import ExportError
from ..formats import Format
from ..metadata import InputKind, ModelMetadata
from ..parity_check import LabelledImages, ParityChecker, ParityThresholds, merge_thresholds, open_artifact, thresholds_for
from ..preprocessing import example_pixels
from ..progress import Bar
from ..runs import Run
from ..variants import Variant
from ..version import __version__
from .embed import EmbeddedPreprocessing
from .onnx_graph import CHECK_BATCH_SIZES, check_batch_sizes, export_proto, save_proto
from .options import ExportOptions
from .results import VariantResult

CALIBRATION_BATCH = 8


@dataclass(frozen=True)
class ExportJob:
    """One export run: the options, the run and its float32 PyTorch model, the parity checker (reference logits
    computed once), the calibration images, a private work folder and the progress bar. Formats read it and call
    its building blocks; none of its attributes is ever reassigned."""

    options: ExportOptions
    run: Run
    model: Any  # the run's torch.nn.Module, eval mode
    spec: Any  # its ModelSpec (parity tolerances)
    checker: ParityChecker
    calibration: LabelledImages | None
    workdir: Path
    bar: Bar = field(default_factory=lambda: Bar(False))
    thresholds: ParityThresholds | None = None  # overrides of the model's per-variant thresholds
    done: dict[Variant, VariantResult] = field(default_factory=dict)  # what this job has exported so far
    _base: dict[InputKind, tuple[Path, float, int]] = field(default_factory=dict)

    # ----------------------------------------------------------------- where things go

    @property
    def exports_dir(self) -> Path:
        return self.run.exports_dir

    def path_of(self, variant: Variant) -> Path:
        return self.run.exports_dir / variant.file_name

    # ----------------------------------------------------------------- building blocks

    def module_for(self, kind: InputKind):
        """The PyTorch module a variant of input ``kind`` is made from (uint8 input: normalization inside)."""
        if kind is InputKind.UINT8:
            return EmbeddedPreprocessing(self.model, self.run.card.preprocessing).eval()
        return self.model

    def example(self, kind: InputKind = InputKind.FLOAT):
        """An example input batch of 2 (torch.export specializes a dynamic batch whose example is 1)."""
        import torch

        if kind is InputKind.UINT8:
            return example_pixels(self.run.card.preprocessing)
        crop = self.run.card.preprocessing.crop
        return torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))

    def metadata(self, variant: Variant, extra: dict | None = None) -> ModelMetadata:
        """The labels, preprocessing and provenance every artifact carries (``extra`` joins the provenance)."""
        card = self.run.card
        source = {
            "model": card.model,
            "weights": card.weights,
            "run": str(self.run.path),
            "variant": variant.name,
            "format": variant.format.name,
            "edgekit": __version__,
            "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        return ModelMetadata(list(card.class_names), card.preprocessing, source, variant.input_kind)

    def base_onnx(self, kind: InputKind = InputKind.FLOAT) -> tuple[Path, float, int]:
        """(the float32 ONNX export for an input kind, its seconds, its opset), made once per job: ONNX's variants
        and the formats converted from ONNX (OpenVINO) share it."""
        if kind not in self._base:
            started = time.perf_counter()
            proto = export_proto(self.module_for(kind), self.example(kind), self.options.opset)
            opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
            path = save_proto(proto, self.workdir / f"base-{kind.value}.onnx")
            self._base[kind] = (path, time.perf_counter() - started, opset)
        return self._base[kind]

    def calibration_batches(self, kind: InputKind = InputKind.FLOAT) -> Iterator[np.ndarray]:
        if self.calibration is None:
            raise ExportError("int8 needs calibration images; pass --calib-data DIR")
        paths = self.calibration.paths
        for start in range(0, len(paths), CALIBRATION_BATCH):
            yield load_batch(paths[start : start + CALIBRATION_BATCH], self.run.card.preprocessing, kind)

    def describe(self, variant: Variant, text: str) -> None:
        """Say on the progress bar what a slow step of ``variant`` is doing."""
        self.bar.describe(f"exporting {variant.name}: {text}")

    # ----------------------------------------------------------------- the budget

    def search_skipped(self) -> str:
        """Why no int8 format runs its accuracy-aware search here ("" when it does): one rule for every format."""
        if not self.options.accuracy_aware:
            return "accuracy-aware search off"
        if self.checker.data.images is None:
            return "no images to validate on (random inputs)"
        return ""

    def limits(self, variant: Variant) -> ParityThresholds:
        """The thresholds (for int8: the accuracy budget) ``variant`` is held to on this job's parity images."""
        has_labels = self.checker.data.labels is not None
        return merge_thresholds(thresholds_for(self.spec, variant.name, has_labels=has_labels), self.thresholds)

    # ----------------------------------------------------------------- the last step of every format

    def finish(
        self,
        variant: Variant,
        path: Path,
        seconds: float,
        *,
        consistency_tolerance: float | None = 1e-3,
        session=None,
        **fields,
    ) -> VariantResult:
        """Prove a written variant (batch sizes, then parity against fp32) and make its result. ``fields`` are the
        typed ``VariantResult`` fields the format fills (int8, warnings, facts...)."""
        session = session if session is not None else open_artifact(path)
        failures = self._batch_failures(session, variant.input_kind, consistency_tolerance)
        report = self.checker.check(path, variant.name, self.limits(variant), session=session)
        report.to_json(self.run.exports_dir / variant.parity_file_name)
        result = VariantResult(
            variant=variant.name,
            format=variant.format.name,
            path=str(path),
            size_bytes=sum(p.stat().st_size for p in variant.format.files(path)),
            seconds=round(seconds, 3),
            input_kind=variant.input_kind,
            batch_sizes_checked=list(CHECK_BATCH_SIZES),
            parity=report,
            passed=not (failures + report.failures),
            failures=failures + report.failures,
            **fields,
        )
        self.done[variant] = result
        return result

    def _batch_failures(self, session, kind: InputKind, tolerance: float | None) -> list[str]:
        crop = self.run.card.preprocessing.crop
        shape = (crop, crop, 3) if kind is InputKind.UINT8 else (3, crop, crop)
        dtype = np.uint8 if kind is InputKind.UINT8 else np.float32
        try:
            check_batch_sizes(session.run, shape, dtype, self.run.card.num_classes, tolerance)
        except ExportError as exc:
            return [f"batch sizes: {exc}"]
        return []


def exporter_of(fmt: Format) -> Callable[[ExportJob, Variant], VariantResult]:
    """A format's ``export_variant``: the function on its row, or the one in the module its row names."""
    if callable(fmt.exporter):
        return fmt.exporter
    return importlib.import_module(fmt.exporter).export_variant


def require(fmt: Format) -> None:
    """Before any work: the format's exporter can run here (its extra is installed), else a one-line error."""
    if callable(fmt.exporter):
        return
    module = importlib.import_module(fmt.exporter)
    check = getattr(module, "require", None)
    if check is not None:
        check()
