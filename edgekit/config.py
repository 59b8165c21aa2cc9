"""Loading YAML configs into typed pydantic models: unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError, first_line

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # safe_load: a config cannot build Python objects
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid YAML: {first_line(exc)}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of keys to values at the top level, got {type(data).__name__}")
    return data


def validate(model: type[ConfigT], data: dict, source: str = "config") -> ConfigT:
    """Build ``model`` from ``data``; the first problem becomes one line: '<source>: <key>: <what is wrong>'."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def format_validation_error(exc: ValidationError, source: str) -> str:
    problems = []
    for error in exc.errors()[:3]:
        # repr() for keys like "\n" or "\t": the message must stay one readable line
        key = ".".join(str(part) if str(part).isprintable() else repr(str(part)) for part in error["loc"]) or "(top level)"
        message = "unknown key (check the spelling)" if error["type"] == "extra_forbidden" else error["msg"]
        if error["type"] != "extra_forbidden" and "input" in error and not isinstance(error["input"], (dict, list)):
            message += f" (got {error['input']!r})"
        problems.append(f"{key}: {message}")
    more = f" (+{len(exc.errors()) - 3} more)" if len(exc.errors()) > 3 else ""
    return f"{source}: " + "; ".join(problems) + more


def load(model: type[ConfigT], path: str | os.PathLike | None = None, overrides: dict | None = None) -> ConfigT:
    """A config from a YAML file with ``overrides`` (flags the user actually passed) on top."""
    data = read_yaml(path) if path else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate(model, data, str(path) if path else "options")
