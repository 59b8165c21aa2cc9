"""The gate's measuring: find (or export) each variant's artifact, then parity on the gate's images,
one interleaved bench run for latency, and file sizes. Fresh reports on disk are reused."""

from __future__ import annotations

import os
from pathlib import Path

from .bench.targets import artifact_bytes
from .errors import EdgekitError
from .gate import EXPORT_QUANTIZE, GateConfig, VariantMeasure


def measure_variants(config: GateConfig, need_anchor: bool, progress: bool = False) -> tuple[dict[str, VariantMeasure], list[str], dict | None]:
    """(variant -> VariantMeasure, reports used or written, bench machine description)."""
    from .runs import Run

    run = Run.load(config.resolve(config.run)) if config.run is not None else None
    names = config.measured_variants()
    if need_anchor and config.baseline.anchor not in names:
        names.append(config.baseline.anchor)
    reports: list[str] = []
    artifacts = _artifacts(config, run, names, reports, progress)
    data = config.resolve(config.data)
    if data is not None and not data.is_dir():
        raise EdgekitError(f"data: {data} is not a directory; give a labelled image folder <class>/<image>")
    measures = {name: VariantMeasure(variant=name, artifact=str(path), size_bytes=artifact_bytes(path)) for name, path in artifacts.items()}
    if run is not None:
        checker = _ParityOnce(run, data, config.max_images)
        for name in config.variants:
            fresh = _fresh_parity(run, artifacts[name], name, data, config.max_images) if config.reuse_reports else None
            _add_parity(measures[name], artifacts[name], fresh, checker, reports)
        needing = [n for n, t in config.variants.items() if t.min_accuracy is not None or t.max_accuracy_drop is not None]
        if any(measures[n].accuracy is None for n in needing):
            where = f"data: {data}" if data is not None else "the run's validation images"
            raise EdgekitError(
                f"{where} carry no labels the run knows (class folders must be among {run.card.class_names[:5]}...), "
                f"so variants.{needing[0]} accuracy thresholds cannot be checked; point data: at a <class>/<image> folder of the run's classes"
            )
    needs_latency = need_anchor or any(t.min_speedup_vs for t in config.variants.values())
    needs_bench_accuracy = run is None and any(t.min_accuracy is not None for t in config.variants.values())
    machine = None
    if needs_latency or needs_bench_accuracy:
        machine = _add_bench(measures, artifacts, data if needs_bench_accuracy else None, config, run, reports, progress)
    return measures, reports, machine


# --- artifacts ------------------------------------------------------------------------------------


def artifact_path(exports_dir: Path, variant: str) -> Path:
    """Where `edgekit export` writes a variant."""
    from .export import variant_file_name

    return exports_dir / variant_file_name(variant)


def _find(config: GateConfig, run, variant: str) -> Path | None:
    if variant in config.artifacts:
        path = config.resolve(config.artifacts[variant])
        if not path.is_file():
            raise EdgekitError(f"artifacts.{variant}: {path} does not exist; fix the path or remove the key to use the run's exports")
        return path
    if run is None:
        return None
    path = artifact_path(run.exports_dir, variant)
    return path if path.is_file() else None


