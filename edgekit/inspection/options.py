"""`edgekit inspect`'s options: its flags, its ``--config`` YAML keys and ``inspect()``'s keyword defaults come from
``InspectOptions``, so each default and help text is written once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .profile import RUNS, SHARE_THRESHOLD, WARMUP
from .sources import MAX_IMAGES


class InspectOptions(BaseModel):
    """Every `edgekit inspect` option except RUN, the artifacts and where to write reports (--json, --md, --html)."""

    model_config = ConfigDict(extra="forbid")

    data: Path | None = Field(
        None, description="Real images (a folder, or <class>/<image> folders) [default: the run's validation images]."
    )
    runtime: Literal["auto", "ort-cpu", "openvino", "executorch"] = Field(
        "auto", description="Runtime to profile on; auto: the file's own (ort-cpu for .onnx, openvino for .xml, executorch for .pte)."
    )
    threshold: float | None = Field(
        None, description="SQNR in dB under which a layer diverges [default: 20 for int8, 40 for fp16, 60 for fp32]."
    )
    max_images: int = Field(MAX_IMAGES, ge=1, description="Compare on at most this many images (class-stratified).")
    threads: int | None = Field(None, ge=1, description="Intra-op threads for the profile [default: the runtime's own].")
    warmup: int = Field(WARMUP, ge=0, description="Untimed runs before profiling.")
    runs: int = Field(RUNS, ge=1, description="Profiled runs (batch 1); medians are reported.")
    share: float = Field(
        SHARE_THRESHOLD, gt=0, le=1, description="Flag data movement (reorders, transposes, Q/DQ) above this share of the time."
    )
    target: str | None = Field(
        None,
        description="Take the per-op profile there: ssh://[user@]host[:port][/cache/dir] or an ssh_config Host alias (give it a "
        "venv first with `edgekit target setup --runtime ...`: ONNX Runtime, OpenVINO or ExecuTorch); the numerics stay here "
        "[default: local].",
    )
    numerics: bool = Field(True, json_schema_extra={"flag": "--no-numerics"}, description="Skip the per-layer comparison with PyTorch.")
    profile: bool = Field(True, json_schema_extra={"flag": "--no-profile"}, description="Skip the per-op profile.")
    search_ranking: bool = Field(
        True,
        json_schema_extra={"flag": "--no-search-ranking"},
        description="Skip scoring each int8 layer as the accuracy search does (the logits' error with it alone back in float; "
        "one run per layer, which is most of inspect's time on a large model).",
    )
