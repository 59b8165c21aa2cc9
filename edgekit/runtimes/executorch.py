"""ExecuTorch (optional: `pip install 'edgekit[executorch]'`): a .pte program run by ``executorch.runtime``,
with the XNNPACK delegate on the CPU.

Threads: ExecuTorch has one process-wide threadpool that the XNNPACK delegate and the optimized kernels share.
Its size can only be changed through ``_unsafe_reset_threadpool``, which is meant to be called before a program
is loaded. Resetting it after programs ran left it single-threaded in one session here (1, then 2) and aborted the
process in another (a pthread priority assertion). So the pool is resized only before the process has loaded any
program, at most once; a later session asking for another count gets a one-line error instead of a crash or a
silently wrong measurement.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

from ..errors import EdgekitError, ModelError, first_line
from ..files import sha256_file
from ..metadata import ModelMetadata
from . import Session

INSTALL_HINT = "pip install 'edgekit[executorch]'"
# The side file `edgekit export --format executorch` writes beside each .pte (format: edgekit.exporting.executorch).
SIDE_SUFFIX = ".json"  # model.pte -> model.pte.json
SIDE_FILE_VERSION = 1
MAX_SIDE_FILE_BYTES = 1_000_000
_SIDE_KEYS = {"edgekit_side_file", "program", "metadata"}
_PROGRAM_KEYS = {"sha256", "bytes", "max_batch", "dynamic_batch"}
_POOL_LOCK = threading.Lock()
_pool_threads: int | None = None  # the size this process set, once
_programs_loaded = False  # after the first program, the pool is never resized


class ExecuTorchSession(Session):
    runtime = "executorch"

    def __init__(self, method, artifact: Path, max_batch: int | None, program=None, **kwargs):
        super().__init__(artifact, **kwargs)
        self._method = method
        self._max_batch = max_batch
        self._program = program

    def write_etdump(self, path: Path) -> Path:
        """Write the ETDump of every run so far (loaded with the ``etdump`` option) to ``path``."""
        debug = path.with_suffix(".debug")
        self._program.write_etdump_result_to_file(str(path), str(debug))
        return path

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
    options = ("etdump",)

    def available(self) -> tuple[bool, str]:
        try:
            from executorch.runtime import Runtime
        except ImportError:
            return False, f"executorch is not installed; {INSTALL_HINT}"
        except Exception as exc:  # a torch/executorch mismatch fails inside the pybindings (undefined symbol, ...)
            return False, f"executorch does not load next to this torch ({first_line(exc, 160)}); {INSTALL_HINT}"
        if not Runtime.get().backend_registry.is_available("XnnpackBackend"):
            return False, "this executorch build has no XNNPACK backend; install the executorch wheel from PyPI"
        return True, ""

    def load(self, artifact: Path, threads: int | None, options: dict) -> Session:
        import executorch
        from executorch.runtime import Runtime, Verification

        metadata, program_facts = read_side_file(artifact)  # digest-checked against the .pte, validated like ONNX metadata
        used_threads = _set_pool_threads(threads)
        global _programs_loaded
        try:
            _programs_loaded = True
            # etdump: ExecuTorch's event tracer, per-op times of the XNNPACK delegate (devtools' Inspector reads them)
            trace = bool(options.get("etdump"))
            program = Runtime.get().load_program(artifact, verification=Verification.InternalConsistency, enable_etdump=trace)
            method = program.load_method("forward")
        except Exception as exc:  # the pybindings raise RuntimeError with an error code
            raise ModelError(f"{artifact} cannot be loaded by ExecuTorch ({first_line(exc, 300)}); re-export it") from exc
        if method is None:
            raise ModelError(f"{artifact} has no 'forward' method; re-export it with `edgekit export --format executorch`")
        meta = method.metadata
        if meta.num_inputs() != 1:
            raise ModelError(f"{artifact} takes {meta.num_inputs()} inputs; edgekit runs image classifiers with one input")
        sizes = list(meta.input_tensor_meta(0).sizes())  # the upper bounds of a dynamic program
        if len(sizes) != 4:
            raise ModelError(f"{artifact} input has shape {sizes}; expected a 4-d image batch")
        max_batch = int(program_facts.get("max_batch") or sizes[0])
        # Without a side file the program's batch bound is all there is to know: run in chunks of it, and let a
        # program whose batch is really fixed say so at run time.
        dynamic = bool(program_facts.get("dynamic_batch", True))
        info = {
            "library": f"executorch {getattr(executorch, '__version__', _version())}",
            "threads": used_threads,
            "delegate": "XnnpackBackend",
            "batch": f"dynamic 1..{max_batch}" if dynamic else f"fixed {max_batch}",
            **({} if program_facts else {"batch": f"at most {max_batch} (no side file says whether it is fixed)"}),
            "side_file": program_facts.get("side_file", "none (no labels or preprocessing)"),
        }
        return ExecuTorchSession(
            method,
            artifact,
            max_batch if dynamic else None,
            program=program,
            input_kind=metadata.input_kind,
            input_shape=tuple(sizes[1:]),
            fixed_batch=None if dynamic else max_batch,
            labels=metadata.labels,
            preprocessing=metadata.preprocessing,
            info=info,
        )


def _set_pool_threads(threads: int | None) -> int | str:
    """Size ExecuTorch's process-wide threadpool once (see the module docstring); the count in use."""
    global _pool_threads
    from executorch.extension.pybindings import portable_lib

    with _POOL_LOCK:
        current = int(portable_lib._threadpool_get_thread_count())
        if threads is None or threads == current:
            return current if threads is not None or _pool_threads is not None else f"default ({current})"
        if _pool_threads is not None or _programs_loaded:
            raise EdgekitError(
                f"ExecuTorch's threadpool has {current} threads and this process already ran ExecuTorch programs; resizing "
                f"it now can crash the process, so ask for --threads {current} here or run the {threads}-thread "
                "sessions in a fresh process"
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


def side_file_path(pte_path: str | os.PathLike) -> Path:
    pte_path = Path(pte_path)
    return pte_path.with_name(pte_path.name + SIDE_SUFFIX)


def read_side_file(pte_path: str | os.PathLike) -> tuple[ModelMetadata, dict]:
    """(metadata, program facts) for a .pte: from ``<file>.pte.json`` when present (checked, see the module
    docstring), else empty metadata (a bare program runs, without labels or preprocessing)."""
    pte_path = Path(pte_path)
    if not pte_path.is_file():
        raise ModelError(f"{pte_path} does not exist")
    side = side_file_path(pte_path)
    if not side.is_file():
        return ModelMetadata(None, None, {}), {}
    if side.stat().st_size > MAX_SIDE_FILE_BYTES:
        raise ModelError(f"{side} is {side.stat().st_size} bytes, more than a side file of labels and preprocessing can be; re-export it")
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{side} is not valid JSON ({first_line(exc, 120)}); re-export it") from exc
    if not isinstance(data, dict) or data.get("edgekit_side_file") != SIDE_FILE_VERSION:
        raise ModelError(f"{side} is not an edgekit side file (version {SIDE_FILE_VERSION}); re-export it")
    unknown = sorted(set(data) - _SIDE_KEYS)
    program, props = data.get("program"), data.get("metadata")
    if unknown:
        raise ModelError(f"{side} has unknown key {unknown[0]!r}; a side file holds only {', '.join(sorted(_SIDE_KEYS))}")
    if not isinstance(program, dict) or set(program) - _PROGRAM_KEYS or not isinstance(props, dict):
        raise ModelError(f"{side} has a malformed 'program' or 'metadata' entry; re-export it")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in props.items()):
        raise ModelError(f"{side} metadata must map strings to strings (as ONNX metadata does); re-export it")
    digest, max_batch = program.get("sha256"), program.get("max_batch")
    if not isinstance(digest, str) or not isinstance(max_batch, int) or isinstance(max_batch, bool) or not 1 <= max_batch <= 4096:
        raise ModelError(f"{side} has a malformed program entry (sha256 and max_batch 1..4096 expected); re-export it")
    if _sha256(pte_path) != digest:
        raise ModelError(
            f"{pte_path} does not match its side file {side.name} (SHA-256 differs: truncated, corrupted "
            "or from another export); re-export it"
        )
    metadata = ModelMetadata.from_props(props, str(side))
    facts = {"max_batch": max_batch, "dynamic_batch": bool(program.get("dynamic_batch")), "side_file": side.name}
    return metadata, facts


def _sha256(path: Path) -> str:
    return sha256_file(path)
