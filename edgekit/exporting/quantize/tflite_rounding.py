"""How a LiteRT int8 file's weights are stored, fixed in the *float* model before ai-edge-quantizer rounds it.

ai-edge-quantizer (AEQ) stores each conv / depthwise / fully-connected weight as int8 on a symmetric per-channel grid,
s_c = max|w_c| / 127, and each bias as int32, b / (s_in * s_c). Two corrections are made to the float weights it is
handed; both leave its grid (the per-channel maxima) as it is, so AEQ then stores exactly what was computed here:

- ``fix_bias_overflow``: a nearly dead channel of a trained net (|w_c| ~ 1e-11 after BatchNorm folding, yet a real
  bias) gives a bias beyond int32; AEQ's clip to 2**31 - 1 in float32 rounds to 2**31, and the cast wraps to -2**31
  (its "RuntimeWarning: invalid value encountered in cast"): the channel's constant output flips sign. 109 channels
  in 28 of zoo Lite0's 50 layers. The channel's largest weight is raised to the smallest value that fits
  (a change of ~1e-6 of the bias in the float output);
- ``corrected_biases``: bias correction (Nagel et al., "Data-Free Quantization", 2019), as ONNX Runtime int8 has it
  in ``rounding.py``: the mean output shift the weight rounding causes, (W_int8 - W) . E[x], is taken off the float
  bias, with E[x] per input channel measured on the float model over the calibration images (FINDINGS: first+last
  float 82.5% -> 88.5% agreement on Lite0).
"""

from __future__ import annotations

import numpy as np

from .tflite_graph import Op, channel_axis, float_array, set_float_array

EDITABLE = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")  # (input, weight, bias) ops
INT32_MARGIN = 4.0  # headroom kept below int32's limit


def editable_layers(ops: list[Op]) -> list[Op]:
    return [op for op in ops if op.kind in EDITABLE and len(op.inputs) >= 3 and op.inputs[2] != -1]


def grid_error(weights: np.ndarray, kind: str) -> np.ndarray:
    """(W on AEQ's symmetric per-channel int8 grid) - W, same layout as ``weights``."""
    axis = channel_axis(kind)
    per_channel = np.moveaxis(weights.astype(np.float64), axis, 0)
    bound = np.maximum(np.abs(per_channel).reshape(len(per_channel), -1).max(axis=1), 1e-30)
    scale = (bound / 127.0).reshape(-1, *[1] * (per_channel.ndim - 1))
    error = np.clip(np.rint(per_channel / scale), -127, 127) * scale - per_channel
    return np.moveaxis(error, 0, axis)


def input_scale(qsv: dict) -> float:
    """The int8 scale AEQ gives an activation from its calibrated min/max (asymmetric, the range holding 0)."""
    low, high = min(float(np.min(qsv["min"])), 0.0), max(float(np.max(qsv["max"])), 0.0)
    return max(high - low, 1e-12) / 255.0


def fix_bias_overflow(model, ops: list[Op], qsvs: dict) -> int:
    """Make every layer's int32 bias representable (see the module docstring), in place; returns the channels fixed."""
    tensors = model.subgraphs[0].tensors
    fixed = 0
    limit = (2**31 - 1) / INT32_MARGIN
    for op in editable_layers(ops):
        qsv = qsvs.get(tensors[op.inputs[0]].name.decode())
        weights, bias = float_array(model, op.inputs[1]), float_array(model, op.inputs[2])
        if qsv is None or weights is None or bias is None:
            continue
        axis = channel_axis(op.kind)
        moved = np.moveaxis(weights, axis, 0).reshape(weights.shape[axis], -1).copy()
        need = np.abs(bias) / (input_scale(qsv) * limit) * 127.0  # the smallest max|w_c| that fits
        bad = np.nonzero(np.abs(moved).max(axis=1) < need)[0]
        for channel in bad:
            j = int(np.argmax(np.abs(moved[channel])))
            moved[channel, j] = (np.sign(moved[channel, j]) or 1.0) * need[channel]
        if len(bad):
            shape = [weights.shape[axis]] + [d for i, d in enumerate(weights.shape) if i != axis]
            set_float_array(model, op.inputs[1], np.moveaxis(moved.reshape(shape), 0, axis))
            fixed += len(bad)
    return fixed


def corrected_biases(model, ops: list[Op], input_means: dict[int, np.ndarray], weights: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Bias tensor index -> its corrected float bias, for every editable layer whose input mean is known.

    ``weights``: weight tensor index -> the values AEQ will round (the stored ones where absent)."""
    corrected = {}
    for op in editable_layers(ops):
        mean = input_means.get(op.inputs[0])
        w = weights.get(op.inputs[1])
        w = w if w is not None else float_array(model, op.inputs[1])
        bias = float_array(model, op.inputs[2])
        if mean is None or w is None or bias is None:
            continue
        error = grid_error(w, op.kind)
        if op.kind == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C]: each channel reads its own input channel
            shift = error.reshape(-1, error.shape[-1]).sum(axis=0) * mean
        else:  # [O, (kh, kw,) I]
            shift = error.reshape(error.shape[0], -1, error.shape[-1]).sum(axis=1) @ mean
        corrected[op.inputs[2]] = (bias - shift).astype(np.float32)
    return corrected


def input_means(float_model_bytes: bytes, ops: list[Op], images: list[np.ndarray], threads: int) -> dict[int, np.ndarray]:
    """Input tensor index -> the per-channel mean (NHWC: last axis) of every editable layer's input, over ``images``
    (each a batch-1 float input), on the float model with every tensor kept."""
    from ai_edge_litert.interpreter import Interpreter

    from ...device.quiet import native_stderr_quiet
    from ...progress import quiet

    with quiet(), native_stderr_quiet():  # it warns that keeping every tensor is for debugging: here it is the point
        interpreter = Interpreter(model_content=float_model_bytes, num_threads=threads, experimental_preserve_all_tensors=True)
        interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    wanted = {op.inputs[0] for op in editable_layers(ops)}
    sums: dict[int, np.ndarray] = {}
    for image in images:
        interpreter.set_tensor(input_index, np.ascontiguousarray(image, np.float32))
        interpreter.invoke()
        for index in wanted:
            x = interpreter.get_tensor(index)
            mean = x.reshape(-1, x.shape[-1]).astype(np.float64).mean(axis=0)
            sums[index] = sums[index] + mean if index in sums else mean
    return {index: total / max(1, len(images)) for index, total in sums.items()}
