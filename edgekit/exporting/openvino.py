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
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ..errors import ExportError, first_line
from ..formats import Precision
from ..hardware import int8_saturates, isa_class
from ..metadata import InputKind, ModelMetadata
from ..parity_check import ParityMetrics, ParityThresholds, compare_logits, open_artifact
from ..progress import quiet
from ..runtimes.openvino import DIGEST_KEY, RT_SECTION, bin_path, ir_digest
from ..variants import Variant
from .quantize import nncf as nncf_int8
from .results import Int8Facts, VariantResult

if TYPE_CHECKING:
    from .job import ExportJob

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


def batch_one(batches: Iterable[np.ndarray]) -> list[np.ndarray]:
    return [batch[i : i + 1] for batch in batches for i in range(len(batch))]


def int8_facts(images: int, overflow_fix: bool, isa, calibration_data) -> Int8Facts:
    """How NNCF made an int8 IR (before any search)."""
    return Int8Facts(
        quantizer=f"nncf {nncf_int8.require_nncf().__version__} (preset performance)",
        calibration_images=images,
        calibration_data=calibration_data,
        activations="int8 per-tensor",
        weights="int8 per-channel",
        overflow_fix=overflow_fix,
        isa=isa,
    )


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


def require() -> None:
    require_openvino()


def export_variant(job: "ExportJob", variant: Variant) -> VariantResult:
    """One OpenVINO variant ("openvino-fp32" or "openvino-int8") with its parity: the format's entry point.

    Converted from the job's float32 ONNX file; int8 calibrates on the same class-stratified images as ONNX int8,
    with NNCF's overflow fix where this CPU's int8 dot product saturates (x86 without VNNI), and is accuracy-aware
    like ONNX int8 (see ``int8_variant``).
    """
    base, base_seconds, opset = job.base_onnx()
    started = time.perf_counter()
    model = convert_onnx(base)
    metadata = job.metadata(variant, {"opset": opset})
    int8 = None
    if variant.precision is Precision.INT8:
        model, int8 = int8_variant(job, variant, model, metadata)
    path = save_ir(model, job.path_of(variant), metadata)
    facts = {
        "converted_from": f"ONNX opset {opset}",
        "ir_weights": "float32 (compress_to_fp16=False)",
        "bin_bytes": bin_path(path).stat().st_size,
    }
    return job.finish(variant, path, time.perf_counter() - started + base_seconds, int8=int8, facts=facts)


def int8_variant(job: "ExportJob", variant: Variant, model, metadata: ModelMetadata) -> tuple[Any, Int8Facts]:
    """(int8 ``openvino.Model``, its facts) for ``export_variant``: NNCF int8, and where it breaks the accuracy budget
    and the job has real images to validate on, NNCF's accuracy control returns layers to float until the budget
    holds (``quantize/nncf.py``), within the job's step and time bounds."""
    isa = isa_class()
    overflow_fix = int8_saturates(isa)
    metadata.runtime = {"validated_isa": isa.value}
    job.describe(variant, f"NNCF calibration on {len(job.calibration.paths) if job.calibration else 0} images")
    images = batch_one(job.calibration_batches())
    facts = int8_facts(len(images), overflow_fix, isa, job.calibration.source if job.calibration else None)
    budget = job.limits(variant)
    skipped = _search_skipped(job, budget)
    if skipped:
        facts.search_skipped = skipped
        return nncf_int8.quantize(model, images, overflow_fix), facts
    data = job.checker.data
    validation = nncf_int8.ValidationImages(
        data.inputs(InputKind.FLOAT), job.checker.reference_logits(InputKind.FLOAT), data.labels, data.source
    )

    def measure(candidate) -> ParityMetrics:
        # Saved and loaded the way parity and the user's app load it (edgekit's OpenVINO runtime, f32 inference).
        session = open_artifact(save_ir(candidate, job.workdir / f"{variant.name}.candidate.xml", metadata))
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
        max_steps=job.options.max_fallback_steps,
        max_seconds=job.options.max_fallback_seconds,
        progress=lambda message: job.describe(variant, message),
    )
    facts.kept_float, facts.search = search.kept_float, search
    return quantized, facts


def _search_skipped(job: "ExportJob", budget: ParityThresholds) -> str:
    """Why the accuracy-aware search does not run ("" when it does)."""
    data = job.checker.data
    if why := job.search_skipped():
        return why
    if nncf_int8.search_metric(budget, data.labels is not None) is None:
        return "the budget limits neither accuracy nor top-1 agreement"
    if data.images is None or len(data.images.paths) < 2:
        return "fewer than 2 images to validate on"
    return ""
