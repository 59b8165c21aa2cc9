"""LiteRT static int8 with chosen layers kept in float, and the accuracy-aware search for it: the LiteRT side of
``fallback.search_layers``.

Route: ai-edge-quantizer (AEQ) on the float .tflite (FINDINGS, route (b)): int8 per-channel symmetric weights, int8
per-tensor asymmetric activations from min/max calibration, the model's input and output kept float32 (AEQ's
``static_wi8_ai8`` recipe alone makes them int8 too), the int32-bias fix and bias correction in the float model
(``tflite_rounding.py``). It beat litert-torch's PT2E route on Lite0 (93% vs 74% agreement with the same two layers
float), on speed (one TRANSPOSE instead of nine) and on the search's cost: a candidate is a real re-quantization of
the .tflite (a fraction of a second) run by LiteRT itself, so every number the search sees is the artifact's own.

A layer is a torch module (``tflite_graph``): keeping it float puts an AEQ ``NO_QUANTIZE`` entry on the scope of
each of its ops (the *last* matching recipe entry wins). A conv/linear whose output only feeds layers kept float is
taken along into float (``float_layers``), as ExecuTorch's ``keep_in_float`` does: its int8 output would be the
float layer's int8 input, and the float layer would gain nothing.

Calibration runs once: AEQ's ranges (QSVs) are per float tensor, so they do not depend on what else is quantized.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from pathlib import Path
from typing import Callable, Collection

import numpy as np

from ...device.quiet import native_stderr_quiet
from ...errors import ExportError, first_line
from ...parity_check import ParityThresholds
from ...progress import quiet
from .fallback import MAX_SECONDS, MAX_STEPS, Int8Search, Validation, output_error, search_layers
from .tflite_graph import Op, graph_ops, privatize_constants, set_float_array
from .tflite_rounding import corrected_biases, editable_layers, fix_bias_overflow, input_means

SIGNATURE = "serving_default"
CALIBRATION = "min/max (AEQ moving average over the calibration images)"


@contextlib.contextmanager
def silenced():
    """AEQ prints tqdm bars to stderr and warns about its calibrator's settings; its interpreters announce XNNPACK."""
    with quiet(), contextlib.redirect_stderr(io.StringIO()), native_stderr_quiet():
        yield


def _recipe(keep_float_scopes: Collection[str]):
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    manager = recipe_manager.RecipeManager()
    manager.add_static_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        activation_num_bits=8,
        weight_num_bits=8,
        algorithm_key=AlgorithmName.MIN_MAX_UNIFORM_QUANT,
    )
    floats = [(".*", name) for name in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT)]  # float32 IO
    floats += [("^" + re.escape(scope) + "$", qtyping.TFLOperationName.ALL_SUPPORTED) for scope in keep_float_scopes]
    for regex, operation in floats:
        manager.add_quantization_config(
            regex=regex, operation_name=operation, op_config=qtyping.OpQuantizationConfig(), algorithm_key=AlgorithmName.NO_QUANTIZE
        )
    return manager.get_quantization_recipe()


