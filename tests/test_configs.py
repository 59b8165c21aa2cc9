"""The shipped recipes in configs/ stay valid as the options evolve."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.config import read_yaml, validate
from edgekit.finetuning import FinetuneConfig
from edgekit.models import get_spec

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("finetune-*.yaml")), ids=lambda p: p.name)
def test_finetune_recipes_validate(path):
    data = read_yaml(path)
    config = validate(FinetuneConfig, {"out": "runs/x", **data}, str(path))
    get_spec(config.model)  # the model exists


def test_there_are_recipes():
    assert len(list(CONFIGS.glob("finetune-*.yaml"))) >= 3
