"""torch.export programs (.pt2), run through ``ExportedProgram.module()``."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from ..metadata import InputKind, read_pt2_metadata
from ..safety import load_exported_program
from . import Session
from .torch_eager import TorchSession, check_device, set_torch_threads


class TorchExport:
    """A .pt2 file written by torch.export.save."""

    name = "torch-export"
    description = "torch.export program (.pt2), eager execution of the exported graph"
    suffixes = (".pt2",)
    options = ("device",)

    def available(self) -> tuple[bool, str]:
        try:
            import torch
        except ImportError:
            return False, "torch is not installed; pip install torch"
        if not hasattr(torch, "export") or not hasattr(torch.export, "load"):
            return False, f"torch {torch.__version__} has no torch.export.load; upgrade torch to 2.1 or newer"
        return True, ""

    def load(self, artifact: Path, threads: int | None, options: dict) -> Session:
        import torch

        device = check_device(str(options.get("device", "cpu")))
        program = load_exported_program(artifact)  # no pickled code runs; a bad file is a ModelError
        input_kind, input_shape = _input_signature(program, artifact)
        module = program.module().to(device)
        used_threads = set_torch_threads(threads)
        labels, preprocessing = _run_metadata(artifact)
        info = {
            "library": f"torch {torch.__version__}",
            "device": device,
            "threads": used_threads,
            "mode": "torch.export program, ExportedProgram.module()",
        }
        return TorchSession(
            module,
            artifact,
            self.name,
            device,
            input_kind=input_kind,
            input_shape=input_shape,
            labels=labels,
            preprocessing=preprocessing,
            info=info,
        )


def _input_signature(program, artifact: Path) -> tuple[str, tuple[int | None, ...] | None]:
    """The input kind and per-image shape from the program's first user input (symbolic dims -> None)."""
    import torch

    user_inputs = list(program.graph_signature.user_inputs)
    if len(user_inputs) != 1:
        raise ModelError(f"{artifact} takes {len(user_inputs)} inputs; edgekit runs image classifiers with one input")
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == user_inputs[0]:
            value = node.meta.get("val")
            if value is None:
                break
            kind = InputKind.UINT8 if value.dtype == torch.uint8 else InputKind.FLOAT
            shape = tuple(int(d) if isinstance(d, int) else None for d in value.shape[1:])
            return kind, shape
    return InputKind.FLOAT, None


def _run_metadata(artifact: Path):
    """Labels and preprocessing: the metadata `edgekit export` stores inside the archive, else the run card of
    the run the file sits in (runs/<name>/exports/x.pt2), else none."""
    from ..runs import CARD_NAME, Run

    metadata = read_pt2_metadata(artifact)
    if metadata.labels is not None or metadata.preprocessing is not None:
        return metadata.labels, metadata.preprocessing
    run_dir = artifact.parent.parent
    if artifact.parent.name == "exports" and (run_dir / CARD_NAME).is_file():
        card = Run.load(run_dir).card
        return list(card.class_names), card.preprocessing
    return None, None
