"""ONNX Runtime's quantization tooling, wrapped: pre-processing, calibration, its static QDQ quantizer with
edgekit's settings, dynamic int8 of MatMul/Gemm, float16, its topological sort, and the sessions that run candidates.

Every call into ``onnxruntime.quantization`` and ``onnxruntime.transformers`` is here, each failure turned into a
one-line ExportError. What edgekit does to the quantizer's output lives apart: graph edits in ``qdq.py``, weight
rounding in ``rounding.py``, the accuracy-aware search in ``ort_search.py``.

Choices made here (``benchmarks/bench_quantization.py`` measures them; tables in ``benchmarks/results/``):
- uint8 activations and int8 per-channel weights: the fast kernel pair on x86 (VNNI); int8 activations run on
  slower kernels, per-tensor weights lose much of the agreement (its "per-tensor weights", "uint8 weights" rows);
- activation ranges are the 99.999th percentile of each tensor's absolute values (ORT's percentile calibrator), not
  its min and max, which spend the int8 range on a few outliers (its "minmax calibration" rows). The cost is a
  histogram pass;
- ranges are computed once (``calibrate``) and reused for every re-quantization with other nodes kept in float,
  which is what makes the accuracy-aware search affordable;
- dynamic int8 is restricted to MatMul/Gemm: on Conv it becomes ConvInteger, several times slower than fp32;
- every input first goes through ``quant_pre_process`` (shape inference + ORT graph cleanup), without which
  the quantizer fails on dynamo-exported models ("Inferred shape and existing shape differ").
Results are written atomically, keeping the input model's metadata_props.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ...errors import ExportError, ModelError, first_line
from ...files import atomic_path
from ...progress import quiet
from ...safety import onnx_session
from .rounding import ConvInputs

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
PERCENTILE = 99.999  # the percentile calibration's clipping point
HISTOGRAM_CHUNK = 16  # images per collect_data call of ORT's histogram calibrators (their memory grows with it)
DYNAMIC_OP_TYPES = ("MatMul", "Gemm")
# The TensorRT recipe (2048 bins, 128 quantized bins). Entropy clips heavy-tailed activations that depthwise/SE nets
# need (bench_quantization.py's "entropy" row against "minmax calibration"); it is offered, not the default, and
# parity catches a bad result.
ENTROPY_BINS = 2048
ENTROPY_QUANTIZED_BINS = 128


class BatchReader:
    """The onnxruntime CalibrationDataReader protocol over any iterable of input batches.

    With ``single_images`` every batch is split into batches of one image: ORT's histogram calibrators
    (entropy, percentile) stack all collected outputs into one array and fail on batches of unequal size.
    """

    def __init__(self, input_name: str, batches: Iterable[np.ndarray], single_images: bool = False):
        self.input_name = input_name
        self._batches: Iterator[np.ndarray] = _split(batches) if single_images else iter(batches)
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self.count += len(batch)
        return {self.input_name: np.ascontiguousarray(batch)}

    def rewind(self) -> None:  # part of the protocol; a one-pass reader cannot rewind and ORT does not need it
        return None


def _split(batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for batch in batches:
        for index in range(len(batch)):
            yield batch[index : index + 1]


@dataclass(eq=False)
class Ranges:
    """Activation ranges from one calibration pass, saved as ORT's calibration cache (a JSON file), and what the
    same pass saw of every Conv's input (``rounding.ConvInputs``: channel means for bias correction, patch second
    moments for GPTQ rounding)."""

    path: Path
    images: int
    method: str
    input_means: dict[str, np.ndarray] = field(default_factory=dict)
    input_moments: dict[str, np.ndarray] = field(default_factory=dict)
    rounded: dict[tuple, np.ndarray] = field(default_factory=dict)  # GPTQ's integers per Conv: the same for every re-quantization


def prepare(onnx_in: str | os.PathLike, prepared: Path) -> Path:
    """ORT's quantization pre-processing (shape inference, graph cleanup); node names here are what exclusions use."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with quiet():
            quant_pre_process(str(onnx_in), str(prepared))
    except Exception as exc:
        raise ExportError(f"quantization pre-processing (shape inference) of {onnx_in} failed: {first_line(exc, 300)}") from exc
    return prepared


