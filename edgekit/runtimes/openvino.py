"""OpenVINO (optional: only when the openvino package is installed; `pip install edgekit[openvino]`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError
from . import Session


class OpenVinoSession(Session):
    runtime = "openvino"

    def __init__(self, compiled, artifact: Path, **kwargs):
        super().__init__(artifact, **kwargs)
        self._compiled = compiled
        self._request = compiled.create_infer_request()

    def run(self, batch: np.ndarray) -> np.ndarray:
        result = self._request.infer({0: np.ascontiguousarray(batch)})
        return np.asarray(result[self._compiled.output(0)], dtype=np.float32)


class OpenVino:
    """OpenVINO reading the .onnx directly (no conversion step), on its CPU plugin by default."""

    name = "openvino"
    description = "OpenVINO runtime (optional extra), reads .onnx"
    suffixes = (".onnx",)
    options = ("device", "performance_hint")

    def available(self) -> tuple[bool, str]:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return False, "openvino is not installed; pip install 'edgekit[openvino]'"
        return True, ""

    def load(self, artifact: Path, threads: int | None, options: dict) -> Session:
        import openvino as ov

        from ..metadata import read_onnx_metadata
        from ..safety import check_onnx_file

        device = str(options.get("device", "CPU"))
        config = {"PERFORMANCE_HINT": str(options.get("performance_hint", "LATENCY"))}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        check_onnx_file(artifact)
        core = ov.Core()
        try:
            compiled = core.compile_model(core.read_model(str(artifact)), device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with multi-line messages
            raise ModelError(f"{artifact} cannot be compiled by OpenVINO ({str(exc).strip().splitlines()[0][:200]})") from exc
        metadata = read_onnx_metadata(artifact)
        partial_shape = compiled.input(0).get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in partial_shape]
        element = compiled.input(0).get_element_type().get_type_name()
        input_kind = "uint8-nhwc" if element == "u8" else metadata.input_kind
        info = {"library": f"openvino {ov.__version__}", "device": device, "threads": threads if threads is not None else "default",
                **{k.lower(): v for k, v in config.items()}}
        return OpenVinoSession(
            compiled, artifact, input_kind=input_kind, input_shape=tuple(dims[1:]), fixed_batch=dims[0],
            labels=metadata.labels, preprocessing=metadata.preprocessing, info=info,
        )