def _artifacts(config: GateConfig, run, names: list[str], reports: list[str], progress: bool) -> dict[str, Path]:
    found = {name: _find(config, run, name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if not missing:
        return found  # type: ignore[return-value]
    where = f"{run.exports_dir}" if run is not None else "artifacts:"
    if run is None:
        raise EdgekitError(f"variant {missing[0]} has no artifact; add it under artifacts: in the config")
    if not config.export_missing:
        raise EdgekitError(
            f"variant {missing[0]} has no artifact in {where}; run `edgekit export {run.path} --quantize "
            f"{','.join(EXPORT_QUANTIZE.get(m, m) for m in missing)}` or set export_missing: true"
        )
    from .export import export

    bases = {m.removesuffix("-uint8in") for m in missing}
    unknown = sorted(b for b in bases if b not in EXPORT_QUANTIZE and b != "torch-export")
    if unknown:
        raise EdgekitError(f"variant {unknown[0]} cannot be exported by the gate; export it with `edgekit export` first")
    formats = (["onnx"] if bases - {"torch-export"} else []) + (["torch-export"] if "torch-export" in bases else [])
    quantize = tuple(EXPORT_QUANTIZE[b] for b in EXPORT_QUANTIZE if b in bases) or ("none",)
    result = export(run, formats=tuple(formats), quantize=quantize, parity_data=config.resolve(config.data),
                    embed_preprocessing=any(m.endswith("-uint8in") for m in missing),
                    max_parity_images=config.max_images, progress=progress)
    reports += [variant.path for variant in result.variants]
    found = {name: _find(config, run, name) for name in names}
    still = [name for name, path in found.items() if path is None]
    if still:
        raise EdgekitError(f"export did not produce variant {still[0]} in {run.exports_dir}; run `edgekit export` and check its output")
    return found  # type: ignore[return-value]


# --- parity ---------------------------------------------------------------------------------------


def _parity_report_path(run, artifact: Path, variant: str) -> Path:
    return run.exports_dir / f"{variant}.parity.json"


def _fresh_parity(run, artifact: Path, variant: str, data: Path | None, max_images: int):
    """The parity report export wrote for this artifact, if it is newer than both the artifact and the
    model and was measured on the same labelled images; otherwise None."""
    from .parity import ParityResult

    path = _parity_report_path(run, artifact, variant)
    if not path.is_file() or path.stat().st_mtime < max(artifact.stat().st_mtime, run.model_path.stat().st_mtime):
        return None
    try:
        report = ParityResult.from_json(path)
    except EdgekitError:
        return None  # an unreadable old report is recomputed, not trusted
    if os.path.realpath(report.artifact) != os.path.realpath(artifact) or report.variant != variant:
        return None
    source = report.metrics.data_source
    if not source.startswith("images:"):
        return None  # random inputs say nothing about accuracy
    if data is not None and os.path.realpath(source[len("images:"):]) != os.path.realpath(data):
        return None
    if report.metrics.variant_accuracy is None:
        return None
    if data is not None:
        from .parity import images_in

        expected = len(images_in(data, run.card.class_names, max_images).paths)  # a listing, no decoding
        if report.metrics.n_images != expected:
            return None  # made on another sample size: the gate's numbers would not be comparable
    elif report.metrics.n_images > max_images:
        return None
    return report, path


class _ParityOnce:
    """One reference model and one set of images for every variant: the PyTorch logits are computed once."""

    def __init__(self, run, data: Path | None, max_images: int):
        self.run, self.data, self.max_images = run, data, max_images
        self._checker = None

    def check(self, artifact: Path, variant: str):
        from .parity import (
            ParityChecker,
            ParityData,
            ParityThresholds,
            run_parity_images,
        )

        if self._checker is None:
            images = run_parity_images(self.run.card, self.data, self.max_images)
            self._checker = ParityChecker(self.run.build_model(), ParityData(self.run.card.preprocessing, images))
        # No thresholds: the gate judges the metrics itself against its own config.
        return self._checker.check(artifact, variant, ParityThresholds())


def _add_parity(measure: VariantMeasure, artifact: Path, fresh, checker: _ParityOnce, reports: list[str]) -> None:
    if fresh is not None:
        report, path = fresh
        reports.append(str(path))
    else:
        report = checker.check(artifact, measure.variant)
    metrics = report.metrics
    measure.n_images = metrics.n_images
    measure.accuracy = metrics.variant_accuracy
    measure.reference_accuracy = metrics.reference_accuracy
    measure.accuracy_drop = metrics.accuracy_drop
    measure.agreement = metrics.top1_agreement
    measure.max_abs_diff = metrics.max_abs_diff
    measure.max_rel_diff = metrics.max_rel_diff


# --- bench ----------------------------------------------------------------------------------------


def _add_bench(measures, artifacts: dict[str, Path], data: Path | None, config: GateConfig, run, reports: list[str], progress: bool) -> dict | None:
    """One bench run with every variant interleaved; latency ratios are only ever taken inside it."""
    fresh = _fresh_bench(run, artifacts, config) if config.reuse_reports and run is not None and data is None else None
    if fresh is not None:
        result, path = fresh
        reports.append(str(path))
    else:
        from .bench import DEFAULT_ITERATIONS, DEFAULT_WARMUP, bench

        result = bench([artifacts[name] for name in measures], runtimes=(config.runtime,), batch_sizes=(config.batch_size,),
                       threads=config.threads, data=data, max_images=config.max_images if data is not None else None,
                       warmup=config.warmup if config.warmup is not None else DEFAULT_WARMUP,
                       iterations=config.iterations if config.iterations is not None else DEFAULT_ITERATIONS, progress=progress)
    rows = _rows_by_artifact(result, config)
    for name, measure in measures.items():
        row = rows.get(os.path.realpath(artifacts[name]))
        if row is None:
            continue  # the check that needs it reports "not measured" and fails
        measure.runtime = row.runtime
        measure.batch_size = row.batch_size
        measure.p50_ms = row.p50_ms
        measure.p50_ci_ms = tuple(row.p50_ci_ms)
        if measure.accuracy is None and row.top1 is not None:
            measure.accuracy = row.top1
            measure.n_images = row.accuracy_images
    if not rows and result.skipped:
        why = "; ".join(f"{name}: {reason}" for name, reason in result.skipped.items())
        raise EdgekitError(f"runtime {config.runtime} measured nothing ({why}); choose another runtime: in the gate config")
    return result.machine


def _rows_by_artifact(result, config: GateConfig) -> dict:
    return {os.path.realpath(m.artifact): m for m in result.measurements
            if m.runtime == config.runtime and m.batch_size == config.batch_size}


def _fresh_bench(run, artifacts: dict[str, Path], config: GateConfig):
    """The newest `edgekit bench` report in <run>/bench that timed every needed artifact in one run, with
    the gate's runtime, batch size and threads, on this machine, after every artifact was last written."""
    from .bench import BenchResult, machine_info

    if not run.bench_dir.is_dir():
        return None
    newest_artifact = max(path.stat().st_mtime for path in artifacts.values())
    here = machine_info()
    for path in sorted(run.bench_dir.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        if path.stat().st_mtime < newest_artifact:
            break  # older reports can only be staler
        try:
            result = BenchResult.from_json(path)
        except EdgekitError:
            continue
        settings = result.settings
        same_settings = (settings.get("threads") == config.threads and not settings.get("end_to_end")
                         and (config.iterations is None or settings.get("iterations") == config.iterations))
        same_machine = all(result.machine.get(key) == here.get(key) for key in ("cpu", "usable_cores", "versions"))
        rows = _rows_by_artifact(result, config)
        if same_settings and same_machine and all(os.path.realpath(p) in rows for p in artifacts.values()):
            return result, path
    return None
