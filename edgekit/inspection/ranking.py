"""The accuracy search's own view of an int8 artifact's layers, beside the numerics: the score each search returns
layers to float by (the logits' error with that layer alone put back in float), run on the file as it is: ONNX
Runtime's ``Ranking`` for an ONNX file, pt2e's ``rank_layers`` for the ExecuTorch eager fallback. Nothing is ranked
here a second way; this only asks the searches' rankings about the layers inspect shows."""

from __future__ import annotations

from pathlib import Path

from ..exporting.quantize.fallback import RANKING_IMAGES  # as many images as the search ranks on
from ..progress import track
from .metrics import WORST
from .results import LayerNumerics, Numerics
from .sources import Images


def session_config_of(artifact: Path) -> dict[str, str]:
    """The ORT session config the file runs under on this CPU (what it was validated to compute)."""
    from ..hardware import ort_session_config_here
    from ..metadata import read_onnx_metadata

    metadata = read_onnx_metadata(artifact)
    return ort_session_config_here(metadata.ort_session_config, metadata.validated_isa)


def add_search_errors(numerics: Numerics, artifact: Path, float_graphs: list[Path], images: Images, session_config: dict[str, str]) -> None:
    """Fill ``search_error`` of every int8 layer with ``Ranking``'s score on as many of the images as the search
    ranks on (against the float32 ONNX graph's logits, as the search scores), and ``numerics.search_first`` with the
    layers it would return to float first; the last float graph given is the one the quantizer read."""
    from ..exporting.quantize import Ranking, run_onnx

    candidates = [layer.node for layer in numerics.layers if layer.precision == "int8"]
    if not candidates:
        return
    inputs = images.artifact[:RANKING_IMAGES]
    ranking = Ranking(inputs, run_onnx(float_graphs[0], inputs, {}), session_config)
    tracked = track(candidates, "scoring layers as the accuracy search does")  # the two graphs are loaded once
    scores = {node: error for error, node in ranking.scores(artifact, float_graphs[-1], tracked, lambda _: None)}
    apply_scores(numerics.layers, scores, by_node=True)
    numerics.search_first = search_first(numerics.layers)


def apply_scores(layers: list[LayerNumerics], scores: dict[str, float], by_node: bool) -> None:
    """Set each layer's ``search_error`` from ``scores`` (keyed by node name, or by module path for pt2e)."""
    for layer in layers:
        layer.search_error = scores.get(layer.node if by_node else layer.layer)


def search_first(layers: list[LayerNumerics]) -> list[str]:
    """Up to five layers the search would return to float first (lowest score: its float version helps most)."""
    ranked = sorted((layer.search_error, layer.index, layer.layer) for layer in layers if layer.search_error is not None)
    return [name for _, _, name in ranked[:WORST]]
