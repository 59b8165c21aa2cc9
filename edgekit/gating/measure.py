"""The gate's measuring: find (or export) each variant's artifact, then parity on the gate's images, one
interleaved bench run for latency, and file sizes. Fresh reports on disk are reused.

Each step returns what it measured (``Found``); ``measure_variants`` merges them into one ``Measured``.
Nothing passed in is modified."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..auto import export_auto
from ..benchmarking import DEFAULT_ITERATIONS, DEFAULT_WARMUP, BenchResult, Measurement, machine_info
from ..benchmarking import bench as run_bench
from ..benchmarking.artifacts import artifact_bytes
from ..card import MeasuredOn, read_card
from ..errors import EdgekitError, TargetError
from ..exporting import export as run_export
from ..formats import ONNX, find_format
from ..hardware import isa_class, validated_here
from ..metadata import read_onnx_metadata
from ..parity_check import ParityChecker, ParityData, ParityResult, ParityThresholds, images_in, run_parity_images
from ..runs import Run
from ..targets import Target, is_local, parse_address, parse_target
from ..targets.info import TargetInfo, info_from_facts
from ..variants import AUTO, InputKind, Variant
from .config import GateConfig
from .results import VariantMeasure


@dataclass(frozen=True)
class Found:
    """What one step measured: VariantMeasure fields per variant, the reports it reused or wrote, the bench machine."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    reports: tuple[str, ...] = ()
    machine: dict | None = None


@dataclass(frozen=True)
class Measured:
    """Everything the gate measured on one target: one VariantMeasure per variant, the reports used or written
    (and exports made), the machine the bench ran on (None without a bench), and the target (None: this machine,
    no target named; ``measured_on`` for a remote one)."""

    measures: dict[str, VariantMeasure]
    reports: tuple[str, ...] = ()
    machine: dict | None = None
    target: str | None = None
    measured_on: MeasuredOn | None = None


@dataclass(frozen=True)
class Where:
    """A target the gate measures on: its name in checks (None: this machine, none named), the opened Target
    (None: this machine, measured in this process as before targets) and its facts."""

    label: str | None = None
    target: Target | None = None
    info: TargetInfo | None = None

    @property
    def emulated(self) -> bool:
        return bool(self.info is not None and self.info.emulated)


HERE = Where()


def measure_variants(config: GateConfig, need_anchor: bool = False, progress: bool = False) -> list[Measured]:
    """Measure what ``config``'s checks need (and, with ``need_anchor``, the baseline's latency anchor) on each of
    its targets, in order. Artifacts are found (or exported) once, here; every target measures the same files."""
    run_dir = config.resolve(config.run)
    run = Run.load(run_dir) if run_dir is not None else None
    data = _data_folder(config)
    artifacts, exported = locate_artifacts(config, run, config.measured_variants(need_anchor), progress)
    checker = _ParityOnce(run, data, config.max_images) if run is not None else None
    results = []
    for text in config.target_names:
        with opened_target(text, config) as where:
            results.append(_measure_on(where, config, run, data, artifacts, checker, need_anchor, progress))
    return [replace(results[0], reports=exported + results[0].reports), *results[1:]]


@contextmanager
def opened_target(text: str | None, config: GateConfig):
    """``text`` as a Where, its connection open (and closed after) and its facts read, once for all its checks."""
    if text is None or is_local(text):
        yield Where(label=parse_address(text).name if text is not None else None)
        return
    target = parse_target(text, config.target_options())
    try:
        yield Where(label=target.name, target=target, info=info_from_facts(target, target.facts()))
    except TargetError as exc:
        if target.name in str(exc):
            raise
        # with several targets, a message naming only host:port must still say which configured target failed
        raise TargetError(f"target {target.name}: {exc}") from exc
    finally:
        target.close()


