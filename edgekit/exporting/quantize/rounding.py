"""How int8 weights are rounded: GPTQ rounding and bias correction, on a QDQ model's stored integers.

Both corrections cost nothing at run time: the graph, its scales and its kernels stay as ONNX Runtime's quantizer
made them, and only the stored integers (int8 weights, int32 biases) change. They need what every Conv of the float
model saw over the calibration images (``ConvInputs``), gathered during the calibration pass (``ort.calibrate``).

This module is numerical work on weights and calibration moments only (numpy, and torch for the matrix routines):
it runs no model (``ort.calibrate`` runs the probe ``ConvInputs`` builds) and leaves the structure of the graphs it
rewrites alone, so it can be read and tested apart from ONNX Runtime's tooling (``ort.py``) and from the graph
edits (``qdq.py``) that run before it.
"""

from __future__ import annotations

import numpy as np

MAX_GPTQ_PATCH = 4608  # patch length (in channels / group x kernel area) up to which a Conv gets GPTQ rounding: 3x3 over 512 channels
# Patches seen per patch element before GPTQ is trusted. Lite0 at 224 px on 100 images has 4.25 at its worst layer
# (1x1 over 1152 channels at 7x7 pixels); at the default 300 calibration images every layer has 12+.
MIN_PATCHES_PER_COLUMN = 4
GPTQ_BLOCK = 128  # columns rounded before the rest is updated (GPTQ's lazy batch update: same result, fewer passes)


class ConvInputs:
    """What every Conv sees over the calibration images, in the float model, for two corrections of int8 weights:

    - per-channel means of its input, for bias correction (Nagel et al., "Data-Free Quantization", 2019, sec. 4.2):
      rounding weights shifts each output channel's mean by (W_int8 - W) . E[x]; the int32 bias absorbs it;
    - the second moments E[p p^T] of its input patches (im2col, per group), for GPTQ rounding (Frantar et al.,
      "GPTQ", 2023, the OBQ rule applied column by column): each weight's rounding error is compensated by the
      weights not yet rounded, so that the layer's *output* on these inputs moves least, instead of each weight
      moving least. Layers whose patches are longer than ``MAX_GPTQ_PATCH``, or that saw fewer than
      ``MIN_PATCHES_PER_COLUMN`` patches per patch element, keep nearest rounding: with too few samples the
      compensation fits the calibration images' noise (a 3x3 over 512 channels at 2x2 pixels, 24 images, made the
      held-out error worse).

    On zoo Lite0 the rounding of the weights was most of int8's loss. ``benchmarks/bench_quantization.py`` measures
    what each correction recovers: its rows "no GPTQ rounding", "no bias correction" and "nearest rounding, no bias
    correction" against "plain" (tables in ``benchmarks/results/``).

    ``probe`` is the float model with every watched tensor as an output; the caller runs it on each batch and hands
    the outputs to ``add``.
    """

    def __init__(self, model, moments: bool = True):
        import onnx
        from onnx import numpy_helper

        initializers = {t.name: t for t in model.graph.initializer}
        self._convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in initializers]
        self.tensors = sorted({n.input[0] for n in self._convs})  # what the probe outputs, in this order
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
        for name in self.tensors:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        self.probe = probe.SerializeToString()
        self.input_name = model.graph.input[0].name
        self._sums: dict[str, np.ndarray] = {}
        self._moments: dict[str, np.ndarray] = {}
        self._patch_counts: dict[str, int] = {}
        self._count = 0

    def add(self, outputs: dict[str, np.ndarray], images: int) -> None:
        """Add what the probe output (tensor name -> value) on a batch of ``images`` images."""
        for name, value in outputs.items():
            sums = value.astype(np.float64).mean(axis=tuple(range(2, value.ndim))).sum(axis=0)
            self._sums[name] = self._sums[name] + sums if name in self._sums else sums
        for node in self._convs:
            if node.name in self._patches:
                moment, patches = _patch_moments(outputs[node.input[0]], *self._patches[node.name])
                self._moments[node.name] = self._moments[node.name] + moment if node.name in self._moments else moment
                self._patch_counts[node.name] = self._patch_counts.get(node.name, 0) + patches
        self._count += images

    def means(self) -> dict[str, np.ndarray]:
        """Input tensor name -> mean of each channel."""
        return {name: total / self._count for name, total in self._sums.items()} if self._count else {}

    def moments(self) -> dict[str, np.ndarray]:
        """Conv node name -> [group, patch, patch] sum of p p^T over every patch seen (the scale does not matter),
        for the layers that saw enough patches for GPTQ."""
        return {
            name: moment for name, moment in self._moments.items() if self._patch_counts[name] >= MIN_PATCHES_PER_COLUMN * moment.shape[-1]
        }


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
        rounded = _rounded_layer(node.name, weight, quantized, scale, zero, moments[node.name], damping, cache)
        initializers[name].CopyFrom(numpy_helper.from_array(rounded.reshape(quantized.shape).astype(quantized.dtype), name))
    return qdq


def _rounded_layer(
    layer: str,
    weight: np.ndarray,
    quantized: np.ndarray,
    scale: np.ndarray,
    zero: np.ndarray,
    hessian: np.ndarray,
    damping: float,
    cache: dict | None,
) -> np.ndarray:
    """GPTQ's integers for one Conv's float ``weight`` [out, in / group, *kernel], on the scales, zero points and
    integer range of the quantizer's ``quantized`` weights, solved once per ``cache``."""
    scale, zero = np.broadcast_to(scale, weight.shape[:1]), np.broadcast_to(zero, weight.shape[:1])
    group = hessian.shape[0]
    shape = (group, weight.shape[0] // group, -1)
    # The integer range the quantizer used (symmetric int8 is [-127, 127], reduce_range [-64, 64], uint8 [0, 255]):
    # its own extremes, since the largest weight of every channel maps onto one of them.
    low, high = float(quantized.min()), float(quantized.max())
    key = (layer, scale.tobytes(), zero.tobytes(), low, high)
    if cache is not None and key in cache:
        return cache[key]
    rounded = _gptq(weight.reshape(shape), hessian, scale.reshape(shape[:2]), zero.reshape(shape[:2]), low, high, damping)
    if cache is not None:
        cache[key] = rounded
    return rounded


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
    for node in qdq.graph.node:
        original = float_nodes.get(node.name)
        if node.op_type != "Conv" or original is None or len(node.input) < 3 or original.input[0] not in input_means:
            continue
        weight, bias = _dequantized(node.input[1], producers, initializers), _dequantized(node.input[2], producers, initializers)
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


def _dequantized(tensor: str, producers: dict, initializers: dict) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(float values, scale, initializer name) of a DequantizeLinear fed by an initializer."""
    stored = _stored_dequantize(tensor, producers, initializers)
    if stored is None:
        return None
    values, scale, zero, name = stored
    shape = (-1,) + (1,) * (values.ndim - 1) if np.ndim(scale) else ()
    return (values.astype(np.float64) - np.reshape(zero, shape)) * np.reshape(scale, shape), scale, name


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
