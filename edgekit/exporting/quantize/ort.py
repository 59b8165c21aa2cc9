"""ONNX -> smaller ONNX with ONNX Runtime's quantization tools: static int8 (QDQ, calibrated), dynamic int8 of
MatMul/Gemm only, float16.

Choices made here, from measurements on this project's machines (README, "Measured"):
- static int8 uses uint8 activations and int8 per-channel weights: the fast kernel pair on x86 (VNNI);
  int8 activations ran 3x slower; per-tensor weights cost Lite0 30 points of agreement (54.5% vs 85%);
- by default the first Conv and the final Gemm/MatMul stay in float (Lite0 ImageNet weights, 108 real photo
  crops: 87.0% agreement vs 81.5% fully quantized, README "Measured"); what else must stay float is found by
  ``fallback.py``;
- activation ranges are the 99.999th percentile of each tensor's absolute values (ORT's percentile calibrator), not
  its min and max: zoo Lite0, 400 held-out crops, two calibration sets: 95.25% vs 94.25% and 95.25% vs 95.0%
  agreement; the search from them 99.0% vs 97.0%; digits 99.4% vs 98.6% (README, "Measured"). The cost is a
  histogram pass (about 2 s per 10 images at 224 px on 2 cores);
- calibration ranges are computed once (``calibrate``) and reused for every re-quantization with other nodes
  kept in float, which is what makes the accuracy-aware search affordable;
- dynamic int8 is restricted to MatMul/Gemm: on Conv it becomes ConvInteger, 5-10x SLOWER than fp32;
- every input first goes through ``quant_pre_process`` (shape inference + ORT graph cleanup), without which
  the quantizer fails on dynamo-exported models ("Inferred shape and existing shape differ").

Intermediate files live in a private temporary directory; the result is written atomically, keeping the
input model's metadata_props.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ...errors import ExportError, first_line
from ...files import atomic_path
from ...progress import quiet
from ...safety import onnx_session

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
PERCENTILE = 99.999  # the percentile calibration's clipping point
HISTOGRAM_CHUNK = 16  # images per collect_data call of ORT's histogram calibrators (their memory grows with it)
DYNAMIC_OP_TYPES = ("MatMul", "Gemm")


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


def quantize_static(
    onnx_in: str | os.PathLike,
    onnx_out: str | os.PathLike,
    calibration_batches: Iterable[np.ndarray],
    method: str = "percentile",
    per_channel: bool = True,
    exclude_first_last: bool = True,
    info: dict | None = None,
    exclude: Iterable[str] = (),
    bias_correction: bool = True,
    gptq: bool = True,
) -> Path:
    """Static QDQ int8 (uint8 activations, int8 weights) calibrated on ``calibration_batches``.

    ``calibration_batches`` yields arrays the model accepts (e.g. float32 NCHW, a few hundred real
    images in total). ``method``: minmax, entropy or percentile (99.999). ``exclude_first_last`` keeps the
    first Conv and the final Gemm/MatMul in float32 (see the module docstring for why); ``exclude`` names more
    nodes to keep in float. ``gptq``, ``bias_correction``: see ``ConvInputs``. ``info``, if given, receives what was
    done: nodes kept in float, number of calibration images.
    """
    with tempfile.TemporaryDirectory(prefix="edgekit-quant-") as workdir:
        prepared = prepare(onnx_in, Path(workdir) / "prepared.onnx")
        ranges = calibrate(prepared, calibration_batches, method, Path(workdir))
        excluded = (first_and_last_compute_nodes(load_model(prepared)) if exclude_first_last else []) + [n for n in exclude]
        quantize_with_ranges(
            prepared,
            onnx_out,
            ranges,
            excluded,
            per_channel=per_channel,
            metadata_from=onnx_in,
            bias_correction=bias_correction,
            gptq=gptq,
        )
    if info is not None:
        info.update({"kept_float": excluded, "calibration_images": ranges.images, "calibration_method": method})
    return Path(onnx_out)


class Ranges:
    """Activation ranges from one calibration pass, saved as ORT's calibration cache (a JSON file), and what the
    same pass saw of every Conv's input (``ConvInputs``: channel means for bias correction, patch second moments
    for GPTQ rounding)."""

    def __init__(
        self,
        path: Path,
        images: int,
        method: str,
        input_means: dict[str, np.ndarray] | None = None,
        input_moments: dict[str, np.ndarray] | None = None,
    ):
        self.path, self.images, self.method = path, images, method
        self.input_means = input_means or {}
        self.input_moments = input_moments or {}
        self.rounded: dict[tuple, np.ndarray] = {}  # GPTQ's integers per Conv: the same for every re-quantization


def prepare(onnx_in: str | os.PathLike, prepared: Path) -> Path:
    """ORT's quantization pre-processing (shape inference, graph cleanup); node names here are what exclusions use."""
    return _pre_process(onnx_in, prepared)