def _measure_on(where: Where, config: GateConfig, run, data, artifacts, checker, need_anchor: bool, progress: bool) -> Measured:
    measures = {
        name: VariantMeasure(variant=name, target=where.label, artifact=str(path), size_bytes=artifact_bytes(path))
        for name, path in artifacts.items()
    }
    reports: list[str] = []
    machine = None
    if run is not None:
        parity = measure_parity(config, run, artifacts, data, where, checker)
        measures, reports = _merged(measures, parity), reports + list(parity.reports)
        _require_labels(config, run, data, measures)
    bench_accuracy = run is None and any(t.min_accuracy is not None for t in config.variants.values())
    # An emulated target's timings are not evidence: its latency checks are skipped, so nothing is timed there for them.
    timed = (need_anchor or config.needs_latency) and not where.emulated
    if timed or bench_accuracy:
        latency = measure_latency(config, run, artifacts, data if bench_accuracy else None, progress, where)
        measures, reports, machine = _merged(measures, latency), reports + list(latency.reports), latency.machine
    measured_on = where.info.measured_on() if where.info is not None else None
    return Measured(measures, tuple(reports), machine, where.label, measured_on)


def _merged(measures: dict[str, VariantMeasure], found: Found) -> dict[str, VariantMeasure]:
    return {name: measure.model_copy(update=found.values.get(name, {})) for name, measure in measures.items()}


def _data_folder(config: GateConfig) -> Path | None:
    data = config.resolve(config.data)
    if data is not None and not data.is_dir():
        raise EdgekitError(f"data: {data} is not a directory; give a labelled image folder <class>/<image>")
    return data


def _require_labels(config: GateConfig, run: Run, data: Path | None, measures: dict[str, VariantMeasure]) -> None:
    needing = [name for name, t in config.variants.items() if t.needs_accuracy]
    if any(measures[name].accuracy is None for name in needing):
        where = f"data: {data}" if data is not None else "the run's validation images"
        raise EdgekitError(
            f"{where} carry no labels the run knows (class folders must be among {run.card.class_names[:5]}...), "
            f"so variants.{needing[0]} accuracy thresholds cannot be checked; point data: at a <class>/<image> folder of the run's classes"
        )


# --- artifacts ------------------------------------------------------------------------------------


def artifact_path(exports_dir: Path, variant: str) -> Path | None:
    """Where `edgekit export` writes a variant; for "auto", the file the deployment card names (None without one)."""
    if variant == AUTO:
        card = read_card(exports_dir)
        return card.path_in(exports_dir) if card is not None else None
    return exports_dir / Variant.parse(variant).file_name


def deployed_setting(config: GateConfig, run: Run | None, variant: str) -> tuple[str, dict] | None:
    """(runtime, options) the card says the "auto" variant runs with; None for any other variant (the gate's runtime)."""
    if variant != AUTO or run is None or AUTO in config.artifacts:
        return None
    card = read_card(run.exports_dir)
    return (card.runtime, dict(card.options)) if card is not None else None


def _find(config: GateConfig, run: Run | None, variant: str) -> Path | None:
    if variant in config.artifacts:
        path = config.resolve(config.artifacts[variant])
        if path is None or not path.is_file():
            raise EdgekitError(f"artifacts.{variant}: {path} does not exist; fix the path or remove the key to use the run's exports")
        return path
    if run is None:
        return None
    path = artifact_path(run.exports_dir, variant)
    return path if path is not None and path.is_file() else None


