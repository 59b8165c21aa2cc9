"""ONNX -> OpenVINO IR (model.xml + model.bin), fp32 and NNCF int8, with edgekit metadata in the IR's rt_info.

Why from the ONNX file and not the ExportedProgram: both convert faithfully (max rel diff 9e-7 on a ResNet-18
here), but ``convert_model(onnx)`` is 3x faster and keeps the static spatial size, where the ExportedProgram
path leaves H and W dynamic.

Metadata travels inside the .xml as ``rt_info`` under the section "edgekit" (one string per ONNX metadata key,
so ``ModelMetadata.from_props`` validates it exactly like ONNX metadata), plus ``bin_sha256``: the digest of
the .bin, so a truncated or swapped weights file is refused before OpenVINO reads it.

The IR is saved in float32 (``compress_to_fp16=False``); ``ov.save_model`` would halve the weights by default.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import ExportError, first_line
from ..metadata import ModelMetadata
from ..progress import quiet
from ..runtimes.openvino import DIGEST_KEY, RT_SECTION, bin_path, ir_digest, ov_message, read_ir  # noqa: F401  (re-exported)

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


def require_nncf():
    try:
        import nncf
    except ImportError as exc:
        raise ExportError(f"OpenVINO int8 needs nncf from the openvino extra: {INSTALL_HINT}") from exc
    return nncf


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
    nncf = require_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    images = [batch[i : i + 1] for batch in batches for i in range(len(batch))]
    if not images:
        raise ExportError("OpenVINO int8 needs at least one calibration image")
    fix = OverflowFix.ENABLE if overflow_fix else OverflowFix.DISABLE
    try:
        with quiet():
            quantized = nncf.quantize(
                model,
                nncf.Dataset(images),
                subset_size=len(images),
                preset=nncf.QuantizationPreset.PERFORMANCE,
                advanced_parameters=AdvancedQuantizationParameters(overflow_fix=fix),
            )
    except Exception as exc:  # nncf raises plain RuntimeError/ValueError
        raise ExportError(f"nncf.quantize failed: {first_line(exc, 300)}") from exc
    if info is not None:
        info.update(
            {
                "calibration_images": len(images),
                "quantizer": f"nncf {nncf.__version__}",
                "preset": "performance",
                "overflow_fix": fix.value,
                "activations": "int8 per-tensor",
                "weights": "int8 per-channel",
            }
        )
    return quantized


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
    ONNX int8, with NNCF's overflow fix where this CPU's int8 dot product saturates (x86 without VNNI).
    """
    import time

    from ..hardware import int8_saturates, isa_class
    from ..metadata import FLOAT_INPUT
    from ..variants import Format, Precision, Variant

    precision = Precision.FP32 if quantization == "none" else Precision(quantization)
    variant = Variant(precision, format=Format.OPENVINO)
    base, base_seconds, opset = exporter.base_onnx(FLOAT_INPUT)
    started = time.perf_counter()
    model = convert_onnx(base)
    details: dict = {"converted_from": f"ONNX opset {opset}", "ir_weights": "float32 (compress_to_fp16=False)"}
    runtime: dict = {}
    if precision is Precision.INT8:
        isa = isa_class()
        exporter.bar.describe(f"exporting {variant.name}: NNCF calibration on {len(exporter.calibration.paths)} images")
        info: dict = {}
        model = quantize_int8(model, exporter.calibration_batches(FLOAT_INPUT), overflow_fix=int8_saturates(isa), info=info)
        details.update({**info, "calibration_data": exporter.calibration.source, "isa": isa})
        runtime = {"validated_isa": isa}
    metadata = exporter.metadata(variant.name, FLOAT_INPUT, "openvino", {"opset": opset})
    metadata.runtime = runtime
    path = save_ir(model, exporter.run.exports_dir / variant.file_name, metadata)
    details["bin_bytes"] = bin_path(path).stat().st_size
    seconds = time.perf_counter() - started + base_seconds
    result = exporter.finish(variant.name, "openvino", path, seconds, FLOAT_INPUT, details, 1e-3)
    # The weights are the bulk of an IR: its size is the .xml plus the .bin.
    result.size_bytes = path.stat().st_size + details["bin_bytes"]
    return result
