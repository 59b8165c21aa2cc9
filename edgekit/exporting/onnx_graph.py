"""PyTorch -> ONNX with the dynamo exporter: one self-contained file, a dynamic batch axis, edgekit metadata; the
batch-size check every exported graph passes. (The ONNX format's variants are made in onnx.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ExportError, first_line
from ..files import atomic_path
from ..metadata import ModelMetadata
from ..progress import quiet

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Batch sizes every exported graph is run at: 1 and 2 (the usual ones) and an odd size, so a graph whose
# batch was silently specialized to the export example fails here instead of on a device.
CHECK_BATCH_SIZES = (1, 2, 7)
# Protobuf refuses to serialize a single message over 2 GiB; past that the weights must live in a side file.
MAX_SINGLE_FILE_BYTES = 2**31 - 1


def export_onnx(model, path: str | os.PathLike, example, metadata: ModelMetadata | None = None, opset: int | None = None) -> Path:
    """Export ``model`` (eval mode) to one .onnx file at ``path`` with a dynamic batch axis only.

    ``example`` is an input batch; a batch of 1 is repeated to 2 because torch.export specializes a
    dynamic dimension whose example size is 1. The model is checked with onnx.checker, gets
    ``metadata`` in its metadata_props, and is written atomically. ``opset`` None: the exporter's default.
    """
    proto = export_proto(model, example, opset)
    if metadata is not None:
        set_metadata(proto, metadata.to_props())
    return save_proto(proto, path)


def export_proto(model, example, opset: int | None = None):
    """The ONNX ModelProto for ``model`` at ``example``'s shape with the batch axis dynamic, checked."""
    import onnx
    import torch

    example = _batch_of_at_least_two(example)
    batch = torch.export.Dim("batch", min=1)
    try:
        # The dynamo exporter reports progress on stdout and warns about things users cannot act on;
        # a library call stays quiet (errors still raise).
        with quiet():
            program = torch.onnx.export(
                model.eval(),
                (example,),
                None,
                dynamo=True,
                external_data=False,
                dynamic_shapes=({0: batch},),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types (TorchExportError, ConversionError, ...)
        first = first_line(exc, 300)
        raise ExportError(f"torch.onnx.export (dynamo) failed for {type(model).__name__}: {first}") from exc
    if program is None:  # only when a file name is given, which it is not here
        raise ExportError(f"torch.onnx.export (dynamo) returned no program for {type(model).__name__}")
    proto = program.model_proto
    _check_only_batch_dynamic(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX graph is invalid: {first_line(exc, 300)}") from exc
    return proto


def _batch_of_at_least_two(example):
    if example.shape[0] >= 2:
        return example
    return example.expand(2, *example.shape[1:]).contiguous()


def _check_only_batch_dynamic(proto) -> None:
    """The input's batch is symbolic and every other input dimension is fixed (a static spatial size
    keeps ORT's optimizations and the quantizer's shape inference simple)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if not dims or not dims[0].dim_param:
        raise ExportError("the exported graph has a fixed batch size; the batch axis should be dynamic (exporter bug?)")
    if any(d.dim_param or not d.dim_value for d in list(dims)[1:]):
        raise ExportError(f"the exported graph has dynamic dimensions besides the batch: {[d.dim_param or d.dim_value for d in dims]}")


def set_metadata(proto, props: dict[str, str]) -> None:
    """Set (replace) ``props`` in a ModelProto's metadata_props, keeping any other keys."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        proto.metadata_props.add(key=key, value=value)


def save_proto(proto, path: str | os.PathLike) -> Path:
    """Write a ModelProto as one self-contained file, atomically."""
    size = proto.ByteSize()
    if size > MAX_SINGLE_FILE_BYTES:
        raise ExportError(f"the model is {size / 2**30:.1f} GiB; a single-file ONNX model must stay below 2 GiB")
    with atomic_path(path) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    return Path(path)


def update_metadata(path: str | os.PathLike, metadata: ModelMetadata) -> Path:
    """Rewrite the edgekit metadata of an .onnx file in place (atomically)."""
    import onnx

    proto = onnx.load(str(path))
    set_metadata(proto, metadata.to_props())
    return save_proto(proto, path)


def check_batch_sizes(
    run_batch,
    input_shape: tuple[int, ...],
    dtype,
    num_classes: int | None = None,
    consistency_tolerance: float | None = 1e-3,
    seed: int = 0,
) -> None:
    """Run a model at every size in CHECK_BATCH_SIZES and check the output shape, finiteness and (unless
    ``consistency_tolerance`` is None) that each image's logits do not depend on the batch it sits in.

    ``run_batch`` maps an input array to logits. The tolerance is relative to the logits' spread;
    dynamic quantization picks its activation scale per batch, so it needs None here.
    """
    rng = np.random.default_rng(seed)
    largest = max(CHECK_BATCH_SIZES)
    if np.dtype(dtype) == np.uint8:
        inputs = rng.integers(0, 256, size=(largest, *input_shape), dtype=np.uint8)
    else:
        inputs = rng.standard_normal(size=(largest, *input_shape)).astype(dtype)
    outputs = {}
    for size in CHECK_BATCH_SIZES:
        try:
            logits = np.asarray(run_batch(inputs[:size]))
        except Exception as exc:  # runtimes raise their own types; all mean "this batch size does not run"
            raise ExportError(f"the exported model fails at batch size {size}: {first_line(exc, 300)}") from exc
        expected_classes = num_classes if num_classes is not None else logits.shape[-1]
        if logits.shape != (size, expected_classes):
            raise ExportError(f"the exported model returns shape {logits.shape} at batch size {size}, expected {(size, expected_classes)}")
        if not np.isfinite(logits).all():
            raise ExportError(f"the exported model returns NaN or inf at batch size {size}")
        outputs[size] = logits
    if consistency_tolerance is None:
        return
    reference = outputs[largest]
    spread = float(reference.max() - reference.min()) or 1.0
    for size, logits in outputs.items():
        difference = float(np.abs(logits - reference[:size]).max()) / spread
        if difference > consistency_tolerance:
            raise ExportError(
                f"the exported model's logits for the same image change with the batch size "
                f"(batch {size} vs {largest}: relative difference {difference:.2e} > {consistency_tolerance:.0e})"
            )