def locate_artifacts(
    config: GateConfig, run: Run | None, names: list[str], progress: bool = False
) -> tuple[dict[str, Path], tuple[str, ...]]:
    """(variant -> artifact file, parity reports of the exports made): the config's artifacts, else the run's
    exports, exporting the missing ones when ``export_missing`` allows."""
    found = {name: _find(config, run, name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if not missing:
        return {name: path for name, path in found.items() if path is not None}, ()
    if run is None:
        raise EdgekitError(f"variant {missing[0]} has no artifact; add it under artifacts: in the config")
    written: list[str] = []
    if AUTO in missing:
        if not config.export_missing:
            raise EdgekitError(
                f"variant auto has no artifact in {run.exports_dir}; run `edgekit export {run.path} --quantize auto` "
                "or set export_missing: true"
            )
        # auto picks by speed on this machine, so it is timed like the gate's own latency checks
        chosen = export_auto(run, batch_size=config.batch_size, progress=progress)
        written += [v.path for v in chosen.export.variants]
        missing = [name for name in missing if name != AUTO and _find(config, run, name) is None]
    if missing:
        request = _export_request(run, missing)
        if not config.export_missing:
            raise EdgekitError(
                f"variant {missing[0]} has no artifact in {run.exports_dir}; run `{request.command}` or set export_missing: true"
            )
        result = run_export(
            run,
            formats=request.formats,
            quantize=request.quantize,
            parity_data=config.resolve(config.data),
            embed_preprocessing=request.embed_preprocessing,
            max_parity_images=config.max_images,
            progress=progress,
        )
        written += [v.path for v in result.variants]
    located = {name: _find(config, run, name) for name in names}
    still = [name for name, path in located.items() if path is None]
    if still:
        raise EdgekitError(f"export did not produce variant {still[0]} in {run.exports_dir}; run `edgekit export` and check its output")
    return {name: path for name, path in located.items() if path is not None}, tuple(written)


@dataclass(frozen=True)
class _ExportRequest:
    formats: tuple[str, ...]
    quantize: tuple[str, ...]
    embed_preprocessing: bool
    command: str  # the same as an `edgekit export` command line


def _export_request(run: Run, missing: list[str]) -> _ExportRequest:
    """The one export() call that writes every missing variant; an error for a variant the gate cannot export."""
    variants = [Variant.parse(name) for name in missing]
    for variant in variants:
        # The core formats only: an extra's format (minutes for ExecuTorch int8) is exported on purpose, not by a gate.
        if variant.format.extra is not None or variant.fixed_batch is not None:
            raise EdgekitError(f"variant {variant} cannot be exported by the gate; export it with `edgekit export` first")
    formats = tuple(dict.fromkeys(v.format.name for v in variants))
    quantize = tuple(dict.fromkeys(v.quantize_choice for v in variants if len(v.format.precisions) > 1)) or ("none",)
    embed = any(v.input_kind is InputKind.UINT8 for v in variants)
    command = f"edgekit export {run.path} --format {','.join(formats)} --quantize {','.join(quantize)}"
    command += " --embed-preprocessing" if embed else ""
    return _ExportRequest(formats, quantize, embed, command)


# --- parity ---------------------------------------------------------------------------------------


def measure_parity(
    config: GateConfig, run: Run, artifacts: dict[str, Path], data: Path | None, where: Where = HERE, checker: _ParityOnce | None = None
) -> Found:
    """Accuracy, agreement and logit differences of every configured variant vs the run's PyTorch model, from
    parity reports where they are fresh and were measured on ``where``, else measured there on the gate's images
    (``checker``: the references, shared by every target)."""
    checker = checker or _ParityOnce(run, data, config.max_images)
    values, reports = {}, []
    for name in config.variants:
        fresh = _fresh_parity(run, artifacts[name], name, data, config.max_images, where) if config.reuse_reports else None
        if fresh is not None:
            report, path = fresh
            reports.append(str(path))
        else:
            report = checker.check(artifacts[name], name, deployed_setting(config, run, name), where.target)
        values[name] = _parity_values(report)
    return Found(values, tuple(reports))


def _parity_values(report: ParityResult) -> dict[str, Any]:
    metrics = report.metrics
    return {
        "n_images": metrics.n_images,
        "accuracy": metrics.variant_accuracy,
        "reference_accuracy": metrics.reference_accuracy,
        "accuracy_drop": metrics.accuracy_drop,
        "agreement": metrics.top1_agreement,
        "max_abs_diff": metrics.max_abs_diff,
        "max_rel_diff": metrics.max_rel_diff,
    }


def _fresh_parity(
    run: Run, artifact: Path, variant: str, data: Path | None, max_images: int, where: Where = HERE
) -> tuple[ParityResult, Path] | None:
    """The parity report export wrote for this artifact, if it is newer than both the artifact and the
    model, was measured where the gate measures (``where``) and on the same labelled images; otherwise None."""
    if variant == AUTO:
        return None  # the card's file runs with the card's settings, which may change its numerics: measured here
    if where.target is None and find_format(artifact) is ONNX and not _validated_here(artifact):
        return None  # int8 proven on another CPU class: measure it again here
    path = run.exports_dir / Variant.parse(variant).parity_file_name
    if not path.is_file() or path.stat().st_mtime < max(artifact.stat().st_mtime, run.model_path.stat().st_mtime):
        return None
    try:
        report = ParityResult.from_json(path)
    except EdgekitError:
        return None  # an unreadable old report is recomputed, not trusted
    if os.path.realpath(report.artifact) != os.path.realpath(artifact) or report.variant != variant:
        return None
    if not measured_where(report.target, where):
        return None  # figures of another device (or of this machine, for a target gate) are not this one's
    source = report.metrics.data_source
    if source.is_random or report.metrics.variant_accuracy is None:
        return None  # random inputs say nothing about accuracy
    if data is None:
        return (report, path) if report.metrics.n_images <= max_images else None
    if os.path.realpath(str(source.path)) != os.path.realpath(data):
        return None
    expected = len(images_in(data, run.card.class_names, max_images).paths)  # a listing, no decoding
    # made on another sample size: the gate's numbers would not be comparable
    return (report, path) if report.metrics.n_images == expected else None


def measured_where(measured_on: MeasuredOn | None, where: Where) -> bool:
    """Whether a report measured on ``measured_on`` (None: this machine) holds for ``where``: this machine's
    reports for this machine; a target's for the same target with the same ISA class, CPU and runtime versions."""
    if where.target is None or where.info is None:
        return measured_on is None or measured_on.transport == "local"
    if measured_on is None or measured_on.target != where.label:
        return False
    now = where.info.measured_on()
    same_runtimes = all(now.runtimes.get(module) == version for module, version in measured_on.runtimes.items())
    return measured_on.isa == now.isa and measured_on.cpu == now.cpu and same_runtimes


def _validated_here(artifact: Path) -> bool:
    """Whether the artifact's int8 was validated on this machine's ISA class (else the gate re-measures it)."""
    return validated_here(read_onnx_metadata(artifact).validated_isa, isa_class())


class _ParityOnce:
    """One reference model and one set of images for every variant: the PyTorch logits are computed once."""

    def __init__(self, run: Run, data: Path | None, max_images: int):
        self.run, self.data, self.max_images = run, data, max_images
        self._checker: ParityChecker | None = None

    def check(self, artifact: Path, variant: str, setting: tuple[str, dict] | None = None, target: Target | None = None) -> ParityResult:
        """Parity of ``artifact`` on its format's runtime, or on ``setting`` (runtime, options) where one is given;
        on ``target`` when one is (there the target's CPU decides the settings, as for `edgekit parity --target`)."""
        if self._checker is None:
            images = run_parity_images(self.run.card, self.data, self.max_images)
            self._checker = ParityChecker(self.run.build_model(), ParityData(self.run.card.preprocessing, images))
        if target is not None:
            return self._checker.check(artifact, variant, ParityThresholds(), target=target)
        session = None
        if setting is not None:
            from .. import runtimes

            session = runtimes.load(artifact, setting[0], **setting[1])
        # No thresholds: the gate judges the metrics itself against its own config.
        return self._checker.check(artifact, variant, ParityThresholds(), session=session)


# --- bench ----------------------------------------------------------------------------------------


def measure_latency(
    config: GateConfig, run: Run | None, artifacts: dict[str, Path], data: Path | None, progress: bool = False, where: Where = HERE
) -> Found:
    """One bench run on ``where`` with every variant interleaved (latency ratios are only ever taken inside it),
    or a fresh `edgekit bench` report that timed them all there; with ``data``, also bench's top-1 accuracy. A row
    bench timed under CPU contention keeps its flag and share, so its latency checks become "not measured"."""
    deployed = {name: s for name in artifacts if (s := deployed_setting(config, run, name)) is not None}
    runtime_of = {os.path.realpath(path): deployed[name][0] if name in deployed else config.runtime for name, path in artifacts.items()}
    # The card's runtime and the options that change what runs (its precision hint); spinning stays at the
    # interleaving default, since every row here takes turns with the others
    options = {k: v for _, opts in deployed.values() for k, v in opts.items() if k != "allow_spinning"}
    reusable = config.reuse_reports and data is None and not deployed
    fresh = _fresh_bench(run, artifacts, config, where) if reusable and run is not None else None
    if fresh is not None:
        result, path = fresh
        reports: tuple[str, ...] = (str(path),)
    else:
        result = run_bench(
            list(artifacts.values()),
            runtimes=tuple(dict.fromkeys([config.runtime, *(s[0] for s in deployed.values())])),
            options=options,
            batch_sizes=(config.batch_size,),
            threads=config.threads,
            data=data,
            max_images=config.max_images if data is not None else None,
            warmup=config.warmup if config.warmup is not None else DEFAULT_WARMUP,
            iterations=config.iterations if config.iterations is not None else DEFAULT_ITERATIONS,
            progress=progress,
            save=False,
            target=where.target,
        )  # the gate writes only exports and the reports its caller asks for
        reports = ()
    rows = _rows_by_artifact(result, config, runtime_of)
    if not rows and result.skipped:
        why = "; ".join(f"{name}: {reason}" for name, reason in result.skipped.items())
        raise EdgekitError(f"runtime {config.runtime} measured nothing ({why}); choose another runtime: in the gate config")
    values = {}
    for name, path in artifacts.items():
        row = rows.get(os.path.realpath(path))
        if row is not None:  # else the check that needs it reports "not measured" and fails
            values[name] = _bench_values(row)
    return Found(values, reports, dict(result.machine))  # bench's MachineInfo reads like the dict the report keeps


def _bench_values(row: Measurement) -> dict[str, Any]:
    values = {
        "runtime": row.runtime,
        "batch_size": row.batch_size,
        "p50_ms": row.p50_ms,
        "p50_ci_ms": tuple(row.p50_ci_ms),
        "contended": row.contended,
        "contention_share": row.contention_share,
    }
    if row.top1 is not None:  # bench measures accuracy only when the gate has no run (so no parity) and asks for it
        values.update(accuracy=row.top1, n_images=row.accuracy_images)
    return values


def _rows_by_artifact(result: BenchResult, config: GateConfig, runtime_of: dict[str, str] | None = None) -> dict[str, Measurement]:
    """Each artifact's row on the runtime it is gated on (the card's for "auto", the config's for the others)."""
    runtime_of = runtime_of or {}
    return {
        os.path.realpath(m.artifact): m
        for m in result.measurements
        if m.runtime == runtime_of.get(os.path.realpath(m.artifact), config.runtime) and m.batch_size == config.batch_size
    }


def _fresh_bench(run: Run, artifacts: dict[str, Path], config: GateConfig, where: Where = HERE) -> tuple[BenchResult, Path] | None:
    """The newest `edgekit bench` report in <run>/bench that timed every needed artifact in one run, with the
    gate's runtime, batch size and threads, on this machine (or on ``where``'s target), after every artifact was
    last written, on a quiet machine (a report with a contended row is timed again rather than reused)."""
    if not run.bench_dir.is_dir():
        return None
    newest_artifact = max(path.stat().st_mtime for path in artifacts.values())
    here = machine_info() if where.target is None else None
    for path in sorted(run.bench_dir.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        if path.stat().st_mtime < newest_artifact:
            break  # older reports can only be staler
        try:
            result = BenchResult.from_json(path)
        except EdgekitError:
            continue
        if _applies(result, artifacts, config, here, where):
            return result, path
    return None


def _applies(result: BenchResult, artifacts: dict[str, Path], config: GateConfig, here: Any, where: Where = HERE) -> bool:
    """Whether ``result`` timed every artifact with the gate's settings on this machine (``here``: machine_info()),
    or on ``where``'s target when it names one."""
    settings = result.settings
    same_settings = (
        settings.get("threads") == config.threads
        and not settings.get("end_to_end")
        and (config.iterations is None or settings.get("iterations") == config.iterations)
    )
    if where.target is None:
        same_machine = measured_where(result.target, where) and all(
            result.machine.get(key) == here.get(key) for key in ("cpu", "usable_cores", "versions")
        )
    else:
        same_machine = measured_where(result.target, where)
    rows = _rows_by_artifact(result, config)
    needed = [rows.get(os.path.realpath(path)) for path in artifacts.values()]
    return same_settings and same_machine and all(row is not None and not row.contended for row in needed)
