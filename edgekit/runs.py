"""The run directory: one folder that every command reads and extends (docs/design.md, "The run directory").

runs/<name>/edgekit.json   the run card (this module)
runs/<name>/model.pt       state_dict only
runs/<name>/metrics.json   per-epoch metrics (finetune)
runs/<name>/exports/       exported variants and their parity reports
runs/<name>/bench/         benchmark reports
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path

from pydantic import Field

from .errors import EdgekitError, ModelError, first_line
from .preprocessing import Preprocessing
from .results import Result
from .version import __version__

CARD_NAME = "edgekit.json"
MODEL_NAME = "model.pt"


class RunCard(Result):
    """What a run is: enough to rebuild the model and feed it exactly as it was trained."""

    model: str
    weights: str  # where the starting weights came from
    class_names: list[str] = Field(min_length=1)
    preprocessing: Preprocessing
    strategy: str | None = None  # head / partial / full; None for a zoo model used as is
    data_fingerprint: str | None = None
    data_dir: str | None = None  # the training folder, for calibration defaults
    val_dir: str | None = None  # the validation folder (or the training folder with val_split)
    val_split: float | None = None
    seed: int | None = None
    device: str | None = None
    world_size: int = 1  # processes that trained it (torchrun / DDP)
    versions: dict[str, str] = Field(default_factory=dict)
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import torchvision

    return {
        "edgekit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


class Run:
    """A run directory on disk."""

    def __init__(self, path: str | os.PathLike, card: RunCard):
        self.path = Path(path)
        self.card = card

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Run":
        path = Path(path)
        card_path = path / CARD_NAME
        if not card_path.is_file():
            raise EdgekitError(f"{path} is not an edgekit run directory (no {CARD_NAME}); pass the --out folder of `edgekit finetune`")
        return cls(path, RunCard.from_json(card_path))

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_NAME

    @property
    def exports_dir(self) -> Path:
        return self.path / "exports"

    @property
    def bench_dir(self) -> Path:
        return self.path / "bench"

    def build_model(self):
        """The trained model in eval mode on the CPU, weights loaded with weights_only=True."""
        from .files import load_state_dict
        from .models import build

        model, _ = build(self.card.model, "none", num_classes=self.card.num_classes)
        state = load_state_dict(self.model_path)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(
                f"{self.model_path} does not fit {self.card.model} with {self.card.num_classes} classes "
                f"({first_line(exc)}); was the run directory mixed with another run?"
            ) from exc
        return model.eval()


def save_run(path: str | os.PathLike, card: RunCard, state_dict: dict | None = None) -> Run:
    """Write the model (if given) then the card; each atomically, the card last so a card always has its model."""
    from .files import save_torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if state_dict is not None:
        save_torch(path / MODEL_NAME, {k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
    card.to_json(path / CARD_NAME)
    return Run(path, card)


def run_from_zoo(name: str, weights: str, out: str | os.PathLike) -> Run:
    """A run directory for a zoo model used as is (no fine-tune), so export/bench/gate treat it like any run."""
    from .models import build

    model, loaded = build(name, weights)
    classes = loaded.categories or [f"class_{i}" for i in range(model.state_dict()[_head_key(name)].shape[0])]
    card = RunCard(model=name, weights=loaded.source, class_names=classes, preprocessing=loaded.preprocessing, versions=library_versions())
    return save_run(out, card, model.state_dict())


def _head_key(name: str) -> str:
    from .models import get_spec

    return f"{get_spec(name).head}.weight"
