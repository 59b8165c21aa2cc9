"""The model zoo and model building."""

from .build import LoadedWeights, build, replace_head
from .registry import get_spec, list_specs, register
from .spec import ModelSpec, ParityTolerance

__all__ = ["LoadedWeights", "ModelSpec", "ParityTolerance", "build", "get_spec", "list_specs", "register", "replace_head"]
