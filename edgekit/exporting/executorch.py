"""PyTorch -> ExecuTorch program (.pte) lowered to the XNNPACK delegate: float32 and pt2e static int8.

Files (under <run>/exports/):
    model.pte / model.int8.pte            the programs (torch.export -> to_edge_transform_and_lower(XnnpackPartitioner))
    model.pte.json / model.int8.pte.json  their side files (a .pte has no metadata field of its own)

The side file is data only: a JSON object with
    "edgekit_side_file": 1                        format version
    "program": {"sha256", "bytes", "max_batch", "dynamic_batch"}
    "metadata": {"edgekit.labels": ..., ...}      the very strings export writes into ONNX metadata_props
It is read back by ``read_side_file``: size-limited, unknown keys refused, the SHA-256 checked against the .pte
(so a truncated, corrupted or swapped program is refused before the C++ runtime parses it), and the metadata
validated by ``ModelMetadata.from_props`` exactly like ONNX metadata. It never holds a path or code.

Batch: the program takes a dynamic batch of 1..MAX_BATCH (the memory plan is sized for the upper bound; the
runtime runs larger batches in chunks).

int8: torchao's pt2e ``prepare_pt2e``/``convert_pt2e`` with ExecuTorch's ``XNNPACKQuantizer`` (symmetric, per-channel
weights, static per-tensor activations), calibrated on the same class-stratified images as ONNX int8. The stock
quantizer fuses conv->ReLU but lets a conv->hardtanh (ReLU6) share the conv's observer, so every ReLU6 output is
quantized on the wide pre-activation range (51.5% top-1 agreement on Lite0); ``Relu6AwareXNNPACKQuantizer``
annotates conv->hardtanh like conv->ReLU (84.5%, still fully delegated, same speed).

int8 is accuracy-aware like ONNX Runtime's (``quantize/fallback.py``, one search loop for both): where the variant
breaks its budget on real parity images, layers go back to float, the most sensitive first (``search_float_layers``,
``quantize/pt2e.py``). Candidates are judged in PyTorch eager on the converted pt2e model, and only the chosen one
is lowered; its parity is then checked on the lowered program like every variant's.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Collection

from ..data import load_batch
from ..errors import ExportError, first_line
from ..files import write_bytes, write_json
from ..formats import Precision
from ..hardware import isa_class
from ..metadata import InputKind, ModelMetadata
from ..parity_check import compare_logits, judge
from ..runtimes.executorch import SIDE_FILE_VERSION, read_side_file, side_file_path  # noqa: F401  (re-exported)
from ..variants import Variant
from .quantize import RANKING_IMAGES, Validation, with_margin
from .quantize.pt2e import Pt2eInt8, keep_in_float, run_eager, search_pt2e
from .results import Int8Facts, VariantResult

if TYPE_CHECKING:
    from .job import ExportJob

INSTALL_HINT = "pip install 'edgekit[executorch]'"
# Where the int8 search validates its candidates (see search_float_layers).
EAGER = "the converted pt2e model in PyTorch eager (reference int8 quantize/dequantize ops)"
MAX_BATCH = 8
# Graph nodes that are bookkeeping, not work: never counted as falling back.
_BOOKKEEPING = ("getitem", "sym_size", "sym_numel", "sym_stride")
# Outside the delegate these only move or reshape data (portable kernels, cheap): noted, not warned about.
_DATA_MOVEMENT = ("view_copy", "_to_dim_order_copy", "squeeze_copy", "unsqueeze_copy", "permute_copy", "clone", "expand_copy")


def require_executorch():
    """Import ExecuTorch's export side, or a one-line error naming the extra."""
    try:  # (torch's pytree notes about torchao's enums are quieted by edgekit.device.executorch, imported above)
        import executorch.exir  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"the ExecuTorch format needs the executorch extra: {INSTALL_HINT}") from exc
    except Exception as exc:  # the pybindings link against libtorch: a mismatched torch fails here
        raise ExportError(
            f"executorch does not load next to this torch ({first_line(exc, 160)}); install the matching pair: {INSTALL_HINT}"
        ) from exc


# --------------------------------------------------------------------------- export


def export_program(model, example, quantize_batches=None, progress=None, choose_float=None) -> tuple[bytes, dict]:
    """(the .pte bytes, details) for ``model`` at ``example``'s per-image shape with a batch of 1..MAX_BATCH.

    ``quantize_batches``: an iterable of float32 NCHW arrays to calibrate pt2e static int8 on; None for float32.
    ``choose_float(int8) -> layer names``: which layers of the calibrated ``Pt2eInt8`` stay in float (the
    accuracy-aware search, ``search_float_layers``); None quantizes every layer.
    ``progress(text)`` is told which stage is running (the int8 export of a real model takes minutes).
    """
    require_executorch()
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    say = progress or (lambda text: None)
    # Contiguous: torch.export records the example's strides as the program's dim order, and a channels-last example
    # makes a program that misreads the contiguous NCHW tensors the runtime feeds it (logits off by 58 on a test model).
    example = (example[:2] if example.shape[0] >= 2 else example.expand(2, *example.shape[1:])).contiguous()
    dynamic = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    details: dict = {"batch": f"dynamic 1..{MAX_BATCH}", "delegate": "XNNPACK"}
    model = model.eval()
    try:
        say("torch.export")
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
        if quantize_batches is not None:
            program = _quantized_program(program, example, dynamic, quantize_batches, choose_float, details, say)
        say("lowering to XNNPACK")
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        details.update(delegation(edge.exported_program().graph_module))
        say("serializing")
        buffer = edge.to_executorch().buffer
    except ExportError:
        raise
    except Exception as exc:  # torch.export / exir raise many types without a common base
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(f"ExecuTorch export failed for {type(model).__name__}: {first}") from exc
    return bytes(buffer), details


