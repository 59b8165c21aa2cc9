"""ExecuTorch (optional: `pip install 'edgekit[executorch]'`): a .pte program run by ``executorch.runtime``,
with the XNNPACK delegate on the CPU.

Threads: ExecuTorch has one process-wide threadpool that the XNNPACK delegate and the optimized kernels share.
Its size can only be changed through ``_unsafe_reset_threadpool``, which is meant to be called before a program
is loaded; resetting it again in a process that already ran programs (1, then 2) left it single-threaded here.
So the pool is resized at most once per process: the first session that asks for a thread count sets it, and a
later session asking for another count gets an error instead of a silently wrong measurement.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..errors import EdgekitError, ModelError
from . import Session

INSTALL_HINT = "pip install 'edgekit[executorch]'"
_POOL_LOCK = threading.Lock()
_pool_threads: int | None = None  # the size this process set, once


class ExecuTorchSession(Session):
    runtime = "executorch"

    def __init__(self, method, artifact: Path, max_batch: int | None, **kwargs):
        super().__init__(artifact, **kwargs)
        self._method = method
        self._max_batch = max_batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        batch = np.ascontiguousarray(batch, dtype=np.float32)
        step = self._max_batch or len(batch)
        outputs = []
        # A program's batch is bounded by what its memory plan holds; larger batches run in chunks of that size.
        for start in range(0, len(batch), step):
            (logits, *_) = self._method.execute([torch.from_numpy(batch[start : start + step])])
            outputs.append(logits.numpy().astype(np.float32, copy=True))
        return np.concatenate(outputs)


class ExecuTorch:
    """An ExecuTorch program (.pte) written by `edgekit export --format executorch`, labels and preprocessing
    from its side file (``model.pte.json``)."""

    name = "executorch"
    description = "ExecuTorch runtime with the XNNPACK delegate (optional extra), reads .pte"
    suffixes = (".pte",)
    options = ()

    def available(self) -> tuple[bool, str]:
        try:
            from executorch.runtime import Runtime
        except ImportError:
            return False, f"executorch is not installed; {INSTALL_HINT}"
        except Exception as exc:  # a torch/executorch mismatch fails inside the pybindings (undefined symbol, ...)
            return False, f"executorch does not load next to this torch ({str(exc).splitlines()[0][:160]}); {INSTALL_HINT}"
        if not Runtime.get().backend_registry.is_available("XnnpackBackend"):
            return False, "this executorch build has no XNNPACK backend; install the executorch wheel from PyPI"
        return True, ""

    def load(self, artifact: Path, threads: int | None, options: dict) -> Session:
        import executorch
        from executorch.runtime import Runtime, Verification

        from ..export.executorch import read_side_file

        metadata, program_facts = read_side_file(artifact)  # digest-checked against the .pte, validated like ONNX metadata
        used_threads = _set_pool_threads(threads)
        try:
            program = Runtime.get().load_program(artifact, verification=Verification.InternalConsistency)
            method = program.load_method("forward")
        except Exception as exc:  # the pybindings raise RuntimeError with an error code
            raise ModelError(f"{artifact} cannot be loaded by ExecuTorch ({_first_line(exc)}); re-export it") from exc
        if method is None:
            raise ModelError(f"{artifact} has no 'forward' method; re-export it with `edgekit export --format executorch`")
        meta = method.metadata
        if meta.num_inputs() != 1:
            raise ModelError(f"{artifact} takes {meta.num_inputs()} inputs; edgekit runs image classifiers with one input")
        sizes = list(meta.input_tensor_meta(0).sizes())  # the upper bounds of a dynamic program
        if len(sizes) != 4:
            raise ModelError(f"{artifact} input has shape {sizes}; expected a 4-d image batch")
        max_batch = int(program_facts.get("max_batch") or sizes[0])
        dynamic = bool(program_facts.get("dynamic_batch"))
        info = {
            "library": f"executorch {getattr(executorch, '__version__', _version())}", "threads": used_threads,
            "delegate": "XnnpackBackend", "batch": f"dynamic 1..{max_batch}" if dynamic else f"fixed {max_batch}",
            "side_file": program_facts.get("side_file", "none (no labels or preprocessing)"),
        }
        return ExecuTorchSession(
            method, artifact, max_batch if dynamic else None, input_kind=metadata.input_kind, input_shape=tuple(sizes[1:]),
            fixed_batch=None if dynamic else max_batch, labels=metadata.labels, preprocessing=metadata.preprocessing, info=info,
        )


def _set_pool_threads(threads: int | None) -> int | str:
    """Size ExecuTorch's process-wide threadpool once (see the module docstring); the count in use."""
    global _pool_threads
    from executorch.extension.pybindings import portable_lib

    with _POOL_LOCK:
        current = int(portable_lib._threadpool_get_thread_count())
        if threads is None or threads == current:
            return current if threads is not None or _pool_threads is not None else f"default ({current})"
        if _pool_threads is not None:
            raise EdgekitError(
                f"ExecuTorch's threadpool is already sized to {_pool_threads} threads in this process and cannot be "
                f"resized safely; run the executorch sessions asking for {threads} threads in a separate process"
            )
        portable_lib._unsafe_reset_threadpool(int(threads))
        _pool_threads = int(portable_lib._threadpool_get_thread_count())
        return _pool_threads


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("executorch")
    except PackageNotFoundError:
        return "unknown"


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
