"""Open an ONNX file on ONNX Runtime with explicit settings: threads, spinning, graph optimization, session config
entries (the int8 precision option the host chose for this CPU), execution provider. The host's ``ort-cpu`` and
``ort-cuda`` runtimes check the file and its metadata first, then call this; the device runner calls it on files the
host checked and whose SHA-256 it verified."""

from __future__ import annotations

from typing import Any

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
SPINNING_KEY = "session.intra_op.allow_spinning"


def session_options(threads: int | None = None, settings: dict[str, Any] | None = None):
    """``onnxruntime.SessionOptions`` for ``threads`` intra-op threads (None: ORT's default, the physical cores) and
    ``settings``: graph_optimization_level, inter_op_threads, allow_spinning, session_config (a dict of entries)."""
    import onnxruntime as ort

    settings = settings or {}
    level = str(settings.get("graph_optimization_level", "all"))
    if level not in GRAPH_OPTIMIZATION_LEVELS:
        raise ValueError(f"graph optimization level {level!r} is not one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: provider-assignment warnings are noise in a report
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    if settings.get("inter_op_threads") is not None:
        options.inter_op_num_threads = int(settings["inter_op_threads"])
    if settings.get("allow_spinning") is not None:
        # Idle intra-op threads spin for a while after each run; interleaved with other sessions on few cores that
        # spinning slows the next session, so it is a setting to measure, not a constant.
        options.add_session_config_entry(SPINNING_KEY, "1" if settings["allow_spinning"] else "0")
    for key, value in (settings.get("session_config") or {}).items():
        options.add_session_config_entry(str(key), str(value))
    return options


def open_session(
    path: str,
    threads: int | None = None,
    settings: dict[str, Any] | None = None,
    providers: list | None = None,
    profile: tuple[str, str] | None = None,
):
    """An ``onnxruntime.InferenceSession`` for ``path`` with ``settings`` (see ``session_options``); ``profile``:
    (trace file prefix, where to write the graph ORT runs) to turn ORT's profiler on."""
    import onnxruntime as ort

    options = session_options(threads, settings)
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix, options.optimized_model_filepath = profile
    return ort.InferenceSession(str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"])


def version() -> str:
    import onnxruntime as ort

    return ort.__version__