def _quantized_program(program, example, dynamic, batches, choose_float, details: dict, say):
    import torch

    int8 = Pt2eInt8(program.module(), int8_quantizer, batches, say)
    kept_float = choose_float(int8) if choose_float is not None else []
    say("int8: converting")
    converted = int8.converted(kept_float)
    float_layers = int8.float_layers(kept_float)
    details.update(
        {
            "calibration_images": int8.images,
            "quantizer": "XNNPACKQuantizer (pt2e), conv->hardtanh annotated like conv->relu",
            "activations": "int8 per-tensor (static)",
            "weights": "int8 per-channel (symmetric)",
            "quantized_layers": len(int8.layers) - len(float_layers),
            "float_layers": float_layers,  # kept_float, plus producers that must compute in float with them
        }
    )
    say("int8: torch.export of the quantized model")
    return torch.export.export(converted, (example,), dynamic_shapes=dynamic)


def int8_quantizer(kept_float: Collection[str] = ()):
    """The quantizer ExecuTorch int8 uses: symmetric per-channel weights, static per-tensor activations, ReLU6-aware,
    with ``kept_float`` layers left in float."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    return relu6_aware_quantizer(kept_float).set_global(get_symmetric_quantization_config(is_per_channel=True))


def search_float_layers(job: "ExportJob", variant: Variant, record: dict):
    """``choose_float`` for ``export_program``: the accuracy-aware search (``quantize/fallback.py``) on the job's
    parity images, recorded in ``record["search"]`` (or why it did not run in ``record["skipped"]``); None (quantize
    every layer) where it does not run.

    Candidates are judged in PyTorch eager on the converted pt2e model, whose reference quantize/dequantize ops agree
    with the lowered XNNPACK program (same top-1 on the demo's digits); a step costs a conversion and one eager pass,
    where lowering alone takes 30-70 s. The lowered program is then checked like every variant (``job.finish``)."""
    data = job.checker.data
    why = job.search_skipped()
    if why:
        record["skipped"] = why
        return None
    budget = job.limits(variant)

    def choose(int8: Pt2eInt8) -> list[str]:
        def evaluate(candidate):
            logits = run_eager(candidate, data.inputs(InputKind.FLOAT))
            return compare_logits(job.checker.reference_logits(InputKind.FLOAT), logits, data.labels, data.source)

        search = search_pt2e(
            int8,
            Validation(evaluate, lambda metrics: not judge(with_margin(metrics), budget)[0]),
            load_batch(job.calibration.paths[:RANKING_IMAGES] if job.calibration else [], job.run.card.preprocessing, InputKind.FLOAT),
            budget,
            isa_class(),
            max_steps=job.options.max_fallback_steps,
            max_seconds=job.options.max_fallback_seconds,
            progress=lambda message: job.describe(variant, f"int8: {message}"),
        )
        record["search"] = search
        return search.kept_float

    return choose


def relu6_aware_quantizer(kept_float: Collection[str] = ()):
    """An ``XNNPACKQuantizer`` that annotates conv -> hardtanh (ReLU6) like conv -> ReLU: the conv's output gets no
    observer of its own and the hardtanh's output is observed on its clamped range (see the module docstring).
    Layers named in ``kept_float`` (module paths) are left in float (see ``quantize.pt2e.keep_in_float``)."""
    import torch
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils as utils
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    hardtanh = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
    conv = (torch.ops.aten.conv2d.default, torch.ops.aten.conv1d.default, torch.ops.aten.convolution.default)

    class Relu6AwareXNNPACKQuantizer(XNNPACKQuantizer):
        def annotate(self, model):
            config = self.global_config
            if config is not None and not config.input_activation.is_dynamic:
                for node in model.graph.nodes:
                    if node.op != "call_function" or node.target not in hardtanh:
                        continue
                    producer = node.args[0]
                    if not isinstance(producer, torch.fx.Node) or producer.target not in conv or len(producer.users) > 1:
                        continue
                    weight = producer.args[1]
                    bias = producer.args[2] if len(producer.args) > 2 else None
                    partition = [node, producer, weight] + ([bias] if isinstance(bias, torch.fx.Node) else [])
                    if utils._is_annotated(partition):
                        continue
                    inputs = {producer.args[0]: utils.get_input_act_qspec(config), weight: utils.get_weight_qspec(config)}
                    if isinstance(bias, torch.fx.Node):
                        inputs[bias] = utils.get_bias_qspec(config)
                    producer.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=inputs, _annotated=True)
                    node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=utils.get_output_act_qspec(config), _annotated=True)
                    utils._mark_nodes_as_annotated(partition)
            model = super().annotate(model)
            keep_in_float(model, kept_float)
            return model

    return Relu6AwareXNNPACKQuantizer()


def delegation(graph_module) -> dict:
    """What runs inside the XNNPACK delegate and what does not: node counts, the share, and the ops left outside."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    frame = info.get_operator_delegation_dataframe()
    outside: dict[str, int] = {}
    for _, row in frame.iterrows():
        op, count = str(row["op_type"]), int(row["occurrences_in_non_delegated_graphs"])
        if op != "Total" and count and not any(op == b or op.endswith(b) for b in _BOOKKEEPING):
            outside[op] = count
    inside = int(info.num_delegated_nodes)
    total = inside + sum(outside.values())
    compute_outside = {op: n for op, n in outside.items() if not any(d in op for d in _DATA_MOVEMENT)}
    result = {
        "delegated_subgraphs": int(info.num_delegated_subgraphs),
        "delegated_nodes": inside,
        "nodes_outside_delegate": outside,
        "delegated_share": round(inside / total, 4) if total else 0.0,
    }
    if compute_outside:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(compute_outside.items()))
        result["warnings"] = [
            f"{sum(compute_outside.values())} compute ops fall back to ExecuTorch's portable kernels "
            f"outside XNNPACK ({ops}); expect them to be slow on device"
        ]
    elif outside:
        result["notes"] = [
            f"{sum(outside.values())} data-movement ops run outside XNNPACK on portable kernels ({', '.join(sorted(outside))})"
        ]
    return result


