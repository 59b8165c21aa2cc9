"""OpenVINO (optional: only when the openvino package is installed; `pip install 'edgekit[openvino]'`).

Loads an OpenVINO IR (.xml + .bin, written by `edgekit export --format openvino`) or reads an .onnx directly.
Inference precision is float32 unless asked otherwise: on CPUs with AMX (or avx512_bf16) OpenVINO's default is
bfloat16, which moved a ResNet-18's logits by 6e-3 of their spread here, so an fp32 model would no longer
compute what parity checked. ``inference_precision="bf16"`` (or "f16") opts in, and is recorded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..device.openvino import batch_runner, compile_config
from ..errors import EdgekitError, ModelError
from ..files import sha256_file
from ..metadata import InputKind, ModelMetadata
from . import Session
from .tuning import AppCode, Example, Machine, Setting

# Where `edgekit export --format openvino` keeps its metadata in an IR: rt_info section "edgekit", one string per
# ONNX metadata key, plus the SHA-256 of the .bin (see edgekit.exporting.openvino).
RT_SECTION = "edgekit"
DIGEST_KEY = "bin_sha256"
# The IR's own metadata limit: a crafted .xml with a huge rt_info string is refused before parsing JSON.
MAX_RT_VALUE_CHARS = 1_000_000
# rt_info is written at the end of the .xml; the digest is looked for in its last bytes only.
MAX_RT_TAIL_BYTES = 4 * MAX_RT_VALUE_CHARS
_DIGEST_IN_XML = re.compile(rb"<edgekit>.*?<%s value=\"([0-9a-f]{64})\"" % DIGEST_KEY.encode(), re.DOTALL)


class OpenVinoSession(Session):
    runtime = "openvino"

    def __init__(self, compiled, artifact: Path, profiled: bool = False, **kwargs):
        super().__init__(artifact, **kwargs)
        self.compiled = compiled  # its get_runtime_model() is the executable graph the counters name
        self.request = compiled.create_infer_request()  # loaded with perf_count=True: get_profiling_info() after a run
        # the batch split over THROUGHPUT's streams where it asks for that; a profiled session runs on request alone
        self._run = batch_runner(compiled, self.request if profiled else None)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch)


class OpenVino:
    """OpenVINO on its CPU plugin by default: an IR (.xml + .bin), or an .onnx read directly."""

    name = "openvino"
    description = "OpenVINO runtime (optional extra), reads .xml IR and .onnx"
    suffixes = (".xml", ".onnx")
    options = ("device", "performance_hint", "inference_precision", "num_streams", "perf_count")

    def available(self) -> tuple[bool, str]:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return False, "openvino is not installed; pip install 'edgekit[openvino]'"
        return True, ""

    def load(self, artifact: Path, threads: int | None, options: dict) -> Session:
        import openvino as ov

        from ..device.openvino import compile_model

        device = str(options.get("device", "CPU"))
        try:
            config = compile_config(threads, options)
        except ValueError as exc:
            raise EdgekitError(str(exc)) from None
        model, metadata = _read(artifact)
        try:
            compiled = compile_model(model, threads, options, device)  # perf_count: the counters, same config otherwise
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with multi-line messages
            raise ModelError(f"{artifact} cannot be compiled by OpenVINO on {device} ({ov_message(exc)})") from exc
        if len(compiled.inputs) != 1:
            raise ModelError(f"{artifact} has {len(compiled.inputs)} inputs; edgekit runs image classifiers with one input")
        partial_shape = compiled.input(0).get_partial_shape()
        if partial_shape.rank.is_dynamic or partial_shape.rank.get_length() != 4:
            raise ModelError(f"{artifact} input has shape {partial_shape}; expected a 4-d image batch")
        dims = [d.get_length() if d.is_static else None for d in partial_shape]
        element = compiled.input(0).get_element_type().get_type_name()
        input_kind = InputKind.UINT8 if element == "u8" else metadata.input_kind
        info = {
            "library": f"openvino {ov.__version__}",
            "device": device,
            "threads": threads if threads is not None else "default",
            "format": "IR" if artifact.suffix == ".xml" else "ONNX (read directly)",
            **{k.lower(): v for k, v in config.items()},
        }
        return OpenVinoSession(
            compiled,
            artifact,
            profiled=bool(options.get("perf_count")),
            input_kind=input_kind,
            input_shape=tuple(dims[1:]),
            fixed_batch=dims[0],
            labels=metadata.labels,
            preprocessing=metadata.preprocessing,
            info=info,
        )

    # ---- tuning (see runtimes/tuning.py) ------------------------------------------------------------------

    def settings_to_try(self, machine: Machine, batch_size: int) -> list[Setting]:
        """Threads x precision: f32 (what export validated), and bf16 where the CPU has it (OpenVINO's own default
        there, validated as a candidate of its own); the THROUGHPUT hint where a batch can be split into streams."""
        precisions = ["f32", "bf16"] if machine.has_bf16 else ["f32"]
        hints = ["LATENCY", "THROUGHPUT"] if batch_size > 1 else ["LATENCY"]
        settings = []
        for threads in machine.thread_counts:
            for precision in precisions:
                for hint in hints:
                    label = f"{threads} thread{'s' if threads > 1 else ''}, {precision}" + (f", {hint}" if batch_size > 1 else "")
                    options = {"inference_precision": precision, "performance_hint": hint}
                    settings.append(Setting(threads, options, label, changes_numerics=precision != "f32"))
        return settings

    def app_code(self, file_name: str, setting: Setting, example: Example, session_config: dict[str, str] | None = None) -> AppCode:
        config = compile_config(setting.threads, setting.options)
        head = ["import numpy as np", "import openvino as ov", "", "core = ov.Core()", _precision_comment(setting)]
        head.append(f"compiled = core.compile_model({file_name!r}, 'CPU', {config!r})")
        batch = f"batch = np.zeros({example.shape!r}, np.{example.dtype})  # {example.comment}"
        hint = {"LATENCY": "LATENCY", "THROUGHPUT": "THROUGHPUT"}.get(config["PERFORMANCE_HINT"], "LATENCY")
        if hint == "THROUGHPUT":  # as it was timed (device.openvino.batch_runner): one slice per stream, in flight at once
            body = [
                "# THROUGHPUT runs several streams; one request keeps only one busy, so split the batch over as many as it asks",
                "requests = [compiled.create_infer_request() for _ in range(compiled.get_property('OPTIMAL_NUMBER_OF_INFER_REQUESTS'))]",
                batch,
                "parts = np.array_split(batch, min(len(requests), len(batch)))",
                "for request, part in zip(requests, parts):",
                "    request.start_async({0: part})",
                "for request in requests[: len(parts)]:",
                "    request.wait()",
                "logits = np.concatenate([request.get_output_tensor(0).data for request in requests[: len(parts)]])",
            ]
        else:
            body = ["request = compiled.create_infer_request()", batch, "logits = request.infer({0: batch})[compiled.output(0)]"]
        python = "\n".join(head + body)
        cpp = "\n".join(
            [
                "ov::Core core;",
                f'auto compiled = core.compile_model("{file_name}", "CPU",',
                f"    ov::hint::performance_mode(ov::hint::PerformanceMode::{hint}),",
                f"    ov::hint::inference_precision(ov::element::{config['INFERENCE_PRECISION_HINT']}),",
                f"    ov::inference_num_threads({config.get('INFERENCE_NUM_THREADS', 0)}));",
                "auto request = compiled.create_infer_request();",
            ]
            + (
                ["// THROUGHPUT: keep ov::optimal_number_of_infer_requests requests in flight (start_async, wait), one slice each"]
                if hint == "THROUGHPUT"
                else []
            )
        )
        return AppCode(python, cpp, ", ".join(f"{k}={v}" for k, v in config.items()))


def _read(artifact: Path):
    """(openvino.Model, ModelMetadata); an IR's metadata is in its rt_info, an ONNX file's in metadata_props."""
    if artifact.suffix == ".xml":
        return read_ir(artifact)  # digest-checked, metadata validated; a bad file is a one-line ModelError
    import openvino as ov

    from ..metadata import read_onnx_metadata

    metadata = read_onnx_metadata(artifact)  # also refuses corrupt files and external data outside the folder
    try:
        return ov.Core().read_model(str(artifact)), metadata
    except Exception as exc:
        raise ModelError(f"{artifact} cannot be read by OpenVINO ({ov_message(exc)}); re-export it") from exc


def bin_path(xml_path: str | os.PathLike) -> Path:
    """The weights file OpenVINO reads beside an .xml (same stem, .bin)."""
    return Path(xml_path).with_suffix(".bin")


def read_ir(xml_path: str | os.PathLike):
    """(openvino.Model, ModelMetadata) for an IR written by :func:`save_ir` or by anyone else.

    Refused with a one-line ModelError: a missing .bin, a .bin whose SHA-256 differs from the one recorded,
    an .xml that is not an IR or that OpenVINO cannot parse, malformed edgekit metadata (validated like ONNX
    metadata).
    """
    import openvino as ov

    xml_path = Path(xml_path)
    weights = bin_path(xml_path)
    if not xml_path.is_file():
        raise ModelError(f"{xml_path} does not exist")
    if not weights.is_file():
        raise ModelError(f"{xml_path} has no weights file {weights.name} beside it; copy the .bin with the .xml or re-export")
    with open(xml_path, "rb") as handle:
        head = handle.read(4096)
    if b"<net" not in head:
        # OpenVINO would try every frontend on it (TensorFlow's logs to stderr) before giving up.
        raise ModelError(f"{xml_path} is not an OpenVINO IR (no <net> element at its start); re-export it")
    # The digest is checked before OpenVINO reads the weights, so a swapped .bin of the same size is refused too.
    recorded = _DIGEST_IN_XML.search(xml_path.read_bytes()[-MAX_RT_TAIL_BYTES:])
    if recorded is not None and recorded.group(1).decode() != ir_digest(weights):
        raise ModelError(
            f"{weights} does not match {xml_path.name} (its SHA-256 differs from the one recorded at export: "
            "truncated, corrupted or from another export); re-export it"
        )
    try:
        model = ov.Core().read_model(str(xml_path), str(weights))
    except Exception as exc:
        raise ModelError(f"{xml_path} is not a readable OpenVINO IR ({ov_message(exc)}); re-export it") from exc
    props = _rt_props(model, xml_path)
    props.pop(DIGEST_KEY, None)
    return model, ModelMetadata.from_props(props, str(xml_path))


def _rt_props(model, where: Path) -> dict[str, str]:
    if not model.has_rt_info([RT_SECTION]):
        return {}
    props: dict[str, str] = {}
    try:
        section = model.get_rt_info([RT_SECTION])
        keys = list(section.astype(dict).keys())
    except Exception as exc:  # a section that is a plain value, not a map
        raise ModelError(f"{where} has malformed edgekit rt_info ({ov_message(exc)}); re-export it") from exc
    for key in keys:
        value = model.get_rt_info([RT_SECTION, str(key)]).astype(str)
        if len(value) > MAX_RT_VALUE_CHARS:
            raise ModelError(f"{where} rt_info edgekit/{key} is {len(value)} characters long; refusing it. Re-export it")
        props[str(key)] = value
    return props


def ir_digest(path: Path) -> str:
    """The .bin's sha256, recorded in the IR at export and checked before OpenVINO reads the weights."""
    return sha256_file(path)


def ov_message(exc: Exception) -> str:
    """The informative line of an OpenVINO exception (its first lines are C++ source locations)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return (useful or lines or [type(exc).__name__])[-1][:300]


def _precision_comment(setting: Setting) -> str:
    """Why the snippet sets the precision: OpenVINO picks bf16 by itself on CPUs that have it."""
    if setting.changes_numerics:
        return "# bf16 on purpose: its own parity held the budget (OpenVINO's default on CPUs with bf16, set explicitly)"
    return "# set the precision explicitly: OpenVINO's default on CPUs with bf16 is bf16, not what was validated"
