"""Runtimes: one small protocol, one module per runtime, an explicit registry.

    session = load("runs/flowers/exports/model.int8.onnx", threads=2)   # "auto" picks ort-cpu for .onnx
    logits = session.run(batch)                                         # float32 (N, classes)

A runtime says whether it can run here (``available()`` -> (ok, reason)), and loads an artifact into a
``Session``. Runtime modules import their heavy libraries lazily, so listing runtimes costs nothing and a
missing optional library (openvino) makes that runtime unavailable instead of breaking the import.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import EdgekitError, ModelError
from ..formats import find_format, known_suffixes
from ..metadata import InputKind
from ..preprocessing import Preprocessing

RUN = "run"  # the artifact kind of a run directory (or the model.pt in one): the torch runtime's


class Session:
    """A loaded model that turns one input batch into float32 logits.

    ``input_kind`` says what ``run`` takes: "float32-nchw" (normalized, preprocessed tensor) or "uint8-nhwc"
    (resized and cropped pixels; the model normalizes). ``input_shape`` is the per-image shape without the batch
    dimension, None where the model leaves a dimension dynamic. ``fixed_batch`` is the batch size when the
    model only accepts one. ``labels`` and ``preprocessing`` come from the ONNX metadata or the run card
    (None for a bare model). ``info`` records what was used (threads, providers, optimization level...);
    ``notes`` are what a reader of its timings must know (bench prints them beside the row).
    """

    runtime: str = ""
    device: str = "cpu"

    def __init__(
        self,
        artifact: Path,
        input_kind: InputKind | str = InputKind.FLOAT,
        input_shape: tuple[int | None, ...] | None = None,
        fixed_batch: int | None = None,
        labels: list[str] | None = None,
        preprocessing: Preprocessing | None = None,
        info: dict[str, Any] | None = None,
        parameters: int | None = None,
        notes: list[str] | None = None,
    ):
        if input_kind not in {k.value for k in InputKind}:
            raise ModelError(f"{artifact}: unknown input kind {input_kind!r}; expected one of {', '.join(k.value for k in InputKind)}")
        self.artifact = Path(artifact)
        self.input_kind = InputKind(input_kind)
        self.input_shape = input_shape
        self.fixed_batch = fixed_batch
        self.labels = labels
        self.preprocessing = preprocessing
        self.info: dict[str, Any] = dict(info or {})
        self.parameters = parameters  # weight count where the artifact tells it, else None
        self.notes: list[str] = list(notes or [])

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (float32, shape (N, classes)) for one batch of ``input_kind`` data."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait until queued device work is done (a no-op on the CPU), so a timer stops at the right moment."""

    def example_batch(self, batch_size: int, seed: int = 0) -> np.ndarray:
        """A random batch the model accepts, for timing (values do not change the work done)."""
        shape = self.resolved_input_shape()
        rng = np.random.default_rng(seed)
        if self.input_kind is InputKind.UINT8:
            return rng.integers(0, 256, size=(batch_size, *shape), dtype=np.uint8)
        return rng.standard_normal(size=(batch_size, *shape), dtype=np.float32)

    def resolved_input_shape(self) -> tuple[int, ...]:
        """The per-image input shape, filling dynamic dimensions from the recorded preprocessing."""
        crop = self.preprocessing.crop if self.preprocessing is not None else None
        shape = self.input_shape
        if shape is None:
            shape = (None, None, 3) if self.input_kind is InputKind.UINT8 else (3, None, None)
        spatial = (0, 1) if self.input_kind is InputKind.UINT8 else (1, 2)
        resolved = []
        for index, dim in enumerate(shape):
            if dim is None and index in spatial and crop is not None:
                dim = crop
            if dim is None:
                raise ModelError(
                    f"{self.artifact}: input dimension {index + 1} is dynamic and the model carries no edgekit preprocessing "
                    "to fix it; re-export it with `edgekit export` or with a fixed input size"
                )
            resolved.append(int(dim))
        return tuple(resolved)

    def describe(self) -> str:
        return f"{self.artifact.name} on {self.runtime}"


@runtime_checkable
class Runtime(Protocol):
    """What every runtime module provides."""

    # Read-only members, so that a runtime may declare them as plain class attributes (``suffixes = (".onnx",)``).
    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def suffixes(self) -> tuple[str, ...]:
        """Artifact kinds it loads: ".onnx", ".pt2", or "run" (a run directory / its model.pt)."""

    @property
    def options(self) -> tuple[str, ...]:
        """Option names ``load`` accepts; anything else is refused, never silently ignored."""

    def available(self) -> tuple[bool, str]:
        """(True, "") when it can run here, else (False, the reason and the fix)."""

    def load(self, artifact: Path, threads: int | None, options: dict) -> Session:
        """Load ``artifact`` into a session using ``threads`` intra-op threads (None: the library default)."""


