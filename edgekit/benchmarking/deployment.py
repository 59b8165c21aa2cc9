"""Fair settings and deployment settings: how bench interleaves sessions, and how an app would run one.

Interleaving needs ONNX Runtime's idle-thread spinning off (one session's spinning threads steal the next one's
cores), but an app that runs one model keeps spinning on, and that is 2-25% faster on small models. So each ORT
row is timed twice: interleaved with spinning off (fair, for ratios) and alone with the deployment settings.
"""

from __future__ import annotations

_NOT_SETTINGS = ("library", "providers", "input_type", "mode")  # facts about the session, not choices an app makes


def deployment_options(runtime, fair: dict, user: dict) -> dict | None:
    """The options an app would load this runtime with, where they differ from the fair ones; else None.

    ORT: spinning on (ORT's own default) unless the user chose, with the same threads and other options.
    """
    if "allow_spinning" in runtime.options:
        wanted = user.get("allow_spinning", True)
        if fair.get("allow_spinning", True) != wanted:
            return {**fair, "allow_spinning": wanted}
    return None


def settings_of(info: dict) -> dict:
    """The choices a session was made with (threads, spinning, hints, session config), from its ``info``."""
    return {key: value for key, value in info.items() if key not in _NOT_SETTINGS}


def app_settings(runtime: str, info: dict) -> str:
    """The settings as the app must apply them, e.g. "intra_op_num_threads=2, allow_spinning=1"."""
    if runtime.startswith("ort"):
        threads = info.get("intra_op_threads")
        parts = [f"intra_op_num_threads={threads if isinstance(threads, int) else '0 (one per physical core)'}"]
        spinning = info.get("allow_spinning", "default")
        parts.append(f"allow_spinning={0 if spinning is False else 1}")  # ORT's default is on
        if info.get("graph_optimization_level") not in (None, "all"):
            parts.append(f"graph_optimization_level={info['graph_optimization_level']}")
        if isinstance(info.get("inter_op_threads"), int):
            parts.append(f"inter_op_num_threads={info['inter_op_threads']}")
        parts += [f"{key}={value}" for key, value in sorted((info.get("session_config") or {}).items())]
        return ", ".join(parts)
    if runtime.startswith("torch"):
        return f"torch.set_num_threads({info.get('threads')}), device={info.get('device', 'cpu')}"
    if runtime == "openvino":
        parts = [f"PERFORMANCE_HINT={info.get('performance_hint', 'LATENCY')}"]
        if info.get("inference_num_threads") is not None:
            parts.append(f"INFERENCE_NUM_THREADS={info['inference_num_threads']}")
        # one synchronous request per call is what bench times; THROUGHPUT only pays with several requests in flight
        return ", ".join(parts) + " (one synchronous infer request)"
    return ", ".join(f"{key}={value}" for key, value in settings_of(info).items())
