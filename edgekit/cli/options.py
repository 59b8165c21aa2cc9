"""Click options generated from a pydantic config model, so a flag and its YAML key can never drift apart.

A field may name its own flag with ``json_schema_extra={"flag": "--format"}``; a bool field whose flag is
``--no-<x>`` (default True) gets that one negating flag instead of a ``--x/--no-x`` pair."""

from __future__ import annotations

import typing
from pathlib import Path

import click
from pydantic import BaseModel


def _click_type(annotation):
    if typing.get_origin(annotation) in (tuple, list, dict):
        return str  # comma-separated on the command line; the model splits and checks it
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)])
    if args and typing.get_origin(annotation) is not typing.Literal:
        return _click_type(args[0])
    return {int: int, float: float, str: str, Path: click.Path(path_type=Path)}.get(annotation, str)


def _is_bool(annotation) -> bool:
    return annotation is bool or (bool in typing.get_args(annotation) and set(typing.get_args(annotation)) <= {bool, type(None)})


def _shown(default) -> str:
    return ",".join(str(part) for part in default) if isinstance(default, (tuple, list)) else str(default)


def options_from_model(model: type[BaseModel], exclude: tuple[str, ...] = ()):
    """A decorator adding ``--<field>`` (or the field's own ``flag``) for every field of ``model``; defaults stay
    None so that only flags the user typed override the config file."""

    def decorate(function):
        for name, field in reversed(list(model.model_fields.items())):
            if name in exclude:
                continue
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            flag = str(extra.get("flag") or "--" + name.replace("_", "-"))
            negates = _is_bool(field.annotation) and flag.startswith("--no-") and field.default is True
            default = None if field.is_required() else field.default
            help_text = (field.description or "").strip()
            if default is not None and not isinstance(default, BaseModel) and not negates:
                help_text = f"{help_text} [default: {_shown(default)}]".strip()
            if field.is_required():
                help_text = f"{help_text} [required]".strip()
            if negates:  # e.g. --no-fallback sets accuracy_aware to False
                option = click.option(flag, name, is_flag=True, flag_value=False, default=None, help=help_text)
            elif _is_bool(field.annotation):
                option = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
            else:
                option = click.option(flag, name, type=_click_type(field.annotation), default=None, help=help_text)
            function = option(function)
        return function

    return decorate