def calibrate(prepared: Path, calibration_batches: Iterable[np.ndarray], method: str, workdir: Path) -> Ranges:
    """Activation ranges of ``prepared`` over ``calibration_batches`` (minmax, percentile or entropy), computed once."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if method not in CALIBRATION_METHODS:
        raise ExportError(f"calibration method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    batches = iter(calibration_batches)
    first = next(batches, None)
    if first is None or len(first) == 0:
        raise ExportError("static int8 quantization got no calibration images; pass a folder with images (--calib-data)")
    model = load_model(prepared)
    inputs = ConvInputs(model)
    observed = _observed(inputs, itertools.chain([first], batches))
    reader = BatchReader(model.graph.input[0].name, observed, single_images=method != "minmax")
    calibrate_method, extra = _calibration_method(method), _calibrator_options(method)
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # what quantize_static calibrates by default
    try:
        with quiet():
            calibrator = create_calibrator(
                prepared,
                op_types,
                augmented_model_path=str(workdir / f"augmented-{method}.onnx"),
                calibrate_method=calibrate_method,
                extra_options=extra,
            )
            _collect(calibrator, reader, method)
            ranges = calibrator.compute_data()
    except Exception as exc:  # ORT raises ValueError, RuntimeError, its own types...
        raise ExportError(f"{method} calibration failed: {first_line(exc, 300)}") from exc
    cache = workdir / f"ranges-{method}.json"
    save_tensors_data(ranges, cache)
    return Ranges(cache, reader.count, method, inputs.means(), inputs.moments())


def _calibration_method(method: str):  # ORT's CalibrationMethod for one of CALIBRATION_METHODS
    from onnxruntime.quantization.calibrate import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[method]


def _calibrator_options(method: str) -> dict[str, float]:
    if method == "entropy":
        # quantize_static builds its entropy calibrator with 128 bins and 128 quantized bins, which leaves
        # exactly one candidate threshold (the full range): the same ranges as minmax. We use a real histogram.
        return {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS}
    if method == "percentile":
        return {"percentile": PERCENTILE}
    return {}


def _collect(calibrator, reader: BatchReader, method: str) -> None:
    """Feed ``reader``'s images to ``calibrator``."""
    if method == "minmax":  # its augmented model outputs one min and one max per tensor: nothing piles up
        calibrator.collect_data(reader)
        return
    # A histogram calibrator keeps every activation of everything one collect_data call reads before it folds them
    # into histograms (about 40 MB per Lite0 image at 224 px, 12 GB for 300 images); its histograms carry over
    # between calls, so it gets a few images per call.
    name = reader.input_name
    while chunk := list(itertools.islice(iter(reader.get_next, None), HISTOGRAM_CHUNK)):
        calibrator.collect_data(BatchReader(name, (item[name] for item in chunk)))


