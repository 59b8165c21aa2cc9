"""`edgekit bench`'s options: its flags, its ``--config`` YAML keys and ``bench()``'s keyword defaults all come
from ``BenchOptions``, so each default and help text is written once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..exporting.options import Names, split_csv


class BenchOptions(BaseModel):
    """Every `edgekit bench` option except ARTIFACTS and where to write reports (--json, --md, --plot)."""

    model_config = ConfigDict(extra="forbid")

    runtimes: Names = Field(
        ("auto",),
        json_schema_extra={"flag": "--runtime"},
        description="Comma-separated runtimes (registered: torch, torch-export, ort-cpu, ort-cuda, openvino); 'auto' runs "
        "each file on its natural runtime; 'list' shows which are available here.",
    )
    batch_sizes: Annotated[tuple[int, ...], BeforeValidator(split_csv)] = Field(
        (1,), description="Comma-separated batch sizes, e.g. 1,8,32."
    )
    threads: int | None = Field(None, description="Intra-op threads per runtime [default: the runtime's own default].")
    data: Path | None = Field(None, description="Labelled image folder (<class>/<image>) for top-1/top-5 accuracy.")
    max_images: int | None = Field(None, description="Use at most this many images of --data (classes kept in proportion).")
    warmup: int = Field(3, description="Untimed runs per variant and batch size.")
    iterations: int = Field(20, description="Timed runs per variant and batch size (interleaved).")
    end_to_end: bool = Field(False, description="Also time image decoding and preprocessing (from --data or the run's val images).")
    graph_opt_level: Literal["disable", "basic", "extended", "all"] | None = Field(
        None, description="ONNX Runtime graph optimization level [default: all]."
    )
    allow_spinning: bool | None = Field(None, description="ONNX Runtime idle thread spinning [default: ORT's own].")
    provider_options: dict[str, str] = Field(
        default_factory=dict, description="ONNX Runtime execution provider options (--provider-option KEY=VALUE, repeatable)."
    )
    device: str | None = Field(None, description="Device for the torch runtimes: cpu or cuda[:N] [default: cpu].")
    save: bool = Field(True, description="For a run directory, also write bench/<stamp>.json and .md into it.")
    target: str | None = Field(
        None,
        description="Where to measure: local, ssh://[user@]host[:port][/cache/dir] or an ssh_config Host alias (give it a "
        "venv first with `edgekit target setup`) [default: local].",
    )


BENCH_DEFAULTS = BenchOptions()