class LiteRtInt8:
    """One float .tflite, calibrated once, quantized to int8 with any set of layers kept in float."""

    def __init__(self, float_bytes: bytes, images: list[np.ndarray], known_modules: Collection[str] = (), threads: int = 1):
        from ai_edge_litert.tools import flatbuffer_utils
        from ai_edge_quantizer import quantizer

        if not images:
            raise ExportError("LiteRT int8 needs at least one calibration image")
        self.model = flatbuffer_utils.read_model_from_bytearray(bytearray(float_bytes))
        slots = [(op.index, slot) for op in editable_layers(graph_ops(self.model)) for slot in (1, 2)]
        if privatize_constants(self.model, slots):  # shared weights or biases: the edits below are per layer
            float_bytes = bytes(flatbuffer_utils.convert_object_to_bytearray(self.model))
        self.ops = [op for op in graph_ops(self.model, known_modules) if op.module]
        self.layers = list(dict.fromkeys(op.module for op in self.ops if op.module))
        self.conv_layers = list(dict.fromkeys(op.module for op in self.ops if op.is_layer and op.module))
        self.images = len(images)
        started = time.perf_counter()
        try:
            with silenced():
                calibrator = quantizer.Quantizer(float_bytes, _recipe([]))
                name = _input_name(float_bytes)
                self.qsvs = calibrator.calibrate({SIGNATURE: [{name: image} for image in images]}, num_threads=threads)
        except Exception as exc:  # AEQ raises ValueError / RuntimeError from deep inside
            raise ExportError(f"ai-edge-quantizer calibration failed: {first_line(exc, 300)}") from exc
        self.calibration_seconds = time.perf_counter() - started
        self.overflow_channels = fix_bias_overflow(self.model, self.ops, self.qsvs)
        fixed = bytes(flatbuffer_utils.convert_object_to_bytearray(self.model))
        means = input_means(fixed, self.ops, images, threads)
        self._int8_values = corrected_biases(self.model, self.ops, means, {})  # tensor index -> float values
        self._float_values = {index: _values(self.model, index) for index in self._int8_values}
        self._owner = {op.inputs[2]: op.module for op in editable_layers(self.ops)}

    @property
    def corrected_layers(self) -> int:
        return len(self._int8_values)

    def float_layers(self, kept_float: Collection[str]) -> list[str]:
        """``kept_float`` plus each conv/linear whose output is read only by ops of layers in float (see the module
        docstring), in graph order."""
        unknown = sorted(set(kept_float) - set(self.layers))
        if unknown:
            raise ExportError(f"{', '.join(unknown[:3])}: not a layer of this model (layers: {', '.join(self.layers[:5])}, ...)")
        floats = set(kept_float)
        readers: dict[int, list[Op]] = {}
        for op in self.ops:
            for index in op.inputs:
                readers.setdefault(index, []).append(op)
        for op in self.ops:
            if op.is_layer and op.module and op.module not in floats and op.outputs:
                consumers = readers.get(op.outputs[0], [])
                if consumers and all(c.module in kept_float for c in consumers):
                    floats.add(op.module)
        return [layer for layer in self.layers if layer in floats]

    def float_model(self, float_layers: Collection[str]) -> bytes:
        """The float model AEQ is handed: corrected biases for the layers that will be int8, the original ones for
        those in float (a float layer must compute what PyTorch does)."""
        from ai_edge_litert.tools import flatbuffer_utils

        for index, values in self._int8_values.items():
            chosen = self._float_values[index] if self._owner.get(index) in float_layers else values
            set_float_array(self.model, index, chosen)
        return bytes(flatbuffer_utils.convert_object_to_bytearray(self.model))

    def quantize(self, kept_float: Collection[str] = ()) -> bytes:
        """The int8 .tflite bytes with ``kept_float`` (and what they take along) in float."""
        from ai_edge_quantizer import quantizer

        floats = set(self.float_layers(kept_float))
        scopes = [op.scope for op in self.ops if op.module in floats and op.scope]
        try:
            with silenced():
                result = quantizer.Quantizer(self.float_model(floats), _recipe(scopes)).quantize(self.qsvs)
        except Exception as exc:
            raise ExportError(f"ai-edge-quantizer could not quantize the model: {first_line(exc, 300)}") from exc
        return bytes(result.quantized_model)


def _values(model, index: int) -> np.ndarray:
    from .tflite_graph import float_array

    values = float_array(model, index)
    if values is None:
        raise ExportError(f"tensor {index} of the float model holds no float32 values")
    return values


def _input_name(float_bytes: bytes) -> str:
    from ai_edge_litert.interpreter import Interpreter

    with native_stderr_quiet():
        signatures = Interpreter(model_content=float_bytes).get_signature_list()
    if SIGNATURE not in signatures or len(signatures[SIGNATURE]["inputs"]) != 1:
        raise ExportError(f"the converted model has no single-input {SIGNATURE!r} signature ({sorted(signatures)})")
    return signatures[SIGNATURE]["inputs"][0]


def logits_of(content: bytes, inputs: np.ndarray, workdir: Path, threads: int, batch: int = 16) -> np.ndarray:
    """A candidate's logits, run by LiteRT from a file as the app runs it."""
    from ...device.litert import LiteRtModel

    path = workdir / "litert-candidate.tflite"
    path.write_bytes(content)
    model = LiteRtModel(str(path), threads)
    return np.concatenate([model.run(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])


def search_litert(
    int8: LiteRtInt8,
    validation: Validation,
    ranking_inputs: np.ndarray,
    ranking_reference: np.ndarray,
    budget: ParityThresholds,
    isa: str,
    workdir: Path,
    *,
    start_float: list[str],
    threads: int = 1,
    max_steps: int = MAX_STEPS,
    max_seconds: float = MAX_SECONDS,
    progress: Callable[[str], None] = lambda _: None,
) -> Int8Search:
    """The accuracy-aware search over ``int8``'s layers: ``validation.evaluate`` gets each candidate's .tflite bytes;
    candidates are ranked by the logit error left on ``ranking_inputs`` (against the float model's
    ``ranking_reference``) when each goes back to float, each a real re-quantization run in LiteRT."""
    started = time.perf_counter()

    def evaluate(kept_float: list[str]):
        return validation.evaluate(int8.quantize(kept_float))

    def rank(kept_float: list[str], candidates: list[str]) -> list[str]:
        scored = []
        for name in candidates:
            progress(f"ranking {name}")
            logits = logits_of(int8.quantize([*kept_float, name]), ranking_inputs, workdir, threads)
            scored.append((output_error(logits, ranking_reference), name))
        return [name for _, name in sorted(scored)]

    search = search_layers(
        int8.layers, start_float, evaluate, validation.within_budget, rank, max_steps=max_steps, max_seconds=max_seconds, progress=progress
    )
    calibration = {
        "method": CALIBRATION,
        "images": int8.images,
        "bias_corrected_layers": int8.corrected_layers,
        "int32_bias_channels_fixed": int8.overflow_channels,
    }
    # session_config: a .tflite carries no runtime settings
    return search.record(budget, isa, {}, calibration, len(int8.layers), started)
