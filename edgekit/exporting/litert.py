"""PyTorch -> LiteRT (.tflite): fp32 with litert-torch, fp16 weights and accuracy-aware static int8 with
ai-edge-quantizer, each with edgekit's metadata inside the flatbuffer.

Files (under <run>/exports/): model.tflite, model.fp16.tflite, model.int8.tflite.

Batch: converted at batch 1. litert-torch lowers each aten op through ``jax.jit``, which needs concrete shapes, so a
dynamic batch fails on every model tried (google-ai-edge/litert-torch#870, #685); the converted graphs do accept
``Interpreter.resize_tensor_input`` to any batch, which edgekit's runtime does (batch 8 on a batch-1 file matched
PyTorch to 1e-6 of the logit spread). Layout: the input stays NCHW float32 (one TRANSPOSE inside), as edgekit's
preprocessing gives it; ``to_channel_last_io`` was no faster.

Metadata: a ``Model.metadata`` entry "edgekit" holding the ONNX metadata_props strings and the file's own SHA-256
(layout in ``edgekit.device.litert``; read back and checked by ``edgekit.runtimes.litert``).

fp16: ai-edge-quantizer's float casting of the weights (half the file; XNNPACK computes in fp32 after a DEQUANTIZE,
or in fp16 where the CPU has it). int8: ``quantize/litert.py``, held to the accuracy budget by the same search as
ONNX Runtime's, ExecuTorch's and OpenVINO's, starting from the first conv and the classifier in float.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data import load_batch
from ..device.litert import DIGEST_PLACEHOLDER, METADATA_NAME, METADATA_VERSION, LiteRtModel, digest_field
from ..device.quiet import native_stderr_quiet
from ..errors import ExportError, first_line
from ..files import write_bytes
from ..formats import Precision, get_format
from ..hardware import isa_class
from ..metadata import InputKind, ModelMetadata
from ..parity_check import compare_logits, judge
from ..progress import quiet
from ..variants import Variant
from . import speed_check
from .quantize import RANKING_IMAGES, Validation, with_margin
from .results import Int8Facts, VariantResult

if TYPE_CHECKING:
    from .job import ExportJob

INSTALL_HINT = get_format("litert").install_hint
ACTIVATIONS = "int8 asymmetric, per tensor (static); model input and output float32"
WEIGHTS = "int8 symmetric, per channel"
BIAS_CORRECTION = "each int8 layer's bias absorbs its rounded weights' mean shift (calibration images)"
FP32_FILE = "litert-fp32.tflite"  # the job's one conversion, in its work folder


def require() -> None:
    """litert-torch (the converter), ai-edge-litert (the runtime) and ai-edge-quantizer, or a one-line error."""
    try:
        with quiet(), native_stderr_quiet():  # jax/absl start-up lines ("All log messages before absl::InitializeLog()...")
            import ai_edge_litert.interpreter  # noqa: F401
            import ai_edge_quantizer  # noqa: F401
            import litert_torch  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"the LiteRT format needs the litert extra: {INSTALL_HINT}") from exc
    except Exception as exc:  # litert-torch imports jax and torch internals: a mismatched torch fails here
        raise ExportError(f"litert-torch does not load next to this torch ({first_line(exc, 160)}); {INSTALL_HINT}") from exc


def export_variant(job: "ExportJob", variant: Variant) -> VariantResult:
    """One LiteRT variant ("litert-fp32", "litert-fp16" or "litert-int8") with its parity: the format's entry point."""
    require()
    float_path, convert_seconds = converted(job, variant)
    started = time.perf_counter()
    int8 = None
    facts: dict = {"converter": f"litert-torch {_version('litert-torch')}", "batch": "exported at 1; the runtime resizes"}
    if variant.precision is Precision.FP32:
        content = float_path.read_bytes()
    elif variant.precision is Precision.FP16:
        content = fp16_weights(float_path)
        facts["weights"] = "float16 (ai-edge-quantizer float casting), computed in float32 after DEQUANTIZE"
    else:
        content, int8, float_layers = int8_variant(job, variant, float_path)
        facts["float_layers"] = float_layers
    path = job.path_of(variant)
    save_tflite(content, path, job.metadata(variant, _quantization_facts(int8)))
    seconds = time.perf_counter() - started + convert_seconds
    speed, warnings = _speed_check(job, float_path, path, variant) if int8 is not None else (None, [])
    return job.finish(variant, path, seconds, int8=int8, facts=facts, speed_vs_fp32=speed, warnings=warnings)


