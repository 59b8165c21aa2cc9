"""What a variant is: one frozen ``Variant`` (precision x input kind x format x batch), its name and file name.

Every module asks this one; none parses variant strings itself. Names (used in file names, parity reports,
bench rows and gate configs):

    fp32, fp16, int8, int8-dynamic         ONNX (model.onnx, model.<name>.onnx)
    <any of those>-uint8in                 ONNX with the preprocessing inside (uint8 NHWC pixels in)
    <any of those>-b<N>                    ONNX with a fixed batch of N (mobile accelerators want fixed shapes)
    torch-export                           torch.export program (model.pt2)
    executorch-fp32, executorch-int8       ExecuTorch program, XNNPACK-delegated (model.pte, model.int8.pte)
    openvino-fp32, openvino-int8           OpenVINO IR (model.xml + .bin, model.int8.xml + .bin)

Adding a format is one ``Format`` member plus its row in ``_FORMATS`` (suffix, precisions, name prefix, pip extra),
and one module ``edgekit/exporting/<format>.py`` with ``export_variant(exporter, quantization)``: export finds it
by the format's name. (Running it is one module in ``edgekit/runtimes/``, registered there.)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from .errors import EdgekitError
from .metadata import InputKind, onnx_metadata
from .safety import check_onnx_file


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"  # static, calibrated
    INT8_DYNAMIC = "int8-dynamic"  # MatMul/Gemm weights only, activations quantized at run time


class Format(str, Enum):
    ONNX = "onnx"
    TORCH_EXPORT = "torch-export"
    OPENVINO = "openvino"
    EXECUTORCH = "executorch"


@dataclass(frozen=True)
class _FormatFacts:
    suffix: str  # the file's extension
    precisions: tuple[Precision, ...]  # what this format can hold
    prefix: str  # the name prefix for non-ONNX formats ("executorch-"); "" for ONNX
    extra: str | None = None  # the pip extra its exporter and runtime need (not part of `--format all`)


_FORMATS: dict[Format, _FormatFacts] = {
    Format.ONNX: _FormatFacts(".onnx", tuple(Precision), ""),
    Format.TORCH_EXPORT: _FormatFacts(".pt2", (Precision.FP32,), "torch-export"),
    Format.OPENVINO: _FormatFacts(".xml", (Precision.FP32, Precision.INT8), "openvino-", extra="openvino"),
    Format.EXECUTORCH: _FormatFacts(".pte", (Precision.FP32, Precision.INT8), "executorch-", extra="executorch"),
}


def format_precisions(name: str) -> tuple[str, ...]:
    """The precisions a format can hold, e.g. ("fp32", "int8") for "openvino"."""
    return tuple(p.value for p in _FORMATS[Format(name)].precisions)


def format_extra(name: str) -> str | None:
    """The pip extra a format needs ("openvino" -> edgekit[openvino]); None for the core formats."""
    return _FORMATS[Format(name)].extra


UINT8_SUFFIX = "-uint8in"
# Not a variant but a choice among them: `edgekit export --quantize auto` copies the variant it chose to AUTO_FILE
# and records which one, and why, in AUTO_CHOICE_FILE (both in the run's exports/). The gate accepts "auto" as a name.
AUTO = "auto"
AUTO_FILE = "model.auto.onnx"
AUTO_CHOICE_FILE = "auto.json"
_BATCH = re.compile(r"-b([1-9][0-9]{0,3})$")
# What `edgekit export --quantize` calls each precision.
QUANTIZE_CHOICE = {Precision.FP32: "none", Precision.FP16: "fp16", Precision.INT8: "int8", Precision.INT8_DYNAMIC: "int8-dynamic"}


@dataclass(frozen=True)
class Variant:
    """One exported form of a model. Immutable and hashable; ``str(v)`` is its name."""

    precision: Precision = Precision.FP32
    input_kind: InputKind = InputKind.FLOAT
    format: Format = Format.ONNX
    fixed_batch: int | None = None  # None: a dynamic batch axis

    def __post_init__(self):
        if self.precision not in _FORMATS[self.format].precisions:
            raise EdgekitError(f"{self.format.value} has no {self.precision.value} variant")
        if self.format is not Format.ONNX and (self.input_kind is not InputKind.FLOAT or self.fixed_batch is not None):
            raise EdgekitError(f"{self.format.value} variants take float input with a dynamic batch only")

    # ------------------------------------------------------------------ names

    @property
    def name(self) -> str:
        if self.format is Format.TORCH_EXPORT:
            return "torch-export"
        if self.format is not Format.ONNX:
            return _FORMATS[self.format].prefix + self.precision.value
        name = self.precision.value + (UINT8_SUFFIX if self.input_kind is InputKind.UINT8 else "")
        return name + (f"-b{self.fixed_batch}" if self.fixed_batch else "")

    def __str__(self) -> str:
        return self.name

    @property
    def file_name(self) -> str:
        """model.onnx for plain fp32, model.<name>.onnx for the other ONNX ones, model[.int8].<ext> for the rest."""
        suffix = _FORMATS[self.format].suffix
        if self.format is Format.ONNX:
            return "model.onnx" if self.name == "fp32" else f"model.{self.name}.onnx"
        return f"model{suffix}" if self.precision is Precision.FP32 else f"model.{self.precision.value}{suffix}"

    @property
    def parity_file_name(self) -> str:
        return f"{self.name}.parity.json"

    # ------------------------------------------------------------------ relations

    @property
    def fp32_parent(self) -> "Variant":
        """The float32 variant this one was made from (same format, input kind and batch)."""
        return replace(self, precision=Precision.FP32)

    @property
    def is_compressed(self) -> bool:
        """Made to be smaller or faster than fp32, so being slower than its parent is worth a warning."""
        return self.precision is not Precision.FP32

    @property
    def threshold_kind(self) -> str:
        """ "fp32", "fp16" or "int8": which parity thresholds apply."""
        return "int8" if self.precision in (Precision.INT8, Precision.INT8_DYNAMIC) else self.precision.value

    @property
    def quantize_choice(self) -> str:
        return QUANTIZE_CHOICE[self.precision]

    # ------------------------------------------------------------------ parsing

    @classmethod
    def parse(cls, name: "str | Variant") -> "Variant":
        """The variant a name stands for; a one-line error listing the valid forms otherwise."""
        if isinstance(name, Variant):
            return name
        text = str(name).strip()
        if text == "torch-export":
            return cls(format=Format.TORCH_EXPORT)
        for fmt, facts in _FORMATS.items():
            if fmt not in (Format.ONNX, Format.TORCH_EXPORT) and text.startswith(facts.prefix):
                return cls(_precision(text[len(facts.prefix) :], text), format=fmt)
        batch = _BATCH.search(text)
        if batch:
            text = text[: batch.start()]
        kind = InputKind.FLOAT
        if text.endswith(UINT8_SUFFIX):
            text, kind = text[: -len(UINT8_SUFFIX)], InputKind.UINT8
        return cls(_precision(text, name), kind, Format.ONNX, int(batch.group(1)) if batch else None)

    @classmethod
    def of_artifact(cls, path: str | os.PathLike) -> "Variant":
        """What a file is, by one rule: its edgekit metadata, else its graph (ONNX), else its file name."""
        path = Path(path)
        fmt = format_of(path)
        if fmt is Format.ONNX:
            try:
                proto = check_onnx_file(path)
            except EdgekitError:
                proto = None  # unreadable (or not there yet): the name is all there is
            if proto is not None:
                try:
                    recorded = onnx_metadata(proto, str(path)).source.get("variant")
                except EdgekitError:
                    recorded = None
                if recorded:
                    try:
                        return cls.parse(str(recorded))
                    except EdgekitError:
                        pass  # a name from a newer edgekit or another hand: the graph still tells
                return _onnx_variant_from_graph(proto)
        if fmt is Format.TORCH_EXPORT:
            return cls(format=Format.TORCH_EXPORT)
        stem = path.name[: -len(path.suffix)]
        _, dot, rest = stem.partition(".")
        if fmt is Format.ONNX:
            return cls.parse(rest) if dot else cls()
        return cls(_precision(rest, path.name) if dot else Precision.FP32, format=fmt)


def format_of(path: str | os.PathLike) -> Format:
    """The format a file's extension says; an error naming the file otherwise."""
    suffix = Path(path).suffix.lower()
    for fmt, facts in _FORMATS.items():
        if suffix == facts.suffix:
            return fmt
    known = ", ".join(f.suffix for f in _FORMATS.values())
    raise EdgekitError(f"{path} is not a model file edgekit knows (expected {known})")


