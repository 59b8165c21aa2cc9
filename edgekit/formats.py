"""Model file formats: one ``Format`` row each, in one registry that every table of suffixes, runtimes and extras
is derived from.

    ONNX = Format("onnx", ".onnx", ..., runtime="ort-cpu", exporter="edgekit.exporting.onnx", ...)
    format_of("runs/x/exports/model.int8.xml")    # -> the OpenVINO row
    get_format("executorch").install_hint          # -> "pip install 'edgekit[executorch]'"

A new format is one ``register_format(Format(...))`` call (here for the built-in ones, or in a plugin or test file)
plus its exporter (a module with ``export_variant(job, variant)``, named by ``exporter``) and a runtime registered in
``edgekit.runtimes`` under the row's ``runtime`` name. Nothing else names formats or suffixes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable

from .errors import EdgekitError


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"  # static, calibrated
    INT8_DYNAMIC = "int8-dynamic"  # MatMul/Gemm weights only, activations quantized at run time

    @property
    def quantize_choice(self) -> str:
        """What `edgekit export --quantize` calls this precision ("none" for fp32)."""
        return "none" if self is Precision.FP32 else self.value

    @classmethod
    def from_quantize_choice(cls, choice: str) -> "Precision":
        """``--quantize`` name -> precision: "none" is fp32, the others are their own names."""
        return cls.FP32 if choice == "none" else cls(choice)


def _no_companions(path: Path) -> list[Path]:
    return []


@dataclass(frozen=True)
class Format:
    """What edgekit knows about one file format."""

    name: str  # what --format calls it
    suffix: str  # how its main file ends (".onnx", ".ncnn.param"); unique among formats
    precisions: tuple[Precision, ...]  # what it can hold, in --quantize order
    runtime: str  # the runtime that runs it by default (bench --runtime auto, parity, predict, auto)
    exporter: str | Callable  # a module with export_variant(job, variant), or that function itself
    metadata: str  # where labels and preprocessing travel, in words (help texts, docs)
    prefix: str = ""  # variant names are prefix + precision ("openvino-int8"); a prefix without "-" is the one name
    extra: str | None = None  # the pip extra its exporter and runtime need; None: part of the core install
    companions: Callable[[Path], list[Path]] = field(default=_no_companions, compare=False)  # files shipped beside it
    twins: bool = False  # has uint8-input and fixed-batch twins (ONNX)
    description: str = ""
    missing_precisions: str = ""  # why it holds no other precision, for the one-line error of --quantize asking for one

    @property
    def install_hint(self) -> str:
        return f"pip install 'edgekit[{self.extra}]'" if self.extra else "pip install edgekit"

    @property
    def single_name(self) -> bool:
        """The format has one variant whose name is the prefix itself ("torch-export")."""
        return bool(self.prefix) and not self.prefix.endswith("-")

    def files(self, path: str | os.PathLike) -> list[Path]:
        """The main file and every companion that exists: what a device stores and what a target is sent."""
        path = Path(path)
        return [path, *(p for p in self.companions(path) if p.is_file())]

    def stem(self, path: str | os.PathLike) -> str:
        """The file name without this format's suffix ("model.int8" for model.int8.ncnn.param)."""
        name = Path(path).name
        return name[: -len(self.suffix)] if name.lower().endswith(self.suffix) else Path(name).stem

    def __str__(self) -> str:
        return self.name


_REGISTRY: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    """Add a format; a second one under the same name or suffix is an error, never a silent overwrite."""
    if fmt.name in _REGISTRY:
        raise ValueError(f"format {fmt.name!r} is already registered")
    clash = next((f for f in _REGISTRY.values() if f.suffix == fmt.suffix), None)
    if clash is not None:
        raise ValueError(f"suffix {fmt.suffix} already belongs to format {clash.name!r}")
    if not fmt.precisions:
        raise ValueError(f"format {fmt.name!r} holds no precision")
    _REGISTRY[fmt.name] = fmt
    return fmt


def unregister_format(name: str) -> None:
    """Remove a format (for plugins and tests that register their own)."""
    _REGISTRY.pop(name, None)


def all_formats() -> list[Format]:
    """Every registered format, in registration order (the order of --format all, bench rows and help texts)."""
    return list(_REGISTRY.values())


def format_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def core_formats() -> tuple[str, ...]:
    """What ``--format all`` means: the formats that need no extra."""
    return tuple(f.name for f in _REGISTRY.values() if f.extra is None)


