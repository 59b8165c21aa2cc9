"""What export returns: one typed ``VariantResult`` per file, in one ``ExportResult``.

Every fact another part of edgekit reads (the int8 search, the layers kept in float, the ISA a file was validated
on, the session option its app must set, the quick speed check, ORT's mobile verdict, warnings) is a typed field.
``facts`` holds what only a reader of the JSON needs (opset, delegation counts...); edgekit never reads it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..card import MeasuredOn
from ..hardware import IsaClass
from ..metadata import InputKind
from ..parity_check import ParityResult
from ..results import DataSource, Result
from ..variants import Variant
from .quantize.fallback import Int8Search
from .quantize.nncf import NncfSearch
from .speed_check import PairedTiming

# Schema 2: typed int8/speed/mobile fields instead of a details dict, DataSource objects instead of "images:<dir>".
EXPORT_SCHEMA = 2


class _Typed(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Int8Facts(_Typed):
    """How an int8 file was made and proven: calibration, the quantizer's scheme, the CPU class it was validated on,
    the ORT session options its app must set there, and the accuracy-aware search (None where it did not run)."""

    quantizer: str  # "onnxruntime quantize_static", "nncf 3.4.0", "torchao pt2e XNNPACKQuantizer"
    calibration_images: int
    calibration_data: DataSource | None = None
    calibration_method: str | None = None  # ORT: minmax, entropy, percentile
    activations: str = ""
    weights: str = ""
    bias_correction: str | None = None
    overflow_fix: bool | None = None  # OpenVINO/NNCF: 7-bit weights where int8 dot products saturate
    isa: IsaClass
    session_config: dict[str, str] = Field(default_factory=dict)  # ORT session config entries the app must set on `isa`
    kept_float: list[str] = Field(default_factory=list)  # layers left in float (first/last, and the search's)
    search: Int8Search | NncfSearch | None = None
    search_skipped: str | None = None  # why the accuracy-aware search did not run
    search_validated_on: str | None = None  # where candidates were judged, when not the exported file itself


class OrtFile(_Typed):
    """The ORT-format (.ort, ORT Mobile) copy written beside an ONNX file."""

    file: str
    bytes: int
    max_abs_diff: float  # against the .onnx it came from


class ProviderUsability(_Typed):
    """ORT's mobile checker for one provider: the nodes it would take with the shapes as they are."""

    supported_nodes: int
    nodes: int
    coverage: float
    partitions: int
    suitability: str  # YES / MAYBE / NO
    unsupported_ops: list[str] = Field(default_factory=list)
    nodes_with_dynamic_input: int = 0


class VariantResult(_Typed):
    """One exported file and its parity check."""

    variant: str  # the Variant's name: "fp32", "int8", "openvino-int8", "fp32-uint8in-b4", ...
    format: str  # the Format's name
    path: str
    size_bytes: int  # the file and its companions (an IR's .bin, a .pte's side file)
    seconds: float  # export + quantization wall time (parity not included; see parity.seconds)
    input_kind: InputKind = InputKind.FLOAT
    batch_sizes_checked: list[int] = Field(default_factory=list)
    parity: ParityResult
    passed: bool
    failures: list[str] = Field(default_factory=list)  # parity failures, plus a batch-size check that failed
    target_parity: ParityResult | None = None  # with --target: the same check from the logits the target returned
    int8: Int8Facts | None = None
    speed_vs_fp32: PairedTiming | None = None  # ONNX int8: the quick check against fp32 on this CPU
    fixed_from: str | None = None  # a fixed-batch twin: the file it was made from
    mobile: dict[str, ProviderUsability] | None = None  # ORT's mobile verdict per provider (fixed-batch runs)
    ort_file: OrtFile | None = None
    warnings: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    facts: dict[str, Any] = Field(default_factory=dict)  # descriptive only: opset, delegation, IR weights...

    @property
    def as_variant(self) -> Variant:
        return Variant.parse(self.variant)

    @property
    def file_name(self) -> str:
        return Path(self.path).name


class ExportResult(Result):
    """Every variant exported from one run."""

    SCHEMA_VERSION = EXPORT_SCHEMA
    MIN_SCHEMA_VERSION = EXPORT_SCHEMA  # schema 1 kept int8 facts in an untyped dict: export again

    run_dir: str
    variants: list[VariantResult]
    passed: bool
    parity_data: DataSource
    seconds: float = 0.0
    target: MeasuredOn | None = None  # with --target: where every file was validated again

    def get(self, variant: str | Variant) -> VariantResult | None:
        """The result of one variant, None if it was not exported."""
        name = Variant.parse(variant).name
        return next((v for v in self.variants if v.variant == name), None)
