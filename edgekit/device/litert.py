"""Run a LiteRT (.tflite) model with ai-edge-litert's Interpreter, and read the metadata edgekit embeds in it.

The Interpreter applies the XNNPACK delegate by default; threads are always set (``num_threads``). A file is
exported at batch 1 (litert-torch converts static shapes only), and the interpreter is resized to each new batch
size (``resize_tensor_input`` + ``allocate_tensors``), which the converted graphs accept: the batch is not baked
into their reshapes.

edgekit's metadata rides in the flatbuffer itself: a ``Model.metadata`` entry named "edgekit" points at a buffer
holding JSON ``{"edgekit_tflite": 1, "sha256": ..., "metadata": {props}}``, where props are the very strings ONNX
metadata_props carry. ``sha256`` is the digest of the whole file with that field set to 64 zeros, so a flipped
weight byte (which the flatbuffer verifier cannot see) is refused before the model runs. Reading it needs only the
schema module ai-edge-litert ships (on aarch64 too), no TensorFlow, and does not unpack the weights.

stdlib + numpy + ai-edge-litert only: this runs on a target.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np

from .quiet import native_stderr_quiet

METADATA_NAME = "edgekit"
METADATA_VERSION = 1
DIGEST_PLACEHOLDER = "0" * 64
MAX_METADATA_BYTES = 1_000_000


def metadata_text(data: bytes) -> Optional[str]:
    """The JSON text of the "edgekit" metadata entry of a .tflite's bytes, None when it has none.

    Raises ValueError when the bytes are not a readable flatbuffer or the entry is out of bounds."""
    from ai_edge_litert import schema_py_generated as schema

    try:
        model = schema.Model.GetRootAs(data, 0)
        for index in range(model.MetadataLength()):
            entry = model.Metadata(index)
            name = entry.Name()
            if name is None or name.decode("utf-8", "replace") != METADATA_NAME:
                continue
            buffer = model.Buffers(entry.Buffer())
            if buffer is None:
                raise ValueError("the metadata entry names a buffer that does not exist")
            if buffer.DataLength():
                raw = buffer.DataAsNumpy().tobytes()
            else:  # a model over 2 GiB keeps its buffers after the flatbuffer
                raw = data[buffer.Offset() : buffer.Offset() + buffer.Size()]
            if len(raw) > MAX_METADATA_BYTES:
                raise ValueError(f"its edgekit metadata is {len(raw)} bytes, more than labels and preprocessing can be")
            return raw.decode("utf-8")
    except ValueError:
        raise
    except Exception as exc:  # flatbuffers raises struct.error, IndexError, ... on damaged bytes
        raise ValueError(f"not a readable flatbuffer ({type(exc).__name__})") from exc
    return None


def digest_field(digest: str) -> bytes:
    """How the digest appears in the metadata JSON (``json.dumps`` with sorted keys)."""
    return f'"sha256": "{digest}"'.encode()


def file_digest(data: bytes, recorded: str) -> str:
    """The SHA-256 of a .tflite's bytes with its recorded digest put back to the placeholder (what export hashed)."""
    field = digest_field(recorded)
    if data.count(field) != 1:
        return ""
    return hashlib.sha256(data.replace(field, digest_field(DIGEST_PLACEHOLDER))).hexdigest()


class LiteRtModel:
    """``run(batch) -> logits`` on one Interpreter, resized to each new batch size."""

    def __init__(self, path: str, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        with native_stderr_quiet():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self.interpreter = Interpreter(model_path=str(path), num_threads=int(threads))
            self.interpreter.allocate_tensors()
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ValueError(f"it has {len(inputs)} inputs and {len(outputs)} outputs; an image classifier has one input")
        self.input_index = int(inputs[0]["index"])
        self.input_shape = tuple(int(d) for d in inputs[0]["shape"])
        self.input_dtype = np.dtype(inputs[0]["dtype"])
        self.input_quantization = inputs[0]["quantization"]  # (scale, zero point); (0.0, 0) for float input
        self.output_index = int(outputs[0]["index"])
        self.output_quantization = outputs[0]["quantization"]
        self.batch = self.input_shape[0]

    def _resize(self, batch: int) -> None:
        if batch != self.batch:
            self.interpreter.resize_tensor_input(self.input_index, [batch, *self.input_shape[1:]])
            self.interpreter.allocate_tensors()
            self.batch = batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch)
        self._resize(len(batch))
        if self.input_dtype in (np.int8, np.uint8) and batch.dtype != self.input_dtype:  # an int8-input file
            scale, zero = self.input_quantization
            info = np.iinfo(self.input_dtype)
            batch = np.clip(np.round(batch / scale) + zero, info.min, info.max).astype(self.input_dtype)
        elif batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        self.interpreter.set_tensor(self.input_index, batch)
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self.output_index)
        if logits.dtype in (np.int8, np.uint8):
            scale, zero = self.output_quantization
            return ((logits.astype(np.float32) - zero) * scale).astype(np.float32)
        return np.array(logits, dtype=np.float32)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("ai-edge-litert")
    except PackageNotFoundError:
        return "unknown"