def all_names(fmt: Format | None = None) -> list[str]:
    """Every variant name with a dynamic batch (for help texts and config validation)."""
    names = []
    for f, facts in _FORMATS.items():
        if fmt is not None and f is not fmt:
            continue
        kinds = tuple(InputKind) if f is Format.ONNX else (InputKind.FLOAT,)
        for kind in kinds:
            for precision in facts.precisions:
                names.append(Variant(precision, kind, f).name)
    return names


def _precision(text: str, whole) -> Precision:
    for precision in Precision:
        if text == precision.value:
            return precision
    raise EdgekitError(
        f"unknown variant {str(whole)!r}; expected one of fp32, fp16, int8, int8-dynamic (optionally with {UINT8_SUFFIX} "
        "and/or -b<N>), torch-export, executorch-fp32/int8 or openvino-fp32/int8"
    )


def _onnx_variant_from_graph(proto) -> Variant:
    """Precision from the ops (quantize nodes, float16 tensors), input kind from the input's type, batch from its shape."""
    import onnx

    ops = {node.op_type for node in proto.graph.node}
    float16 = onnx.TensorProto.FLOAT16
    if ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"}:
        precision = Precision.INT8_DYNAMIC
    elif ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"}:
        precision = Precision.INT8
    elif any(t.data_type == float16 for t in proto.graph.initializer) or any(
        i.type.tensor_type.elem_type == float16 for i in proto.graph.input
    ):
        precision = Precision.FP16
    else:
        precision = Precision.FP32
    model_input = proto.graph.input[0].type.tensor_type
    kind = InputKind.UINT8 if model_input.elem_type == onnx.TensorProto.UINT8 else InputKind.FLOAT
    dims = model_input.shape.dim
    batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    return Variant(precision, kind, Format.ONNX, batch)
