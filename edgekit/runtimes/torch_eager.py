"""PyTorch eager mode, from a run directory's model.pt (the float32 reference every export is compared with)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EdgekitError
from ..metadata import InputKind
from . import Session


class TorchSession(Session):
    """A torch module (eager or an exported program's module) run under inference_mode."""

    def __init__(self, module, artifact: Path, runtime: str, device: str, **kwargs):
        super().__init__(artifact, **kwargs)
        self.runtime = runtime
        self.device = device
        self._module = module
        if self.parameters is None:
            self.parameters = sum(p.numel() for p in module.parameters())

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self._module(torch.from_numpy(np.ascontiguousarray(batch)).to(self.device))
        return logits.float().cpu().numpy()  # .cpu() waits for the device, so the call is synchronous

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()


def set_torch_threads(threads: int | None) -> int:
    """Apply ``threads`` to torch's intra-op pool and return the count in effect.

    torch's thread count is process-wide, not per model: every torch session in this process shares it.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def check_device(device: str) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EdgekitError(f"device {device!r} was asked for but torch sees no CUDA GPU; use device=cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise EdgekitError(f"device {device!r} is not supported; use cpu or cuda[:N]")
    return device


class TorchEager:
    """torch eager from a run directory (or the model.pt inside one)."""

    name = "torch"
    description = "PyTorch eager mode, the run's model.pt"
    suffixes = ("run",)
    options = ("device",)

    def available(self) -> tuple[bool, str]:
        try:
            import torch  # noqa: F401
        except ImportError:
            return False, "torch is not installed; pip install torch"
        return True, ""

    def load(self, artifact: Path, threads: int | None, options: dict) -> Session:
        import torch

        from ..runs import Run

        run_dir = artifact if artifact.is_dir() else artifact.parent
        run = Run.load(run_dir)  # a bare model.pt has no architecture: it needs the run card beside it
        device = check_device(str(options.get("device", "cpu")))
        model = run.build_model().to(device)
        used_threads = set_torch_threads(threads)
        crop = run.card.preprocessing.crop
        info = {"library": f"torch {torch.__version__}", "device": device, "threads": used_threads, "mode": "eager, inference_mode"}
        return TorchSession(
            model,
            run.model_path,
            self.name,
            device,
            input_kind=InputKind.FLOAT,
            input_shape=(3, crop, crop),
            labels=list(run.card.class_names),
            preprocessing=run.card.preprocessing,
            info=info,
        )
