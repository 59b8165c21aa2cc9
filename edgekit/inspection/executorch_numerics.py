"""What can be said of a .pte's numerics: its logits against the float32 PyTorch model on the same images.

Per-layer numerics are not available from a .pte made by edgekit with the executorch 1.5 wheel: the XNNPACK delegate
runs the whole program as one call, so ETDump's debug buffer holds only the delegate's outputs, and
``Inspector.calculate_numeric_gap`` needs an ETRecord written at export time, which edgekit's export does not
write. For an int8 program the pt2e eager fallback (``executorch_pt2e``) gives per-layer figures of the model
quantized again the same way (with each layer's own error beside the accumulated one), labelled as such."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .metrics import ErrorAccumulator, first_below, worst
from .ranking import search_first
from .results import LayerNumerics, Numerics
from .sources import Images
from .torch_capture import ModuleOutputs

NOT_PER_LAYER = (
    "per-layer numerics are not available for .pte: the XNNPACK delegate runs as one call (ETDump's debug buffer holds "
    "only its outputs) and edgekit's export writes no ETRecord for Inspector.calculate_numeric_gap; logits compared only"
)


def executorch_numerics(
    model, artifact: Path, images: Images, threshold: tuple[float, str], calibration: list[np.ndarray] | None, search_ranking: bool = False
) -> Numerics:
    """The program's logits against ``model``'s; for an int8 program with ``calibration`` batches also the pt2e
    eager fallback's layers (``executorch_pt2e``, labelled as such, with the ExecuTorch search's score per layer
    when ``search_ranking``), else none (see the module docstring)."""
    from .. import runtimes

    session = runtimes.load(artifact, "executorch")
    logits = ErrorAccumulator()
    with ModuleOutputs(model, wanted=()) as hooks:
        for start in range(0, len(images), 8):
            reference, _ = hooks.run(images.reference[start : start + 8])
            logits.add(reference, session.run(images.artifact[start : start + 8]))
    layers: list[LayerNumerics] = []
    notes = [NOT_PER_LAYER]
    if calibration:
        from .executorch_pt2e import pt2e_layers

        layers, notes = pt2e_layers(model, images.reference, calibration, search_ranking)
        notes = [NOT_PER_LAYER.replace("; logits compared only", ""), *notes]
    return Numerics(
        images=len(images),
        data_source=images.source,
        threshold_db=threshold[0],
        threshold_reason=threshold[1],
        layers=layers,
        first_diverging=first_below(layers, threshold[0]),
        worst=worst(layers),
        worst_own=worst(layers, own=True),
        worst_own_channel=worst(layers, own=True, per_channel=True),
        search_first=search_first(layers),
        logits=logits.stats(),
        notes=notes,
    )