def converted(job: "ExportJob", variant: Variant) -> tuple[Path, float]:
    """(the job's float32 .tflite, the seconds its conversion took), converted once per job."""
    path, timing = job.workdir / FP32_FILE, job.workdir / (FP32_FILE + ".seconds")
    if path.is_file() and timing.is_file():
        return path, float(timing.read_text())
    job.describe(variant, "converting with litert-torch (batch 1)")
    started = time.perf_counter()
    convert(job.model, job.example()[:1], path)
    seconds = time.perf_counter() - started
    timing.write_text(repr(seconds))
    return path, seconds


def convert(model, example, path: Path) -> Path:
    """``model`` traced on ``example`` (a batch-1 float NCHW tensor) -> a float32 .tflite at ``path``."""
    import litert_torch
    import torch

    litert_torch.config.show_progress = False  # its progress tree
    try:
        # the converter's C++ logs ("Estimated count of arithmetic ops") go to fd 2
        with torch.no_grad(), quiet(), native_stderr_quiet():
            litert_torch.convert(model.eval(), (example.contiguous(),)).export(str(path))
    except Exception as exc:  # torch.export, the jax lowering and the converter raise many types
        raise ExportError(f"litert-torch could not convert {type(model).__name__}: {first_line(exc, 300)}") from exc
    return path


def fp16_weights(float_path: Path) -> bytes:
    """The float model with float16 weights (ai-edge-quantizer float casting; IO and compute stay float32)."""
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    manager = recipe_manager.RecipeManager()
    manager.add_quantization_config(
        regex=".*",
        operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        op_config=qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT,
            explicit_dequantize=True,
        ),
        algorithm_key=AlgorithmName.FLOAT_CASTING,
    )
    from .quantize.litert import silenced

    try:
        with silenced():
            result = quantizer.Quantizer(str(float_path), manager.get_quantization_recipe()).quantize()
    except Exception as exc:
        raise ExportError(f"ai-edge-quantizer could not cast {float_path.name} to float16: {first_line(exc, 300)}") from exc
    return bytes(result.quantized_model)


def save_tflite(content: bytes, path: Path, metadata: ModelMetadata) -> Path:
    """Write ``content`` with ``metadata`` and its own digest embedded (see ``edgekit.device.litert``), atomically."""
    return write_bytes(path, with_metadata(content, metadata.to_props()))


def with_metadata(content: bytes, props: dict[str, str]) -> bytes:
    """``content`` with an "edgekit" Model.metadata entry holding ``props`` and the digest of the result (any earlier
    "edgekit" entry replaced; the converter's own entries kept)."""
    import hashlib

    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    entry = {"edgekit_tflite": METADATA_VERSION, "sha256": DIGEST_PLACEHOLDER, "metadata": props}
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(entry, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    named = schema.MetadataT()
    named.name, named.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m) != METADATA_NAME] + [named]
    packed = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    placeholder = digest_field(DIGEST_PLACEHOLDER)
    if packed.count(placeholder) != 1:
        raise ExportError("cannot record the digest in the .tflite (the metadata entry was not written as expected)")
    return packed.replace(placeholder, digest_field(hashlib.sha256(packed).hexdigest()))


def _name(entry) -> str:
    name = entry.name
    return name.decode() if isinstance(name, bytes) else str(name)


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


def _quantization_facts(int8: Int8Facts | None) -> dict:
    if int8 is None:
        return {}
    return {"quantization": {"activations": int8.activations, "weights": int8.weights, "kept_float": int8.kept_float}}