def calibrate(prepared: Path, calibration_batches: Iterable[np.ndarray], method: str, workdir: Path) -> Ranges:
    """Activation ranges of ``prepared`` over ``calibration_batches`` (minmax, percentile or entropy), computed once."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if method not in CALIBRATION_METHODS:
        raise ExportError(f"calibration method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    batches = iter(calibration_batches)
    first = next(batches, None)
    if first is None or len(first) == 0:
        raise ExportError("static int8 quantization got no calibration images; pass a folder with images (--calib-data)")
    model = load_model(prepared)
    input_name = model.graph.input[0].name
    inputs = ConvInputs(model)
    reader = BatchReader(input_name, inputs.observe(itertools.chain([first], batches)), single_images=method != "minmax")
    if method == "entropy":
        # quantize_static builds its entropy calibrator with 128 bins and 128 quantized bins, which leaves
        # exactly one candidate threshold (the full range): the same ranges as minmax. We use a real histogram.
        extra: dict[str, float] = {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS}
    elif method == "percentile":
        extra = {"percentile": PERCENTILE}
    else:
        extra = {}
    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
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
            if method == "minmax":  # its augmented model outputs one min and one max per tensor: nothing piles up
                calibrator.collect_data(reader)
            else:
                # A histogram calibrator keeps every activation of everything one collect_data call reads before it
                # folds them into histograms (about 40 MB per Lite0 image at 224 px, 12 GB for 300 images); its
                # histograms carry over between calls, so it gets a few images per call.
                while chunk := list(itertools.islice(iter(reader.get_next, None), HISTOGRAM_CHUNK)):
                    calibrator.collect_data(BatchReader(input_name, (item[input_name] for item in chunk)))
            ranges = calibrator.compute_data()
    except Exception as exc:  # ORT raises ValueError, RuntimeError, its own types...
        raise ExportError(f"{method} calibration failed: {first_line(exc, 300)}") from exc
    cache = workdir / f"ranges-{method}.json"
    save_tensors_data(ranges, cache)
    return Ranges(cache, reader.count, method, inputs.means(), inputs.moments())


class ConvInputs:
    """What every Conv sees over the calibration images, in the float model, for two corrections of int8 weights
    that cost nothing at run time (same graph, same kernels, only the stored integers change):

    - per-channel means of its input, for bias correction (Nagel et al., "Data-Free Quantization", 2019, sec. 4.2):
      rounding weights shifts each output channel's mean by (W_int8 - W) . E[x]; the int32 bias absorbs it;
    - the second moments E[p p^T] of its input patches (im2col, per group), for GPTQ rounding (Frantar et al.,
      "GPTQ", 2023, the OBQ rule applied column by column): each weight's rounding error is compensated by the
      weights not yet rounded, so that the layer's *output* on these inputs moves least, instead of each weight
      moving least. Layers whose patches are longer than ``MAX_GPTQ_PATCH``, or that saw fewer than
      ``MIN_PATCHES_PER_COLUMN`` patches per patch element, keep nearest rounding: with too few samples the
      compensation fits the calibration images' noise (seen: a 3x3 over 512 channels at 2x2 pixels, 24 images,
      made the held-out error worse).

    On zoo Lite0 (README, Measured) the rounding of the weights was most of int8's loss: nearest rounding 85.5%
    top-1 agreement on held-out crops, bias correction 91.5%, GPTQ rounding then bias correction 94.5%.
    """

    def __init__(self, model, moments: bool = True):
        import onnx
        from onnx import numpy_helper

        initializers = {t.name: t for t in model.graph.initializer}
        self._convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in initializers]
        self._names = sorted({n.input[0] for n in self._convs})
        self._patches = {}  # node name -> (kernel, group, pads, strides, dilations), for the moments
        for node in self._convs if moments else []:
            shape = numpy_helper.to_array(initializers[node.input[1]]).shape  # [out, in / group, *kernel]
            lists = {a.name: list(a.ints) for a in node.attribute if a.ints}
            group = next((int(a.i) for a in node.attribute if a.name == "group"), 1)
            auto_pad = next((a.s for a in node.attribute if a.name == "auto_pad"), b"NOTSET")
            # auto_pad (SAME_*) leaves the padding to the runtime; such a layer keeps nearest rounding.
            if len(shape) == 4 and int(np.prod(shape[1:])) <= MAX_GPTQ_PATCH and auto_pad == b"NOTSET":
                self._patches[node.name] = (
                    tuple(shape[2:]),
                    group,
                    lists.get("pads", [0, 0, 0, 0]),
                    lists.get("strides", [1, 1]),
                    lists.get("dilations", [1, 1]),
                )
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.output[:]
        for name in self._names:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        self._probe = probe.SerializeToString()
        self._input = model.graph.input[0].name
        self._sums: dict[str, np.ndarray] = {}
        self._moments: dict[str, np.ndarray] = {}
        self._patch_counts: dict[str, int] = {}
        self._count = 0

    def observe(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Pass ``batches`` through unchanged, adding what each one shows on the way."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = onnx_session(self._probe, options) if self._names else None
        for batch in batches:
            if session is not None and len(batch):
                outputs = dict(zip(self._names, session.run(None, {self._input: np.ascontiguousarray(batch)})))
                for name, value in outputs.items():
                    sums = value.astype(np.float64).mean(axis=tuple(range(2, value.ndim))).sum(axis=0)
                    self._sums[name] = self._sums[name] + sums if name in self._sums else sums
                for node in self._convs:
                    if node.name in self._patches:
                        moment, patches = _patch_moments(outputs[node.input[0]], *self._patches[node.name])
                        self._moments[node.name] = self._moments[node.name] + moment if node.name in self._moments else moment
                        self._patch_counts[node.name] = self._patch_counts.get(node.name, 0) + patches
                self._count += len(batch)
            yield batch

    def means(self) -> dict[str, np.ndarray]:
        """Input tensor name -> mean of each channel."""
        return {name: total / self._count for name, total in self._sums.items()} if self._count else {}

    def moments(self) -> dict[str, np.ndarray]:
        """Conv node name -> [group, patch, patch] sum of p p^T over every patch seen (the scale does not matter),
        for the layers that saw enough patches for GPTQ."""
        return {
            name: moment for name, moment in self._moments.items() if self._patch_counts[name] >= MIN_PATCHES_PER_COLUMN * moment.shape[-1]
        }


MAX_GPTQ_PATCH = 4608  # patch length (in channels / group x kernel area) up to which a Conv gets GPTQ rounding: 3x3 over 512 channels
# Patches seen per patch element before GPTQ is trusted. Lite0 at 224 px on 100 images has 4.25 at its worst layer
# (1x1 over 1152 channels at 7x7 pixels) and gained there; at the default 300 calibration images every layer has 12+.
MIN_PATCHES_PER_COLUMN = 4


def _patch_moments(x: np.ndarray, kernel, group: int, pads, strides, dilations) -> tuple[np.ndarray, int]:
    """Sum over the batch's patches of p p^T, per group: [group, patch, patch] (float64), and how many patches."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    tensor = F.pad(tensor, (pads[1], pads[3], pads[0], pads[2]))  # ONNX pads: begin H, begin W, end H, end W
    columns = F.unfold(tensor, tuple(kernel), dilation=tuple(dilations), stride=tuple(strides))  # [N, C * k, L]
    batch, length, places = columns.shape
    columns = columns.reshape(batch, group, length // group, places).permute(1, 2, 0, 3).reshape(group, length // group, -1)
    return (columns @ columns.transpose(1, 2)).double().numpy(), columns.shape[-1]


def round_weights_gptq(qdq, float_model, moments: dict[str, np.ndarray], damping: float = 0.01, cache: dict | None = None):
    """``qdq`` with every quantized Conv's int8 weights re-rounded by GPTQ against its input's ``moments`` (see
    ``ConvInputs``), on the quantizer's own scales and integer range. Returns ``qdq`` (edited in place).

    ``damping`` x the mean diagonal is added to each moment matrix (GPTQ's default, 1%), which keeps the inverse
    stable where inputs are nearly collinear; columns go in order of decreasing input energy ("act order").
    ``cache`` keeps each layer's integers (keyed by layer, scales and range): a layer's rounding does not depend on
    which other layers are in float, so the accuracy-aware search solves each layer once."""
    from onnx import numpy_helper

    initializers = {t.name: t for t in qdq.graph.initializer}
    producers = {out: n for n in qdq.graph.node for out in n.output}
    float_nodes = {n.name: n for n in float_model.graph.node if n.op_type == "Conv"}
    float_values = {t.name: t for t in float_model.graph.initializer}
    for node in qdq.graph.node:
        original = float_nodes.get(node.name)
        if node.op_type != "Conv" or original is None or node.name not in moments:
            continue
        stored = _stored_dequantize(node.input[1], producers, initializers)
        if stored is None or original.input[1] not in float_values:
            continue
        quantized, scale, zero, name = stored
        weight = numpy_helper.to_array(float_values[original.input[1]]).astype(np.float64)
        scale, zero = np.broadcast_to(scale, weight.shape[:1]), np.broadcast_to(zero, weight.shape[:1])
        hessian = moments[node.name]
        group = hessian.shape[0]
        shape = (group, weight.shape[0] // group, -1)
        # The integer range the quantizer used (symmetric int8 is [-127, 127], reduce_range [-64, 64], uint8 [0, 255]):
        # its own extremes, since the largest weight of every channel maps onto one of them.
        low, high = float(quantized.min()), float(quantized.max())
        key = (node.name, scale.tobytes(), zero.tobytes(), low, high)
        if cache is not None and key in cache:
            rounded = cache[key]
        else:
            rounded = _gptq(weight.reshape(shape), hessian, scale.reshape(shape[:2]), zero.reshape(shape[:2]), low, high, damping)
            if cache is not None:
                cache[key] = rounded
        initializers[name].CopyFrom(numpy_helper.from_array(rounded.reshape(quantized.shape).astype(quantized.dtype), name))
    return qdq


def _inverse_cholesky(hessian: np.ndarray) -> np.ndarray | None:
    """U with U^T U = inverse(hessian), per group (GPTQ's form: Cholesky, inverse from it, Cholesky again, in
    float32 as GPTQ does; a third of the work of a general inverse); None if ``hessian`` is not positive definite
    (the damping makes that rare)."""
    import torch

    matrix = torch.from_numpy(hessian.astype(np.float32))
    lower, info = torch.linalg.cholesky_ex(matrix)
    if bool(info.any()):
        return None
    upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
    return None if bool(info.any()) else upper.double().numpy()


GPTQ_BLOCK = 128  # columns rounded before the rest is updated (GPTQ's lazy batch update: same result, fewer passes)


def _gptq(
    weight: np.ndarray, hessian: np.ndarray, scale: np.ndarray, zero: np.ndarray, low: float, high: float, damping: float
) -> np.ndarray:
    """Integers for ``weight`` [group, rows, columns] that minimize each row's output error w.r.t. ``hessian``
    [group, columns, columns]; ``scale``/``zero`` [group, rows] are the quantizer's."""
    groups, _, columns = weight.shape
    weight = weight.copy()
    hessian = hessian.astype(np.float64).copy()
    diagonal = np.diagonal(hessian, axis1=1, axis2=2).copy()
    index = np.arange(columns)
    # A dead input (always 0) gets a unit diagonal: its weights are rounded to nearest and move nothing else.
    hessian[:, index, index] += damping * diagonal.mean(axis=1, keepdims=True) + (diagonal <= 0)
    order = np.argsort(-diagonal, axis=1, kind="stable")
    weight = np.take_along_axis(weight, order[:, None, :], axis=2)
    hessian = np.take_along_axis(np.take_along_axis(hessian, order[:, :, None], axis=1), order[:, None, :], axis=2)
    upper = _inverse_cholesky(hessian)
    if upper is None:  # not positive definite even damped: nearest rounding, as the quantizer did
        upper = np.broadcast_to(np.eye(columns), hessian.shape)
    rounded = np.empty_like(weight)
    for begin in range(0, columns, GPTQ_BLOCK):
        end = min(begin + GPTQ_BLOCK, columns)
        errors = np.empty(weight.shape[:2] + (end - begin,))
        for column in range(begin, end):
            values = weight[:, :, column]
            integers = np.clip(np.round(values / scale) + zero, low, high)
            rounded[:, :, column] = integers
            error = (values - (integers - zero) * scale) / upper[:, column, column][:, None]
            weight[:, :, column + 1 : end] -= error[:, :, None] * upper[:, None, column, column + 1 : end]
            errors[:, :, column - begin] = error
        weight[:, :, end:] -= errors @ upper[:, begin:end, end:]
    return np.take_along_axis(rounded, np.argsort(order, axis=1)[:, None, :], axis=2)


def quantize_with_ranges(
    prepared: Path,
    onnx_out: str | os.PathLike,
    ranges: Ranges,
    excluded: Iterable[str],
    per_channel: bool = True,
    metadata_from: str | os.PathLike | None = None,
    bias_correction: bool = True,
    gptq: bool = True,
) -> Path:
    """QDQ int8 of ``prepared`` with precomputed ``ranges``, keeping ``excluded`` nodes in float; written atomically.

    ``gptq``: each quantized Conv's weights are rounded to move its output least on the calibration images;
    ``bias_correction``: its int32 bias then absorbs the mean shift that rounding leaves (see ``ConvInputs``)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[ranges.method]  # ORT checks it against the cache
    with atomic_path(onnx_out) as tmp, quiet():
        try:
            ort_quantize_static(
                str(prepared),
                str(tmp),
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
            raise ExportError(f"static int8 quantization of {metadata_from or prepared} failed: {first_line(exc, 300)}") from exc
        refined, float_model = load_model(tmp), load_model(prepared)
        release_float_layers(refined, float_model)
        if gptq and ranges.input_moments:
            round_weights_gptq(refined, float_model, ranges.input_moments, cache=ranges.rounded)
        if bias_correction and ranges.input_means:
            correct_biases(refined, float_model, ranges.input_means)
        tmp.write_bytes(refined.SerializeToString())
        if metadata_from is not None:
            _copy_metadata(metadata_from, tmp)
    return Path(onnx_out)


FLOAT_LAYER_TYPES = ("Conv", "ConvTranspose", "Gemm")  # what ORT's WeightBiasQuantization rewrites


def release_float_layers(qdq, float_model):
    """``qdq`` with every layer left in float (a float weight initializer) reading float input: where its input
    comes through a DequantizeLinear of a QuantizeLinear, it reads the float activation behind them instead
    (``FloatActivations``), and Q/DQ pairs left without a consumer are removed. Returns ``qdq`` (edited in place).

    Why: ONNX Runtime's basic graph optimizations include ``WeightBiasQuantization`` (ORT 1.20+), which quantizes
    the weights of any Conv/ConvTranspose/Gemm whose input comes from a per-tensor DequantizeLinear, to
    *per-tensor* int8 at session load. A layer "kept in float" by ``nodes_to_exclude`` therefore ran in per-tensor
    int8, the worst choice there is (zoo Lite0 with its depthwise convolutions kept this way: 72% agreement), and
    the accuracy-aware search measured layers that were not what it asked for.
    """
    initializers = {t.name for t in qdq.graph.initializer}
    activations = FloatActivations(qdq, float_model)
    for node in list(qdq.graph.node):
        if node.op_type in FLOAT_LAYER_TYPES and len(node.input) > 1 and node.input[1] in initializers:
            released = activations.behind(node.input[0])
            if released is not None:
                node.input[0] = released
    _remove_dead_qdq(qdq)
    if activations.added:
        sort_topologically(qdq.graph)
    return qdq


class FloatActivations:
    """The float tensor behind a DequantizeLinear, as the float model computes it.

    ORT's quantizer folds a Relu/Clip that follows a Conv into the next QuantizeLinear's range: the Conv then
    writes straight to the activation's name, and only the QuantizeLinear clamps. Reading the QuantizeLinear's
    input in float would skip the activation (seen: ReLU6 lost, 0% agreement), so a copy of the float model's
    activation node is added in front of the reader.
    """

    def __init__(self, qdq, float_model):
        self.qdq = qdq
        self.producers = {out: n for n in qdq.graph.node for out in n.output}
        self.float_producers = {out: n for n in float_model.graph.node for out in n.output}
        self.float_initializers = {t.name: t for t in float_model.graph.initializer}
        self.added = False

    def behind(self, tensor: str) -> str | None:
        """The float tensor that ``tensor`` (a DequantizeLinear output) dequantizes; None if there is none to read."""
        import onnx

        dequantize = self.producers.get(tensor)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            return None
        quantize = self.producers.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear":
            return None
        source = quantize.input[0]
        original, current = self.float_producers.get(source), self.producers.get(source)
        if original is None or current is None or original.op_type not in ("Relu", "Clip") or current.op_type == original.op_type:
            return source
        copy_name = source + "_edgekit_float"
        if copy_name in self.producers:
            return copy_name
        present = {t.name for t in self.qdq.graph.initializer}
        for bound in original.input[1:]:
            if bound and bound not in present:
                if bound not in self.float_initializers:
                    return None  # a bound computed by a node: leave this layer as the quantizer made it
                self.qdq.graph.initializer.append(self.float_initializers[bound])
        activation = onnx.NodeProto()
        activation.CopyFrom(original)
        activation.name = (original.name or source) + "_edgekit_float"
        activation.input[0] = source
        del activation.output[:]
        activation.output.append(copy_name)
        self.qdq.graph.node.append(activation)  # the caller sorts the graph
        self.producers[copy_name] = activation
        self.added = True
        return copy_name


def _remove_dead_qdq(model) -> None:
    """Drop QuantizeLinear/DequantizeLinear nodes whose outputs nothing reads (repeated: a Q feeds only its DQ)."""
    while True:
        used = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in used for o in n.output)]
        if not dead:
            return
        for node in dead:
            model.graph.node.remove(node)


def _stored_dequantize(tensor: str, producers: dict, initializers: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, str] | None:
    """(stored integers, scale, zero point, integers' initializer name) of the DequantizeLinear that makes
    ``tensor`` from an initializer (a quantized weight or bias); None if ``tensor`` is not made that way."""
    from onnx import numpy_helper

    node = producers.get(tensor)
    if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
        return None
    scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
    has_zero = len(node.input) > 2 and node.input[2] in initializers
    zero = numpy_helper.to_array(initializers[node.input[2]]).astype(np.float64) if has_zero else np.zeros(())
    return numpy_helper.to_array(initializers[node.input[0]]), scale, zero, node.input[0]


def correct_biases(qdq, float_model, input_means: dict[str, np.ndarray]):
    """``qdq`` with every quantized Conv's bias corrected for the mean shift of its rounded weights:
    b' = b - sum over (input channel, kernel) of (W_int8 - W) * E[x]. The bias stays int32 on the same scale
    (input scale x weight scale), so the graph and its kernels are unchanged; a Conv without a bias is left as it
    is (BatchNorm folding gives every Conv of the zoo models one). Returns ``qdq`` (edited in place)."""
    from onnx import numpy_helper

    initializers = {t.name: t for t in qdq.graph.initializer}
    producers = {out: n for n in qdq.graph.node for out in n.output}
    float_nodes = {n.name: n for n in float_model.graph.node if n.op_type == "Conv"}
    float_values = {t.name: t for t in float_model.graph.initializer}

    def dequantized(tensor: str) -> tuple[np.ndarray, np.ndarray, str] | None:
        """(float values, scale, initializer name) of a DequantizeLinear fed by an initializer."""
        stored = _stored_dequantize(tensor, producers, initializers)
        if stored is None:
            return None
        values, scale, zero, name = stored
        shape = (-1,) + (1,) * (values.ndim - 1) if np.ndim(scale) else ()
        return (values.astype(np.float64) - np.reshape(zero, shape)) * np.reshape(scale, shape), scale, name

    for node in qdq.graph.node:
        original = float_nodes.get(node.name)
        if node.op_type != "Conv" or original is None or len(node.input) < 3 or original.input[0] not in input_means:
            continue
        weight, bias = dequantized(node.input[1]), dequantized(node.input[2])
        if weight is None or bias is None or original.input[1] not in float_values:
            continue
        error = (weight[0] - numpy_helper.to_array(float_values[original.input[1]])).sum(axis=tuple(range(2, weight[0].ndim)))
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        means = input_means[original.input[0]].reshape(group, -1)  # [group, input channels per group]
        per_group = error.shape[0] // group
        shift = np.einsum("oi,oi->o", error, np.repeat(means, per_group, axis=0))
        corrected, scale, name = bias[0] - shift, bias[1], bias[2]
        quantized = np.clip(np.round(corrected / scale), -(2**31), 2**31 - 1).astype(np.int32)
        initializers[name].CopyFrom(numpy_helper.from_array(quantized, name))
    return qdq


def quantize_dynamic_matmul(onnx_in: str | os.PathLike, onnx_out: str | os.PathLike) -> Path:
    """Dynamic int8 of MatMul/Gemm weights only (activations quantized on the fly); convolutions stay float.

    Never quantizes Conv: dynamic ConvInteger runs several times slower than float on CPUs. For
    CNNs the classifier head is all this touches, so expect a small size and speed change; use
    :func:`quantize_static` for the convolutions.
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="edgekit-quant-") as workdir:
        prepared = _pre_process(onnx_in, Path(workdir) / "prepared.onnx")
        if not any(node.op_type in DYNAMIC_OP_TYPES for node in load_model(prepared).graph.node):
            raise ExportError(f"{onnx_in} has no MatMul/Gemm node, so dynamic int8 would change nothing; use int8 (static) instead")
        with atomic_path(onnx_out) as tmp, quiet():
            try:
                ort_quantize_dynamic(str(prepared), str(tmp), op_types_to_quantize=list(DYNAMIC_OP_TYPES), weight_type=QuantType.QInt8)
            except Exception as exc:
                raise ExportError(f"dynamic int8 quantization of {onnx_in} failed: {first_line(exc, 300)}") from exc
            _copy_metadata(onnx_in, tmp)
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
        _copy_metadata(onnx_in, tmp)
    return Path(onnx_out)


def sort_topologically(graph) -> None:
    """Reorder ``graph.node`` in place so every node comes after the producers of its inputs (stable), with
    onnxruntime's own ``OnnxModel.graph_topological_sort``; a cycle or a dangling input is an ExportError."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    try:
        OnnxModel.graph_topological_sort(graph)
    except RuntimeError as exc:
        raise ExportError(f"the graph has a cycle or a dangling input ({first_line(exc)}); it cannot be ordered") from exc


def first_and_last_compute_nodes(model) -> list[str]:
    """Names of the first Conv and the last Gemm/MatMul in graph (topological) order: the layers most
    sensitive to int8, since they see raw pixels and produce the logits."""
    nodes = list(model.graph.node)
    first = next((n.name for n in nodes if n.op_type == "Conv"), None)
    last = next((n.name for n in reversed(nodes) if n.op_type in ("Gemm", "MatMul")), None)
    return [name for name in (first, last) if name]


# The TensorRT recipe (2048 bins, 128 quantized bins). Measured on EfficientNet-Lite0 (ImageNet weights, 40 real
# photo crops): top-1 agreement 60% vs minmax 87.5% (255 quantized bins: 0%). Entropy clips heavy-tailed
# activations that depthwise/SE nets need; it is offered, not the default, and parity catches a bad result.
ENTROPY_BINS = 2048
ENTROPY_QUANTIZED_BINS = 128


def _pre_process(onnx_in: str | os.PathLike, prepared: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with quiet():
            quant_pre_process(str(onnx_in), str(prepared))
    except Exception as exc:
        raise ExportError(f"quantization pre-processing (shape inference) of {onnx_in} failed: {first_line(exc, 300)}") from exc
    return prepared


def load_model(path):
    """The ONNX graph at ``path``, or an ExportError naming the file (the quantizers' one way to read a model)."""
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise ExportError(f"{path} is not a readable ONNX model ({type(exc).__name__}); re-export it") from exc


def _copy_metadata(source: str | os.PathLike, target: Path) -> None:
    """Give ``target`` the metadata_props of ``source`` (the quantizer adds its own keys and may drop ours)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    if not props:
        return
    model = onnx.load(str(target))
    from ..onnx_graph import set_metadata

    set_metadata(model, props)
    target.write_bytes(model.SerializeToString())
