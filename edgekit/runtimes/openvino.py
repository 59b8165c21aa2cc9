"""OpenVINO (optional: only when the openvino package is installed; `pip install 'edgekit[openvino]'`).

Loads an OpenVINO IR (.xml + .bin, written by `edgekit export --format openvino`) or reads an .onnx directly.
Inference precision is float32 unless asked otherwise: on CPUs with AMX (or avx512_bf16) OpenVINO's default is
bfloat16, which moved a ResNet-18's logits by 6e-3 of their spread here, so an fp32 model would no longer
compute what parity checked. ``inference_precision="bf16"`` (or "f16") opts in, and is recorded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EdgekitError, ModelError
from . import Session

INFERENCE_PRECISIONS = ("f32", "bf16", "f16")


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
    """OpenVINO on its CPU plugin by default: an IR (.xml + .bin), or an .onnx read directly."""

    name = "openvino"
    description = "OpenVINO runtime (optional extra), reads .xml IR and .onnx"
    suffixes = (".xml", ".onnx")
    options = ("device", "performance_hint", "inference_precision")

    def available(self) -> tuple[bool, str]:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return False, "openvino is not installed; pip install 'edgekit[openvino]'"
        return True, ""

    def load(self, artifact: Path, threads: int | None, options: dict) -> Session:
        import openvino as ov

        device = str(options.get("device", "CPU"))
        precision = str(options.get("inference_precision", "f32"))
        if precision not in INFERENCE_PRECISIONS:
            raise EdgekitError(f"inference precision {precision!r} is not one of {', '.join(INFERENCE_PRECISIONS)}")
        config: dict = {"PERFORMANCE_HINT": str(options.get("performance_hint", "LATENCY")), "INFERENCE_PRECISION_HINT": precision}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        model, metadata = _read(artifact)
        try:
            compiled = ov.Core().compile_model(model, device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with multi-line messages
            from ..export.openvino import _ov_message

            raise ModelError(f"{artifact} cannot be compiled by OpenVINO on {device} ({_ov_message(exc)})") from exc
        if len(compiled.inputs) != 1:
            raise ModelError(f"{artifact} has {len(compiled.inputs)} inputs; edgekit runs image classifiers with one input")
        partial_shape = compiled.input(0).get_partial_shape()
        if partial_shape.rank.is_dynamic or partial_shape.rank.get_length() != 4:
            raise ModelError(f"{artifact} input has shape {partial_shape}; expected a 4-d image batch")
        dims = [d.get_length() if d.is_static else None for d in partial_shape]
        element = compiled.input(0).get_element_type().get_type_name()
        input_kind = "uint8-nhwc" if element == "u8" else metadata.input_kind
        info = {"library": f"openvino {ov.__version__}", "device": device, "threads": threads if threads is not None else "default",
                "format": "IR" if artifact.suffix == ".xml" else "ONNX (read directly)",
                **{k.lower(): v for k, v in config.items()}}
        return OpenVinoSession(
            compiled, artifact, input_kind=input_kind, input_shape=tuple(dims[1:]), fixed_batch=dims[0],
            labels=metadata.labels, preprocessing=metadata.preprocessing, info=info,
        )


def _read(artifact: Path):
    """(openvino.Model, ModelMetadata); an IR's metadata is in its rt_info, an ONNX file's in metadata_props."""
    if artifact.suffix == ".xml":
        from ..export.openvino import read_ir

        return read_ir(artifact)  # digest-checked, metadata validated; a bad file is a one-line ModelError
    import openvino as ov

    from ..metadata import read_onnx_metadata

    metadata = read_onnx_metadata(artifact)  # also refuses corrupt files and external data outside the folder
    try:
        return ov.Core().read_model(str(artifact)), metadata
    except Exception as exc:
        from ..export.openvino import _ov_message

        raise ModelError(f"{artifact} cannot be read by OpenVINO ({_ov_message(exc)}); re-export it") from exc