_REGISTRY: dict[str, Runtime] = {}


def register(runtime: Runtime) -> Runtime:
    """Add a runtime (a plugin's, or a test's); a second one under the same name is an error, never a silent
    overwrite."""
    _ensure_loaded()
    return _add(runtime)


def unregister(name: str) -> None:
    """Remove a runtime a plugin or test registered."""
    _REGISTRY.pop(name, None)


def _add(runtime: Runtime) -> Runtime:
    if runtime.name in _REGISTRY:
        raise ValueError(f"runtime {runtime.name!r} is already registered")
    _REGISTRY[runtime.name] = runtime
    return runtime


def registered_names() -> list[str]:
    _ensure_loaded()
    return list(_REGISTRY)


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name``; an unknown name is an EdgekitError listing the registered ones."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise EdgekitError(f"unknown runtime {name!r}; {hint}registered runtimes: {', '.join(_REGISTRY)}") from None


def available_runtimes() -> dict[str, str | None]:
    """Every registered runtime -> None if it can run here, else the reason it cannot."""
    _ensure_loaded()
    result: dict[str, str | None] = {}
    for name, runtime in _REGISTRY.items():
        ok, reason = runtime.available()
        result[name] = None if ok else reason
    return result


def artifact_kind(artifact: str | os.PathLike) -> str:
    """A model file's format suffix (".onnx", ".xml", ... from ``edgekit.formats``), or "run" (a run directory, or the
    model.pt inside one)."""
    path = Path(artifact)
    fmt = find_format(path)
    if fmt is not None:
        return fmt.suffix
    if path.is_dir() or path.suffix in (".pt", ".pth"):
        return RUN
    raise EdgekitError(f"{path} is not a model edgekit can run; pass a model file ({known_suffixes()}) or a run directory")


def auto_runtime(artifact: str | os.PathLike) -> str:
    """The natural runtime for an artifact: its format's (``Format.runtime``), or torch for a run / its model.pt."""
    fmt = find_format(artifact)
    if fmt is not None:
        return fmt.runtime
    artifact_kind(artifact)  # a run directory, or a one-line error for any other file
    return "torch"


def load(artifact: str | os.PathLike, runtime: str = "auto", threads: int | None = None, **options) -> Session:
    """Load ``artifact`` on ``runtime`` ("auto": picked from the file kind) and return a Session.

    Raises EdgekitError when the runtime is unknown, unavailable here, cannot load this kind of artifact,
    or is given an option it does not have.
    """
    path = Path(artifact)
    if not path.exists():
        raise EdgekitError(f"{path} does not exist")
    name = auto_runtime(path) if runtime == "auto" else runtime
    chosen = get_runtime(name)
    kind = artifact_kind(path)
    if kind not in chosen.suffixes:
        raise EdgekitError(f"runtime {name} cannot load {path} (it loads {', '.join(chosen.suffixes)}); use --runtime {auto_runtime(path)}")
    ok, reason = chosen.available()
    if not ok:
        raise EdgekitError(f"runtime {name} is not available here: {reason}")
    if threads is not None and threads < 1:
        raise EdgekitError(f"--threads {threads} must be at least 1")
    unknown = sorted(set(options) - set(chosen.options))
    if unknown:
        accepted = ", ".join(chosen.options) or "none"
        raise EdgekitError(f"runtime {name} has no option {unknown[0]!r}; its options: {accepted}")
    return chosen.load(path, threads, dict(options))


_BUILT_IN_LOADED: list[bool] = []


def _ensure_loaded() -> None:
    # Registration is explicit and ordered here (no import side effects scattered around the package).
    if _BUILT_IN_LOADED:
        return
    _BUILT_IN_LOADED.append(True)
    from . import executorch, litert, ncnn, openvino, ort, torch_eager, torch_export

    for runtime in (
        torch_eager.TorchEager(),
        torch_export.TorchExport(),
        ort.OrtRuntime("ort-cpu"),
        ort.OrtRuntime("ort-cuda"),
        openvino.OpenVino(),
        executorch.ExecuTorch(),
        litert.LiteRt(),
        ncnn.Ncnn(),
    ):
        _add(runtime)


__all__ = [
    "RUN",
    "Runtime",
    "Session",
    "artifact_kind",
    "auto_runtime",
    "available_runtimes",
    "get_runtime",
    "load",
    "register",
    "registered_names",
    "unregister",
]
