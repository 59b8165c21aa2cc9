"""What export writes into an ONNX model's metadata_props, so a bare .onnx file carries its labels
and preprocessing and needs no run directory."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from .config import format_validation_error
from .errors import ModelError
from .preprocessing import Preprocessing

LABELS_KEY = "edgekit.labels"
PREPROCESSING_KEY = "edgekit.preprocessing"
SOURCE_KEY = "edgekit.source"
INPUT_KEY = "edgekit.input"  # one of the two input kinds below
FLOAT_INPUT = "float32-nchw"  # a normalized, preprocessed float tensor
UINT8_INPUT = "uint8-nhwc"  # resized/cropped pixels; the graph normalizes (embedded preprocessing)


@dataclass
class ModelMetadata:
    labels: list[str] | None
    preprocessing: Preprocessing | None
    source: dict
    input_kind: str = FLOAT_INPUT

    def to_props(self) -> dict[str, str]:
        props = {SOURCE_KEY: json.dumps(self.source), INPUT_KEY: self.input_kind}
        if self.labels is not None:
            props[LABELS_KEY] = json.dumps(self.labels)
        if self.preprocessing is not None:
            props[PREPROCESSING_KEY] = self.preprocessing.model_dump_json()
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "model") -> "ModelMetadata":
        try:
            labels = json.loads(props[LABELS_KEY]) if LABELS_KEY in props else None
            # Validated, not trusted: the bounds on Preprocessing refuse e.g. a billion-pixel resize.
            preprocessing = Preprocessing.model_validate_json(props[PREPROCESSING_KEY]) if PREPROCESSING_KEY in props else None
            source = json.loads(props.get(SOURCE_KEY, "{}"))
        except ValidationError as exc:
            raise ModelError(f"{format_validation_error(exc, f'{where} {PREPROCESSING_KEY}')}; re-export it with a sane input size") from exc
        except ValueError as exc:
            raise ModelError(f"{where} has malformed edgekit metadata ({str(exc).splitlines()[0]}); re-export it") from exc
        if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise ModelError(f"{where} has malformed {LABELS_KEY}: expected a JSON list of strings; re-export it")
        return cls(labels, preprocessing, source if isinstance(source, dict) else {}, props.get(INPUT_KEY, FLOAT_INPUT))


def read_onnx_metadata(path: str | os.PathLike) -> ModelMetadata:
    """Read only the metadata of an ONNX file (weights are not loaded)."""
    from .safety import check_onnx_file

    path = Path(path)
    model = check_onnx_file(path)  # a corrupt file or external data pointing outside its folder: ModelError
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))
