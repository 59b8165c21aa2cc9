"""LiteRT (optional: `pip install 'edgekit[litert]'`): a .tflite flatbuffer run by ai-edge-litert's Interpreter with
its default XNNPACK delegate. Loading, resizing and the embedded metadata's layout: ``edgekit.device.litert``.

A file edgekit wrote carries its labels, preprocessing and a digest of itself in its metadata; both are checked here
before the interpreter sees the file (a flipped weight byte passes the flatbuffer verifier). A .tflite from another
hand without that metadata runs too, without labels or preprocessing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..device.litert import METADATA_VERSION, LiteRtModel, file_digest, metadata_text, version
from ..errors import ModelError, first_line
from ..metadata import ModelMetadata
from . import Session
from .tuning import AppCode, Example, Machine, Setting, this_machine

INSTALL_HINT = "pip install 'edgekit[litert]'"
_KEYS = {"edgekit_tflite", "sha256", "metadata"}
_HEX64 = re.compile(r"[0-9a-f]{64}")


class LiteRtSession(Session):
    runtime = "litert"

    def __init__(self, model: LiteRtModel, artifact: Path, **kwargs):
        super().__init__(artifact, **kwargs)
        self._model = model

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._model.run(batch)


class LiteRt:
    """A .tflite written by `edgekit export --format litert` (or any single-input classifier)."""

    name = "litert"
    description = "LiteRT (TensorFlow Lite) Interpreter with XNNPACK (optional extra), reads .tflite"
    suffixes = (".tflite",)
    options = ()

    def available(self) -> tuple[bool, str]:
        try:
            from ai_edge_litert.interpreter import Interpreter  # noqa: F401
        except ImportError:
            return False, f"ai-edge-litert is not installed; {INSTALL_HINT}"
        return True, ""

    def load(self, artifact: Path, threads: int | None, options: dict) -> Session:
        metadata, digest_checked = read_tflite_metadata(artifact)
        used = threads if threads is not None else max(1, this_machine().physical_cores)
        try:
            model = LiteRtModel(str(artifact), used)
        except Exception as exc:  # the interpreter raises ValueError / RuntimeError with multi-line text
            raise ModelError(f"{artifact} cannot be loaded by LiteRT ({first_line(exc, 200)}); re-export it") from exc
        if len(model.input_shape) != 4:
            raise ModelError(f"{artifact} input has shape {list(model.input_shape)}; expected a 4-d image batch")
        info = {
            "library": f"ai-edge-litert {version()}",
            "threads": used,
            "delegate": "XNNPACK (the interpreter's default)",
            "batch": f"exported at {model.input_shape[0]}, resized to each batch size",
            "input_type": str(model.input_dtype),
            "digest": "checked" if digest_checked else "none recorded (not written by edgekit)",
        }
        return LiteRtSession(
            model,
            artifact,
            input_kind=metadata.input_kind,
            input_shape=tuple(model.input_shape[1:]),
            fixed_batch=None,
            labels=metadata.labels,
            preprocessing=metadata.preprocessing,
            info=info,
        )

    # ---- tuning (see runtimes/tuning.py) ------------------------------------------------------------------

    def settings_to_try(self, machine: Machine, batch_size: int) -> list[Setting]:
        """1 thread and the physical cores: XNNPACK's pool neither spins long nor gains from SMT siblings."""
        counts = sorted({1, max(1, machine.physical_cores)})
        return [Setting(threads, {}, f"{threads} thread{'s' if threads > 1 else ''}, XNNPACK") for threads in counts]

    def app_code(self, file_name: str, setting: Setting, example: Example, session_config: dict[str, str] | None = None) -> AppCode:
        threads = setting.threads or 1
        shape = list(example.shape)
        python = "\n".join(
            [
                "import numpy as np",
                "from ai_edge_litert.interpreter import Interpreter",
                "",
                f"interpreter = Interpreter(model_path={file_name!r}, num_threads={threads})  # XNNPACK delegate by default",
                "model_input = interpreter.get_input_details()[0]",
                f"interpreter.resize_tensor_input(model_input['index'], {shape!r})  # the file is exported at batch 1",
                "interpreter.allocate_tensors()",
                f"batch = np.zeros({example.shape!r}, np.{example.dtype})  # {example.comment}",
                "interpreter.set_tensor(model_input['index'], batch)",
                "interpreter.invoke()",
                "logits = interpreter.get_tensor(interpreter.get_output_details()[0]['index'])",
            ]
        )
        cpp = "\n".join(
            [
                f'auto model = tflite::FlatBufferModel::BuildFromFile("{file_name}");',
                "tflite::ops::builtin::BuiltinOpResolver resolver;  // applies the XNNPACK delegate by default",
                "tflite::InterpreterBuilder builder(*model, resolver);",
                f"builder.SetNumThreads({threads});",
                "std::unique_ptr<tflite::Interpreter> interpreter;",
                "builder(&interpreter);",
                "interpreter->ResizeInputTensor(interpreter->inputs()[0], {" + ", ".join(map(str, shape)) + "});",
                "interpreter->AllocateTensors();",
                "interpreter->Invoke();",
            ]
        )
        return AppCode(python, cpp, f"num_threads={threads}, XNNPACK delegate")


def read_tflite_metadata(path: str | Path) -> tuple[ModelMetadata, bool]:
    """(the metadata export embedded, whether the file's digest was checked): see ``edgekit.device.litert``.

    Refused in one line: a file that is not a flatbuffer, metadata that is not edgekit's, and a file whose bytes
    differ from the digest recorded at export (truncated, corrupted or edited)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist")
    data = path.read_bytes()
    if not data:
        raise ModelError(f"{path} is empty; re-export it")
    try:
        text = metadata_text(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not a readable LiteRT model ({first_line(exc, 160)}); re-export it") from exc
    if text is None:
        return ModelMetadata(None, None, {}), False
    try:
        entry = json.loads(text)
    except ValueError as exc:
        raise ModelError(f"{path} has edgekit metadata that is not JSON ({first_line(exc, 120)}); re-export it") from exc
    if not isinstance(entry, dict) or entry.get("edgekit_tflite") != METADATA_VERSION or set(entry) != _KEYS:
        raise ModelError(f"{path} has edgekit metadata of an unknown layout (expected version {METADATA_VERSION}); re-export it")
    props, recorded = entry["metadata"], entry["sha256"]
    if not isinstance(props, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in props.items()):
        raise ModelError(f"{path} metadata must map strings to strings (as ONNX metadata does); re-export it")
    if not isinstance(recorded, str) or not _HEX64.fullmatch(recorded) or file_digest(data, recorded) != recorded:
        raise ModelError(f"{path} does not match the SHA-256 recorded in its metadata (truncated, corrupted or edited); re-export it")
    return ModelMetadata.from_props(props, str(path)), True
