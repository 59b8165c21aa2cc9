"""What export writes into an ONNX model's metadata_props, so a bare .onnx file carries its labels
and preprocessing and needs no run directory."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from .config import format_validation_error
from .errors import ModelError
from .hardware import check_ort_session_config
from .preprocessing import Preprocessing
from .variants import InputKind

LABELS_KEY = "edgekit.labels"
PREPROCESSING_KEY = "edgekit.preprocessing"
SOURCE_KEY = "edgekit.source"
INPUT_KEY = "edgekit.input"  # one of the two input kinds below
# What running the model needs and where it was validated: {"ort_session_config": {...}, "validated_isa": "..."}.
# The session options are applied by edgekit's runtimes and printed by export for the user's own app.
RUNTIME_KEY = "edgekit.runtime"
FLOAT_INPUT = InputKind.FLOAT.value  # a normalized, preprocessed float tensor
UINT8_INPUT = InputKind.UINT8.value  # resized/cropped pixels; the graph normalizes (embedded preprocessing)


@dataclass
class ModelMetadata:
    labels: list[str] | None
    preprocessing: Preprocessing | None
    source: dict
    input_kind: str = FLOAT_INPUT
    runtime: dict = field(default_factory=dict)  # see RUNTIME_KEY

    @property
    def ort_session_config(self) -> dict[str, str]:
        return dict(self.runtime.get("ort_session_config") or {})

    @property
    def validated_isa(self) -> str | None:
        return self.runtime.get("validated_isa")

    def to_props(self) -> dict[str, str]:
        props = {SOURCE_KEY: json.dumps(self.source), INPUT_KEY: self.input_kind}
        if self.labels is not None:
            props[LABELS_KEY] = json.dumps(self.labels)
        if self.preprocessing is not None:
            props[PREPROCESSING_KEY] = self.preprocessing.model_dump_json()
        if self.runtime:
            props[RUNTIME_KEY] = json.dumps(self.runtime, sort_keys=True)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "model") -> "ModelMetadata":
        try:
            labels = json.loads(props[LABELS_KEY]) if LABELS_KEY in props else None
            # Validated, not trusted: the bounds on Preprocessing refuse e.g. a billion-pixel resize.
            preprocessing = Preprocessing.model_validate_json(props[PREPROCESSING_KEY]) if PREPROCESSING_KEY in props else None
            source = json.loads(props.get(SOURCE_KEY, "{}"))
            runtime = json.loads(props.get(RUNTIME_KEY, "{}"))
        except ValidationError as exc:
            raise ModelError(f"{format_validation_error(exc, f'{where} {PREPROCESSING_KEY}')}; re-export it with a sane input size") from exc
        except ValueError as exc:
            raise ModelError(f"{where} has malformed edgekit metadata ({str(exc).splitlines()[0]}); re-export it") from exc
        if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise ModelError(f"{where} has malformed {LABELS_KEY}: expected a JSON list of strings; re-export it")
        return cls(labels, preprocessing, source if isinstance(source, dict) else {}, props.get(INPUT_KEY, FLOAT_INPUT),
                   _checked_runtime(runtime, where))


def _checked_runtime(runtime: object, where: str) -> dict:
    """Runtime metadata is data from another hand: only known session options and a short ISA string pass."""
    if not isinstance(runtime, dict):
        raise ModelError(f"{where} has malformed {RUNTIME_KEY}: expected a JSON object; re-export it")
    checked: dict = {}
    if "ort_session_config" in runtime:
        checked["ort_session_config"] = check_ort_session_config(runtime["ort_session_config"], where)
    isa = runtime.get("validated_isa")
    if isa is not None:
        if not isinstance(isa, str) or len(isa) > 40:
            raise ModelError(f"{where} has malformed {RUNTIME_KEY} validated_isa; re-export it")
        checked["validated_isa"] = isa
    return checked


def read_onnx_metadata(path: str | os.PathLike) -> ModelMetadata:
    """Read only the metadata of an ONNX file (weights are not loaded)."""
    from .safety import check_onnx_file

    path = Path(path)
    model = check_onnx_file(path)  # a corrupt file or external data pointing outside its folder: ModelError
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))