def get_format(name: "str | Format") -> Format:
    """The format called ``name``; an unknown name is a one-line error listing the known ones."""
    if isinstance(name, Format):
        return name
    try:
        return _REGISTRY[str(name)]
    except KeyError:
        raise EdgekitError(f"unknown format {name!r}; known formats: {', '.join(_REGISTRY)}") from None


def find_format(path: str | os.PathLike) -> Format | None:
    """The format whose suffix ``path`` ends with (the longest match), None for any other file."""
    name = Path(path).name.lower()
    matches = [f for f in _REGISTRY.values() if name.endswith(f.suffix)]
    return max(matches, key=lambda f: len(f.suffix)) if matches else None


def format_of(path: str | os.PathLike) -> Format:
    """The format a file's name says; an error naming the file and the known suffixes otherwise."""
    found = find_format(path)
    if found is None:
        raise EdgekitError(f"{path} is not a model file edgekit knows (expected {known_suffixes()})")
    return found


def known_suffixes() -> str:
    """ "a .onnx, .pt2, .xml (OpenVINO) ... file", for messages."""
    return ", ".join(f.suffix for f in _REGISTRY.values())


# ---- the built-in formats ---------------------------------------------------------------------------------------


def _onnx_external_data(path: Path) -> list[Path]:
    """The side files an ONNX model's external-data tensors name (edgekit writes none, other tools may)."""
    if not path.is_file():
        return []
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    locations: set[str] = set()
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            locations.update(e.value for e in tensor.external_data if e.key == "location")
    return [path.parent / location for location in sorted(locations)]


def _weights_bin(path: Path) -> list[Path]:
    return [path.with_suffix(".bin")]


def _side_json(path: Path) -> list[Path]:
    return [path.with_name(path.name + ".json")]


def ncnn_weights(path: str | os.PathLike) -> Path:
    """The .ncnn.bin that ncnn reads beside a .ncnn.param (model.fp16.ncnn.param -> model.fp16.ncnn.bin)."""
    path = Path(path)
    stem = path.name[: -len(".ncnn.param")] if path.name.lower().endswith(".ncnn.param") else path.stem
    return path.with_name(stem + ".ncnn.bin")


def _ncnn_companions(path: Path) -> list[Path]:
    return [ncnn_weights(path), *_side_json(path)]


ONNX = register_format(
    Format(
        "onnx",
        ".onnx",
        tuple(Precision),
        runtime="ort-cpu",
        exporter="edgekit.exporting.onnx",
        metadata="the model's metadata_props",
        companions=_onnx_external_data,
        twins=True,
        description="ONNX (ONNX Runtime), dynamic batch",
    )
)
TORCH_EXPORT = register_format(
    Format(
        "torch-export",
        ".pt2",
        (Precision.FP32,),
        runtime="torch-export",
        exporter="edgekit.exporting.torch_export",
        metadata="an extra file inside the archive",
        prefix="torch-export",
        description="torch.export program",
    )
)
OPENVINO = register_format(
    Format(
        "openvino",
        ".xml",
        (Precision.FP32, Precision.INT8),
        runtime="openvino",
        exporter="edgekit.exporting.openvino",
        metadata="the IR's rt_info",
        prefix="openvino-",
        extra="openvino",
        companions=_weights_bin,
        description="OpenVINO IR (.xml + .bin)",
    )
)
EXECUTORCH = register_format(
    Format(
        "executorch",
        ".pte",
        (Precision.FP32, Precision.INT8),
        runtime="executorch",
        exporter="edgekit.exporting.executorch",
        metadata="a side file <file>.json",
        prefix="executorch-",
        extra="executorch",
        companions=_side_json,
        description="ExecuTorch program, XNNPACK",
    )
)
LITERT = register_format(
    Format(
        "litert",
        ".tflite",
        (Precision.FP32, Precision.FP16, Precision.INT8),
        runtime="litert",
        exporter="edgekit.exporting.litert",
        metadata='the flatbuffer\'s Model.metadata entry "edgekit"',
        prefix="litert-",
        extra="litert",
        description="LiteRT (TensorFlow Lite) flatbuffer, XNNPACK; batch 1, resized by the runtime",
    )
)
NCNN = register_format(
    Format(
        "ncnn",
        ".ncnn.param",
        (Precision.FP32, Precision.FP16),
        runtime="ncnn",
        exporter="edgekit.exporting.ncnn",
        metadata="a side file <file>.json",
        prefix="ncnn-",
        extra="ncnn",
        companions=_ncnn_companions,
        description="ncnn (.ncnn.param + .ncnn.bin), CPU",
        missing_precisions="ncnn has no int8 route from pip (its ncnn2table/ncnn2int8 tools ship in no wheel)",
    )
)
