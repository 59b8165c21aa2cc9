"""What edgekit knows about one architecture: a typed ``ModelSpec`` (timm's pattern), imported by the zoo
modules that define specs and by the registry that holds them, and importing neither."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from torch import nn

from ..preprocessing import Preprocessing

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum


@dataclass(frozen=True)
class ParityTolerance:
    """How close an exported variant must stay to the float32 PyTorch model, per variant kind.

    fp32 is judged on logits relative to their spread; the lossy kinds on decisions (top-1 agreement)
    and accuracy drop, since their logits are expected to move.
    """

    fp32_max_rel_diff: float = 1e-4
    fp16_max_rel_diff: float = 2e-2
    fp16_min_agreement: float = 0.98
    # The int8 accuracy budget, the same for every model: what a user may lose to int8 before it is not worth it.
    # With labels the accuracy drop is judged, without them top-1 agreement with fp32 (parity.thresholds_for).
    int8_min_agreement: float = 0.99
    int8_max_accuracy_drop: float = 0.01


@dataclass(frozen=True)
class ModelSpec:
    """Everything edgekit needs to know about one classifier architecture."""

    name: str
    family: str
    build: Callable[[], nn.Module]  # the architecture with its original (ImageNet) head, no weights
    head: str  # dotted path of the final nn.Linear, replaced for a new class count
    blocks: Callable[[nn.Module], list[nn.Module]]  # backbone stages, input to output, for --unfreeze N
    input_size: int = 224
    weights_enum: type[WeightsEnum] | None = None  # torchvision's weights for this architecture
    load_default_weights: Callable[[], tuple[dict, Preprocessing, list[str]]] | None = None  # offline weights
    weights_package: str | None = None  # the module load_default_weights reads them from (an optional extra)
    preprocessing: Preprocessing = field(default_factory=lambda: Preprocessing.for_size(224))
    parity: ParityTolerance = field(default_factory=ParityTolerance)
    source: str = "torchvision"

    @property
    def default_weights(self) -> str | None:
        if self.load_default_weights is not None:
            return "DEFAULT"
        if self.weights_enum is not None:
            return self.weights_enum.DEFAULT.name
        return None

    @property
    def weights_offline(self) -> bool:
        """Whether DEFAULT weights are usable without a network (shipped in a package or in the hub cache)."""
        if self.load_default_weights is not None:
            return self.weights_package is None or _importable(self.weights_package)
        if self.weights_enum is None:
            return False
        return cached_weights_file(self.weights_enum.DEFAULT) is not None


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module blocked in sys.modules
        return False


def cached_weights_file(weights) -> Path | None:
    """The torch hub cache file for torchvision weights, if it has been downloaded already."""
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return path if path.is_file() else None
