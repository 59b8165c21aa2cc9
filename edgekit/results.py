"""Base for every result object: typed, validated, and round-tripped through JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from . import files
from .errors import EdgekitError, first_line


class Result(BaseModel):
    """A typed result. ``schema_version`` is written into every JSON file so readers can refuse files from an
    incompatible version, older or newer, in one line instead of misreading them.

    A subclass whose shape changed raises ``SCHEMA_VERSION``; it sets ``MIN_SCHEMA_VERSION`` to the oldest version
    it still reads (its validators then accept the old shape), and files older than that are refused."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    SCHEMA_VERSION: ClassVar[int] = 1
    MIN_SCHEMA_VERSION: ClassVar[int] = 1
    schema_version: int = 1

    def model_post_init(self, context) -> None:
        if "schema_version" not in self.model_fields_set:
            self.schema_version = type(self).SCHEMA_VERSION  # a new result: the current version

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
            data = json.loads(text)
        except ValueError as exc:
            raise EdgekitError(f"{source} is not a valid {cls.__name__} report: not JSON ({first_line(exc)})") from exc
        version = data.get("schema_version", 1) if isinstance(data, dict) else 1
        if isinstance(version, int) and version > cls.SCHEMA_VERSION:
            raise EdgekitError(
                f"{source} has schema_version {version}, newer than this edgekit reads ({cls.SCHEMA_VERSION}); upgrade edgekit"
            )
        if isinstance(version, int) and version < cls.MIN_SCHEMA_VERSION:
            raise EdgekitError(
                f"{source} has schema_version {version}, from an older edgekit ({cls.__name__} reads {cls.MIN_SCHEMA_VERSION} and "
                "newer); make it again with this edgekit"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise EdgekitError(f"{source} is not a valid {cls.__name__} report: {where}: {first['msg']}") from exc


class DataSource(BaseModel):
    """Where the images of a check came from: a folder of real images, or random inputs (no images at hand).

    Written as ``{"kind": "images", "path": "..."}``; reports of schema 1 wrote the string ``"images:<dir>"`` or
    ``"random"``, which still loads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["images", "random"]
    path: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_old_string(cls, value):
        if isinstance(value, str):
            if value == "random":
                return {"kind": "random"}
            if value.startswith("images:"):
                return {"kind": "images", "path": value.removeprefix("images:")}
            raise ValueError(f"expected 'random' or 'images:<dir>', got {value[:60]!r}")
        return value

    @classmethod
    def images(cls, path: str | os.PathLike) -> "DataSource":
        return cls(kind="images", path=str(path))

    @classmethod
    def random(cls) -> "DataSource":
        return cls(kind="random")

    @property
    def is_random(self) -> bool:
        return self.kind == "random"

    def __str__(self) -> str:
        return "random" if self.is_random else f"images:{self.path}"


RANDOM = DataSource(kind="random")