def _observed(inputs: ConvInputs, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """``batches`` unchanged, with ``inputs`` adding what the float model's Conv inputs are on each one."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = onnx_session(inputs.probe, options) if inputs.tensors else None
    for batch in batches:
        if session is not None and len(batch):
            inputs.add(dict(zip(inputs.tensors, session.run(None, {inputs.input_name: np.ascontiguousarray(batch)}))), len(batch))
        yield batch


def quantize_qdq(prepared: Path, onnx_out: Path, ranges: Ranges, excluded: Iterable[str], per_channel: bool, source) -> None:
    """ORT's static quantizer alone, with precomputed ``ranges``: QDQ, uint8 activations, int8 weights (per output
    channel with ``per_channel``), ``excluded`` nodes left out; ``source`` names the model in an error. What edgekit
    makes of its output is ``qdq.quantize_with_ranges``."""
    from onnxruntime.quantization import QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    calibrate_method = _calibration_method(ranges.method)  # ORT checks it against the cache
    try:
        with quiet():
            ort_quantize_static(
                str(prepared),
                str(onnx_out),
                None,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(excluded),
                calibrate_method=calibrate_method,
                calibration_cache_path=ranges.path,
            )
    except Exception as exc:  # the quantizer raises ValueError, RuntimeError, ORT errors...
        raise ExportError(f"static int8 quantization of {source} failed: {first_line(exc, 300)}") from exc


def quantize_dynamic_matmul(onnx_in: str | os.PathLike, onnx_out: str | os.PathLike) -> Path:
    """Dynamic int8 of MatMul/Gemm weights only (activations quantized on the fly); convolutions stay float (see the
    module docstring). For CNNs the classifier head is all this touches: use ``qdq.quantize_static`` for the rest."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="edgekit-quant-") as workdir:
        prepared = prepare(onnx_in, Path(workdir) / "prepared.onnx")
        if not any(node.op_type in DYNAMIC_OP_TYPES for node in load_model(prepared).graph.node):
            raise ExportError(f"{onnx_in} has no MatMul/Gemm node, so dynamic int8 would change nothing; use int8 (static) instead")
        with atomic_path(onnx_out) as tmp, quiet():
            try:
                ort_quantize_dynamic(str(prepared), str(tmp), op_types_to_quantize=list(DYNAMIC_OP_TYPES), weight_type=QuantType.QInt8)
            except Exception as exc:
                raise ExportError(f"dynamic int8 quantization of {onnx_in} failed: {first_line(exc, 300)}") from exc
            copy_metadata(onnx_in, tmp)
    return Path(onnx_out)


def convert_fp16(onnx_in: str | os.PathLike, onnx_out: str | os.PathLike) -> Path:
    """Weights and activations in float16, inputs and outputs kept float32 (callers feed the same arrays)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = load_model(onnx_in)
    try:
        with quiet():
            converted = convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:
        raise ExportError(f"float16 conversion of {onnx_in} failed: {first_line(exc, 300)}") from exc
    # The converter appends the input Casts at the end of the node list; ORT does not mind, onnx.checker
    # (and stricter runtimes) require topological order.
    sort_topologically(converted.graph)
    with atomic_path(onnx_out) as tmp:
        tmp.write_bytes(converted.SerializeToString())
        copy_metadata(onnx_in, tmp)
    return Path(onnx_out)


def sort_topologically(graph) -> None:
    """Reorder ``graph.node`` in place so every node comes after the producers of its inputs (stable), with
    onnxruntime's own ``OnnxModel.graph_topological_sort``; a cycle or a dangling input is an ExportError."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    try:
        OnnxModel.graph_topological_sort(graph)
    except RuntimeError as exc:
        raise ExportError(f"the graph has a cycle or a dangling input ({first_line(exc)}); it cannot be ordered") from exc


def load_model(path):
    """The ONNX graph at ``path``, or an ExportError naming the file (the quantizers' one way to read a model)."""
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise ExportError(f"{path} is not a readable ONNX model ({type(exc).__name__}); re-export it") from exc


def copy_metadata(source: str | os.PathLike, target: Path) -> None:
    """Give ``target`` the metadata_props of ``source`` (the quantizer adds its own keys and may drop ours)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    if not props:
        return
    model = onnx.load(str(target))
    from ..onnx_graph import set_metadata

    set_metadata(model, props)
    target.write_bytes(model.SerializeToString())


def ort_session(model: bytes | str | Path, session_config: dict[str, str]):
    """An ORT CPU session for an ONNX model (a file or serialized bytes) under the given session config."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key, value in session_config.items():
        options.add_session_config_entry(key, value)
    try:
        return onnx_session(model if isinstance(model, bytes) else Path(model), options)
    except ModelError as exc:
        raise ExportError(f"a quantized candidate cannot be run: {exc}") from exc


def run_onnx(model: bytes | str | Path, inputs: np.ndarray, session_config: dict[str, str], batch: int = 16) -> np.ndarray:
    """Logits of an ONNX model (a file or serialized bytes) under the given ORT session config."""
    session = ort_session(model, session_config)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: inputs[i : i + batch]})[0] for i in range(0, len(inputs), batch)]).astype(np.float32)
