"""ExecuTorch (optional: `pip install 'edgekit[executorch]'`): a .pte program run by ``executorch.runtime``,
with the XNNPACK delegate on the CPU. Loading and threads: ``edgekit.device.executorch`` (one process-wide pool,
sized once)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..device.executorch import PoolResized, execute, load_method, load_program, version
from ..errors import EdgekitError, ModelError, first_line
from ..files import sha256_file
from ..metadata import ModelMetadata
from . import Session
from .tuning import AppCode, Example, Machine, Setting

INSTALL_HINT = "pip install 'edgekit[executorch]'"
# The side file `edgekit export --format executorch` writes beside each .pte (format: edgekit.exporting.executorch).
SIDE_SUFFIX = ".json"  # model.pte -> model.pte.json
SIDE_FILE_VERSION = 1
MAX_SIDE_FILE_BYTES = 1_000_000
_SIDE_KEYS = {"edgekit_side_file", "program", "metadata"}
_PROGRAM_KEYS = {"sha256", "bytes", "max_batch", "dynamic_batch"}


class ExecuTorchSession(Session):
    runtime = "executorch"

    def __init__(self, method, artifact: Path, max_batch: int | None, program=None, **kwargs):
        super().__init__(artifact, **kwargs)
        self._method = method
        self._max_batch = max_batch
        self._program = program

    def write_etdump(self, path: Path) -> Path:
        """Write the ETDump of every run so far (loaded with the ``etdump`` option) to ``path``."""
        self._program.write_etdump_result_to_file(str(path), str(path.with_suffix(".debug")))
        return path

    def run(self, batch: np.ndarray) -> np.ndarray:
        return execute(self._method, batch, self._max_batch)


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
        metadata, program_facts = read_side_file(artifact)  # digest-checked against the .pte, validated like ONNX metadata
        program = None
        try:
            if options.get("etdump"):  # ExecuTorch's event tracer: per-op times of the XNNPACK delegate (devtools' Inspector)
                program, used_threads = load_program(str(artifact), threads, etdump=True)
                method = program.load_method("forward")
            else:
                method, used_threads = load_method(str(artifact), threads)
        except PoolResized as exc:
            raise EdgekitError(str(exc)) from None
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
            "library": f"executorch {version()}",
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

    # ---- tuning (see runtimes/tuning.py) ------------------------------------------------------------------

    def settings_to_try(self, machine: Machine, batch_size: int) -> list[Setting]:
        """The physical cores only: ExecuTorch's threadpool is process-wide and can be sized once per process (see
        edgekit.device.executorch), so thread counts cannot be compared side by side in one process."""
        threads = max(1, machine.physical_cores)
        return [Setting(threads, {}, f"{threads} thread{'s' if threads > 1 else ''} (the process-wide pool)")]

    def app_code(self, file_name: str, setting: Setting, example: Example, session_config: dict[str, str] | None = None) -> AppCode:
        python = "\n".join(
            [
                "import torch",
                "from executorch.runtime import Runtime",
                "",
                f"program = Runtime.get().load_program({file_name!r})",
                "method = program.load_method('forward')",
                f"batch = torch.zeros({example.shape!r}, dtype=torch.{example.dtype})  # {example.comment}",
                "logits = method.execute([batch])[0]",
            ]
        )
        cpp = "\n".join(
            [
                f"::executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool({setting.threads or 0});",
                f'executorch::extension::Module module("{file_name}");',
                "auto logits = module.forward(executorch::extension::from_blob(data, {" + ", ".join(map(str, example.shape)) + "}));",
            ]
        )
        return AppCode(python, cpp, f"threadpool {setting.threads or 'default'} threads, XNNPACK delegate")


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