def int8_variant(job: "ExportJob", variant: Variant, float_path: Path) -> tuple[bytes, Int8Facts, list[str]]:
    """(int8 .tflite bytes, how they were made, the layers that compute in float): calibrated on the job's
    class-stratified images, and where real parity images exist, held to the budget by the search."""
    from .quantize.litert import LiteRtInt8, search_litert

    job.describe(variant, "int8: calibrating (ai-edge-quantizer)")
    images = [batch[i : i + 1] for batch in job.calibration_batches() for i in range(len(batch))]
    known = {name for name, _ in job.model.named_modules()}
    threads = _threads()
    int8 = LiteRtInt8(float_path.read_bytes(), images, known, threads)
    start = [int8.conv_layers[0], int8.conv_layers[-1]] if len(int8.conv_layers) > 1 else list(int8.conv_layers)
    facts = Int8Facts(
        quantizer=f"ai-edge-quantizer {_version('ai-edge-quantizer')} static int8 (float IO)",
        calibration_images=int8.images,
        calibration_data=job.calibration.source if job.calibration is not None else None,
        calibration_method="minmax",
        activations=ACTIVATIONS,
        weights=WEIGHTS,
        bias_correction=BIAS_CORRECTION,
        isa=isa_class(),
        kept_float=start,
    )
    why = job.search_skipped()
    if why:
        facts.search_skipped = why
        return int8.quantize(start), facts, int8.float_layers(start)
    ranking = load_batch(job.calibration.paths[:RANKING_IMAGES] if job.calibration else [], job.run.card.preprocessing)
    search = search_litert(
        int8,
        _validation(job, variant, threads),
        ranking,
        LiteRtModel(str(float_path), threads).run(ranking),
        job.limits(variant),
        isa_class(),
        job.workdir,
        start_float=start,
        threads=threads,
        max_steps=job.options.max_fallback_steps,
        max_seconds=job.options.max_fallback_seconds,
        progress=lambda message: job.describe(variant, f"int8: {message}"),
    )
    facts.kept_float, facts.search = search.kept_float, search
    return int8.quantize(search.kept_float), facts, int8.float_layers(search.kept_float)


def _validation(job: "ExportJob", variant: Variant, threads: int) -> Validation:
    """A candidate's .tflite bytes run by LiteRT on the job's parity images, the budget one standard error inside."""
    from .quantize.litert import logits_of

    data, budget = job.checker.data, job.limits(variant)

    def evaluate(content: bytes):
        logits = logits_of(content, data.inputs(InputKind.FLOAT), job.workdir, threads)
        return compare_logits(job.checker.reference_logits(InputKind.FLOAT), logits, data.labels, data.source)

    return Validation(evaluate, lambda metrics: not judge(with_margin(metrics), budget)[0])


def _threads() -> int:
    from ..runtimes.tuning import this_machine

    return max(1, this_machine().physical_cores)


def _speed_check(job: "ExportJob", float_path: Path, path: Path, variant: Variant):
    """int8 against fp32 here (alternating pairs, batch 1): XNNPACK's int8 can be slower than fp32 on x86."""
    if not job.options.speed_check:
        return None, []
    image = job.checker.data.inputs(InputKind.FLOAT)[:1]
    fp32, int8 = LiteRtModel(str(float_path), _threads()), LiteRtModel(str(path), _threads())
    job.describe(variant, "int8: timing it against fp32 on this CPU")
    timing = speed_check.compare(lambda: fp32.run(image), lambda: int8.run(image))
    if not timing.clearly_slower:
        return timing, []
    return timing, [
        f"ran {timing.speedup:.2f}x as fast as fp32 on this CPU (batch 1 median, {timing.candidate_ms:.2f} vs "
        f"{timing.reference_ms:.2f} ms): fp32 ({variant.fp32_parent.file_name}) is the faster file here; --quantize auto picks by measurement"
    ]
