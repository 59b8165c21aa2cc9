"""PyTorch -> torch.export ExportedProgram (.pt2) with a dynamic batch, plus edgekit metadata inside the archive."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ExportError, first_line
from ..files import write_bytes
from ..metadata import PT2_METADATA_FILE, ModelMetadata
from ..variants import Variant

if TYPE_CHECKING:
    from .job import ExportJob
    from .results import VariantResult


def export_variant(job: "ExportJob", variant: Variant) -> "VariantResult":
    """The run's torch.export program (.pt2, float32), with parity: the format's entry point (see ``job.py``)."""
    started = time.perf_counter()
    path = job.path_of(variant)
    export_program(job.model, path, job.example(), job.metadata(variant))
    return job.finish(variant, path, time.perf_counter() - started)


def export_program(model, path: str | os.PathLike, example, metadata: ModelMetadata | None = None) -> Path:
    """Export ``model`` with torch.export (batch axis dynamic) and save it as a .pt2 archive at ``path``.

    ``example`` is an input batch; a batch of 1 is repeated to 2 because torch.export specializes a
    dynamic dimension whose example size is 1. Load the result with ``torch.export.load`` (or
    ``edgekit.safety.load_exported_program``); read the metadata with :func:`edgekit.metadata.read_pt2_metadata`.
    """
    import torch

    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    try:
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    except Exception as exc:  # torch.export raises UserError, Unsupported, ... without a common base
        first = first_line(exc, 300)
        raise ExportError(f"torch.export failed for {type(model).__name__}: {first}") from exc
    extra = {PT2_METADATA_FILE: json.dumps(metadata.to_props())} if metadata is not None else None
    # Saved to memory first: torch names the archive's root folder after the file name, which would
    # otherwise be the temporary name; the bytes are then written atomically.
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files=extra)
    return write_bytes(path, buffer.getvalue())
