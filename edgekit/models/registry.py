"""The model zoo: one typed ModelSpec per model, registered explicitly (no import side effects), duplicates refused."""

from __future__ import annotations

import difflib

from ..errors import ModelError
from .spec import ModelSpec

_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model; a second spec under the same name is an error, never a silent overwrite."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "run `edgekit models` for the list"
        raise ModelError(f"unknown model {name!r}; {hint}") from None


def list_specs() -> list[ModelSpec]:
    _ensure_loaded()
    return list(_REGISTRY.values())


_loaded = False


def _ensure_loaded() -> None:
    """Register the built-in zoo once, on first use. The zoo modules only define specs (they do not import
    this module); importing them here, not at the top, keeps ``import edgekit`` from importing torchvision and timm."""
    global _loaded
    if _loaded:
        return
    from . import timm_models, torchvision_models

    built_in = (*torchvision_models.specs(), *timm_models.specs())
    _loaded = True
    for spec in built_in:
        register(spec)
