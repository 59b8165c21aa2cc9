"""Click options generated from a pydantic config model, so a flag and its YAML key can never drift apart."""

from __future__ import annotations

import typing
from pathlib import Path

import click
from pydantic import BaseModel


def _click_type(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)])
    if args and typing.get_origin(annotation) is not typing.Literal:
        return _click_type(args[0])
    return {int: int, float: float, str: str, Path: click.Path(path_type=Path)}.get(annotation, str)


def options_from_model(model: type[BaseModel], exclude: tuple[str, ...] = ()):
    """A decorator adding ``--<field>`` for every field of ``model``; defaults stay None so that only
    flags the user typed override the config file."""

    def decorate(function):
        for name, field in reversed(list(model.model_fields.items())):
            if name in exclude:
                continue
            flag = "--" + name.replace("_", "-")
            default = None if field.is_required() else field.default
            help_text = (field.description or "").strip()
            if default is not None and not isinstance(default, BaseModel):
                help_text = f"{help_text} [default: {default}]".strip()
            if field.is_required():
                help_text = f"{help_text} [required]".strip()
            if field.annotation is bool:
                option = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
            else:
                option = click.option(flag, name, type=_click_type(field.annotation), default=None, help=help_text)
            function = option(function)
        return function

    return decorate
