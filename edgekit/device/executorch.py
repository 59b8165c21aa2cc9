"""Load an ExecuTorch program (.pte) with the XNNPACK delegate, and run batches through it.

Threads: ExecuTorch has one process-wide threadpool that the XNNPACK delegate and the optimized kernels share. Its
size can only be changed through ``_unsafe_reset_threadpool``, which is meant to be called before a program is
loaded. Resetting it after programs ran left it single-threaded in one run (1, then 2) and aborted the process in
another (a pthread priority assertion). So the pool is resized only before the process has loaded any program, at
most once; a later session asking for another count is refused (``PoolResized``) instead of a crash or a silently
wrong measurement.

ExecuTorch's Python runtime itself takes torch tensors, so a device running .pte files from Python has torch (the
runtime's own dependency, not edgekit's).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from .quiet import native_stderr_quiet

# torchao, which executorch imports, registers its enums as pytree constants and torch logs a deprecation for each:
# a note for torchao's authors, not for the person running a model
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
_POOL_LOCK = threading.Lock()
_STATE: dict = {"pool_threads": None, "programs_loaded": False}  # the size this process set (once), and whether it ran any


class PoolResized(RuntimeError):
    """The threadpool cannot be resized any more in this process."""


def set_pool_threads(threads: int | None):
    """Size ExecuTorch's process-wide threadpool once (see the module docstring); the count in use."""
    from executorch.extension.pybindings import portable_lib

    with _POOL_LOCK:
        current = int(portable_lib._threadpool_get_thread_count())
        if threads is None or threads == current:
            return current if threads is not None or _STATE["pool_threads"] is not None else f"default ({current})"
        if _STATE["pool_threads"] is not None or _STATE["programs_loaded"]:
            raise PoolResized(
                f"ExecuTorch's threadpool has {current} threads and this process already ran ExecuTorch programs; resizing "
                f"it now can crash the process, so ask for --threads {current} here or run the {threads}-thread "
                "sessions in a fresh process"
            )
        portable_lib._unsafe_reset_threadpool(int(threads))
        _STATE["pool_threads"] = int(portable_lib._threadpool_get_thread_count())
        return _STATE["pool_threads"]


def load_method(path: str, threads: int | None = None):
    """(the program's "forward" method, the threads in use); the method is None when the program has none."""
    from executorch.runtime import Runtime, Verification

    with native_stderr_quiet():  # its cpuinfo probe prints ARM-only sysfs misses to fd 2 on x86
        used = set_pool_threads(threads)
        _STATE["programs_loaded"] = True
        program = Runtime.get().load_program(str(path), verification=Verification.InternalConsistency)
        return program.load_method("forward"), used


def execute(method, batch: np.ndarray, max_batch: int | None) -> np.ndarray:
    """Logits for ``batch``; a program's batch is bounded by its memory plan, so larger ones run in chunks."""
    import torch

    batch = np.ascontiguousarray(batch, dtype=np.float32)
    step = max_batch or len(batch)
    outputs = []
    for start in range(0, len(batch), step):
        (logits, *_) = method.execute([torch.from_numpy(batch[start : start + step])])
        outputs.append(logits.numpy().astype(np.float32, copy=True))
    return np.concatenate(outputs)


def version() -> str:
    try:
        import executorch

        return str(getattr(executorch, "__version__", "")) or _distribution_version()
    except ImportError:
        return "not installed"


def _distribution_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("executorch")
    except PackageNotFoundError:
        return "unknown"
