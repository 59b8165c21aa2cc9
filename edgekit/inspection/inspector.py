"""``inspect()``: one artifact's per-layer numerics and per-op profile, whichever format and runtime it is."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from ..errors import EdgekitError
from ..formats import format_of
from ..variants import Variant
from . import profile as profiling
from .metrics import default_threshold, first_below
from .results import InspectResult, Numerics, Profile
from .sources import MAX_IMAGES, Images, calibration_batches, float_graphs, resolve_artifact, run_images

RUNTIMES = {"onnx": ("ort-cpu", "openvino"), "openvino": ("openvino",), "executorch": ("executorch",)}


def inspect(
    run,
    artifact: str | os.PathLike,
    data: str | os.PathLike | None = None,
    *,
    runtime: str = "auto",
    threshold_db: float | None = None,
    max_images: int = MAX_IMAGES,
    numerics: bool = True,
    profile: bool = True,
    threads: int | None = None,
    warmup: int = profiling.WARMUP,
    runs: int = profiling.RUNS,
    share_threshold: float = profiling.SHARE_THRESHOLD,
    search_ranking: bool = True,
    target=None,
    target_options=None,
) -> InspectResult:
    """Where ``artifact`` (a file, or a variant name of ``run``) loses accuracy and spends its time.

    Numerics: every layer that maps back to a PyTorch module is compared with ``run``'s float32 model on real images
    (``data``, else the run's validation images), SQNR/cosine/max abs diff, accumulated and (int8) own; the first
    layer under ``threshold_db`` (default per precision, ``metrics.THRESHOLDS_DB``) and the worst five. Profile: the
    runtime's own profiler after ``warmup`` runs, ``runs`` profiled runs at batch 1, per op type and node, with
    flags (``profile`` module). ``search_ranking``: for int8 also the accuracy search's own score per layer and
    the layers it would return to float first (one run per layer; False skips it). ``target``: take the profile
    there (a --target text: ssh://... or an ssh_config alias; ``target_options`` its TargetOptions) by edgekit's
    device runner; the numerics stay on this machine."""
    from ..runs import Run

    if not numerics and not profile:
        raise EdgekitError("--no-numerics and --no-profile together leave nothing to inspect; drop one of them")
    run = run if isinstance(run, Run) else Run.load(run)
    path = resolve_artifact(run, artifact)
    variant = Variant.of_artifact(path)
    images = run_images(run, data, variant.input_kind, max_images)
    return inspect_model(
        run.build_model(),
        path,
        images,
        run=run,
        runtime=runtime,
        threshold_db=threshold_db,
        numerics=numerics,
        profile=profile,
        threads=threads,
        warmup=warmup,
        runs=runs,
        share_threshold=share_threshold,
        search_ranking=search_ranking,
        target=target,
        target_options=target_options,
    )


def inspect_model(
    model,
    artifact: Path,
    images: Images | None,
    *,
    run=None,
    float_onnx: list[Path] | None = None,
    runtime: str = "auto",
    threshold_db: float | None = None,
    numerics: bool = True,
    profile: bool = True,
    threads: int | None = None,
    warmup: int = profiling.WARMUP,
    runs: int = profiling.RUNS,
    share_threshold: float = profiling.SHARE_THRESHOLD,
    search_ranking: bool = True,
    target=None,
    target_options=None,
) -> InspectResult:
    """``inspect`` for a PyTorch module and an artifact exported from it, without a run directory (``float_onnx``:
    its float32 ONNX graphs, else exported here)."""
    started = time.perf_counter()
    artifact = Path(artifact)
    fmt = format_of(artifact).name
    variant = Variant.of_artifact(artifact)
    chosen = _runtime(fmt, runtime, artifact)
    if images is None or len(images) == 0:
        raise EdgekitError(f"no images to inspect {artifact} on; pass --data DIR with real images")
    if runs < 1 or warmup < 0:
        raise EdgekitError(f"--runs {runs} must be at least 1 and --warmup {warmup} at least 0")
    threshold = (
        (threshold_db, f"set by the caller ({threshold_db} dB)") if threshold_db is not None else default_threshold(variant.precision.value)
    )
    result = InspectResult(
        artifact=str(artifact), variant=variant.name, format=fmt, runtime=chosen, run=str(run.path) if run is not None else None
    )
    with tempfile.TemporaryDirectory(prefix="edgekit-inspect-") as workdir:
        graphs = float_onnx
        if fmt in ("onnx", "openvino") and numerics and graphs is None:
            size = int(images.reference.shape[-1])
            graphs = float_graphs(run, model, artifact, variant.input_kind, variant.precision.value, Path(workdir), size)
        if numerics:
            result.numerics = _numerics(fmt, model, run, artifact, images, graphs or [], threshold, search_ranking, result.notes)
            if threshold_db is None:
                _judge_by_the_graph(result)
        if profile:
            known = {layer.node: layer.layer for layer in result.numerics.layers} if result.numerics is not None else {}
            batch = variant.fixed_batch or 1
            sample = images.artifact[:batch]
            tie = _executorch_tie(model, images.reference[:1], artifact, variant) if chosen == "executorch" else None
            result.profile = _profile(chosen, artifact, sample, threads, warmup, runs, share_threshold, known, target, target_options, tie)
    result.seconds = round(time.perf_counter() - started, 2)
    return result


def _executorch_tie(model, example, artifact: Path, variant: Variant):
    """``tie`` for a .pte's profile: its XNNPACK layer events named after ``model``'s modules by order, each held to
    what the side file says it computes in (``profile_executorch.tie_layers``)."""
    from ..runtimes.executorch import read_side_file
    from .profile_executorch import module_order, tie_layers

    modules = module_order(model, example)
    quantization = read_side_file(artifact)[0].source.get("quantization") or {}
    float_layers = quantization.get("float_layers")
    int8 = variant.precision.value == "int8"
    return lambda measured: tie_layers(measured, modules, list(float_layers) if isinstance(float_layers, list) else None, int8)


def _judge_by_the_graph(result: InspectResult) -> None:
    """Apply int8's threshold when the graph quantizes layers that its recorded variant calls float (a file quantized
    by hand from an edgekit export keeps its parent's metadata, "fp32"), and say so."""
    numerics = result.numerics
    assert numerics is not None
    quantized = sum(1 for layer in numerics.layers if layer.precision.startswith("int8"))
    if not quantized or Variant.parse(result.variant).precision.value.startswith("int8"):
        return
    numerics.threshold_db, numerics.threshold_reason = default_threshold("int8")
    numerics.first_diverging = first_below(numerics.layers, numerics.threshold_db)
    result.notes.append(f"the file's metadata says {result.variant} but its graph quantizes {quantized} layers: judged as int8")


def _runtime(fmt: str, runtime: str, artifact: Path) -> str:
    allowed = RUNTIMES.get(fmt)
    if allowed is None:
        raise EdgekitError(f"{artifact} is a {fmt} file; edgekit inspect reads .onnx, .xml (OpenVINO) and .pte (ExecuTorch) files")
    if runtime == "auto":
        return allowed[0]
    if runtime not in allowed:
        raise EdgekitError(f"--runtime {runtime} cannot run {artifact}; for a {fmt} file use {' or '.join(allowed)}")
    return runtime


def _numerics(fmt, model, run, artifact, images, graphs, threshold, search_ranking, notes) -> Numerics | None:
    if fmt == "onnx":
        from .onnx_numerics import onnx_numerics
        from .ranking import add_search_errors, session_config_of

        config = session_config_of(artifact)
        found = onnx_numerics(model, artifact, graphs, images.artifact, images.reference, images.source, config, threshold)
        if search_ranking:
            add_search_errors(found, artifact, graphs, images, config)
        return found
    if fmt == "openvino":
        from .openvino_numerics import openvino_numerics

        found = openvino_numerics(model, artifact, graphs, images.artifact, images.reference, images.source, threshold)
        candidates = [layer.node for layer in found.layers if layer.precision == "int8"]
        if search_ranking and candidates:
            from .openvino_ranking import search_errors
            from .ranking import apply_scores, search_first

            apply_scores(found.layers, search_errors(artifact, graphs[0], images.artifact, candidates), by_node=True)
            found.search_first = search_first(found.layers)
        return found
    from .executorch_numerics import executorch_numerics
    from .executorch_pt2e import CALIBRATION_IMAGES

    calibration = None
    if Variant.of_artifact(artifact).precision.value == "int8":
        calibration, where = calibration_batches(run, images, CALIBRATION_IMAGES)
        notes.append(f"the pt2e eager fallback calibrated on {where}")
    return executorch_numerics(model, artifact, images, threshold, calibration, search_ranking)


def _profile(
    runtime, artifact, sample, threads, warmup, runs, share_threshold, known: dict[str, str], target=None, options=None, tie=None
) -> Profile:
    """The runtime's profile on ``sample`` (one batch), here or on ``target``; ``known`` names layers (node -> PyTorch
    module) where the numerics found them; ``tie`` names them in a profile whose events carry no names."""
    from ..targets import is_local
    from .profile_target import measure_on_target, profiler

    module = profiler(runtime)
    if not is_local(target):
        measured, names = measure_on_target(target, options, artifact, runtime, threads, warmup, runs)
        source = f"{module.SOURCE}, on the target"
    else:
        measured, names = module.measure(artifact, sample, threads, warmup, runs)
        source = module.SOURCE
    if tie is not None:
        tie(measured)
    return profiling.summarize(runtime, source, measured, len(sample), warmup, share_threshold, {**names, **known})
