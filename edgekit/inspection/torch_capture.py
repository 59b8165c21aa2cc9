"""The float32 PyTorch model's intermediate outputs, captured with forward hooks.

A module can run more than once per forward (torchvision's ResNet blocks call one ``relu`` twice), so an output is
keyed by (module path, call index)."""

from __future__ import annotations

from typing import Iterable

import numpy as np

Key = tuple[str, int]  # (module path, which call of it in one forward)


def key_name(key: Key, calls: int = 1) -> str:
    """ "module layer1.0.relu output (call 2 of 2)", or without the call for a module called once."""
    path, call = key
    return f"module {path or '(model)'} output" + (f" (call {call + 1} of {calls})" if calls > 1 else "")


class ModuleOutputs:
    """Forward hooks on every module of ``model`` (or those named in ``wanted``), as a context manager;
    ``run(batch)`` returns the logits and each hooked call's floating-point output as float32 numpy."""

    def __init__(self, model, wanted: Iterable[str] | None = None):
        self.model = model
        self.wanted = set(wanted) if wanted is not None else None
        self.calls: dict[str, int] = {}  # calls per module in the last forward
        self._outputs: dict[Key, np.ndarray] = {}
        self._handles: list = []

    def __enter__(self) -> "ModuleOutputs":
        for path, module in self.model.named_modules():
            if self.wanted is None or path in self.wanted:
                self._handles.append(module.register_forward_hook(self._hook(path)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, path: str):
        import torch

        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                call = self.calls.get(path, 0)
                self.calls[path] = call + 1
                # A copy: the model may change the tensor in place after the hook (ResNet's ``out += identity``).
                self._outputs[(path, call)] = output.detach().float().cpu().numpy().copy()

        return hook

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, dict[Key, np.ndarray]]:
        import torch

        self._outputs, self.calls = {}, {}
        with torch.no_grad():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).float().numpy()
        return logits, self._outputs
