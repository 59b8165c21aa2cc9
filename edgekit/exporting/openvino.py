"""ONNX -> OpenVINO IR (model.xml + model.bin), fp32 and NNCF int8, with edgekit metadata in the IR's rt_info.

Why from the ONNX file and not the ExportedProgram: both convert faithfully (max rel diff 9e-7 on a ResNet-18
here), but ``convert_model(onnx)`` is 3x faster and keeps the static spatial size, where the ExportedProgram
path leaves H and W dynamic.

Metadata travels inside the .xml as ``rt_info`` under the section "edgekit" (one string per ONNX metadata key,
so ``ModelMetadata.from_props`` validates it exactly like ONNX metadata), plus ``bin_sha256``: the digest of
the .bin, so a truncated or swapped weights file is refused before OpenVINO reads it.

The IR is saved in float32 (``compress_to_fp16=False``); ``ov.save_model`` would halve the weights by default.

int8 is NNCF's, accuracy-aware like ONNX int8: where plain NNCF int8 breaks the budget on the parity images, NNCF's
``quantize_with_accuracy_control`` returns layers to float until it holds (``quantize/nncf.py``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import ExportError, first_line
from ..metadata import ModelMetadata
from ..parity_check import ParityMetrics, ParityThresholds
from ..progress import quiet
from ..runtimes.openvino import DIGEST_KEY, RT_SECTION, bin_path, ir_digest, ov_message, read_ir  # noqa: F401  (re-exported)
from .quantize import nncf as nncf_int8

EXTRA = "openvino"
INSTALL_HINT = "pip install 'edgekit[openvino]'"
_DIGEST_PLACEHOLDER = "0" * 64  # replaced in the saved .xml text by the .bin's real digest


def require_openvino():
    """The openvino module, or a one-line error naming the extra to install."""
    try:
        import openvino
    except ImportError as exc:
        raise ExportError(f"the OpenVINO format needs the openvino extra: {INSTALL_HINT}") from exc
    return openvino


def convert_onnx(onnx_path: str | os.PathLike):
    """An ``openvino.Model`` converted from a float32 ONNX file (weights kept float32)."""
    ov = require_openvino()
    try:
        with quiet():
            return ov.convert_model(str(onnx_path))
    except Exception as exc:  # OpenVINO's frontends raise several types with multi-line messages
        raise ExportError(f"openvino.convert_model failed for {onnx_path}: {first_line(exc, 300)}") from exc


def quantize_int8(model, batches: Iterable[np.ndarray], overflow_fix: bool, info: dict | None = None):
    """NNCF post-training int8 of an ``openvino.Model`` calibrated on ``batches`` (float32 NCHW arrays).

    Images are fed one at a time (NNCF's statistics assume batch 1). ``overflow_fix`` quantizes weights to 7 bits
    in every layer (``OverflowFix.ENABLE``): the fix for CPUs whose int8 dot product saturates 16-bit
    intermediates (x86 without VNNI). ``info`` receives what was done.
    """
    images = batch_one(batches)
    quantized = nncf_int8.quantize(model, images, overflow_fix)
    if info is not None:
        info.update(quantization_info(len(images), overflow_fix))
    return quantized


def batch_one(batches: Iterable[np.ndarray]) -> list[np.ndarray]:
    return [batch[i : i + 1] for batch in batches for i in range(len(batch))]


def quantization_info(images: int, overflow_fix: bool) -> dict:
    return {
        "calibration_images": images,
        "quantizer": f"nncf {nncf_int8.require_nncf().__version__}",
        "preset": "performance",
        "overflow_fix": "enable" if overflow_fix else "disable",
        "activations": "int8 per-tensor",
        "weights": "int8 per-channel",
    }


def save_ir(model, xml_path: str | os.PathLike, metadata: ModelMetadata) -> Path:
    """Write ``model`` with ``metadata`` as ``xml_path`` + its .bin, so a killed process never leaves a pair
    that looks whole: both are written under temporary names, the old .xml is removed, the .bin moved into
    place, the .xml last. The .xml records the .bin's SHA-256."""
    ov = require_openvino()
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    for key, value in metadata.to_props().items():
        model.set_rt_info(value, [RT_SECTION, key])
    model.set_rt_info(_DIGEST_PLACEHOLDER, [RT_SECTION, DIGEST_KEY])
    work = Path(tempfile.mkdtemp(prefix=f".{xml_path.name}.", dir=xml_path.parent))
    try:
        tmp_xml = work / "model.xml"
        try:
            ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        except Exception as exc:
            raise ExportError(f"openvino.save_model failed writing {xml_path}: {first_line(exc, 300)}") from exc
        digest = ir_digest(bin_path(tmp_xml))
        text = tmp_xml.read_text(encoding="utf-8")
        if text.count(_DIGEST_PLACEHOLDER) != 1:
            raise ExportError(f"cannot record the weights digest in {xml_path} (the IR's rt_info was not written as expected)")
        tmp_xml.write_text(text.replace(_DIGEST_PLACEHOLDER, digest), encoding="utf-8")
        for path in (tmp_xml, bin_path(tmp_xml)):
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        xml_path.unlink(missing_ok=True)
        os.replace(bin_path(tmp_xml), bin_path(xml_path))
        os.replace(tmp_xml, xml_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return xml_path


def read_ir_metadata(xml_path: str | os.PathLike) -> ModelMetadata:
    return read_ir(xml_path)[1]


def export_variant(exporter, quantization: str):
    """One OpenVINO variant ("openvino-fp32" or "openvino-int8") of an export run, with its parity check.

    Converted from the exporter's float32 ONNX file; int8 calibrates on the same class-stratified images as
    ONNX int8, with NNCF's overflow fix where this CPU's int8 dot product saturates (x86 without VNNI), and is
    accuracy-aware like ONNX int8 (see ``int8_variant``).
    """
    import time

    from ..metadata import FLOAT_INPUT
    from ..variants import Format, Precision, Variant

    precision = Precision.FP32 if quantization == "none" else Precision(quantization)
    variant = Variant(precision, format=Format.OPENVINO)
    base, base_seconds, opset = exporter.base_onnx(FLOAT_INPUT)
    started = time.perf_counter()
    model = convert_onnx(base)
    details: dict = {"converted_from": f"ONNX opset {opset}", "ir_weights": "float32 (compress_to_fp16=False)"}
    metadata = exporter.metadata(variant.name, FLOAT_INPUT, "openvino", {"opset": opset})
    if precision is Precision.INT8:
        model, int8_details = int8_variant(exporter, variant.name, model, metadata)
        details.update(int8_details)
    path = save_ir(model, exporter.run.exports_dir / variant.file_name, metadata)
    details["bin_bytes"] = bin_path(path).stat().st_size
    seconds = time.perf_counter() - started + base_seconds
    result = exporter.finish(variant.name, "openvino", path, seconds, FLOAT_INPUT, details, 1e-3)
    # The weights are the bulk of an IR: its size is the .xml plus the .bin.
    result.size_bytes = path.stat().st_size + details["bin_bytes"]
    return result


def int8_variant(exporter, variant: str, model, metadata: ModelMetadata) -> tuple[Any, dict]:
    """(int8 ``openvino.Model``, details) for ``export_variant``: NNCF int8, and where it breaks the accuracy budget
    and the exporter has real images to validate on, NNCF's accuracy control returns layers to float until the
    budget holds (``quantize/nncf.py``), within ``exporter.max_fallback_steps`` / ``max_fallback_seconds``."""
    from ..hardware import int8_saturates, isa_class
    from ..metadata import FLOAT_INPUT
    from ..parity_check import compare_logits, open_artifact

    isa = isa_class()
    overflow_fix = int8_saturates(isa)
    metadata.runtime = {"validated_isa": isa}
    exporter.bar.describe(f"exporting {variant}: NNCF calibration on {len(exporter.calibration.paths)} images")
    images = batch_one(exporter.calibration_batches(FLOAT_INPUT))
    details: dict = {**quantization_info(len(images), overflow_fix), "calibration_data": exporter.calibration.source, "isa": isa}
    budget = exporter.limits(variant)
    data = exporter.checker.data
    skipped = _search_skipped(exporter, budget)
    if skipped:
        details.update({"kept_float": [], "search": None, "search_skipped": skipped})
        return nncf_int8.quantize(model, images, overflow_fix), details
    validation = nncf_int8.ValidationImages(
        data.inputs(FLOAT_INPUT), exporter.checker.reference_logits(FLOAT_INPUT), data.labels, data.source
    )

    def measure(candidate) -> ParityMetrics:
        # Saved and loaded the way parity and the user's app load it (edgekit's OpenVINO runtime, f32 inference).
        session = open_artifact(save_ir(candidate, exporter.workdir / f"{variant}.candidate.xml", metadata))
        inputs = validation.inputs
        logits = np.concatenate([session.run(inputs[i : i + 32]) for i in range(0, len(inputs), 32)])
        return compare_logits(validation.reference, logits, validation.labels, validation.source)

    quantized, search = nncf_int8.quantize_within_budget(
        model,
        images,
        validation,
        budget,
        measure,
        overflow_fix=overflow_fix,
        isa=isa,
        max_steps=exporter.max_fallback_steps,
        max_seconds=exporter.max_fallback_seconds,
        progress=lambda message: exporter.bar.describe(f"{variant}: {message}"),
    )
    details.update({"kept_float": search.kept_float, "search": search.model_dump(mode="json")})
    return quantized, details


def _search_skipped(exporter, budget: ParityThresholds) -> str:
    """Why the accuracy-aware search does not run ("" when it does)."""
    data = exporter.checker.data
    if why := exporter.search_skipped():
        return why
    if nncf_int8.search_metric(budget, data.labels is not None) is None:
        return "the budget limits neither accuracy nor top-1 agreement"
    if len(data.images.paths) < 2:
        return "fewer than 2 images to validate on"
    return ""