def save_program(buffer: bytes, pte_path: Path, metadata: ModelMetadata, max_batch: int, dynamic: bool) -> Path:
    """Write the .pte and then its side file (both atomically); the side file records the program's digest, so a
    program without its matching side file is never taken for one with it."""
    side = side_file_path(pte_path)
    side.unlink(missing_ok=True)
    write_bytes(pte_path, buffer)
    write_json(
        side,
        {
            "edgekit_side_file": SIDE_FILE_VERSION,
            "program": {
                "sha256": hashlib.sha256(buffer).hexdigest(),
                "bytes": len(buffer),
                "max_batch": max_batch,
                "dynamic_batch": dynamic,
            },
            "metadata": metadata.to_props(),
        },
    )
    return pte_path


# --------------------------------------------------------------------------- one variant of an export run


def require() -> None:
    require_executorch()


def export_variant(job: "ExportJob", variant: Variant) -> VariantResult:
    """One ExecuTorch variant ("executorch-fp32" or "executorch-int8") with its parity: the format's entry point."""
    require_executorch()
    started = time.perf_counter()
    int8 = variant.precision is Precision.INT8
    record: dict = {}
    buffer, details = export_program(
        job.model,
        job.example(),
        job.calibration_batches() if int8 else None,
        progress=lambda text: job.describe(variant, text),
        choose_float=search_float_layers(job, variant, record) if int8 else None,
    )
    facts = _int8_facts(job, details, record) if int8 else None
    path = job.path_of(variant)
    metadata = job.metadata(variant, _quantization_facts(facts, details.get("float_layers")))
    save_program(buffer, path, metadata, MAX_BATCH, dynamic=True)
    warnings, notes = details.pop("warnings", []), details.pop("notes", [])
    details["side_file"] = side_file_path(path).name
    return job.finish(variant, path, time.perf_counter() - started, int8=facts, warnings=warnings, notes=notes, facts=details)


def _int8_facts(job: "ExportJob", details: dict, record: dict) -> Int8Facts:
    """The typed int8 facts of a pt2e export (``details`` keeps what only the JSON reader needs)."""
    search = record.get("search")
    return Int8Facts(
        quantizer=details.pop("quantizer"),
        calibration_images=details.pop("calibration_images"),
        calibration_data=job.calibration.source if job.calibration else None,
        activations=details.pop("activations"),
        weights=details.pop("weights"),
        isa=isa_class(),
        kept_float=list(search.kept_float) if search is not None else [],
        search=search,
        search_skipped=record.get("skipped"),
        search_validated_on=EAGER if search is not None else None,
    )


def _quantization_facts(int8: Int8Facts | None, float_layers: list[str] | None = None) -> dict:
    """What the program's side file says of its quantization; ``float_layers`` (module paths computed in float) is
    what `edgekit inspect` holds the kernels that ran to, since a .pte does not say which layers it quantized."""
    if int8 is None:
        return {}
    facts = {"calibration_images": int8.calibration_images, "activations": int8.activations, "weights": int8.weights}
    return {"quantization": {**facts, "float_layers": list(float_layers or [])}}
