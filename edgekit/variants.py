"""What a variant is: one frozen ``Variant`` (precision x input kind x format x batch), its name and file name.

Every module asks this one; none parses variant strings itself. Names (used in file names, parity reports,
bench rows and gate configs):

    fp32, fp16, int8, int8-dynamic         ONNX (model.onnx, model.<name>.onnx)
    <any of those>-uint8in                 ONNX with the preprocessing inside (uint8 NHWC pixels in)
    <any of those>-b<N>                    ONNX with a fixed batch of N (mobile accelerators want fixed shapes)
    <prefix><precision>                    every other format, e.g. openvino-int8 (model.int8.xml), executorch-fp32
                                           (model.pte); a single-variant format is its prefix alone (torch-export)

The formats and their prefixes, suffixes and precisions are rows in ``edgekit.formats``; this module derives
every name and file name from them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import EdgekitError
from .formats import ONNX, Format, Precision, all_formats, find_format, format_of, get_format
from .metadata import InputKind, onnx_metadata
from .safety import check_onnx_file

UINT8_SUFFIX = "-uint8in"
# Not a variant but a choice among them: `edgekit export --quantize auto` writes what it chose into the run's
# exports/deploy.json (edgekit.card). The gate accepts "auto" as a variant name: the card's file.
AUTO = "auto"
_BATCH = re.compile(r"-b([1-9][0-9]{0,3})$")


@dataclass(frozen=True)
class Variant:
    """One exported form of a model. Immutable and hashable; ``str(v)`` is its name."""

    precision: Precision = Precision.FP32
    input_kind: InputKind = InputKind.FLOAT
    format: Format = ONNX
    fixed_batch: int | None = None  # None: a dynamic batch axis

    def __post_init__(self):
        if self.precision not in self.format.precisions:
            raise EdgekitError(f"{self.format.name} has no {self.precision.value} variant")
        if not self.format.twins and (self.input_kind is not InputKind.FLOAT or self.fixed_batch is not None):
            raise EdgekitError(f"{self.format.name} variants take float input with a dynamic batch only")

    # ------------------------------------------------------------------ names

    @property
    def name(self) -> str:
        if self.format.single_name:
            return self.format.prefix
        if not self.format.twins:
            return self.format.prefix + self.precision.value
        name = self.format.prefix + self.precision.value + (UINT8_SUFFIX if self.input_kind is InputKind.UINT8 else "")
        return name + (f"-b{self.fixed_batch}" if self.fixed_batch else "")

    def __str__(self) -> str:
        return self.name

    @property
    def file_name(self) -> str:
        """model<suffix> for the plain float32 variant of a format, model.<name><suffix> for ONNX's others and
        model.<precision><suffix> for every other format's (model.int8.xml)."""
        suffix = self.format.suffix
        if self.format.twins:
            plain = self.precision is Precision.FP32 and self.input_kind is InputKind.FLOAT and self.fixed_batch is None
            return f"model{suffix}" if plain else f"model.{self.name.removeprefix(self.format.prefix)}{suffix}"
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
    def dynamic_parent(self) -> "Variant":
        """The dynamic-batch variant a fixed-batch twin was made from (itself when its batch is dynamic)."""
        return replace(self, fixed_batch=None)

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
        return self.precision.quantize_choice

    # ------------------------------------------------------------------ parsing

    @classmethod
    def parse(cls, name: "str | Variant") -> "Variant":
        """The variant a name stands for; a one-line error listing the valid forms otherwise."""
        if isinstance(name, Variant):
            return name
        text = str(name).strip()
        for fmt in all_formats():
            if fmt.single_name and text == fmt.prefix:
                return cls(fmt.precisions[0], format=fmt)
            if fmt.prefix and not fmt.single_name and not fmt.twins and text.startswith(fmt.prefix):
                return cls(_precision(text[len(fmt.prefix) :], text), format=fmt)
        batch = _BATCH.search(text)
        if batch:
            text = text[: batch.start()]
        kind = InputKind.FLOAT
        if text.endswith(UINT8_SUFFIX):
            text, kind = text[: -len(UINT8_SUFFIX)], InputKind.UINT8
        return cls(_precision(text, name), kind, ONNX, int(batch.group(1)) if batch else None)

    @classmethod
    def of(cls, fmt: "Format | str", precision: Precision | str = Precision.FP32) -> "Variant":
        """The dynamic-batch, float-input variant of ``fmt`` at ``precision`` (a Precision or a --quantize name)."""
        if not isinstance(precision, Precision):
            precision = Precision.from_quantize_choice(str(precision))
        return cls(precision, format=get_format(fmt))

    @classmethod
    def of_artifact(cls, path: str | os.PathLike) -> "Variant":
        """What a file is, by one rule: its edgekit metadata, else its graph (ONNX), else its file name."""
        path = Path(path)
        fmt = format_of(path)
        if fmt is ONNX:
            recorded = _recorded_onnx_variant(path)
            if recorded is not None:
                return recorded
        stem = fmt.stem(path)
        _, dot, rest = stem.partition(".")
        if fmt.twins:
            return cls.parse(rest) if dot else cls(format=fmt)
        if fmt.single_name:
            return cls(fmt.precisions[0], format=fmt)
        return cls(_precision(rest, path.name) if dot else Precision.FP32, format=fmt)


def _recorded_onnx_variant(path: Path) -> Variant | None:
    """An ONNX file's variant from its edgekit metadata, else from its graph; None when the file cannot be read."""
    try:
        proto = check_onnx_file(path)
    except EdgekitError:
        return None  # unreadable (or not there yet): the name is all there is
    try:
        recorded = onnx_metadata(proto, str(path)).source.get("variant")
    except EdgekitError:
        recorded = None
    if recorded:
        try:
            return Variant.parse(str(recorded))
        except EdgekitError:
            pass  # a name from a newer edgekit or another hand: the graph still tells
    return _onnx_variant_from_graph(proto)


def is_model_file(path: str | os.PathLike) -> bool:
    """Whether the file's name is one of a registered format's (so a runtime, not torch, opens it)."""
    return find_format(path) is not None


def all_names(fmt: Format | str | None = None) -> list[str]:
    """Every variant name with a dynamic batch (for help texts and config validation)."""
    names = []
    for f in all_formats():
        if fmt is not None and f is not get_format(fmt):
            continue
        kinds = tuple(InputKind) if f.twins else (InputKind.FLOAT,)
        names += [Variant(precision, kind, f).name for kind in kinds for precision in f.precisions]
    return names


def _precision(text: str, whole) -> Precision:
    for precision in Precision:
        if text == precision.value:
            return precision
    others = ", ".join(f"{f.prefix}{'' if f.single_name else '<precision>'}" for f in all_formats() if f.prefix)
    raise EdgekitError(
        f"unknown variant {str(whole)!r}; expected one of fp32, fp16, int8, int8-dynamic (optionally with {UINT8_SUFFIX} "
        f"and/or -b<N>), or {others}"
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
    return Variant(precision, kind, ONNX, batch)


__all__ = ["AUTO", "Format", "InputKind", "Precision", "UINT8_SUFFIX", "Variant", "all_names", "format_of"]
