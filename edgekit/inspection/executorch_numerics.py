"""What can be said of a .pte's numerics: its logits against the float32 PyTorch model on the same images.

Per-layer numerics are not available from a .pte made by edgekit with the executorch 1.5 wheel: the XNNPACK delegate
runs the whole program as one call, so ETDump's debug buffer holds only the delegate's outputs, and
``Inspector.calculate_numeric_gap`` needs an ETRecord written at export time, which edgekit's export does not
write. The run's ONNX int8 file, quantized from the same calibration images, shows the per-layer picture."""

from __future__ import annotations

from pathlib import Path

from .metrics import ErrorAccumulator
from .results import Numerics
from .sources import Images
from .torch_capture import ModuleOutputs

NOT_PER_LAYER = (
    "per-layer numerics are not available for .pte: the XNNPACK delegate runs as one call (ETDump's debug buffer holds "
    "only its outputs) and edgekit's export writes no ETRecord for Inspector.calculate_numeric_gap; logits compared only"
)


def executorch_numerics(model, artifact: Path, images: Images, threshold: tuple[float, str], notes: list[str]) -> Numerics:
    """The program's logits against ``model``'s; no layers (see the module docstring)."""
    from .. import runtimes

    session = runtimes.load(artifact, "executorch")
    logits = ErrorAccumulator()
    with ModuleOutputs(model, wanted=()) as hooks:
        for start in range(0, len(images), 8):
            reference, _ = hooks.run(images.reference[start : start + 8])
            logits.add(reference, session.run(images.artifact[start : start + 8]))
    return Numerics(
        images=len(images),
        data_source=images.source,
        threshold_db=threshold[0],
        threshold_reason=threshold[1],
        layers=[],
        first_diverging=None,
        worst=[],
        logits=logits.stats(),
        notes=[NOT_PER_LAYER],
    )
