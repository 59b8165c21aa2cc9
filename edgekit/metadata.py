"""What export writes into an ONNX model's metadata_props, so a bare .onnx file carries its labels
and preprocessing and needs no run directory."""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from pydantic import ValidationError

from .config import format_validation_error
from .errors import ModelError, first_line
from .hardware import check_ort_session_config
from .preprocessing import Preprocessing
from .safety import check_onnx_file


class InputKind(str, Enum):
    """What a model's input is; recorded in every artifact's metadata (re-exported by edgekit.variants)."""

    FLOAT = "float32-nchw"  # a normalized, preprocessed float tensor
    UINT8 = "uint8-nhwc"  # resized/cropped pixels; the graph normalizes (embedded preprocessing)


LABELS_KEY = "edgekit.labels"
PREPROCESSING_KEY = "edgekit.preprocessing"
SOURCE_KEY = "edgekit.source"
INPUT_KEY = "edgekit.input"  # one of the two input kinds below
# What running the model needs and where it was validated: {"ort_session_config": {...}, "validated_isa": "..."}.
# The session options are applied by edgekit's runtimes and printed by export for the user's own app.
RUNTIME_KEY = "edgekit.runtime"
# In a .pt2 archive the same metadata rides in the extra files (no pickling), readable without loading the program.
PT2_METADATA_FILE = "edgekit.json"


@dataclass
class ModelMetadata:
    labels: list[str] | None
    preprocessing: Preprocessing | None
    source: dict
    input_kind: InputKind = InputKind.FLOAT
    runtime: dict = field(default_factory=dict)  # see RUNTIME_KEY

    @property
    def ort_session_config(self) -> dict[str, str]:
        return dict(self.runtime.get("ort_session_config") or {})

    @property
    def validated_isa(self) -> str | None:
        return self.runtime.get("validated_isa")

    def to_props(self) -> dict[str, str]:
        props = {SOURCE_KEY: json.dumps(self.source), INPUT_KEY: InputKind(self.input_kind).value}
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
            raise ModelError(
                f"{format_validation_error(exc, f'{where} {PREPROCESSING_KEY}')}; re-export it with a sane input size"
            ) from exc
        except ValueError as exc:
            raise ModelError(f"{where} has malformed edgekit metadata ({first_line(exc)}); re-export it") from exc
        if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            raise ModelError(f"{where} has malformed {LABELS_KEY}: expected a JSON list of strings; re-export it")
        kind = props.get(INPUT_KEY, InputKind.FLOAT.value)
        if kind not in {k.value for k in InputKind}:
            raise ModelError(f"{where} has unknown {INPUT_KEY} {kind[:40]!r}; expected one of {', '.join(k.value for k in InputKind)}")
        return cls(labels, preprocessing, source if isinstance(source, dict) else {}, InputKind(kind), _checked_runtime(runtime, where))


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
    path = Path(path)
    model = check_onnx_file(path)  # a corrupt file or external data pointing outside its folder: ModelError
    return onnx_metadata(model, str(path))


def onnx_metadata(model, where: str) -> ModelMetadata:
    """The edgekit metadata of an already loaded (and checked) ``onnx.ModelProto``."""
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props}, where)


def read_pt2_metadata(path: str | os.PathLike) -> ModelMetadata:
    """The edgekit metadata stored in a .pt2 archive (empty metadata when it has none); nothing is unpickled."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{PT2_METADATA_FILE}")]
            props = json.loads(archive.read(names[0])) if names else {}
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{path} is not a readable .pt2 archive ({exc}); re-export it") from exc
    except ValueError as exc:
        raise ModelError(f"{path} has malformed edgekit metadata ({exc}); re-export it") from exc
    if not isinstance(props, dict):
        raise ModelError(f"{path} has malformed edgekit metadata (not a JSON object); re-export it")
    return ModelMetadata.from_props({str(k): str(v) for k, v in props.items()}, str(path))
