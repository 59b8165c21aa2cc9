"""Atomic writes and safe loads: a killed process never leaves a half file under a final name,
and no file we read can run code."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import EdgekitError, ModelError, first_line

_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (image identity in the feature cache, .bin/.pte integrity)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique temporary path beside ``path``; rename it into place only if the block succeeds.

    The temporary name is unique per call, so two processes writing the same artifact never share a
    half-written file; the last complete one wins. On any failure the temporary file is removed and
    the previous ``path`` (if any) is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; artifacts get the usual permissions
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise EdgekitError(
                f"no space left on the device while writing {path}; the previous file (if any) is intact. "
                "Free some disk space and run the command again."
            ) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    if not path.exists():
        return
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EdgekitError(f"{path} does not exist") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"{path} is not valid JSON ({exc}); it may be truncated, regenerate it") from exc


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """torch.save ``obj`` atomically to ``path``.

    Serialized in memory first: torch's own file writer reports a full disk as a bare RuntimeError
    ("unexpected pos ..."), while a plain Python write raises OSError(ENOSPC), which atomic_path turns
    into a clear error with the previous file intact.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getbuffer())


def load_torch(path: str | os.PathLike) -> Any:
    """Load a torch file without ever executing pickled code (``weights_only=True``)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist or is not a file")
    from .safety import check_zip_checksums

    check_zip_checksums(path)  # torch itself would load flipped bytes as silently wrong weights
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"{path} was refused: it holds pickled Python objects, not plain tensors, and edgekit never runs "
            "pickled code. Re-save it as a state_dict (torch.save(model.state_dict(), ...)) or as .safetensors."
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ModelError(f"{path} is not a readable torch file ({first_line(exc)}); it may be truncated or corrupted") from exc


def load_state_dict(path: str | os.PathLike) -> dict:
    """A state_dict from a .pt/.pth (weights_only) or .safetensors file; also unwraps {'state_dict': ...}."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise ModelError(f"{path} does not exist or is not a file")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"{path} is not a readable safetensors file ({first_line(exc)})") from exc
    obj = load_torch(path)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise ModelError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    return obj
