"""Hardening for files from other hands: ONNX external data that points outside its folder, .pt2
archives that would unpickle code, and paths from configs or metadata that would leave a directory.

Every loader of an untrusted model file goes through here before handing the file to onnxruntime or
torch, so a crafted file is refused with a one-line ModelError instead of being trusted.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path
from typing import Any, Iterator

from .errors import EdgekitError, ModelError, first_line


def check_inside(base: str | os.PathLike, path: str | os.PathLike, what: str = "path") -> Path:
    """``path`` (relative to ``base`` unless absolute) resolved; an error if it leaves ``base``.

    Symlinks are resolved first, so a link inside ``base`` that points elsewhere is refused too.
    """
    base_real = Path(os.path.realpath(base))
    candidate = Path(path)
    target = Path(os.path.realpath(candidate if candidate.is_absolute() else base_real / candidate))
    if target != base_real and base_real not in target.parents:
        raise EdgekitError(
            f"{what} {str(path)!r} points outside {base} (to {target}); refusing it. Keep such paths relative and inside {base}"
        )
    return target


def check_onnx_file(path: str | os.PathLike):
    """Parse an ONNX file without loading its external data and check every external-data location.

    Refused with a ModelError: a missing, empty, truncated or corrupted file; an external-data location
    that is absolute or escapes the model's folder (``../``, or a symlink leading out); external data
    that is missing or shorter than the tensor needs. Returns the ``onnx.ModelProto`` (weights stored
    outside the file are not loaded), so callers can read its metadata without parsing twice.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist or is not a file; pass an .onnx file written by `edgekit export`")
    if path.stat().st_size == 0:
        raise ModelError(f"{path} is empty; it may be an interrupted copy, re-export it")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, onnx raises others; all mean "not an ONNX model"
        raise ModelError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}); it may be truncated or corrupted, re-export it"
        ) from exc
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelError(f"{path} holds no ONNX graph (a truncated or foreign file?); re-export it")
    folder = path.resolve().parent
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        _check_external_location(path, folder, tensor.name, entries)
    return model


def _check_external_location(path: Path, folder: Path, tensor_name: str, entries: dict[str, str]) -> None:
    location = entries.get("location", "")
    if not location or os.path.isabs(location) or Path(location).drive or location.startswith(("/", "\\")):
        raise ModelError(
            f"{path}: tensor {tensor_name!r} keeps its data at {location!r}, an absolute or empty path; "
            "edgekit only reads external data stored beside the model. Re-export it with relative external data"
        )
    try:
        target = check_inside(folder, location, f"external data of tensor {tensor_name!r}")
    except EdgekitError:
        raise ModelError(
            f"{path}: tensor {tensor_name!r} keeps its data at {location!r}, outside the model's folder {folder}; "
            "refusing it (path traversal). Re-export the model with its data file beside it"
        ) from None
    if not target.is_file():
        raise ModelError(f"{path}: external data file {target.name!r} for tensor {tensor_name!r} is missing; copy it beside the model")
    try:
        offset = int(entries.get("offset", 0) or 0)
        length = int(entries["length"]) if entries.get("length") else None
    except ValueError:
        raise ModelError(f"{path}: tensor {tensor_name!r} has a malformed external-data offset/length; re-export it") from None
    if offset < 0 or (length is not None and length < 0):
        raise ModelError(f"{path}: tensor {tensor_name!r} has a negative external-data offset/length; re-export it")
    size = target.stat().st_size
    if offset + (length or 0) > size:
        raise ModelError(
            f"{path}: external data file {target.name!r} is {size} bytes but tensor {tensor_name!r} needs bytes "
            f"{offset}..{offset + (length or 0)}; the data file is truncated, copy or re-export it"
        )


