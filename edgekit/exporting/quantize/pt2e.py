"""pt2e static int8 with chosen layers kept in float: the ExecuTorch side of the accuracy-aware search.

A layer is a conv or linear op, named by the torch module that holds it (the FX node's ``nn_module_stack``, e.g.
"blocks.3.0.conv_dw"). Keeping it in float means the quantizer leaves it unannotated (``keep_in_float``), so pt2e
puts no quantize/dequantize pair on its inputs and the XNNPACK delegate runs it in fp32.

Calibration runs once (``Pt2eInt8``): pt2e observers watch the float model, so a tensor's observed range does not
depend on which other layers are quantized, and each candidate's observers are copies of the calibrated ones.
Candidates are judged in PyTorch eager on the converted model (reference quantize/dequantize ops), which agrees with
the lowered XNNPACK program closely enough to steer the search; only the final program is lowered.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Collection, Iterable

import numpy as np

from ...errors import ExportError
from ...parity_check import ParityThresholds
from .fallback import MAX_SECONDS, MAX_STEPS, Int8Search, Validation, output_error, search_layers

# Model inputs per forward call: the exported program's batch is bounded by ExecuTorch's memory plan.
EAGER_BATCH = 8


def layer_name(node) -> str | None:
    """The module path of a conv/linear op node (what "keep in float" names), else None."""
    import torch

    targets = (
        torch.ops.aten.conv1d.default,
        torch.ops.aten.conv2d.default,
        torch.ops.aten.convolution.default,
        torch.ops.aten.conv_transpose1d.default,
        torch.ops.aten.conv_transpose2d.input,
        torch.ops.aten.linear.default,
    )
    if node.op != "call_function" or node.target not in targets:
        return None
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else node.name


def keep_in_float(model, names: Collection[str]) -> None:
    """Remove the quantization annotations that would quantize layers ``names`` of an annotated ``model``.

    Called after the quantizer annotated the whole graph (``XNNPACKQuantizer.set_module_name(name, None)`` asserts
    on None in this ExecuTorch). What goes:
    - the layer's own annotation (input, weight and bias qspecs; its output qspec when no activation is fused);
    - the output qspec of its producer, when the layer is the producer's only reader (through unannotated ops such
      as a 'same' pad), so the layer reads float values: else a float layer behind a wide int8 tensor gains nothing.
      XNNPACK runs a conv with int8 weights only into an int8 output, so a producing conv/linear then computes in
      float too, on its int8 input (what ONNX Runtime does when no QuantizeLinear follows a Conv). A pass-through
      producer (mean, max_pool) shares its input's observer: its input is int8 anyway, so it stays as it is;
    - repeated until nothing changes, the annotation of any node whose ``SharedQuantizationSpec`` now points at an
      observer that no longer exists (prepare_pt2e would fail on it; such nodes are pass-through ops, cheap in float).
    """
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    def annotation(node):
        found = node.meta.get(Q_ANNOTATION_KEY) if hasattr(node, "meta") else None
        return found if found is not None and (found.input_qspec_map or found.output_qspec is not None) else None

    import torch

    fused_activations = (
        torch.ops.aten.relu.default,
        torch.ops.aten.relu_.default,
        torch.ops.aten.hardtanh.default,
        torch.ops.aten.hardtanh_.default,
    )
    floats = [node for node in model.graph.nodes if layer_name(node) in names]
    for node in floats:
        node.meta.pop(Q_ANNOTATION_KEY, None)
    for node in floats:
        producer: Any = node.args[0] if node.args else None
        reader = node
        while hasattr(producer, "users") and annotation(producer) is None and producer.op == "call_function" and len(producer.users) == 1:
            producer, reader = producer.args[0], producer
        found = annotation(producer)
        if found is None or isinstance(found.output_qspec, SharedQuantizationSpec) or set(producer.users) - {reader, *floats}:
            continue
        found.output_qspec = None
        layer = producer.args[0] if producer.target in fused_activations else producer  # the conv behind its ReLU
        layer_annotation = annotation(layer) if layer_name(layer) and layer not in floats else None
        if layer_annotation is not None and (layer is producer or layer_annotation.output_qspec is None):
            layer_annotation.output_qspec = None
            layer_annotation.input_qspec_map = {k: v for k, v in layer_annotation.input_qspec_map.items() if k is layer.args[0]}

    def observed(edge_or_node) -> bool:
        if isinstance(edge_or_node, tuple):  # an input edge (producer, consumer)
            producer, consumer = edge_or_node
            found = annotation(consumer)
            return found is not None and producer in found.input_qspec_map
        found = annotation(edge_or_node)
        return found is not None and found.output_qspec is not None

    changed = True
    while changed:
        changed = False
        for node in model.graph.nodes:
            found = annotation(node)
            if found is None:
                continue
            specs = [*found.input_qspec_map.values(), found.output_qspec]
            if any(isinstance(s, SharedQuantizationSpec) and not observed(s.edge_or_node) for s in specs):
                node.meta.pop(Q_ANNOTATION_KEY, None)
                changed = True


def quantized_layers(prepared) -> list[str]:
    """Layer names, in graph order, whose weight a prepared model observes (what can go back to float)."""
    names: list[str] = []
    for node in prepared.graph.nodes:
        name = layer_name(node)
        if name and name not in names and len(node.args) > 1 and _is_observer(node.args[1]):
            names.append(name)
    return names


def _is_observer(node) -> bool:
    return getattr(node, "op", None) == "call_module" and str(node.target).startswith("activation_post_process_")


def run_eager(module, inputs: np.ndarray) -> np.ndarray:
    """Logits of a (converted) GraphModule on float NCHW inputs, in chunks the exported program accepts."""
    import torch

    with torch.no_grad():
        chunks = [module(torch.from_numpy(inputs[i : i + EAGER_BATCH])) for i in range(0, len(inputs), EAGER_BATCH)]
    return torch.cat(chunks).numpy().astype(np.float32)


class Pt2eInt8:
    """One exported float model, calibrated once, quantized with any set of layers kept in float.

    ``make_quantizer(kept_float)`` returns a pt2e quantizer that leaves those layers unannotated (see
    ``keep_in_float``); ``calibration`` yields float32 NCHW batches.
    """

    def __init__(self, module, make_quantizer: Callable[[list[str]], object], calibration: Iterable[np.ndarray], say=None):
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

        self.module = module
        self.make_quantizer = make_quantizer
        say = say or (lambda text: None)
        say("int8: inserting observers")
        self.calibrated = prepare_pt2e(copy.deepcopy(module), make_quantizer([]))
        self.batches: list[np.ndarray] = []  # kept for the rare candidate whose observers have no calibrated twin
        for batch in calibration:
            run_eager(self.calibrated, batch)
            self.batches.append(batch)
            say(f"int8: calibrating ({self.images} images)")
        if not self.batches:
            raise ExportError("ExecuTorch int8 needs at least one calibration image")
        self.layers = quantized_layers(self.calibrated)
        self._observers = _observers(self.calibrated)
        self.recalibrations = 0

    @property
    def images(self) -> int:
        return sum(len(batch) for batch in self.batches)

    def prepared(self, kept_float: list[str]):
        """The model prepared with ``kept_float`` in float, its observers copied from the one calibration."""
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

        if not kept_float:
            return copy.deepcopy(self.calibrated)
        prepared = prepare_pt2e(copy.deepcopy(self.module), self.make_quantizer(kept_float))
        observers = _observers(prepared)
        if any(key not in self._observers for key in observers):
            # An observer shared differently than in the full model (keep_in_float avoids making one on the graphs
            # seen so far): a copy would carry another range, so this candidate is calibrated on its own.
            self.recalibrations += 1
            for batch in self.batches:
                run_eager(prepared, batch)
            return prepared
        copies: dict[int, object] = {}
        for key, (_, names) in observers.items():
            calibrated = self._observers[key][0]
            twin = copies.setdefault(id(calibrated), copy.deepcopy(calibrated))
            for name in names:
                setattr(prepared, name, twin)
        return prepared

    def converted(self, kept_float: list[str], fold: bool = True):
        """The converted model (reference quantize/dequantize ops) with ``kept_float`` in float. ``fold=False``
        keeps float weights behind explicit quantize ops, so ``rank_layers`` can put a layer back in float by
        rewiring."""
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        return convert_pt2e(self.prepared(kept_float), fold_quantize=fold)

    def float_layers(self, kept_float: list[str]) -> list[str]:
        """The layers that compute in float when ``kept_float`` are kept in float: those, plus any producer that
        ``keep_in_float`` had to take along."""
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

        if not kept_float:
            return []
        quantized = set(quantized_layers(prepare_pt2e(copy.deepcopy(self.module), self.make_quantizer(kept_float))))
        return [name for name in self.layers if name not in quantized]


def rank_layers(converted, candidates: list[str], inputs: np.ndarray, reference: np.ndarray, tick=None) -> list[tuple[float, str]]:
    """(error with the layer in float, layer), lowest error first, on ``converted`` (``fold=False``).

    No re-quantization: a layer goes back to float by rewiring its activation and weight inputs around their
    quantize/dequantize pairs (through unannotated ops such as a 'same' pad), scoring the model on ``inputs``
    against fp32 ``reference`` logits, and undoing the rewiring."""
    tick = tick or (lambda text: None)
    scored = []
    for name in candidates:
        tick(f"ranking {name}")
        undo = []
        for node in [n for n in converted.graph.nodes if layer_name(n) == name]:
            for index in (0, 1):
                reader, source = _through_qdq(node, index)
                if reader is not None:
                    undo.append((reader, reader.args))
                    reader.args = (source, *reader.args[1:]) if reader is not node else _replaced(node.args, index, source)
        if not undo:
            continue
        converted.recompile()
        try:
            logits = run_eager(converted, inputs)
        finally:
            for reader, args in reversed(undo):
                reader.args = args
            converted.recompile()
        scored.append((output_error(logits, reference), name))
    return sorted(scored)


def _through_qdq(node, index: int):
    """(the node that reads a dequantize(quantize(x)) on the way to ``node``'s input ``index``, x), or (None, None).
    Walks up through single-user ops that are not quantize/dequantize (a pad, a view)."""
    reader = node
    value: Any = node.args[index] if len(node.args) > index else None
    for _ in range(4):
        if not hasattr(value, "op") or value.op != "call_function":
            return None, None
        if _qdq_kind(value) == "dequantize":
            quantize = value.args[0]
            if hasattr(quantize, "op") and _qdq_kind(quantize) == "quantize":
                return reader, quantize.args[0]
            return None, None
        if len(value.users) != 1 or not value.args:
            return None, None
        reader, value = value, value.args[0]
    return None, None


def _qdq_kind(node) -> str | None:
    name = str(node.target).split(".")[-2] if "." in str(node.target) else ""
    return "dequantize" if name.startswith("dequantize_per") else "quantize" if name.startswith("quantize_per") else None


def _replaced(args: tuple, index: int, value) -> tuple:
    return (*args[:index], value, *args[index + 1 :])


def search_pt2e(
    int8: Pt2eInt8,
    validation: Validation,
    ranking_inputs: np.ndarray,
    budget: ParityThresholds,
    isa: str,
    *,
    max_steps: int = MAX_STEPS,
    max_seconds: float = MAX_SECONDS,
    progress: Callable[[str], None] = lambda _: None,
) -> Int8Search:
    """The accuracy-aware search (``fallback.search_layers``) over ``int8``'s layers: which to keep in float so that
    ``validation`` (which runs a converted GraphModule) holds the budget. Ranks on ``ranking_inputs`` against the
    float model's logits. Returns the search; the caller converts and lowers ``kept_float``."""
    started = time.perf_counter()
    reference = run_eager(int8.module, ranking_inputs)

    def evaluate(kept_float: list[str]):
        return validation.evaluate(int8.converted(kept_float))

    def rank(kept_float: list[str], candidates: list[str]) -> list[str]:
        base = int8.converted(kept_float, fold=False)
        return [name for _, name in rank_layers(base, candidates, ranking_inputs, reference, progress)]

    search = search_layers(
        int8.layers, [], evaluate, validation.within_budget, rank, max_steps=max_steps, max_seconds=max_seconds, progress=progress
    )
    calibration = {"method": "histogram (XNNPACKQuantizer)", "images": int8.images, "recalibrated_candidates": int8.recalibrations}
    # session_config: ExecuTorch programs carry no runtime settings
    return search.record(budget, isa, {}, calibration, len(int8.layers), started)


def _observers(prepared) -> dict[tuple, tuple[object, list[str]]]:
    """Each observer instance of a prepared model, keyed by what it observes: (its observer calls' names, the nodes
    they observe, its class and settings). Two prepares of the same model see the same float tensors, so equal keys
    mean equal states after calibration."""
    by_instance: dict[int, tuple[object, list[str], list[str]]] = {}
    for node in prepared.graph.nodes:
        if not _is_observer(node):
            continue
        observer = prepared.get_submodule(node.target)
        source = node.args[0]
        while _is_observer(source):
            source = source.args[0]
        entry = by_instance.setdefault(id(observer), (observer, [], []))
        entry[1].append(str(node.target))
        entry[2].append(source.name)
    result = {}
    for observer, names, sources in by_instance.values():
        settings = tuple(str(getattr(observer, a, None)) for a in ("dtype", "qscheme", "quant_min", "quant_max", "ch_axis", "eps"))
        result[(type(observer).__name__, settings, tuple(sorted(sources)))] = (observer, names)
    return result
