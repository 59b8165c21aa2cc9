"""Base for every result object: typed, validated, and round-tripped through JSON."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from . import files
from .errors import EdgekitError


class Result(BaseModel):
    """A typed result. ``schema_version`` is written into every JSON file so readers can refuse
    files from an incompatible future version instead of misreading them."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    SCHEMA_VERSION: ClassVar[int] = 1
    schema_version: int = 1

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = self.model_dump_json(indent=2)
        if path is not None:
            files.write_text(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike):
        """Parse JSON text, or read it from a path."""
        source = "JSON text"
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or not text.lstrip().startswith("{"):
            source = str(text_or_path)
            try:
                text = Path(text_or_path).read_text(encoding="utf-8")
            except OSError as exc:
                raise EdgekitError(f"cannot read {source}: {exc.strerror or exc}") from exc
        try:
            obj = cls.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise EdgekitError(f"{source} is not a valid {cls.__name__} report: {where}: {first['msg']}") from exc
        if obj.schema_version > cls.SCHEMA_VERSION:
            raise EdgekitError(
                f"{source} has schema_version {obj.schema_version}, newer than this edgekit reads ({cls.SCHEMA_VERSION}); upgrade edgekit"
            )
        return obj