def _all_tensors(graph) -> Iterator:
    """Every TensorProto in a graph: initializers, sparse initializers, constants, and subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_tensors(subgraph)


def check_zip_checksums(path: str | os.PathLike) -> None:
    """For zip-based model files (torch.save, .pt2): every member's CRC-32 must match.

    torch reads a zip member without checking its checksum, so flipped bytes inside a tensor would
    load silently as wrong weights; this finds them (a few ms per 10 MB). Not a zip: nothing to check.
    """
    import zipfile

    path = Path(path)
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise ModelError(
            f"{path} is a damaged archive ({type(exc).__name__}: {first_line(exc, 120)}); it may be truncated or corrupted, re-create it"
        ) from exc
    if bad_member is not None:
        raise ModelError(f"{path} is corrupted: {bad_member} fails its checksum; re-create or re-copy the file")


class _RefusedPickle:
    """Stands in for the ``pickle`` module inside torch's .pt2 reader: plain loads are refused."""

    def __getattr__(self, name):
        return getattr(pickle, name)

    @staticmethod
    def loads(*_args, **_kwargs):
        raise pickle.UnpicklingError("edgekit refuses pickled Python objects in model files")

    @staticmethod
    def load(*_args, **_kwargs):
        raise pickle.UnpicklingError("edgekit refuses pickled Python objects in model files")


@contextlib.contextmanager
def no_unsafe_unpickling() -> Iterator[None]:
    """While active, every ``torch.load`` is weights_only=True and torch's .pt2 reader cannot unpickle.

    ``torch.export.load`` falls back to ``torch.load(weights_only=False)`` and to ``pickle.loads`` for
    constants it cannot read safely; both would run code planted in the archive. Not thread-safe: it
    patches module attributes for the duration of one load.
    """
    import torch

    real_load = torch.load
    real_pickle_load_obj = getattr(torch._C, "_pickle_load_obj", None)

    def weights_only_load(f, map_location=None, pickle_module=None, *, weights_only=None, mmap=None, **kwargs):
        kwargs.pop("pickle_module", None)
        return real_load(f, map_location=map_location, weights_only=True, mmap=mmap, **kwargs)

    def refuse(*_args, **_kwargs):
        raise pickle.UnpicklingError("edgekit refuses pickled TorchScript objects in model files")

    modules: list[Any] = []  # torch-internal modules whose ``pickle`` attribute is swapped for the refusing one
    try:
        from torch.export.pt2_archive import _package

        modules.append(_package)
    except ImportError:  # older torch: no pt2 archive module, only the serde path below
        pass
    saved = [(module, module.pickle) for module in modules if hasattr(module, "pickle")]
    torch.load = weights_only_load
    if real_pickle_load_obj is not None:
        torch._C._pickle_load_obj = refuse
    for module, _ in saved:
        module.pickle = _RefusedPickle()
    try:
        yield
    finally:
        torch.load = real_load
        if real_pickle_load_obj is not None:
            torch._C._pickle_load_obj = real_pickle_load_obj
        for module, original in saved:
            module.pickle = original


def load_exported_program(path: str | os.PathLike):
    """``torch.export.load`` for an untrusted .pt2 file: no pickled code runs, errors are ModelError."""
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist or is not a file; pass a .pt2 file written by `edgekit export`")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path} is not a .pt2 archive (not a zip file); it may be truncated or corrupted, re-export it")
    check_zip_checksums(path)
    try:
        with no_unsafe_unpickling():
            return torch.export.load(str(path))
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"{path} was refused: it holds pickled Python objects and edgekit never runs pickled code; re-export it with `edgekit export`"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError/KeyError/zipfile errors for a damaged archive
        first = first_line(exc, 160)
        raise ModelError(
            f"{path} is not a loadable .pt2 archive ({type(exc).__name__}: {first}); it may be corrupted, re-export it"
        ) from exc


def onnx_session(model: str | os.PathLike | bytes, options=None, providers: tuple[str, ...] = ("CPUExecutionProvider",)):
    """An onnxruntime InferenceSession for a file (an .onnx file is checked with ``check_onnx_file`` first; an .ort
    file is a flatbuffer ORT validates itself) or for the serialized bytes of a model edgekit built in memory.
    ORT's own errors become one-line ModelErrors."""
    import onnxruntime as ort

    if not isinstance(model, bytes):
        if Path(model).suffix.lower() != ".ort":
            check_onnx_file(model)
        model = str(model)
    try:
        return ort.InferenceSession(model, sess_options=options, providers=list(providers))
    except Exception as exc:  # ORT's exception types share no base class
        where = "an in-memory model" if isinstance(model, bytes) else model
        raise ModelError(f"onnxruntime cannot load {where} ({first_line(exc)}); re-export it") from exc


def load_npz(path: str | os.PathLike) -> dict[str, Any]:
    """Every array of an .npz file, read without unpickling (object arrays are refused by numpy)."""
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
