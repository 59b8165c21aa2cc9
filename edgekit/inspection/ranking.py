"""The accuracy search's own view of an ONNX int8 file's layers, beside the numerics: ``Ranking`` (the score the
search returns layers to float by: the logits' error with that layer alone put back in float) run on the file as it
is. Nothing is ranked here a second way; this only asks the search's ranking about the layers inspect shows."""

from __future__ import annotations

from pathlib import Path

from .results import Numerics
from .sources import Images

RANKING_IMAGES = 16  # the search ranks on 32 calibration images; inspect shows the same score on fewer


def session_config_of(artifact: Path) -> dict[str, str]:
    """The ORT session config the file runs under on this CPU (what it was validated to compute)."""
    from ..hardware import ort_session_config_here
    from ..metadata import read_onnx_metadata

    metadata = read_onnx_metadata(artifact)
    return ort_session_config_here(metadata.ort_session_config, metadata.validated_isa)


def add_search_errors(numerics: Numerics, artifact: Path, float_graphs: list[Path], images: Images, session_config: dict[str, str]) -> None:
    """Fill ``search_error`` of every int8 layer with ``Ranking``'s score on a few of the images (against the float32
    ONNX graph's logits, as the search scores); the last float graph given is the one the quantizer read."""
    from ..exporting.quantize import Ranking, run_onnx

    inputs = images.artifact[:RANKING_IMAGES]
    ranking = Ranking(inputs, run_onnx(float_graphs[0], inputs, {}), session_config)
    candidates = [layer.node for layer in numerics.layers if layer.precision == "int8"]
    scores = {name: error for error, name in ranking.scores(artifact, float_graphs[-1], candidates, lambda _: None)}
    for layer in numerics.layers:
        layer.search_error = scores.get(layer.node)
